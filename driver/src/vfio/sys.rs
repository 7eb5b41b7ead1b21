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

/// The syscalls of the no-IOMMU open sequence, one typed method each: [`Kernel`] issues them,
/// a test scripts them (so the sequence and its error messages are tested without VFIO).
pub trait RawIoctls {
    /// Opens a VFIO node (container, group) read/write.
    fn open(&self, path: &std::path::Path) -> io::Result<File>;
    /// VFIO_GET_API_VERSION.
    fn api_version(&self, container: &File) -> io::Result<i32>;
    /// VFIO_CHECK_EXTENSION: non-zero when supported.
    fn check_extension(&self, container: &File, ext: u32) -> io::Result<i32>;
    /// VFIO_GROUP_GET_STATUS: the group's flags.
    fn group_status(&self, group: &File) -> io::Result<u32>;
    /// VFIO_GROUP_SET_CONTAINER.
    fn set_container(&self, group: &File, container: &File) -> io::Result<()>;
    /// VFIO_SET_IOMMU.
    fn set_iommu(&self, container: &File, kind: u32) -> io::Result<()>;
    /// VFIO_GROUP_GET_DEVICE_FD.
    fn device_fd(&self, group: &File, name: &std::ffi::CStr) -> io::Result<File>;
    /// VFIO_DEVICE_GET_INFO: (flags, regions, irqs).
    fn device_info(&self, device: &File) -> io::Result<(u32, u32, u32)>;
    /// VFIO_DEVICE_GET_REGION_INFO.
    fn region_info(&self, device: &File, index: u32) -> io::Result<RegionInfo>;
    /// VFIO_DEVICE_GET_IRQ_INFO: (flags, count).
    fn irq_info(&self, device: &File, index: u32) -> io::Result<(u32, u32)>;
}

/// The kernel's VFIO ioctls.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

impl RawIoctls for Kernel {
    fn open(&self, path: &std::path::Path) -> io::Result<File> {
        open_rw(path)
    }

    fn api_version(&self, container: &File) -> io::Result<i32> {
        // SAFETY: VFIO_GET_API_VERSION takes no argument.
        check(unsafe { libc::ioctl(container.as_raw_fd(), GET_API_VERSION) })
    }

    fn check_extension(&self, container: &File, ext: u32) -> io::Result<i32> {
        // SAFETY: VFIO_CHECK_EXTENSION takes an integer argument by value.
        check(unsafe { libc::ioctl(container.as_raw_fd(), CHECK_EXTENSION, ext as libc::c_ulong) })
    }

    fn group_status(&self, group: &File) -> io::Result<u32> {
        let mut st = b::vfio_group_status {
            argsz: mem::size_of::<b::vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: the kernel writes a vfio_group_status into `st`, which is large enough.
        check(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_GET_STATUS, &mut st) })?;
        Ok(st.flags)
    }

    fn set_container(&self, group: &File, container: &File) -> io::Result<()> {
        let cfd: libc::c_int = container.as_raw_fd();
        // SAFETY: GROUP_SET_CONTAINER reads one int (the container fd) from the pointer.
        check(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_SET_CONTAINER, &cfd) }).map(|_| ())
    }

    fn set_iommu(&self, container: &File, kind: u32) -> io::Result<()> {
        // SAFETY: SET_IOMMU takes the IOMMU type by value.
        check(unsafe { libc::ioctl(container.as_raw_fd(), SET_IOMMU, kind as libc::c_ulong) })
            .map(|_| ())
    }

    fn device_fd(&self, group: &File, name: &std::ffi::CStr) -> io::Result<File> {
        // SAFETY: GROUP_GET_DEVICE_FD reads a NUL-terminated string; returns a new fd we own.
        let fd =
            check(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_GET_DEVICE_FD, name.as_ptr()) })?;
        // SAFETY: `fd` is a fresh descriptor returned by the kernel and owned by nobody else.
        Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    }

    fn device_info(&self, device: &File) -> io::Result<(u32, u32, u32)> {
        let mut info = b::vfio_device_info {
            argsz: mem::size_of::<b::vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel fills a vfio_device_info of the size given in argsz.
        check(unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_GET_INFO, &mut info) })?;
        Ok((info.flags, info.num_regions, info.num_irqs))
    }

    fn region_info(&self, device: &File, index: u32) -> io::Result<RegionInfo> {
        let mut ri = b::vfio_region_info {
            argsz: mem::size_of::<b::vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: the kernel fills a vfio_region_info of the size given in argsz (caps, if
        // any, are not requested since argsz excludes them).
        check(unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_GET_REGION_INFO, &mut ri) })?;
        Ok(RegionInfo {
            flags: ri.flags,
            size: ri.size,
            offset: ri.offset,
        })
    }

    fn irq_info(&self, device: &File, index: u32) -> io::Result<(u32, u32)> {
        let mut ii = b::vfio_irq_info {
            argsz: mem::size_of::<b::vfio_irq_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: the kernel fills a vfio_irq_info of the size given in argsz.
        check(unsafe { libc::ioctl(device.as_raw_fd(), DEVICE_GET_IRQ_INFO, &mut ii) })?;
        Ok((ii.flags, ii.count))
    }
}

