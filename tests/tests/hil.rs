//! Hardware-in-loop tests: the driver's functional test bodies (`ioat_driver::conformance`,
//! the same ones the model suite runs) against a real I/OAT channel through VFIO.
//!
//! Every test here is `#[ignore]`d: the project's machines have no I/OAT hardware, so a normal
//! `cargo test` lists them as ignored and never counts them as passed. Run them on a machine with
//! an I/OAT function bound to vfio-pci (`ioat-ctl bind 0000:00:04.0`):
//!
//! ```text
//! IOAT_HIL_BDF=0000:00:04.0 cargo test --release -p netrx-tests --test hil -- --ignored
//! ```
//!
//! Optionally `IOAT_HIL_CHANNEL` (default 0), `IOAT_HIL_SEED`, and `IOAT_HIL_UNSAFE_NOIOMMU=1` to
//! accept a no-IOMMU group. Run with `--ignored` but without `IOAT_HIL_BDF`, every test fails
//! naming the variable: asking for the hardware tier without hardware is an error, not a skip.
//!
//! A VFIO group can be opened once per process, so the tests share one opened device and run
//! one at a time behind a lock.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use ioat_driver::conformance::{self, Harness};
use ioat_driver::discover::Bdf;
use ioat_driver::regs::RegisterAccess;
use ioat_driver::vfio::{VfioDevice, VfioOpenOptions};
use ioat_driver::{ChannelConfig, Device};

type Regs = Arc<dyn RegisterAccess>;

struct Hil {
    _vfio: VfioDevice,
    dev: Device<Regs>,
    chan: u32,
    seed: u64,
}

fn open() -> Result<Hil, String> {
    let bdf_s = std::env::var("IOAT_HIL_BDF").map_err(|_| "unset".to_string())?;
    let bdf: Bdf = bdf_s.parse().map_err(|e| format!("IOAT_HIL_BDF: {e}"))?;
    let mut o = VfioOpenOptions::ioat();
    if std::env::var("IOAT_HIL_UNSAFE_NOIOMMU").as_deref() == Ok("1") {
        // SAFETY: the operator opted in with IOAT_HIL_UNSAFE_NOIOMMU=1 (documented above and
        // in docs/operations.md): the device can DMA to any physical address.
        o = unsafe { o.i_understand_noiommu() };
    }
    let vfio = VfioDevice::open(&bdf, &o).map_err(|e| e.to_string())?;
    vfio.enable_bus_master(true).map_err(|e| e.to_string())?;
    let bar = vfio.map_bar(0).map_err(|e| e.to_string())?;
    let regs: Regs = bar;
    let dev = Device::open(regs, vfio.mapper()).map_err(|e| format!("{bdf}: {e}"))?;
    let chan = std::env::var("IOAT_HIL_CHANNEL")
        .ok()
        .map(|s| {
            s.parse::<u32>()
                .map_err(|e| format!("IOAT_HIL_CHANNEL: {e}"))
        })
        .transpose()?
        .unwrap_or(0);
    let seed = std::env::var("IOAT_HIL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x10a7_2026);
    Ok(Hil {
        _vfio: vfio,
        dev,
        chan,
        seed,
    })
}

/// The shared device. Panics when IOAT_HIL_BDF is unset (these tests run only when asked for
/// with `--ignored`, and then a device was promised) or the device cannot be opened.
fn hil(test: &str) -> MutexGuard<'static, Hil> {
    if std::env::var_os("IOAT_HIL_BDF").is_none() {
        panic!(
            "{test}: IOAT_HIL_BDF is not set; run the hardware-in-loop tests with \
             IOAT_HIL_BDF=<BDF bound to vfio-pci> cargo test --release -p netrx-tests --test hil -- --ignored"
        );
    }
    static CELL: OnceLock<Result<Mutex<Hil>, String>> = OnceLock::new();
    match CELL.get_or_init(|| open().map(Mutex::new)) {
        Ok(m) => m.lock().unwrap_or_else(|p| p.into_inner()),
        Err(e) => panic!("IOAT_HIL_BDF is set but the device cannot be used: {e}"),
    }
}

