//! The wire parser on arbitrary bytes: never panics; what parses is self-consistent, and a
//! frame rebuilt from the parsed fields parses back to the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netrx::wire::tcp::OptionsOut;
use netrx::wire::{build_segment, parse, ChecksumMode, ReplyAddrs, SegmentSpec};

fuzz_target!(|data: &[u8]| {
    for mode in [ChecksumMode::Verify, ChecksumMode::Trust] {
        let Ok(p) = parse(data, mode) else { continue };
        assert!(p.payload_offset + p.payload_len <= data.len());
        assert!(p.tcp_offset + p.tcp.header_len == p.payload_offset);
        let _ = netrx::wire::tcp::parse_options(&data[p.tcp_offset + 20..p.payload_offset]);
        // Rebuild with the same fields and options; it must parse back identically.
        let o = p.tcp.options;
        let opts = OptionsOut {
            mss: o.mss,
            window_scale: o.window_scale,
            sack_permitted: o.sack_permitted,
            timestamps: o.timestamps,
            sack: o.sack,
            sack_count: o.sack_count.min(if o.timestamps.is_some() { 3 } else { 4 }),
        };
        let addrs = ReplyAddrs {
            local_mac: p.eth.src,
            remote_mac: p.eth.dst,
            vlan: p.eth.vlan,
            ip: p.ip,
            local_port: p.tcp.src_port,
            remote_port: p.tcp.dst_port,
        };
        let spec = SegmentSpec {
            seq: p.tcp.seq,
            ack: p.tcp.ack,
            flags: p.tcp.flags.0,
            window: p.tcp.window,
            options: opts,
        };
        let payload = &data[p.payload_offset..p.payload_offset + p.payload_len];
        let mut buf = vec![0u8; 200 + payload.len()];
        if let Some(n) = build_segment(&addrs, &spec, payload, &mut buf) {
            let q = parse(&buf[..n], ChecksumMode::Verify).expect("built frames parse");
            assert_eq!(q.tcp.seq, p.tcp.seq);
            assert_eq!(q.tcp.options.timestamps, o.timestamps);
            // Blocks that do not fit beside the other options are left out, never altered.
            let n = q.tcp.options.sack_count as usize;
            assert!(n <= opts.sack_count as usize);
            assert_eq!(q.tcp.options.sack_blocks(), &o.sack[..n]);
            assert_eq!(q.tcp.options.mss, o.mss);
            assert_eq!(q.tcp.options.window_scale, o.window_scale);
            assert_eq!(
                &buf[q.payload_offset..q.payload_offset + q.payload_len],
                payload
            );
        }
    }
});
