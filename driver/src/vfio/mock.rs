//! A scripted VFIO for unit tests (test-only: `cfg(test)` or the `testing` feature): it
//! records every syscall-level call a [`VfioDevice`](super::VfioDevice) makes and returns what
//! the script says, so the device logic runs without a device, an IOMMU or root.
//!
//! ```
//! use std::sync::Arc;
//! use ioat_driver::discover::fake::{build, FakeFn};
//! use ioat_driver::discover::Host;
//! use ioat_driver::vfio::mock::{Call, MockConfig, MockVfio, Op};
//! use ioat_driver::vfio::{VfioDevice, VfioOpenOptions};
//!
//! // A fake sysfs tree with one I/OAT function bound to vfio-pci in IOMMU group 3.
//! let root = std::env::temp_dir().join(format!("mock-doc-{}", std::process::id()));
//! let f = FakeFn { bdf: "0000:00:04.0", vendor: 0x8086, device: 0x2021,
//!                  driver: Some("vfio-pci"), group: Some(3), numa: 0 };
//! build(&root, &[f], false)?;
//! let vfio = MockVfio::new(MockConfig::default());
//! let opts = VfioOpenOptions::ioat()
//!     .with_host(Host::with_root(&root))
//!     .with_memlock_needed(0)
//!     .with_vfio(Arc::new(vfio.clone()));
//! let dev = VfioDevice::open(&"0000:00:04.0".parse()?, &opts)?;
//! vfio.fail_next(Op::Reset, libc::ENOTTY);
//! assert!(dev.reset().unwrap_err().to_string().contains("may not support FLR"));
//! assert_eq!(vfio.calls().last(), Some(&Call::Reset));
//! # std::fs::remove_dir_all(&root)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;

use super::backend::{IommuInfo, MappedRegion, RegionInfo, VfioBackend, VfioHost};
use super::IrqKind;

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    OpenType1 {
        sysfs_path: PathBuf,
    },
    OpenNoIommu {
        group_node: PathBuf,
        name: String,
    },
    ConfigRead {
        off: u16,
        len: usize,
    },
    ConfigWrite {
        off: u16,
        bytes: Vec<u8>,
    },
    Reset,
    MapRegion {
        index: usize,
        len: usize,
    },
    UnmapRegion {
        index: usize,
        len: usize,
    },
    SetIrqs {
        kind: IrqKind,
        fds: usize,
    },
    DmaMap {
        iova: u64,
        vaddr: usize,
        len: usize,
    },
    DmaUnmap {
        iova: u64,
        len: usize,
    },
    Mlock {
        vaddr: usize,
        len: usize,
    },
    PhysAddr {
        vaddr: usize,
        len: usize,
    },
    /// The device (container, group and device fds) was closed.
    Close,
}

/// A call kind a script can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Open,
    ConfigRead,
    ConfigWrite,
    Reset,
    MapRegion,
    SetIrqs,
    DmaMap,
    DmaUnmap,
    Mlock,
    PhysAddr,
}

/// What the mocked device looks like.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// The container's IOMMU; `None` for a device opened through a no-IOMMU group.
    pub iommu: Option<IommuInfo>,
    /// Regions by index (BAR0 first).
    pub regions: Vec<RegionInfo>,
    /// Vectors offered: INTx, MSI, MSI-X.
    pub irqs: [usize; 3],
    /// Region mappings longer than this fail with EINVAL (a kernel that refuses to mmap the
    /// MSI-X table page).
    pub max_map: Option<usize>,
}

impl Default for MockConfig {
    /// An I/OAT-like function: BAR0 of 16 KiB, mappable; one MSI-X vector; an IOMMU accepting
    /// IOVAs below 2^39 with 4 KiB pages.
    fn default() -> Self {
        MockConfig {
            iommu: Some(IommuInfo {
                valid_iova: std::iter::once(0..(1 << 39)).collect(),
                page: 4096,
            }),
            regions: vec![RegionInfo {
                size: 0x4000,
                mappable: true,
            }],
            irqs: [1, 1, 1],
            max_map: None,
        }
    }
}

#[derive(Debug)]
struct State {
    calls: Vec<Call>,
    fails: Vec<(Op, i32)>,
    config: Vec<u8>,
}

impl State {
    fn call(&mut self, c: Call, op: Option<Op>) -> io::Result<()> {
        self.calls.push(c);
        let Some(op) = op else { return Ok(()) };
        match self.fails.iter().position(|(o, _)| *o == op) {
            Some(i) => Err(io::Error::from_raw_os_error(self.fails.remove(i).1)),
            None => Ok(()),
        }
    }
}

/// The mocked host VFIO (opener) and, once opened, the device. Clones share the log.
#[derive(Clone, Debug)]
pub struct MockVfio {
    cfg: MockConfig,
    state: Arc<Mutex<State>>,
}

impl MockVfio {
    pub fn new(cfg: MockConfig) -> MockVfio {
        MockVfio {
            cfg,
            state: Arc::new(Mutex::new(State {
                calls: Vec::new(),
                fails: Vec::new(),
                config: vec![0; 4096],
            })),
        }
    }

    /// The next call of kind `op` fails with `errno` (scripts queue per kind, in order).
    pub fn fail_next(&self, op: Op, errno: i32) {
        self.state.lock().fails.push((op, errno));
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().calls.clone()
    }

