//! Guest side of the VFIO guest tier (tests/tests/vfio_vm.rs, docs/testing.md): runs inside
//! the QEMU guest's initramfs after tests/vm/init has loaded the VFIO modules and bound the
//! edu device to vfio-pci.
//!
//! Usage: `vfio-vm-guest --bdf 0000:00:02.0 --mode iommu|noiommu`. Prints one
//! `NETRX-CHECK <name>: ok|FAIL <detail>` line per check (and `NETRX-NOTE` lines for what could
//! not be checked) and exits 0 only when every check passed.
//!
//! - `iommu` (emulated Intel VT-d): opens edu through the driver crate's VFIO layer
//!   ([`ioat_driver::vfio`]), maps BAR0, reads the ID, checks liveness, copies a 4 KiB buffer
//!   from our DMA memory ([`DmaRegion`] mapped by [`VfioMapper`]) into the device and back with
//!   MSI completions delivered to an eventfd, then checks that a DMA to an unmapped IOVA is
//!   refused by the IOMMU: a DMAR fault in the kernel log and no byte of our memory changed.
//! - `noiommu` (no IOMMU in the VM): the same through a no-IOMMU VFIO group when the kernel
//!   offers one (CONFIG_VFIO_NOIOMMU); otherwise reports why not, then checks the no-IOMMU
//!   address translation ([`ioat_driver::vfio::pagemap`]) against the real device, driving edu
//!   through its sysfs BAR with physical addresses from /proc/self/pagemap.

#[path = "../edu.rs"]
#[allow(dead_code)]
mod edu;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edu::{Direction, Edu, IRQ_DMA};
use ioat_driver::discover::Bdf;
use ioat_driver::dma::{DmaBuffer, DmaMapper, DmaRegion, HugePages};
use ioat_driver::regs::RegisterAccess;
use ioat_driver::vfio::{pagemap, EventFd, IrqKind, VfioDevice, VfioOpenOptions};

/// Bytes per DMA buffer (one page) ...
const LEN: usize = 4096;
/// ... and per transfer (edu's usable window is 4095 bytes on QEMU 7.2, see edu.rs).
const XFER: usize = 2048;
/// Guest time is TCG time: generous, but bounded.
const IRQ_WAIT: Duration = Duration::from_secs(10);

type Res = Result<String, String>;

struct Checks {
    failed: usize,
}

impl Checks {
    fn check(&mut self, name: &str, result: Res) -> bool {
        match result {
            Ok(detail) => {
                println!("NETRX-CHECK {name}: ok {detail}");
                true
            }
            Err(detail) => {
                self.failed += 1;
                println!("NETRX-CHECK {name}: FAIL {detail}");
                false
            }
        }
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..LEN)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// Reads what a raw DMA buffer holds.
fn buffer_bytes(b: &DmaBuffer) -> Vec<u8> {
    let mut v = vec![0u8; b.len()];
    // SAFETY: `b` owns `b.len()` bytes at `as_ptr()`; no transfer targets it while we read
    // (every transfer was waited for), and only raw-pointer copies touch it.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), v.as_mut_ptr(), v.len()) };
    v
}

fn fill_buffer(b: &DmaBuffer, byte: u8) {
    // SAFETY: as in `buffer_bytes`; writes stay inside the buffer.
    unsafe { std::ptr::write_bytes(b.as_ptr(), byte, b.len()) };
}

/// New kernel log records (/dev/kmsg), from the point this reader was opened.
struct KernelLog {
    f: std::fs::File,
}

impl KernelLog {
    fn open() -> Result<Self, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .map_err(|e| format!("open /dev/kmsg: {e}"))?;
        // SAFETY: lseek on a descriptor we own; SEEK_END on /dev/kmsg skips old records.
        unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) };
        Ok(KernelLog { f })
    }

    /// Collects new records for up to `wait`, stopping early once `done` says so.
    fn collect(&mut self, wait: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let start = Instant::now();
        let mut lines = Vec::new();
        loop {
            let mut buf = [0u8; 2048];
            match self.f.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let msg = rec.split_once(';').map(|x| x.1).unwrap_or(&rec);
                    lines.push(msg.lines().next().unwrap_or("").to_string());
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue, // overwritten
                _ => {}
            }
            if done(&lines) || start.elapsed() >= wait {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs one transfer and waits for its completion: by MSI on `irq` when given, else by polling.
fn transfer<R: RegisterAccess>(
    dev: &Edu<R>,
    irq: Option<&EventFd>,
    dir: Direction,
    iova: u64,
) -> Result<Duration, String> {
    let start = Instant::now();
    dev.start_dma(dir, iova, 0, XFER, irq.is_some())
        .map_err(|e| e.to_string())?;
    if let Some(fd) = irq {
        match fd.wait(IRQ_WAIT) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(format!(
                    "no MSI on the eventfd within {IRQ_WAIT:?} (irq status {:#x}, busy {})",
                    dev.irq_status(),
                    dev.dma_busy()
                ))
            }
            Err(e) => return Err(format!("eventfd: {e}")),
        }
        let st = dev.irq_status();
        if st & IRQ_DMA == 0 {
            return Err(format!(
                "MSI arrived but irq status is {st:#x}, not DMA done"
            ));
        }
        dev.ack_irq(IRQ_DMA);
        if dev.dma_busy() {
            return Err("MSI arrived while the DMA command still shows busy".into());
        }
    } else {
        dev.wait_idle(IRQ_WAIT, Duration::from_millis(5))
            .map_err(|e| e.to_string())?;
    }
    Ok(start.elapsed())
}

