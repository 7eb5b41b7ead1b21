//! Unit tests of the model's internals; behaviour is tested through the public API in
//! `driver/tests/model_*.rs`.

use super::mem::{Mem, ModelMapper, IOVA_BASE};
use super::regfile::{lookup, Reg, CHANNEL, GENERAL};
use crate::dma::DmaMapper;
use std::sync::Arc;

#[test]
fn register_table_has_no_overlaps() {
    for tab in [GENERAL, CHANNEL] {
        for (i, a) in tab.iter().enumerate() {
            for b in &tab[i + 1..] {
                let disjoint = a.off + a.width as u32 <= b.off || b.off + b.width as u32 <= a.off;
                assert!(disjoint, "{} overlaps {}", a.name, b.name);
            }
        }
    }
}

#[test]
fn lookup_resolves_channels_and_dps_registers() {
    let h = lookup(0x88 + 4, 2, false).unwrap();
    assert_eq!((h.def.reg, h.chan, h.byte), (Reg::ChanSts, Some(0), 4));
    let h = lookup(0x100 + 0x28, 2, false).unwrap();
    assert_eq!((h.def.reg, h.chan), (Reg::ChanErr, Some(1)));
    // Channel 0's DRSCTL lies at 0x80 + 0xb6 = 0x136, inside channel 1's window.
    assert!(lookup(0x136, 2, false).is_none());
    let h = lookup(0x136, 2, true).unwrap();
    assert_eq!((h.def.reg, h.chan), (Reg::DrsCtl, Some(0)));
    assert!(lookup(0x180, 2, true).is_none());
}

#[test]
fn mapper_rules() {
    let m = ModelMapper {
        mem: Arc::new(Mem::new()),
    };
    let mut buf = vec![0u8; 3 * 4096];
    let base = buf.as_mut_ptr();
    let aligned = base.wrapping_add(base.align_offset(4096));
    // SAFETY: `buf` outlives every mapping and no descriptor is ever executed on it.
    let map = |p: *mut u8, len| unsafe { m.map(p, len) };
    assert!(map(aligned.wrapping_add(1), 4096).is_err());
    assert!(map(aligned, 100).is_err());
    let a = map(aligned, 4096).unwrap();
    let b = map(aligned, 4096).unwrap();
    assert_eq!(a, IOVA_BASE);
    assert!(b >= a + 8192, "guard page between mappings");
    assert_ne!(a, aligned as u64);
    {
        let t = m.mem.read();
        assert_eq!(t.translate(a + 10, 8), Some(aligned.wrapping_add(10)));
        assert!(t.translate(a + 4090, 8).is_none());
        assert!(t.translate(a + 4096, 1).is_none());
        assert!(t.translate(a - 1, 1).is_none());
    }
    assert!(m.unmap(a, 8192).is_err());
    m.unmap(a, 4096).unwrap();
    assert!(m.unmap(a, 4096).is_err());
    assert!(m.mem.read().translate(a, 1).is_none());
    assert_eq!(m.mapping_count(), 1);
    m.unmap(b, 4096).unwrap();
}
