//! Functional tests of the driver core against the strict device model. The bodies live in
//! `ioat_driver::conformance` so the hardware-in-loop tests can run them on a real device.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use ioat_driver::conformance::{self, Harness, Op};
use ioat_driver::model::{Fault, ModelConfig, ModelDevice, Preset, Timing};
use ioat_driver::regs::{chanerr, ChanState};
use ioat_driver::{
    ChannelConfig, Device, DmaRegion, Error, HugePages, MapError, OpError, SubmitError,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

type Dev = Device<Arc<ModelDevice>>;

fn open(cfg: ModelConfig) -> (Arc<ModelDevice>, Dev) {
    let m = ModelDevice::new(cfg);
    let d = Device::open(m.clone(), m.mapper()).expect("open model device");
    (m, d)
}

/// Every test ends with this: the strict model saw no misuse.
fn assert_clean(m: &ModelDevice) {
    let v = m.violations();
    assert!(
        v.is_empty(),
        "strict-mode violations:\n{}",
        v.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn skx_small_xfer() -> ModelConfig {
    // 4 KiB per descriptor, so copies above 4 KiB are split.
    ModelConfig::preset(Preset::Skx).xfercap_log(12)
}

#[test]
fn open_reads_and_validates_general_registers() {
    for p in [Preset::Skx, Preset::Bdx, Preset::Icx] {
        let (m, d) = open(ModelConfig::preset(p));
        let info = d.info();
        assert_eq!(info.version.0, m.config().cbver);
        assert_eq!(info.chancnt, 1);
        assert!(info.has_fill());
        assert_clean(&m);
    }
    let m = ModelDevice::new(ModelConfig::preset(Preset::Skx).cbver(0x22));
    assert!(matches!(
        Device::open(m.clone(), m.mapper()),
        Err(Error::UnsupportedVersion(_))
    ));
    let m = ModelDevice::new(ModelConfig::preset(Preset::Skx).xfercap_log(5));
    let e = Device::open(m.clone(), m.mapper()).unwrap_err();
    assert_eq!(e, Error::BadXferCap(5));
    assert!(e.to_string().contains("at least 12"), "{e}");
    let m = ModelDevice::new(ModelConfig::preset(Preset::Skx).xfercap_log(0));
    let d = Device::open(m.clone(), m.mapper()).unwrap();
    assert_eq!(d.info().max_xfer, 1 << 32);
    assert_eq!(d.info().piece_size(), 1 << 31);
}

#[test]
fn channel_numbers_and_exclusivity() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx).chancnt(2));
    let c0 = d.channel(0, ChannelConfig::default()).unwrap();
    assert_eq!(
        d.channel(0, ChannelConfig::default()).unwrap_err(),
        Error::ChannelInUse(0)
    );
    assert!(matches!(
        d.channel(2, ChannelConfig::default()),
        Err(Error::NoSuchChannel { n: 2, count: 2 })
    ));
    assert!(matches!(
        d.channel(1, ChannelConfig::default().ring_order(1)),
        Err(Error::BadConfig(_))
    ));
    drop(c0);
    let _c0 = d.channel(0, ChannelConfig::default()).unwrap();
    assert_eq!(
        m.chan_state(0),
        ChanState::Done,
        "started with a null descriptor"
    );
    assert_clean(&m);
}

#[test]
fn init_sequence_registers() {
    let (m, d) = open(ModelConfig::preset(Preset::Bdx));
    let ch = d.channel(0, ChannelConfig::default()).unwrap();
    let r = ch.regs_snapshot();
    assert_eq!(r.chanctrl, ChannelConfig::default().chanctrl);
    assert_eq!(r.dmacount, 1, "one null descriptor announced");
    assert_eq!(ChanState::from_bits(r.chansts), ChanState::Done);
    assert_eq!(r.completion, r.chansts, "writeback word mirrors CHANSTS");
    assert!(r.chanerr.is_empty());
    assert_eq!(r.chancmp % 8, 0);
    assert_eq!(ch.stats().restarts, 1);
    assert_clean(&m);
}