impl RawDevice {
    /// Opens `name` (the BDF string) through the no-IOMMU group node `group_node`.
    pub fn open_noiommu(
        vfio_dir: &std::path::Path,
        group_node: &std::path::Path,
        name: &str,
    ) -> io::Result<RawDevice> {
        Self::open_noiommu_with(&Kernel, vfio_dir, group_node, name)
    }

    /// The no-IOMMU open sequence over `sys`: container (API version, no-IOMMU extension),
    /// group (viable), group into container, IOMMU type, device fd (a PCI device), then its
    /// regions and interrupt counts.
    pub fn open_noiommu_with(
        sys: &impl RawIoctls,
        vfio_dir: &std::path::Path,
        group_node: &std::path::Path,
        name: &str,
    ) -> io::Result<RawDevice> {
        let container = sys.open(&vfio_dir.join("vfio"))?;
        let v = sys.api_version(&container)?;
        if v != b::VFIO_API_VERSION as i32 {
            return Err(io::Error::other(format!("VFIO API version {v} is not 0")));
        }
        if sys.check_extension(&container, VFIO_NOIOMMU_IOMMU)? == 0 {
            return Err(io::Error::other(
                "the VFIO container does not offer no-IOMMU mode (load vfio with enable_unsafe_noiommu_mode=1)",
            ));
        }
        let group = sys.open(group_node)?;
        if sys.group_status(&group)? & b::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other(
                "group is not viable: bind every member to vfio-pci or unbind it",
            ));
        }
        sys.set_container(&group, &container)?;
        sys.set_iommu(&container, VFIO_NOIOMMU_IOMMU)?;
        let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
        let device = sys.device_fd(&group, &cname)?;
        let (flags, num_regions, _) = sys.device_info(&device)?;
        if flags & b::VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(io::Error::other("VFIO device is not a PCI device"));
        }
        // A region VFIO cannot describe stays empty (size 0): mapping it is refused later.
        let regions = (0..num_regions.min(9))
            .map(|index| sys.region_info(&device, index).unwrap_or_default())
            .collect();
        let mut irq_counts = [0u32; 3];
        for (index, slot) in irq_counts.iter_mut().enumerate() {
            if let Ok((flags, count)) = sys.irq_info(&device, index as u32) {
                if flags & b::VFIO_IRQ_INFO_EVENTFD != 0 {
                    *slot = count;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::path::Path;

    /// Scripted ioctls: every handle is /dev/null; the answers come from the fields.
    struct Script {
        calls: RefCell<Vec<String>>,
        api: i32,
        noiommu_ext: i32,
        group_flags: u32,
        device_flags: u32,
        regions: Vec<Option<RegionInfo>>,
        irqs: [(u32, u32); 3],
    }

    impl Script {
        fn good() -> Script {
            Script {
                calls: RefCell::new(Vec::new()),
                api: b::VFIO_API_VERSION as i32,
                noiommu_ext: 1,
                group_flags: b::VFIO_GROUP_FLAGS_VIABLE,
                device_flags: b::VFIO_DEVICE_FLAGS_PCI,
                regions: vec![
                    Some(RegionInfo {
                        flags: VFIO_REGION_INFO_FLAG_MMAP,
                        size: 0x4000,
                        offset: 0,
                    }),
                    None,
                ],
                irqs: [
                    (b::VFIO_IRQ_INFO_EVENTFD, 1),
                    (0, 1),
                    (b::VFIO_IRQ_INFO_EVENTFD, 4),
                ],
            }
        }
        fn log(&self, c: String) {
            self.calls.borrow_mut().push(c);
        }
        fn null() -> io::Result<File> {
            File::open("/dev/null")
        }
    }

    impl RawIoctls for Script {
        fn open(&self, path: &Path) -> io::Result<File> {
            self.log(format!("open {}", path.display()));
            Self::null()
        }
        fn api_version(&self, _: &File) -> io::Result<i32> {
            self.log("GET_API_VERSION".into());
            Ok(self.api)
        }
        fn check_extension(&self, _: &File, ext: u32) -> io::Result<i32> {
            self.log(format!("CHECK_EXTENSION {ext}"));
            Ok(self.noiommu_ext)
        }
        fn group_status(&self, _: &File) -> io::Result<u32> {
            self.log("GROUP_GET_STATUS".into());
            Ok(self.group_flags)
        }
        fn set_container(&self, _: &File, _: &File) -> io::Result<()> {
            self.log("GROUP_SET_CONTAINER".into());
            Ok(())
        }
        fn set_iommu(&self, _: &File, kind: u32) -> io::Result<()> {
            self.log(format!("SET_IOMMU {kind}"));
            Ok(())
        }
        fn device_fd(&self, _: &File, name: &std::ffi::CStr) -> io::Result<File> {
            self.log(format!("GROUP_GET_DEVICE_FD {}", name.to_string_lossy()));
            Self::null()
        }
        fn device_info(&self, _: &File) -> io::Result<(u32, u32, u32)> {
            self.log("DEVICE_GET_INFO".into());
            Ok((self.device_flags, self.regions.len() as u32, 3))
        }
        fn region_info(&self, _: &File, index: u32) -> io::Result<RegionInfo> {
            self.log(format!("DEVICE_GET_REGION_INFO {index}"));
            self.regions[index as usize].ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
        }
        fn irq_info(&self, _: &File, index: u32) -> io::Result<(u32, u32)> {
            self.log(format!("DEVICE_GET_IRQ_INFO {index}"));
            Ok(self.irqs[index as usize])
        }
    }

    fn open(s: &Script) -> io::Result<RawDevice> {
        RawDevice::open_noiommu_with(
            s,
            Path::new("/fake/dev/vfio"),
            Path::new("/fake/dev/vfio/noiommu-3"),
            "0000:00:04.0",
        )
    }

    #[test]
    fn noiommu_open_sequence() {
        let s = Script::good();
        let d = open(&s).unwrap();
        let ni = VFIO_NOIOMMU_IOMMU;
        assert_eq!(
            *s.calls.borrow(),
            [
                "open /fake/dev/vfio/vfio".to_string(),
                "GET_API_VERSION".into(),
                format!("CHECK_EXTENSION {ni}"),
                "open /fake/dev/vfio/noiommu-3".into(),
                "GROUP_GET_STATUS".into(),
                "GROUP_SET_CONTAINER".into(),
                format!("SET_IOMMU {ni}"),
                "GROUP_GET_DEVICE_FD 0000:00:04.0".into(),
                "DEVICE_GET_INFO".into(),
                "DEVICE_GET_REGION_INFO 0".into(),
                "DEVICE_GET_REGION_INFO 1".into(),
                "DEVICE_GET_IRQ_INFO 0".into(),
                "DEVICE_GET_IRQ_INFO 1".into(),
                "DEVICE_GET_IRQ_INFO 2".into(),
            ]
        );
        assert_eq!(d.regions.len(), 2);
        assert_eq!(d.regions[0].size, 0x4000);
        assert_eq!(d.regions[1].size, 0, "an undescribable region stays empty");
        assert_eq!(d.irq_counts, [1, 0, 4], "MSI without EVENTFD counts 0");
    }

    #[test]
    fn noiommu_open_refusals_name_the_fix_and_stop_early() {
        let mut s = Script::good();
        s.group_flags = 0;
        let e = open(&s).unwrap_err();
        assert!(
            e.to_string()
                .contains("not viable: bind every member to vfio-pci"),
            "{e}"
        );
        assert!(
            !s.calls.borrow().iter().any(|c| c == "GROUP_SET_CONTAINER"),
            "a group that is not viable is never attached"
        );

        let mut s = Script::good();
        s.noiommu_ext = 0;
        let e = open(&s).unwrap_err();
        assert!(
            e.to_string().contains("enable_unsafe_noiommu_mode=1"),
            "{e}"
        );
        assert_eq!(s.calls.borrow().len(), 3, "the group is not even opened");

        let mut s = Script::good();
        s.api = 1;
        assert!(open(&s).unwrap_err().to_string().contains("API version 1"));

        let mut s = Script::good();
        s.device_flags = 0;
        let e = open(&s).unwrap_err();
        assert!(e.to_string().contains("not a PCI device"), "{e}");
    }
}