fn check<T>(r: Result<T, conformance::Failure>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
#[ignore = "hardware-in-loop: needs an I/OAT function bound to vfio-pci; run: IOAT_HIL_BDF=0000:00:04.0 cargo test --release -p netrx-tests --test hil -- --ignored"]
fn hil_device_identity() {
    let h = hil("hil_device_identity");
    let info = h.dev.info();
    println!(
        "{}: {info}",
        std::env::var("IOAT_HIL_BDF").unwrap_or_default()
    );
    assert!(info.version.0 >= 0x30, "CBVER {} < 3.0", info.version);
    assert!(info.chancnt >= 1);
    assert!(
        h.chan < info.chancnt,
        "IOAT_HIL_CHANNEL {} >= CHANCNT {}",
        h.chan,
        info.chancnt
    );
}

#[test]
#[ignore = "hardware-in-loop: needs an I/OAT function bound to vfio-pci; run: IOAT_HIL_BDF=0000:00:04.0 cargo test --release -p netrx-tests --test hil -- --ignored"]
fn hil_submission_rules() {
    let h = hil("hil_submission_rules");
    let mut hs = check(
        Harness::new(&h.dev, h.chan, ChannelConfig::default(), 1 << 20, h.seed),
        "opening the harness",
    );
    check(conformance::submission_rules(&mut hs), "submission rules");
}

#[test]
#[ignore = "hardware-in-loop: needs an I/OAT function bound to vfio-pci; run: IOAT_HIL_BDF=0000:00:04.0 cargo test --release -p netrx-tests --test hil -- --ignored"]
fn hil_random_single_ops() {
    let h = hil("hil_random_single_ops");
    check(
        conformance::random_single_ops(&h.dev, h.chan, h.seed, 300, 20_000),
        "random single copies/fills",
    );
}

#[test]
#[ignore = "hardware-in-loop: needs an I/OAT function bound to vfio-pci; run: IOAT_HIL_BDF=0000:00:04.0 cargo test --release -p netrx-tests --test hil -- --ignored"]
fn hil_hardware_suite_with_dmacount_wrap() {
    let h = hil("hil_hardware_suite_with_dmacount_wrap");
    // 70,000 ops through a 64-slot ring: the ring wraps >1000 times and DMACOUNT wraps.
    let r = check(
        conformance::hardware_suite(&h.dev, h.chan, h.seed, 200, 100, 70_000),
        "hardware suite",
    );
    println!("{r:?}");
    assert!(r.stress.dmacount_wraps >= 1, "{r:?}");
}

#[test]
#[ignore = "hardware-in-loop: needs an I/OAT function bound to vfio-pci; run: IOAT_HIL_BDF=0000:00:04.0 cargo test --release -p netrx-tests --test hil -- --ignored"]
fn hil_unmapped_source_is_reported_once() {
    let h = hil("hil_unmapped_source_is_reported_once");
    let mut hs = check(
        Harness::new(
            &h.dev,
            h.chan,
            ChannelConfig::default(),
            1 << 20,
            h.seed ^ 7,
        ),
        "opening the harness",
    );
    // Rule E10: the device may or may not detect it; either way one report, channel usable.
    let r = check(conformance::unmapped_source(&mut hs), "unmapped source");
    println!("copy from an unmapped IOVA: {r:?}");
}

#[test]
#[ignore = "hardware-in-loop: needs an I/OAT function bound to vfio-pci; run: IOAT_HIL_BDF=0000:00:04.0 cargo test --release -p netrx-tests --test hil -- --ignored"]
fn hil_channel_reopens_after_close() {
    let h = hil("hil_channel_reopens_after_close");
    for i in 0..3 {
        let mut hs = check(
            Harness::new(
                &h.dev,
                h.chan,
                ChannelConfig::default(),
                64 << 10,
                h.seed + i,
            ),
            "reopening the channel",
        );
        check(hs.copy_case(1, 3, 4093), "copy after reopen");
    }
}
