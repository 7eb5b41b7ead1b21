//! Guest side of the VFIO guest tier (tests/tests/vfio_vm.rs): runs as a program inside the
//! QEMU guest's initramfs, after tests/vm/init has bound the edu device to vfio-pci.
//!
//! Usage: `vfio-vm-guest --bdf 0000:00:02.0 --mode iommu|noiommu`. Prints one
//! `NETRX-CHECK <name>: ok|FAIL <detail>` line per check and exits 0 only when all passed.

use std::os::fd::AsRawFd;
use std::process::ExitCode;

const VFIO_GET_API_VERSION: libc::c_ulong = 0x3b64;
const VFIO_CHECK_EXTENSION: libc::c_ulong = 0x3b65;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;

struct Checks {
    failed: usize,
}

impl Checks {
    fn check(&mut self, name: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => println!("NETRX-CHECK {name}: ok {detail}"),
            Err(detail) => {
                self.failed += 1;
                println!("NETRX-CHECK {name}: FAIL {detail}");
            }
        }
    }
}

fn container() -> Result<String, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vfio/vfio")
        .map_err(|e| format!("open /dev/vfio/vfio: {e}"))?;
    // SAFETY: argument-less VFIO ioctls on a file descriptor we own.
    let (version, type1) = unsafe {
        (
            libc::ioctl(f.as_raw_fd(), VFIO_GET_API_VERSION),
            libc::ioctl(f.as_raw_fd(), VFIO_CHECK_EXTENSION, VFIO_TYPE1V2_IOMMU),
        )
    };
    if version != 0 {
        return Err(format!("VFIO API version {version}, expected 0"));
    }
    Ok(format!("api 0, type1v2 {}", type1 == 1))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let bdf = arg("--bdf").unwrap_or_default();
    let mode = arg("--mode").unwrap_or_else(|| "iommu".into());
    println!("NETRX-GUEST: bdf {bdf} mode {mode}");
    let mut c = Checks { failed: 0 };
    c.check("container", container());
    if c.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