#[test]
fn interrupt_mode_requests_one_interrupt_per_op() {
    let (m, d) = open(skx_small_xfer());
    let cfg = ChannelConfig::default().interrupt_mode();
    let mut h = Harness::new(&d, 0, cfg, 64 << 10, 3).unwrap();
    assert_eq!(
        h.channel.regs_snapshot().chanctrl,
        ioat_driver::regs::chanctrl::RUN
    );
    let before = m.stats(0).interrupts_requested;
    // Ops above 4 KiB are split into several descriptors: only the last one asks.
    let ops: Vec<Op> = (0..40).map(|_| h.random_op(20_000, true)).collect();
    h.run_batch(&ops).unwrap();
    assert_eq!(m.stats(0).interrupts_requested - before, ops.len() as u64);
    assert_clean(&m);
}

#[test]
fn submission_rules_and_doorbell_batching() {
    let (m, d) = open(skx_small_xfer());
    let mut h = Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 1).unwrap();
    conformance::submission_rules(&mut h).unwrap();
    assert_clean(&m);
}

#[test]
fn proptest_random_copies_byte_exact() {
    let (m, d) = open(skx_small_xfer());
    let h = RefCell::new(Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 7).unwrap());
    let n = 64 << 10;
    let strat = (1usize..=20_000, 0usize..n, 0usize..n)
        .prop_map(move |(len, s, dd)| (s.min(n - len), dd.min(n - len), len));
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strat, |(s, dd, len)| {
            h.borrow_mut()
                .copy_case(s, dd, len)
                .map_err(|e| TestCaseError::fail(e.to_string()))
        })
        .unwrap();
    // Small sizes at every alignment of source and destination.
    let mut h = h.into_inner();
    for len in [1usize, 2, 3, 7, 8, 9, 63, 64, 65, 4095, 4096, 4097, 8193] {
        for sa in 0..8 {
            for da in 0..8 {
                h.copy_case(4096 * 3 + sa, 4096 * 9 + da, len).unwrap();
            }
        }
    }
    assert_clean(&m);
}

#[test]
fn proptest_random_fills_byte_exact() {
    let (m, d) = open(skx_small_xfer());
    let h = RefCell::new(Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 9).unwrap());
    let n = 64 << 10;
    let strat = (1usize..=20_000, 0usize..n, any::<u64>())
        .prop_map(move |(len, dd, p)| (dd.min(n - len), p, len));
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strat, |(dd, p, len)| {
            h.borrow_mut()
                .fill_case(dd, p, len)
                .map_err(|e| TestCaseError::fail(e.to_string()))
        })
        .unwrap();
    assert_clean(&m);
}

#[test]
fn proptest_mixed_batches() {
    let (m, d) = open(skx_small_xfer());
    let h = RefCell::new(
        Harness::new(&d, 0, ChannelConfig::default().ring_order(7), 64 << 10, 11).unwrap(),
    );
    let n = 64 << 10;
    let op = prop_oneof![
        (1usize..=9000, 0usize..n, 0usize..n).prop_map(move |(len, s, dd)| Op::Copy {
            src: s.min(n - len),
            dst: dd.min(n - len),
            len
        }),
        (1usize..=9000, 0usize..n, any::<u64>()).prop_map(move |(len, dd, pattern)| Op::Fill {
            dst: dd.min(n - len),
            pattern,
            len
        }),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 100,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(op, 1..30), |ops| {
            h.borrow_mut()
                .run_batch(&ops)
                .map_err(|e| TestCaseError::fail(e.to_string()))
        })
        .unwrap();
    assert_clean(&m);
}

#[test]
fn random_single_ops_seeded() {
    let (m, d) = open(skx_small_xfer());
    conformance::random_single_ops(&d, 0, 42, 300, 12_000).unwrap();
    assert_clean(&m);
}

