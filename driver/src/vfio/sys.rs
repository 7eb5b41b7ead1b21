//! Raw VFIO ioctls (numbers from `linux/vfio.h`, structs from `vfio-bindings`) for what
//! `pci-driver` does not cover: no-IOMMU containers and groups, device and region info.

use std::fs::File;
use std::io;
use std::mem;
use std::os::fd::AsRawFd;

use vfio_bindings::bindings::vfio as b;

const fn io_nr(nr: u32) -> libc::c_ulong {
    // _IO(VFIO_TYPE, VFIO_BASE + nr): no size, no direction bits.
    (((b::VFIO_TYPE as u32) << 8) | (b::VFIO_BASE + nr)) as libc::c_ulong
}

pub const GET_API_VERSION: libc::c_ulong = io_nr(0);
pub const CHECK_EXTENSION: libc::c_ulong = io_nr(1);
pub const SET_IOMMU: libc::c_ulong = io_nr(2);
pub const GROUP_GET_STATUS: libc::c_ulong = io_nr(3);
pub const GROUP_SET_CONTAINER: libc::c_ulong = io_nr(4);
pub const GROUP_GET_DEVICE_FD: libc::c_ulong = io_nr(6);
pub const DEVICE_GET_INFO: libc::c_ulong = io_nr(7);
pub const DEVICE_GET_REGION_INFO: libc::c_ulong = io_nr(8);
pub const DEVICE_GET_IRQ_INFO: libc::c_ulong = io_nr(9);
pub const DEVICE_SET_IRQS: libc::c_ulong = io_nr(10);
pub const DEVICE_RESET: libc::c_ulong = io_nr(11);

pub use b::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_NOIOMMU_IOMMU, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// One device region as VFIO describes it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegionInfo {
    pub flags: u32,
    pub size: u64,
    pub offset: u64,
}

/// An opened no-IOMMU container + group + device.
#[derive(Debug)]
pub struct RawDevice {
    // Field order is drop order: the device fd is closed before its group and container.
    pub device: File,
    _group: File,
    _container: File,
    pub regions: Vec<RegionInfo>,
    /// Vectors per IRQ index (INTx, MSI, MSI-X).
    pub irq_counts: [u32; 3],
}