    /// Every call so far; the log starts empty again.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.lock().calls)
    }

    /// Config-space bytes at `off` (as the device would read them).
    pub fn config(&self, off: usize, len: usize) -> Vec<u8> {
        self.state.lock().config[off..off + len].to_vec()
    }

    /// Sets config-space bytes at `off`.
    pub fn set_config(&self, off: usize, bytes: &[u8]) {
        self.state.lock().config[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn open(&self, c: Call) -> io::Result<Arc<dyn VfioBackend>> {
        self.state.lock().call(c, Some(Op::Open))?;
        Ok(Arc::new(MockBackend {
            cfg: self.cfg.clone(),
            state: self.state.clone(),
        }))
    }
}

impl VfioHost for MockVfio {
    fn open_type1(&self, sysfs_path: &Path) -> io::Result<Arc<dyn VfioBackend>> {
        self.open(Call::OpenType1 {
            sysfs_path: sysfs_path.to_path_buf(),
        })
    }

    fn open_noiommu(
        &self,
        _vfio_dir: &Path,
        group_node: &Path,
        name: &str,
    ) -> io::Result<Arc<dyn VfioBackend>> {
        self.open(Call::OpenNoIommu {
            group_node: group_node.to_path_buf(),
            name: name.to_string(),
        })
    }
}

struct MockBackend {
    cfg: MockConfig,
    state: Arc<Mutex<State>>,
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        self.state.lock().calls.push(Call::Close);
    }
}

/// A mapped mock region: zeroed memory standing in for the BAR. Atomics, so the BAR's volatile
/// stores through the shared mapping pointer write memory that allows shared mutation.
struct MockMapping {
    mem: Box<[AtomicU64]>,
    index: usize,
    len: usize,
    state: Arc<Mutex<State>>,
}

impl MappedRegion for MockMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.mem.as_ptr() as *mut u8
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for MockMapping {
    fn drop(&mut self) {
        self.state.lock().calls.push(Call::UnmapRegion {
            index: self.index,
            len: self.len,
        });
    }
}

fn bad_width(len: usize) -> io::Result<()> {
    if matches!(len, 1 | 2 | 4) {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
}

impl VfioBackend for MockBackend {
    fn iommu(&self) -> Option<IommuInfo> {
        self.cfg.iommu.clone()
    }

    fn config_read(&self, off: u16, buf: &mut [u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        st.call(
            Call::ConfigRead {
                off,
                len: buf.len(),
            },
            Some(Op::ConfigRead),
        )?;
        bad_width(buf.len())?;
        let o = off as usize;
        let src = st
            .config
            .get(o..o + buf.len())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn config_write(&self, off: u16, buf: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        st.call(
            Call::ConfigWrite {
                off,
                bytes: buf.to_vec(),
            },
            Some(Op::ConfigWrite),
        )?;
        bad_width(buf.len())?;
        let o = off as usize;
        st.config
            .get_mut(o..o + buf.len())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?
            .copy_from_slice(buf);
        Ok(())
    }

    fn reset(&self) -> io::Result<()> {
        self.state.lock().call(Call::Reset, Some(Op::Reset))
    }

    fn region(&self, index: usize) -> Option<RegionInfo> {
        self.cfg.regions.get(index).copied()
    }

    fn map_region(&self, index: usize, len: usize) -> io::Result<Box<dyn MappedRegion>> {
        self.state
            .lock()
            .call(Call::MapRegion { index, len }, Some(Op::MapRegion))?;
        let r = self
            .cfg
            .regions
            .get(index)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        if !r.mappable || len as u64 > r.size || self.cfg.max_map.is_some_and(|m| len > m) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(Box::new(MockMapping {
            mem: (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect(),
            index,
            len,
            state: self.state.clone(),
        }))
    }

    fn irq_count(&self, kind: IrqKind) -> usize {
        self.cfg.irqs[match kind {
            IrqKind::Intx => 0,
            IrqKind::Msi => 1,
            IrqKind::MsiX => 2,
        }]
    }

    fn set_irqs(&self, kind: IrqKind, fds: &[RawFd]) -> io::Result<()> {
        self.state.lock().call(
            Call::SetIrqs {
                kind,
                fds: fds.len(),
            },
            Some(Op::SetIrqs),
        )
    }

    unsafe fn dma_map(&self, iova: u64, vaddr: *const u8, len: usize) -> io::Result<()> {
        let mut st = self.state.lock();
        st.call(
            Call::DmaMap {
                iova,
                vaddr: vaddr as usize,
                len,
            },
            Some(Op::DmaMap),
        )?;
        if self.cfg.iommu.is_none() {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        Ok(())
    }

    fn dma_unmap(&self, iova: u64, len: usize) -> io::Result<()> {
        self.state
            .lock()
            .call(Call::DmaUnmap { iova, len }, Some(Op::DmaUnmap))
    }

    fn mlock(&self, vaddr: *const u8, len: usize) -> io::Result<()> {
        self.state.lock().call(
            Call::Mlock {
                vaddr: vaddr as usize,
                len,
            },
            Some(Op::Mlock),
        )
    }

    /// The "physical" address is the virtual one: stable per address, so repeated maps of the
    /// same memory meet the same entry.
    fn phys_addr(&self, vaddr: usize, len: usize) -> io::Result<u64> {
        self.state
            .lock()
            .call(Call::PhysAddr { vaddr, len }, Some(Op::PhysAddr))?;
        Ok(vaddr as u64)
    }
}