#[test]
fn stress_wraps_ring_and_dmacount() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx).timing(Timing::Instant));
    let r = conformance::stress(&d, 0, 6, 110_000, 5).unwrap();
    eprintln!("stress: {r:?}");
    assert!(r.ops >= 110_000);
    assert!(r.descriptors > 65_536, "DMACOUNT must wrap: {r:?}");
    assert!(r.dmacount_wraps >= 1);
    assert!(r.ring_wraps >= 1000);
    assert!(r.doorbells < r.ops, "batched doorbells");
    assert_clean(&m);
}

fn all_chanerr_bits() -> Vec<u32> {
    chanerr::NAMES.iter().map(|(b, _, _)| *b).collect()
}

fn fault_recovery_on(p: Preset) {
    let (m, d) = open(ModelConfig::preset(p).xfercap_log(12));
    let mut h = Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 3).unwrap();
    let bits = all_chanerr_bits();
    let mb = m.clone();
    let mut seen_bits = Vec::new();
    let total = conformance::fault_rounds(&mut h, bits.len() as u32 * 2, |round, nth| {
        let b = bits[round as usize % bits.len()];
        seen_bits.push(b);
        mb.inject(0, Fault::ChanErrOnNth { nth, bits: b });
    })
    .unwrap();
    assert_eq!(total.halted, bits.len() as u64 * 2);
    assert_eq!(h.channel.stats().halts, bits.len() as u64 * 2);
    assert_eq!(seen_bits.len(), bits.len() * 2);
    assert!(h.channel.regs_snapshot().chanerr.is_empty());
    assert_clean(&m);
}

#[test]
fn every_chanerr_injection_recovered_skx() {
    fault_recovery_on(Preset::Skx);
}

#[test]
fn every_chanerr_injection_recovered_bdx_with_chanerr_int() {
    fault_recovery_on(Preset::Bdx);
}

#[test]
fn every_chanerr_injection_recovered_icx() {
    fault_recovery_on(Preset::Icx);
}

#[test]
fn halted_op_carries_chanerr_and_later_ops_abort() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx));
    let mut h = Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 4).unwrap();
    m.inject(
        0,
        Fault::ChanErrOnNth {
            nth: 3,
            bits: chanerr::READ_DATA,
        },
    );
    let ops: Vec<Op> = (0..6).map(|_| h.random_op(1000, false)).collect();
    let mut toks = vec![];
    for op in &ops {
        toks.push(h.submit(*op).unwrap());
    }
    let done = h.drain().unwrap();
    assert_eq!(done.len(), 6);
    assert!(done[0].result.is_ok() && done[1].result.is_ok());
    match &done[2].result {
        Err(OpError::Halted { chanerr: e, .. }) => assert!(e.contains(chanerr::READ_DATA)),
        other => panic!("{other:?}"),
    }
    for c in &done[3..] {
        assert!(matches!(c.result, Err(OpError::Aborted { .. })), "{c:?}");
    }
    let msg = done[2].result.clone().unwrap_err().to_string();
    assert!(msg.contains("READ_DATA"), "{msg}");
    assert_clean(&m);
}

#[test]
fn halt_on_multi_descriptor_op_fails_whole_op() {
    let (m, d) = open(skx_small_xfer());
    let mut h = Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 8).unwrap();
    // Op 0: 1 descriptor. Op 1: 3 descriptors (10 KiB at 4 KiB pieces); fail its 2nd piece.
    m.inject(
        0,
        Fault::ChanErrOnNth {
            nth: 3,
            bits: chanerr::WRITE_DATA,
        },
    );
    let ops = [
        Op::Copy {
            src: 0,
            dst: 0,
            len: 100,
        },
        Op::Copy {
            src: 1000,
            dst: 20_000,
            len: 10_000,
        },
        Op::Copy {
            src: 5,
            dst: 40_000,
            len: 100,
        },
    ];
    let o = h.run_faulty_batch(&ops).unwrap();
    assert_eq!((o.ok, o.halted, o.aborted), (1, 1, 1));
    assert_clean(&m);
}