/// Copies a pattern from `src` into the device and back out to `dst`, then compares.
fn round_trip<R: RegisterAccess>(
    dev: &Edu<R>,
    irq: Option<&EventFd>,
    src: &DmaRegion,
    dst: &DmaRegion,
    seed: u8,
) -> Res {
    let want = pattern(seed);
    src.write(0, &want).map_err(|e| e.to_string())?;
    dst.fill_bytes(0, LEN, 0).map_err(|e| e.to_string())?;
    let want = &want[..XFER];
    let t1 = transfer(dev, irq, Direction::ToDevice, src.iova())?;
    let t2 = transfer(dev, irq, Direction::ToRam, dst.iova())?;
    let all = dst.to_vec(0, LEN).map_err(|e| e.to_string())?;
    if all[XFER..].iter().any(|&b| b != 0) {
        return Err(format!(
            "bytes beyond the {XFER}-byte transfer changed in the destination"
        ));
    }
    let got = &all[..XFER];
    if got != want {
        let at = got
            .iter()
            .zip(want.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "copy mismatch at byte {at}: got {:#04x}, want {:#04x}",
            got[at], want[at]
        ));
    }
    Ok(format!(
        "{XFER} B {:#x} -> device -> {:#x} verified ({} ms + {} ms incl. the device's 100 ms start delay, {})",
        src.iova(),
        dst.iova(),
        t1.as_millis(),
        t2.as_millis(),
        if irq.is_some() { "MSI eventfd" } else { "polled" }
    ))
}

fn open_options(noiommu: bool) -> VfioOpenOptions {
    let mut o = VfioOpenOptions::device(edu::VENDOR_ID, edu::DEVICE_ID);
    // edu's default DMA mask is 28 bits; our driver writes 32-bit addresses.
    o.iova_window = (1 << 20)..(1 << 28);
    o.memlock_needed = 1 << 20;
    if noiommu {
        // SAFETY: this is a throw-away VM whose only job is this test; the device only
        // reaches buffers we mapped (and the deliberate fault probe is skipped in this mode).
        o = unsafe { o.i_understand_noiommu() };
    }
    o
}

