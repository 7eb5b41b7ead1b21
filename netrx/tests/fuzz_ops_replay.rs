//! The structured endpoint fuzzer's interpreter (`tests/fuzz_ops`) on random inputs, so that
//! its oracles run in every `cargo test` without a nightly toolchain or cargo-fuzz. The bytes
//! are decoded exactly as the `endpoint_ops` fuzz target decodes them, so a fuzzer artifact
//! can be replayed here (see `fuzz_regressions.rs`).

mod fuzz_ops;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_op_lists(bytes in prop::collection::vec(any::<u8>(), 0..12_000)) {
        let st = fuzz_ops::run(&fuzz_ops::decode(&bytes));
        if std::env::var_os("NETRX_FUZZ_VERBOSE").is_some() {
            eprintln!("{st:?}");
        }
    }
}

/// Hand-made scenarios that reach what random bytes rarely do: wrap-around, long streams,
/// many peers of both families, corrupted frames.
#[test]
fn directed_long_streams() {
    use fuzz_ops::{At, Iss, Op, Scenario, Setup};
    // Bit 11 (0x800): the application waits with a buffer (direct delivery).
    for (v6_mask, switches) in [
        (0u16, 0u16),
        (0xffff, 0),
        (0x5555, 0x10),
        (0xaaaa, 0x1ff),
        (0, 0x800),
        (0xaaaa, 0x8c0),
    ] {
        let setup = Setup {
            peers: 15,
            v6_mask,
            rcvbuf_kib: 256,
            ooo_ranges: 8,
            ooo_mem_kib: 0,
            truesize: 1,
            syn_backlog: 7,
            switches,
        };
        let mut ops = Vec::new();
        for k in 0..16u8 {
            ops.push(Op::Connect {
                peer: k,
                iss: Iss::NearWrap(u16::from(k) * 1000),
                opts: 0x7f,
            });
        }
        ops.push(Op::Accept);
        for round in 0..40u16 {
            for k in 0..16u8 {
                ops.push(Op::Burst { peer: k, segs: 3 });
                ops.push(Op::Data {
                    peer: k,
                    at: At::Ahead(round * 7),
                    len: 1000,
                    flags: 1,
                    corrupt: None,
                });
                ops.push(Op::Data {
                    peer: k,
                    at: At::FromAck(0),
                    len: 1400,
                    flags: 0x80,
                    corrupt: (round % 3 == 0).then_some((round * 13, 0x40)),
                });
                ops.push(Op::Read {
                    conn: k,
                    max: 3000,
                    count: 7,
                });
                ops.push(Op::Release {
                    pick: round as u8,
                    count: 5,
                    flush: true,
                });
            }
            ops.push(Op::Advance {
                ms: 50,
                coarse: false,
            });
        }
        let st = fuzz_ops::run(&Scenario { setup, ops });
        assert!(st.wrapped, "sequence numbers wrapped: {st:?}");
        assert!(st.max_offset > 65536, "offsets beyond 64 KiB: {st:?}");
        assert!(st.corrupted > 0);
        if v6_mask != 0 {
            assert!(st.v6_bytes > 0);
        }
        assert_eq!(st.direct_bytes > 0, switches & 0x800 != 0, "{st:?}");
    }
}