#[test]
fn unmapped_source_halts_and_recovers() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx));
    let mut h = Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 12).unwrap();
    let r = conformance::unmapped_source(&mut h).unwrap();
    match r {
        Some(OpError::Halted { chanerr: e, .. }) => assert!(e.contains(chanerr::SRC_ADDR), "{e}"),
        other => panic!("expected a SRC_ADDR halt, got {other:?}"),
    }
    // The model flags the unmapped IOVA (rule E10) as a descriptor violation: that one is the
    // point of this test, anything else is not.
    let v = m.take_violations();
    assert!(v.iter().all(|v| v.rule == "E10"), "{v:?}");
    // A device error the hardware reports, not misuse.
    assert!(
        v.iter()
            .all(|v| v.class == ioat_driver::model::FaultClass::DeviceError),
        "{v:?}"
    );
}

#[test]
fn hang_detected_by_completion_timeout() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx));
    let cfg = ChannelConfig::default().completion_timeout(Duration::from_millis(60));
    let mut h = Harness::new(&d, 0, cfg, 64 << 10, 13).unwrap();
    let mm = m.clone();
    let took = conformance::hang_detected(&mut h, 8, 3, |k| {
        mm.inject(0, Fault::Hang { after: k });
    })
    .unwrap();
    eprintln!("hang detected after {took:?}");
    assert!(took >= Duration::from_millis(60));
    assert!(took < Duration::from_secs(5));
    assert_eq!(h.channel.stats().timeouts, 1);
    assert_clean(&m);
}

#[test]
fn hang_with_default_timeout_reports_200ms() {
    let (m, d) = open(ModelConfig::preset(Preset::Icx));
    let mut h = Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 14).unwrap();
    let mm = m.clone();
    let took = conformance::hang_detected(&mut h, 4, 0, |k| {
        mm.inject(0, Fault::Hang { after: k });
    })
    .unwrap();
    assert!(took >= Duration::from_millis(200));
    assert_clean(&m);
}

#[test]
fn slow_completion_is_not_a_hang() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx));
    let mut h = Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 15).unwrap();
    m.inject(
        0,
        Fault::Slow {
            extra: Duration::from_millis(10),
        },
    );
    let ops: Vec<Op> = (0..6).map(|_| h.random_op(2000, true)).collect();
    let t0 = std::time::Instant::now();
    h.run_batch(&ops).unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(60),
        "the device was slow"
    );
    assert_eq!(h.channel.stats().timeouts, 0);
    m.clear_faults(0);
    assert_clean(&m);
}

#[test]
fn modeled_timing_batches() {
    let (m, d) = open(ModelConfig::preset(Preset::Bdx).timing(Timing::Modeled {
        per_desc: Duration::from_micros(50),
        bytes_per_sec: 4_000_000_000,
    }));
    let mut h = Harness::new(&d, 0, ChannelConfig::default(), 256 << 10, 16).unwrap();
    for _ in 0..5 {
        let ops: Vec<Op> = (0..20).map(|_| h.random_op(64 << 10, true)).collect();
        h.run_batch(&ops).unwrap();
    }
    assert_clean(&m);
}

#[test]
fn fill_without_capability_is_refused() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx).fill(false));
    let mut ch = d.channel(0, ChannelConfig::default()).unwrap();
    let r = DmaRegion::alloc(d.mapper(), 4096).unwrap();
    assert_eq!(ch.fill(r.iova(), 1, 64), Err(SubmitError::FillUnsupported));
    assert_eq!(
        ch.fill_region(&r, 0, 1, 64),
        Err(SubmitError::FillUnsupported)
    );
    assert!(SubmitError::FillUnsupported.to_string().contains("CPU"));
    assert_clean(&m);
}

#[test]
fn ring_full_and_out_of_region_are_errors() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx));
    let mut ch = d
        .channel(0, ChannelConfig::default().ring_order(2))
        .unwrap();
    let a = DmaRegion::alloc(d.mapper(), 8192).unwrap();
    let b = DmaRegion::alloc(d.mapper(), 8192).unwrap();
    for _ in 0..3 {
        ch.copy_regions(&a, 0, &b, 0, 64).unwrap();
    }
    assert_eq!(ch.free_slots(), 0);
    assert!(matches!(
        ch.copy_regions(&a, 0, &b, 0, 64),
        Err(SubmitError::RingFull { needed: 1, free: 0 })
    ));
    assert!(matches!(
        ch.copy_regions(&a, 8000, &b, 0, 400),
        Err(SubmitError::OutOfRegion { .. })
    ));
    let mut out = vec![];
    ch.wait_idle(Duration::from_secs(5), &mut out).unwrap();
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|c| c.result.is_ok()));
    assert_clean(&m);
}