/// The full VFIO sequence: open, BAR, ID, liveness, MSI, DMA round trip, fault probe.
fn vfio_sequence(c: &mut Checks, bdf: &Bdf, noiommu: bool) {
    let dev = match VfioDevice::open(bdf, &open_options(noiommu)) {
        Ok(d) => d,
        Err(e) => {
            c.check("vfio-open", Err(e.to_string()));
            return;
        }
    };
    let pf = dev.preflight();
    c.check(
        "vfio-open",
        if dev.is_noiommu() == noiommu {
            Ok(format!(
                "{} group {} ({}), noiommu {}",
                bdf,
                pf.group,
                pf.group_node.display(),
                dev.is_noiommu()
            ))
        } else {
            Err(format!("opened with noiommu {}", dev.is_noiommu()))
        },
    );
    // The pre-flight refuses a device that is not what the caller expects (edu is no I/OAT) ...
    c.check(
        "preflight-wrong-device",
        match VfioDevice::open(bdf, &VfioOpenOptions::ioat()) {
            Ok(_) => Err("opened edu as an I/OAT device".into()),
            Err(e) => Ok(format!("refused: {e}")),
        },
    );
    // ... and a second open of a group this process holds fails with a message, not a hang.
    c.check(
        "vfio-group-busy",
        match VfioDevice::open(bdf, &open_options(noiommu)) {
            Ok(_) => Err("the group was opened twice".into()),
            Err(e) => Ok(format!("refused: {e}")),
        },
    );
    if let Err(e) = dev.enable_bus_master(true) {
        c.check("bus-master", Err(e.to_string()));
        return;
    }
    let bar = match dev.map_bar(0) {
        Ok(b) => b,
        Err(e) => {
            c.check("bar0", Err(e.to_string()));
            return;
        }
    };
    let edu = match Edu::new(bar.clone()) {
        Ok(e) => e,
        Err(e) => {
            c.check("id", Err(e.to_string()));
            return;
        }
    };
    let id = edu.id();
    c.check(
        "id",
        if id == 0x0100_00ed {
            Ok(format!("{id:#010x} (BAR0 {} bytes)", bar.len()))
        } else {
            Err(format!("{id:#010x}, expected 0x010000ed"))
        },
    );
    c.check(
        "liveness",
        edu.check_liveness(0x5a5a_0f0f)
            .and_then(|_| edu.check_liveness(0x1234_5678))
            .map(|_| "0x04 returns the inverse".into())
            .map_err(|e| e.to_string()),
    );
    let irqs = match dev.enable_irqs(IrqKind::Msi, 1) {
        Ok(v) => {
            c.check("msi", Ok(format!("{} vector bound to an eventfd", v.len())));
            v
        }
        Err(e) => {
            c.check("msi", Err(e.to_string()));
            return;
        }
    };
    let mapper = dev.mapper();
    let dyn_mapper: Arc<dyn DmaMapper> = mapper.clone();
    let regions = (
        DmaRegion::alloc_with(dyn_mapper.clone(), LEN, HugePages::Never),
        DmaRegion::alloc_with(dyn_mapper.clone(), LEN, HugePages::Never),
    );
    let (src, dst) = match regions {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            c.check("dma-map", Err(e.to_string()));
            return;
        }
    };
    c.check(
        "dma-map",
        Ok(format!(
            "2 x {LEN} B at IOVA {:#x}, {:#x} ({} mappings)",
            src.iova(),
            dst.iova(),
            mapper.mappings()
        )),
    );
    c.check(
        "dma-roundtrip",
        round_trip(&edu, Some(&irqs[0]), &src, &dst, 7),
    );

    if noiommu {
        println!("NETRX-NOTE fault probe skipped: without an IOMMU nothing refuses a stray DMA");
    } else {
        c.check(
            "iommu-refuses-unmapped",
            fault_probe(&edu, &irqs[0], &dyn_mapper, &src, &dst),
        );
        // The domain keeps working after the fault.
        c.check(
            "dma-after-fault",
            round_trip(&edu, Some(&irqs[0]), &src, &dst, 99),
        );
    }

    let _ = dev.disable_irqs(IrqKind::Msi);
    let _ = dev.disable_bus_master();
    drop((src, dst));
    c.check(
        "dma-unmap",
        if mapper.mappings() == 0 {
            Ok("every mapping released".into())
        } else {
            Err(format!("{} mappings left", mapper.mappings()))
        },
    );
}

