//! Virtual-to-physical translation through `/proc/self/pagemap`, for no-IOMMU mode only.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Base page size of the host.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p <= 0 {
        4096
    } else {
        p as usize
    }
}

/// Physical frame number of the page holding `vaddr`, or an error naming the cause.
pub fn pfn_of(pagemap: &File, vaddr: usize) -> io::Result<u64> {
    let ps = page_size();
    let mut buf = [0u8; 8];
    pagemap.read_exact_at(&mut buf, (vaddr / ps) as u64 * 8)?;
    let e = u64::from_le_bytes(buf);
    if e & (1 << 63) == 0 {
        return Err(io::Error::other(format!(
            "page at {vaddr:#x} is not present in RAM (touch and mlock it first)"
        )));
    }
    let pfn = e & ((1u64 << 55) - 1);
    if pfn == 0 {
        return Err(io::Error::other(
            "/proc/self/pagemap hides physical addresses: no-IOMMU mode needs CAP_SYS_ADMIN (run as root)",
        ));
    }
    Ok(pfn)
}

/// Physical address of `len` bytes at `vaddr`, which must be physically contiguous (true
/// within one hugepage; generally false across 4 KiB pages).
pub fn phys_contiguous(vaddr: usize, len: usize) -> io::Result<u64> {
    let ps = page_size();
    let f = File::open("/proc/self/pagemap")?;
    let first = vaddr / ps;
    let last = (vaddr + len.max(1) - 1) / ps;
    let pfn0 = pfn_of(&f, first * ps)?;
    for (i, page) in (first..=last).enumerate().skip(1) {
        let pfn = pfn_of(&f, page * ps)?;
        if pfn != pfn0 + i as u64 {
            return Err(io::Error::other(format!(
                "{len} bytes at {vaddr:#x} are not physically contiguous (page {i} breaks the run); use hugepage-backed DMA memory in no-IOMMU mode"
            )));
        }
    }
    Ok(pfn0 * ps as u64 + (vaddr % ps) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_page_translates_when_privileged() {
        let mut v = [0u8; 64];
        v[0] = 1;
        match phys_contiguous(v.as_ptr() as usize, 64) {
            Ok(pa) => assert_eq!(pa as usize % page_size(), v.as_ptr() as usize % page_size()),
            Err(e) => {
                // Unprivileged: the error must say what to do.
                assert!(
                    e.to_string().contains("root") || e.to_string().contains("mlock"),
                    "{e}"
                );
            }
        }
    }
}