#[test]
fn pinned_region_cannot_be_unmapped_under_the_device() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx));
    let mut ch = d.channel(0, ChannelConfig::default()).unwrap();
    let a = DmaRegion::alloc_with(d.mapper(), 8192, HugePages::Never).unwrap();
    let b = DmaRegion::alloc_with(d.mapper(), 8192, HugePages::Never).unwrap();
    a.write(0, &[7u8; 100]).unwrap();
    m.inject(
        0,
        Fault::Slow {
            extra: Duration::from_millis(30),
        },
    );
    ch.copy_regions(&a, 0, &b, 0, 100).unwrap();
    ch.flush();
    assert_eq!(b.pins(), 1);
    let (b, e) = b.unmap().unwrap_err();
    assert!(matches!(e, MapError::Busy { refs: 1, .. }), "{e}");
    assert!(e.to_string().contains("wait for their completion"));
    // Dropping the handle while pinned defers the unmap; the copy still lands.
    let mappings = m.model_mapper().mapping_count();
    drop(a);
    assert_eq!(
        m.model_mapper().mapping_count(),
        mappings,
        "still mapped while pinned"
    );
    let mut out = vec![];
    ch.wait_idle(Duration::from_secs(5), &mut out).unwrap();
    assert!(out[0].result.is_ok());
    assert_eq!(b.to_vec(0, 100).unwrap(), vec![7u8; 100]);
    assert_eq!(
        m.model_mapper().mapping_count(),
        mappings - 1,
        "unmapped after completion"
    );
    b.unmap().unwrap();
    m.clear_faults(0);
    assert_clean(&m);
}

#[test]
fn dropping_a_busy_channel_stops_the_device_first() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx));
    let a = DmaRegion::alloc(d.mapper(), 1 << 20).unwrap();
    let b = DmaRegion::alloc(d.mapper(), 1 << 20).unwrap();
    {
        let mut ch = d.channel(0, ChannelConfig::default()).unwrap();
        m.inject(
            0,
            Fault::Slow {
                extra: Duration::from_millis(5),
            },
        );
        for i in 0..50 {
            ch.copy_regions(&a, i * 1000, &b, i * 1000, 1000).unwrap();
        }
        ch.flush();
        assert!(a.pins() > 0);
    }
    assert_eq!(a.pins(), 0, "pins released after the reset on drop");
    assert_eq!(m.chan_state(0), ChanState::Halted);
    m.clear_faults(0);
    let mut ch = d.channel(0, ChannelConfig::default()).unwrap();
    ch.copy_regions(&a, 0, &b, 0, 64).unwrap();
    let mut out = vec![];
    ch.wait_idle(Duration::from_secs(5), &mut out).unwrap();
    assert!(out[0].result.is_ok());
    assert_clean(&m);
}

#[test]
fn fence_on_flushed_and_unflushed_ops() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx));
    let mut h = Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 17).unwrap();
    // Fence on an unflushed op (sets its bit) and after a flush (a fenced null descriptor).
    let t0 = h
        .submit(Op::Copy {
            src: 0,
            dst: 0,
            len: 512,
        })
        .unwrap();
    h.channel.fence().unwrap();
    let before = h.channel.stats().descriptors;
    h.channel.flush();
    h.channel.fence().unwrap();
    assert_eq!(
        h.channel.stats().descriptors,
        before + 1,
        "null fence descriptor"
    );
    let t1 = h
        .submit(Op::Fill {
            dst: 0,
            pattern: 0x0102030405060708,
            len: 256,
        })
        .unwrap();
    let done = h.drain().unwrap();
    assert_eq!(
        done.iter().map(|c| c.token).collect::<Vec<_>>(),
        vec![t0, t1]
    );
    assert!(done.iter().all(|c| c.result.is_ok()));
    let got = h.dst.to_vec(0, 512).unwrap();
    assert_eq!(&got[..8], &0x0102030405060708u64.to_le_bytes());
    assert_clean(&m);
}