/// Maps a buffer, unmaps it, then has the device write to the stale IOVA and to an IOVA never
/// mapped: the IOMMU must refuse both (DMAR fault), and no byte of our memory may change.
fn fault_probe<R: RegisterAccess>(
    edu: &Edu<R>,
    irq: &EventFd,
    mapper: &Arc<dyn DmaMapper>,
    src: &DmaRegion,
    dst: &DmaRegion,
) -> Res {
    const SENTINEL: u8 = 0xa5;
    let victim = DmaBuffer::alloc(LEN, HugePages::Never).map_err(|e| e.to_string())?;
    fill_buffer(&victim, SENTINEL);
    // SAFETY: `victim` outlives the mapping (unmapped right below, dropped at the end), and is
    // only reached through raw-pointer copies.
    let stale = unsafe { mapper.map(victim.as_ptr(), victim.len()) }.map_err(|e| e.to_string())?;
    mapper
        .unmap(stale, victim.len())
        .map_err(|e| e.to_string())?;
    let never = 0x0ff0_0000u64; // inside the 28-bit window, far above what the test maps
    let src_before = src.to_vec(0, LEN).map_err(|e| e.to_string())?;
    let dst_before = dst.to_vec(0, LEN).map_err(|e| e.to_string())?;

    let mut log = KernelLog::open()?;
    // The device buffer holds the last pattern copied in; write it to both bad IOVAs.
    for iova in [stale, never] {
        transfer(edu, Some(irq), Direction::ToRam, iova)
            .map_err(|e| format!("DMA to unmapped IOVA {iova:#x}: {e}"))?;
    }
    let faults = |l: &[String]| {
        l.iter()
            .filter(|m| m.contains("DMAR") && m.to_ascii_lowercase().contains("fault"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let lines = log.collect(Duration::from_secs(3), |l| {
        let f = faults(l);
        let hex = |a: u64| format!("{a:x}");
        f.iter().any(|m| m.contains(&hex(stale))) && f.iter().any(|m| m.contains(&hex(never)))
    });
    let ours = |m: &String| m.contains(&format!("{stale:x}")) || m.contains(&format!("{never:x}"));
    let f: Vec<String> = faults(&lines).into_iter().filter(ours).collect();

    if buffer_bytes(&victim).iter().any(|&b| b != SENTINEL) {
        return Err(format!(
            "the device wrote through stale IOVA {stale:#x}: the unmapped buffer changed"
        ));
    }
    if src.to_vec(0, LEN).map_err(|e| e.to_string())? != src_before
        || dst.to_vec(0, LEN).map_err(|e| e.to_string())? != dst_before
    {
        return Err("a mapped buffer changed during the fault probe".into());
    }
    if f.is_empty() {
        return Err(format!(
            "no DMAR fault in the kernel log after DMA to {stale:#x} and {never:#x} (log: {:?})",
            lines
        ));
    }
    Ok(format!(
        "writes to stale {stale:#x} and never-mapped {never:#x} left memory intact; kernel: {}",
        f.join(" | ")
    ))
}

/// BAR0 through sysfs `resource0`, for the no-IOMMU check without VFIO.
struct SysfsBar {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: MMIO through volatile accesses only; no references into the mapping exist.
unsafe impl Send for SysfsBar {}
// SAFETY: as above.
unsafe impl Sync for SysfsBar {}

impl SysfsBar {
    fn open(bdf: &Bdf) -> Result<Self, String> {
        let path = format!("/sys/bus/pci/devices/{bdf}/resource0");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {path}: {e}"))?;
        let len = 4096;
        // SAFETY: mapping the first page of the BAR file; checked below, unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(SysfsBar {
            ptr: p as *mut u8,
            len,
        })
    }
}

impl Drop for SysfsBar {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

impl RegisterAccess for SysfsBar {
    fn read8(&self, _: u32) -> u8 {
        u8::MAX
    }
    fn read16(&self, _: u32) -> u16 {
        u16::MAX
    }
    fn read32(&self, off: u32) -> u32 {
        if off % 4 != 0 || off as usize + 4 > self.len {
            return u32::MAX;
        }
        // SAFETY: aligned and in bounds (checked) inside our live mapping.
        unsafe { std::ptr::read_volatile(self.ptr.add(off as usize) as *const u32) }
    }
    fn write8(&self, _: u32, _: u8) {}
    fn write16(&self, _: u32, _: u16) {}
    fn write32(&self, off: u32, val: u32) {
        if off % 4 == 0 && off as usize + 4 <= self.len {
            // SAFETY: aligned and in bounds (checked) inside our live mapping.
            unsafe { std::ptr::write_volatile(self.ptr.add(off as usize) as *mut u32, val) }
        }
    }
    fn config_read32(&self, _: u16) -> u32 {
        u32::MAX
    }
    fn config_write32(&self, _: u16, _: u32) {}
}

/// Enables memory decoding and bus mastering through sysfs (no driver is bound).
fn sysfs_enable(bdf: &Bdf) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let dir = format!("/sys/bus/pci/devices/{bdf}");
    std::fs::write(format!("{dir}/enable"), "1").map_err(|e| format!("{dir}/enable: {e}"))?;
    let cfg = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("{dir}/config"))
        .map_err(|e| format!("{dir}/config: {e}"))?;
    let mut cmd = [0u8; 2];
    cfg.read_exact_at(&mut cmd, 4)
        .map_err(|e| format!("config read: {e}"))?;
    let v = u16::from_le_bytes(cmd) | 0x6; // MEMORY | BUS MASTER
    cfg.write_all_at(&v.to_le_bytes(), 4)
        .map_err(|e| format!("config write: {e}"))
}

/// The no-IOMMU mapper's translation (pagemap physical addresses) against the real device.
fn pagemap_sequence(c: &mut Checks, bdf: &Bdf) {
    let r = (|| -> Res {
        sysfs_enable(bdf)?;
        let edu = Edu::new(SysfsBar::open(bdf)?).map_err(|e| e.to_string())?;
        edu.check_liveness(0xc0ff_ee00).map_err(|e| e.to_string())?;
        let src = DmaBuffer::alloc(LEN, HugePages::Never).map_err(|e| e.to_string())?;
        let dst = DmaBuffer::alloc(LEN, HugePages::Never).map_err(|e| e.to_string())?;
        let want = pattern(42);
        // SAFETY: `src` owns LEN bytes; raw-pointer copy.
        unsafe { std::ptr::copy_nonoverlapping(want.as_ptr(), src.as_ptr(), LEN) };
        fill_buffer(&dst, 0);
        let pa = |b: &DmaBuffer| {
            pagemap::phys_contiguous(b.as_ptr() as usize, LEN).map_err(|e| e.to_string())
        };
        let (ps, pd) = (pa(&src)?, pa(&dst)?);
        transfer(&edu, None, Direction::ToDevice, ps)?;
        transfer(&edu, None, Direction::ToRam, pd)?;
        let got = buffer_bytes(&dst);
        if got[..XFER] != want[..XFER] || got[XFER..].iter().any(|&b| b != 0) {
            return Err(format!(
                "device copy via physical addresses {ps:#x} -> {pd:#x} does not match: the pagemap translation is wrong"
            ));
        }
        Ok(format!(
            "{XFER} B via physical addresses {ps:#x} -> device -> {pd:#x} verified (sysfs BAR, polled)"
        ))
    })();
    c.check("noiommu-pagemap-dma", r);
}

fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct; failure only leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mode = arg("--mode").unwrap_or_else(|| "iommu".into());
    let bdf: Bdf = match arg("--bdf").unwrap_or_default().parse() {
        Ok(b) => b,
        Err(e) => {
            println!("NETRX-CHECK args: FAIL {e}; usage: vfio-vm-guest --bdf DDDD:BB:DD.F --mode iommu|noiommu");
            return ExitCode::FAILURE;
        }
    };
    println!("NETRX-GUEST: bdf {bdf} mode {mode}");
    raise_memlock();
    let mut c = Checks { failed: 0 };
    match mode.as_str() {
        "iommu" => vfio_sequence(&mut c, &bdf, false),
        "noiommu" => {
            let vfio_bound = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver"))
                .map(|p| p.ends_with("vfio-pci"))
                .unwrap_or(false);
            if vfio_bound {
                vfio_sequence(&mut c, &bdf, true);
            } else {
                // What our layer says when asked for a no-IOMMU device it cannot have.
                let why = VfioDevice::open(&bdf, &open_options(true))
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "opened unexpectedly".into());
                println!(
                    "NETRX-NOTE no-IOMMU VFIO not available in this kernel; our layer says: {why}"
                );
                pagemap_sequence(&mut c, &bdf);
            }
        }
        other => {
            c.check("args", Err(format!("unknown mode {other}")));
        }
    }
    if c.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