fn open_rw(path: &std::path::Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

impl RawDevice {
    /// Opens `name` (the BDF string) through the no-IOMMU group node `group_node`.
    pub fn open_noiommu(
        vfio_dir: &std::path::Path,
        group_node: &std::path::Path,
        name: &str,
    ) -> io::Result<RawDevice> {
        let container = open_rw(&vfio_dir.join("vfio"))?;
        // SAFETY: VFIO_GET_API_VERSION takes no argument.
        let v = check(unsafe { libc::ioctl(container.as_raw_fd(), GET_API_VERSION) })?;
        if v != b::VFIO_API_VERSION as i32 {
            return Err(io::Error::other(format!("VFIO API version {v} is not 0")));
        }
        // SAFETY: VFIO_CHECK_EXTENSION takes an integer argument by value.
        let ok = check(unsafe {
            libc::ioctl(
                container.as_raw_fd(),
                CHECK_EXTENSION,
                VFIO_NOIOMMU_IOMMU as libc::c_ulong,
            )
        })?;
        if ok == 0 {
            return Err(io::Error::other(
                "the VFIO container does not offer no-IOMMU mode (load vfio with enable_unsafe_noiommu_mode=1)",
            ));
        }
        let group = open_rw(group_node)?;
        let mut st = b::vfio_group_status {
            argsz: mem::size_of::<b::vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: the kernel writes a vfio_group_status into `st`, which is large enough.
        check(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_GET_STATUS, &mut st) })?;
        if st.flags & b::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other(
                "group is not viable: bind every member to vfio-pci or unbind it",
            ));
        }
        let cfd: libc::c_int = container.as_raw_fd();
        // SAFETY: GROUP_SET_CONTAINER reads one int (the container fd) from the pointer.
        check(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_SET_CONTAINER, &cfd) })?;
        // SAFETY: SET_IOMMU takes the IOMMU type by value.
        check(unsafe {
            libc::ioctl(
                container.as_raw_fd(),
                SET_IOMMU,
                VFIO_NOIOMMU_IOMMU as libc::c_ulong,
            )
        })?;
        let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
        // SAFETY: GROUP_GET_DEVICE_FD reads a NUL-terminated string; returns a new fd we own.
        let fd =
            check(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_GET_DEVICE_FD, cname.as_ptr()) })?;
        // SAFETY: `fd` is a fresh descriptor returned by the kernel and owned by nobody else.
        let device = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut info = b::vfio_device_info {
            argsz: mem::size_of::<b::vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel fills a vfio_device_info of the size given in argsz.
        check(unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_GET_INFO, &mut info) })?;
        if info.flags & b::VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(io::Error::other("VFIO device is not a PCI device"));
        }
        let mut regions = Vec::new();
        for index in 0..info.num_regions.min(9) {
            let mut ri = b::vfio_region_info {
                argsz: mem::size_of::<b::vfio_region_info>() as u32,
                index,
                ..Default::default()
            };
            // SAFETY: the kernel fills a vfio_region_info of the size given in argsz (caps,
            // if any, are not requested since argsz excludes them).
            let rc = unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_GET_REGION_INFO, &mut ri) };
            if rc < 0 {
                regions.push(RegionInfo::default());
            } else {
                regions.push(RegionInfo {
                    flags: ri.flags,
                    size: ri.size,
                    offset: ri.offset,
                });
            }
        }
        let mut irq_counts = [0u32; 3];
        for (index, slot) in irq_counts.iter_mut().enumerate() {
            let mut ii = b::vfio_irq_info {
                argsz: mem::size_of::<b::vfio_irq_info>() as u32,
                index: index as u32,
                ..Default::default()
            };
            // SAFETY: the kernel fills a vfio_irq_info of the size given in argsz.
            let rc = unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_GET_IRQ_INFO, &mut ii) };
            if rc == 0 && ii.flags & b::VFIO_IRQ_INFO_EVENTFD != 0 {
                *slot = ii.count;
            }
        }
        Ok(RawDevice {
            _container: container,
            _group: group,
            device,
            regions,
            irq_counts,
        })
    }

    pub fn config_offset(&self) -> io::Result<u64> {
        self.regions
            .get(VFIO_PCI_CONFIG_REGION_INDEX as usize)
            .map(|r| r.offset)
            .ok_or_else(|| io::Error::other("no config region"))
    }

    pub fn set_irqs(&self, index: u32, fds: &[i32]) -> io::Result<()> {
        set_irqs(&self.device, index, fds)
    }

    pub fn reset(&self) -> io::Result<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument.
        check(unsafe { libc::ioctl(self.device.as_raw_fd(), DEVICE_RESET) }).map(|_| ())
    }
}

/// VFIO_DEVICE_SET_IRQS: bind `fds` as triggers of vectors 0.. of `index`, or disable the
/// index when `fds` is empty.
pub fn set_irqs(device: &File, index: u32, fds: &[i32]) -> io::Result<()> {
    let hdr = mem::size_of::<b::vfio_irq_set>();
    let total = hdr + mem::size_of_val(fds);
    // u64 storage keeps the header suitably aligned.
    let mut buf = vec![0u64; total.div_ceil(8)];
    let set = b::vfio_irq_set {
        argsz: total as u32,
        flags: if fds.is_empty() {
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER
        } else {
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
        },
        index,
        start: 0,
        count: fds.len() as u32,
        ..Default::default()
    };
    let p = buf.as_mut_ptr() as *mut u8;
    // SAFETY: `buf` holds at least `total` bytes and is 8-byte aligned; we write the header
    // then the fd array right behind it, as the kernel's variable-length struct expects.
    unsafe {
        std::ptr::write_unaligned(p as *mut b::vfio_irq_set, set);
        std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, p.add(hdr), mem::size_of_val(fds));
    }
    // SAFETY: the buffer is a complete vfio_irq_set of argsz bytes.
    check(unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_SET_IRQS, p) }).map(|_| ())
}