#[test]
fn two_channels_in_two_threads() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx).chancnt(2).xfercap_log(12));
    let mut hs: Vec<_> = (0..2)
        .map(|c| {
            Harness::new(
                &d,
                c,
                ChannelConfig::default().ring_order(5),
                64 << 10,
                20 + c as u64,
            )
            .unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        for h in hs.iter_mut() {
            s.spawn(move || {
                for _ in 0..50 {
                    let ops: Vec<Op> = (0..8).map(|_| h.random_op(6000, true)).collect();
                    h.run_batch(&ops).unwrap();
                }
            });
        }
    });
    assert_clean(&m);
}

#[test]
fn restart_after_manual_request_reports_pending_ops() {
    let (m, d) = open(ModelConfig::preset(Preset::Skx));
    let mut h = Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 21).unwrap();
    let t = h
        .submit(Op::Copy {
            src: 0,
            dst: 0,
            len: 64,
        })
        .unwrap();
    let mut out = vec![];
    h.channel.restart(&mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].token, t);
    assert_eq!(out[0].result, Err(OpError::Reset));
    h.copy_case(0, 100, 1000).unwrap();
    assert_clean(&m);
}

#[test]
fn hardware_suite_passes_on_the_model() {
    let (m, d) = open(ModelConfig::preset(Preset::Bdx));
    let r = conformance::hardware_suite(&d, 0, 99, 100, 20, 5_000).unwrap();
    assert_eq!(r.stress.ops, 5_000);
    assert_clean(&m);
}

#[test]
fn failed_start_descriptor_is_reported_and_retry_works() {
    let (m, d) = open(ModelConfig::preset(Preset::Bdx));
    let mut h = Harness::new(&d, 0, ChannelConfig::default(), 64 << 10, 22).unwrap();
    // The restart's null descriptor halts: the completion address is 0 on the fresh chain.
    m.inject(
        0,
        Fault::ChanErrOnNth {
            nth: 1,
            bits: chanerr::CONTROL,
        },
    );
    let mut out = vec![];
    match h.channel.restart(&mut out) {
        Err(Error::StartFailed {
            state, chanerr: e, ..
        }) => {
            assert_eq!(state, ChanState::Halted);
            assert!(e.contains(chanerr::CONTROL));
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert!(out.is_empty());
    h.channel.restart(&mut out).unwrap();
    h.copy_case(10, 20, 3000).unwrap();
    assert_clean(&m);
}

/// The model behind a register wrapper that can make CHANCMD.RESET look stuck.
struct StuckReset {
    inner: Arc<ModelDevice>,
    stuck: std::sync::atomic::AtomicBool,
}

impl ioat_driver::regs::RegisterAccess for StuckReset {
    fn read8(&self, off: u32) -> u8 {
        let v = self.inner.read8(off);
        let cmd = ioat_driver::regs::channel_base(0) + ioat_driver::regs::chan::CHANCMD;
        if off == cmd && self.stuck.load(std::sync::atomic::Ordering::SeqCst) {
            v | ioat_driver::regs::chancmd::RESET
        } else {
            v
        }
    }
    fn read16(&self, off: u32) -> u16 {
        self.inner.read16(off)
    }
    fn read32(&self, off: u32) -> u32 {
        self.inner.read32(off)
    }
    fn read64(&self, off: u32) -> u64 {
        self.inner.read64(off)
    }
    fn write8(&self, off: u32, val: u8) {
        self.inner.write8(off, val)
    }
    fn write16(&self, off: u32, val: u16) {
        self.inner.write16(off, val)
    }
    fn write32(&self, off: u32, val: u32) {
        self.inner.write32(off, val)
    }
    fn write64(&self, off: u32, val: u64) {
        self.inner.write64(off, val)
    }
    fn config_read32(&self, off: u16) -> u32 {
        self.inner.config_read32(off)
    }
    fn config_write32(&self, off: u16, val: u32) {
        self.inner.config_write32(off, val)
    }
}

#[test]
fn failed_recovery_takes_the_channel_down_until_restart() {
    use ioat_driver::regs::RegisterAccess as _;
    let m = ModelDevice::new(ModelConfig::preset(Preset::Skx));
    let regs = Arc::new(StuckReset {
        inner: m.clone(),
        stuck: false.into(),
    });
    let d = Device::open(regs.clone(), m.mapper()).unwrap();
    let mut cfg = ChannelConfig::default().completion_timeout(Duration::from_millis(30));
    cfg.reset_timeout = Duration::from_millis(20);
    let mut ch = d.channel(0, cfg).unwrap();
    let a = DmaRegion::alloc(d.mapper(), 8192).unwrap();
    let b = DmaRegion::alloc(d.mapper(), 8192).unwrap();
    m.inject(0, Fault::Hang { after: 0 });
    regs.stuck.store(true, std::sync::atomic::Ordering::SeqCst);
    let t = ch.copy_regions(&a, 0, &b, 0, 64).unwrap();
    let mut out = vec![];
    let e = ch.wait_idle(Duration::from_secs(5), &mut out).unwrap_err();
    assert!(matches!(e, Error::ChannelDown { .. }), "{e}");
    assert!(e.to_string().contains("restart"), "{e}");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].token, t);
    assert!(matches!(out[0].result, Err(OpError::Timeout { .. })));
    assert!(ch.down_reason().unwrap().contains("RESET did not clear"));
    // The typed cause is kept, not just its message.
    assert!(matches!(ch.down_error(), Some(Error::ResetTimeout { .. })));
    let cause = std::error::Error::source(&e).expect("the cause is kept");
    assert!(cause.to_string().contains("RESET did not clear"), "{cause}");
    let refused = ch.copy_regions(&a, 0, &b, 0, 64);
    assert!(matches!(refused, Err(SubmitError::ChannelDown { .. })));
    let refused = refused.unwrap_err();
    assert!(matches!(
        std::error::Error::source(&refused).and_then(|s| s.downcast_ref::<Error>()),
        Some(Error::ResetTimeout { .. })
    ));
    // The reset did not finish, so the device may still touch the buffers: their pins are
    // leaked on purpose and the regions stay mapped.
    assert_eq!(
        a.pins(),
        1,
        "pins kept when the device was not shown stopped"
    );
    regs.stuck.store(false, std::sync::atomic::Ordering::SeqCst);
    ch.restart(&mut out).unwrap();
    assert!(ch.down_reason().is_none());
    ch.copy_regions(&a, 0, &b, 0, 64).unwrap();
    out.clear();
    ch.wait_idle(Duration::from_secs(5), &mut out).unwrap();
    assert!(out[0].result.is_ok());
    assert_eq!(regs.read8(0x08), 0x33);
    assert_clean(&m);
}

#[test]
fn halt_not_pushed_to_memory_is_found_in_chansts() {
    // SPDK's CHANCTRL (ANY_ERR_ABORT_EN only): the device does not write the halt to the
    // completion word, so the driver must find it by reading CHANSTS on the slow path.
    let (m, d) = open(ModelConfig::preset(Preset::Skx));
    let cfg = ChannelConfig {
        chanctrl: ioat_driver::regs::chanctrl::ANY_ERR_ABORT_EN,
        ..ChannelConfig::default()
    };
    let mut h = Harness::new(&d, 0, cfg, 64 << 10, 23).unwrap();
    let mm = m.clone();
    let o = conformance::fault_rounds(&mut h, 10, |_, nth| {
        mm.inject(
            0,
            Fault::ChanErrOnNth {
                nth,
                bits: chanerr::DEST_ADDR,
            },
        );
    })
    .unwrap();
    assert_eq!(o.halted, 10);
    assert!(h.channel.stats().status_reads >= 10);
    assert_eq!(h.channel.stats().timeouts, 0);
    assert_clean(&m);
}
