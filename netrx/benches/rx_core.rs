//! Receive-core benchmark: a synthetic stream of 1448- or 8948-byte segments, in order and 5%
//! reordered, through netrx's endpoint and through smoltcp 0.14's TCP socket, side by side.
//!
//! Both receivers get the same prebuilt frames (checksums verified by both), 32 frames per
//! poll, and the payload is consumed by a memcpy into a 1 MiB application buffer, as a real
//! receiver would. netrx reads frame references and releases them after the copy; smoltcp
//! copies into its socket ring and `recv_slice` copies out again.
//!
//! Stream size: `NETRX_BENCH_BYTES` (default 64 MiB; the issue's 1 GiB is
//! `NETRX_BENCH_BYTES=1073741824`). After the criterion groups a side-by-side pass prints
//! netrx/smoltcp throughput ratios (median of `NETRX_BENCH_ROUNDS`, default 3, alternating runs,
//! and the median and range of the per-pair ratios); `-- only_side_by_side` (any criterion
//! filter that matches nothing) skips the criterion groups.
//! `NETRX_BENCH_SIDE=netrx` (or `smoltcp`) runs one side once per workload, for profilers
//! (`NETRX_BENCH_ONLY=1448`, `1448r`, `8948` or `8948r` picks one workload).
//!
//! Instructions per segment, by callgrind (exact, repeatable; the one documented command):
//!
//! ```text
//! NETRX_BENCH_CALLGRIND=only cargo bench -p netrx --bench rx_core
//! ```
//!
//! runs this binary under `valgrind --tool=callgrind` once per side and workload (32 MiB
//! streams unless `NETRX_BENCH_BYTES` says otherwise), collecting only the timed receive loop
//! (`--toggle-collect=rx_core::netrx_loop` / `rx_core::smoltcp_loop`; the synthetic sender's
//! sequence-number rewrite, `Pool::prepare`, is toggled off again inside it), and prints per
//! segment: the total, the payload copy (every memcpy in a second run with
//! `NETRX_BENCH_CSUM=off`, where neither side verifies received checksums: netrx's copy into
//! the application's buffer, smoltcp's copy into the socket ring and `recv_slice`'s copy out),
//! the checksum verification (the difference between the two runs; the ACKs' checksums are
//! computed in both; for netrx's direct deliveries, which copy and sum in one pass, it is that
//! pass minus the memcpy it replaces) and the header path (the rest: parsing, lookup, TCP
//! state, ACKs, read/release and the harness loop).
//!
//! netrx's application waits with its buffer (`Endpoint::on_frame_into`): in-order payload is
//! copied into it as it arrives; what had to wait for a hole is queued and then copied by
//! `Endpoint::consume`.
//! `NETRX_BENCH_CALLGRIND_TOP=1` adds each side's top functions (per segment, exclusive and
//! inclusive). With `NETRX_BENCH_CALLGRIND=1` the timed runs follow.
//! `NETRX_BENCH_FULL_PATH=1` turns netrx's header prediction off (`Config::fast_path`).

use std::collections::VecDeque;
use std::time::{Duration, Instant as StdInstant};

use criterion::{Criterion, Throughput};
use netrx::tcp::{Config as EpConfig, ConnId, DirectReader, Endpoint, Instant as EpInstant};
use netrx::wire::checksum::{copy_maybe_sum, update_u32, Checksum as Sum};
use netrx::wire::tcp::{OptionsOut, TcpFlags};
use netrx::wire::{build_segment, parse, ChecksumMode, IpPair, ReplyAddrs, SegmentSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use smoltcp::iface::{Config as IfConfig, Interface, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const OUR_IP: [u8; 4] = [10, 0, 0, 1];
const PEER_IP: [u8; 4] = [10, 0, 0, 2];
const PORT: u16 = 5001;
const PEER_ISS: u32 = 0xfff0_0000; // wraps during the stream
const BATCH: usize = 32;
const APP_BUF: usize = 1 << 20;
const POOL_MAX: usize = 32 << 20;

fn peer() -> ReplyAddrs {
    ReplyAddrs {
        local_mac: PEER_MAC,
        remote_mac: OUR_MAC,
        vlan: None,
        ip: IpPair::V4 {
            src: PEER_IP,
            dst: OUR_IP,
        },
        local_port: 40000,
        remote_port: PORT,
    }
}

fn frame(seq: u32, ack: u32, flags: u8, options: OptionsOut, payload: &[u8]) -> Vec<u8> {
    let spec = SegmentSpec {
        seq,
        ack,
        flags,
        window: 65535,
        options,
    };
    let mut buf = vec![0u8; 128 + payload.len()];
    let n = build_segment(&peer(), &spec, payload, &mut buf).expect("fits");
    buf.truncate(n);
    buf
}

/// One lap of prebuilt data frames; laps repeat with patched sequence numbers.
struct Pool {
    frames: Vec<Vec<u8>>,
    /// Stream offset of each frame within the lap.
    offsets: Vec<u64>,
    /// Delivery order (a permutation with 5% of adjacent frames swapped when reordering).
    order: Vec<usize>,
    lap_bytes: u64,
    seg: usize,
    ack: u32,
}

const SEQ_OFF: usize = 14 + 20 + 4;
const ACK_OFF: usize = 14 + 20 + 8;
const CSUM_OFF: usize = 14 + 20 + 16;

impl Pool {
    fn new(seg: usize, total: u64, reorder: bool) -> Pool {
        let lap = (total as usize).min(POOL_MAX).div_ceil(seg) * seg;
        let n = lap / seg;
        let mut rng = ChaCha8Rng::seed_from_u64(seg as u64);
        let mut frames = Vec::with_capacity(n);
        let mut offsets = Vec::with_capacity(n);
        let payload: Vec<u8> = (0..seg).map(|_| rng.gen()).collect();
        for i in 0..n {
            let off = (i * seg) as u64;
            let o = OptionsOut {
                timestamps: Some((1000, 1)),
                ..Default::default()
            };
            frames.push(frame(
                PEER_ISS.wrapping_add(1).wrapping_add(off as u32),
                0,
                TcpFlags::ACK,
                o,
                &payload,
            ));
            offsets.push(off);
        }
        let mut order: Vec<usize> = (0..n).collect();
        if reorder {
            let mut i = 0;
            while i + 1 < n {
                if rng.gen_range(0..100) < 5 {
                    order.swap(i, i + 1);
                    i += 2;
                } else {
                    i += 1;
                }
            }
        }
        Pool {
            frames,
            offsets,
            order,
            lap_bytes: lap as u64,
            seg,
            ack: 0,
        }
    }

    fn set_ack(&mut self, ack: u32) {
        if ack == self.ack {
            return;
        }
        for f in &mut self.frames {
            patch_u32(f, ACK_OFF, ack);
        }
        self.ack = ack;
    }

    /// Makes frame `i` carry lap `lap`'s sequence number: the synthetic sender's work, not the
    /// receiver's, so it is a call of its own that callgrind leaves out (`--toggle-collect`
    /// toggles collection off inside it, for both sides).
    #[inline(never)]
    fn prepare(&mut self, i: usize, lap: u64) {
        let seq = PEER_ISS
            .wrapping_add(1)
            .wrapping_add((self.offsets[i] + lap * self.lap_bytes) as u32);
        patch_u32(&mut self.frames[i], SEQ_OFF, seq);
    }
}

#[inline]
fn patch_u32(f: &mut [u8], at: usize, new: u32) {
    let old = u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    if old == new {
        return;
    }
    let c = u16::from_be_bytes([f[CSUM_OFF], f[CSUM_OFF + 1]]);
    f[at..at + 4].copy_from_slice(&new.to_be_bytes());
    f[CSUM_OFF..CSUM_OFF + 2].copy_from_slice(&update_u32(c, old, new).to_be_bytes());
}

fn syn() -> Vec<u8> {
    let o = OptionsOut {
        mss: Some(9000),
        window_scale: Some(7),
        sack_permitted: true,
        timestamps: Some((999, 0)),
        ..Default::default()
    };
    frame(PEER_ISS, 0, TcpFlags::SYN, o, &[])
}

fn final_ack(isn: u32) -> Vec<u8> {
    let o = OptionsOut {
        timestamps: Some((1000, 1)),
        ..Default::default()
    };
    frame(
        PEER_ISS.wrapping_add(1),
        isn.wrapping_add(1),
        TcpFlags::ACK,
        o,
        &[],
    )
}

// ---------------------------------------------------------------- netrx

fn run_netrx(pool: &mut Pool, total: u64, app: &mut [u8]) -> (Duration, u64) {
    let truesize = if pool.seg > 4000 { 3 * 4096 } else { 4096 };
    let cfg = EpConfig {
        mtu: 9000,
        rcvbuf: 8 << 20,
        frame_truesize: truesize,
        checksum: if verify_checksums() {
            ChecksumMode::Verify
        } else {
            ChecksumMode::Trust
        },
        fast_path: std::env::var("NETRX_BENCH_FULL_PATH").is_err(),
        ..EpConfig::default()
    };
    let mut ep = Endpoint::new(cfg);
    ep.listen(PORT).unwrap();
    let now = EpInstant::from_millis(1);
    ep.on_frame(now, u64::MAX, &syn(), truesize);
    let sa = ep.pop_tx().expect("SYN-ACK");
    let isn = parse(sa.as_bytes(), ChecksumMode::Verify).unwrap().tcp.seq;
    ep.on_frame(now, u64::MAX, &final_ack(isn), truesize);
    let id = ep.accept(PORT).expect("established");
    pool.set_ack(isn.wrapping_add(1));
    netrx_loop(&mut ep, id, pool, total, app, truesize)
}

/// The timed receive loop (callgrind collects only this function: `--toggle-collect`).
#[inline(never)]
fn netrx_loop(
    ep: &mut Endpoint,
    id: netrx::tcp::ConnId,
    pool: &mut Pool,
    total: u64,
    app: &mut [u8],
    truesize: u32,
) -> (Duration, u64) {
    let now = EpInstant::from_millis(1);
    let mut app = App {
        buf: app,
        off: 0,
        got: 0,
    };
    let mut lap = 0u64;
    let n = pool.order.len();
    let start = StdInstant::now();
    'outer: loop {
        for chunk in 0..n.div_ceil(BATCH) {
            // The application waits with its buffer: in-order data goes straight into it
            // (copied and checksummed in one pass); the rest is queued.
            for k in chunk * BATCH..((chunk + 1) * BATCH).min(n) {
                let i = pool.order[k];
                pool.prepare(i, lap);
                ep.on_frame_into(now, i as u64, &pool.frames[i], truesize, &mut app);
            }
            // What was queued (after a hole filled), the application copies synchronously:
            // read, copy and release in one call.
            let frames = &pool.frames;
            ep.consume(now, id, usize::MAX, |seg| {
                let len = seg.len as usize;
                let f = &frames[seg.frame as usize];
                app.room(len)
                    .copy_from_slice(&f[seg.offset as usize..seg.offset as usize + len]);
                app.filled(id, len, seg.psh);
            })
            .unwrap();
            while ep.pop_tx().is_some() {}
            while ep.poll_event().is_some() {}
            if app.got >= total {
                break 'outer;
            }
        }
        lap += 1;
    }
    let el = start.elapsed();
    std::hint::black_box(&app.buf);
    (el, app.got)
}

/// The application's receive buffer, rewound when full.
struct App<'a> {
    buf: &'a mut [u8],
    off: usize,
    got: u64,
}

impl App<'_> {
    /// Room for `len` more bytes (rewinding the buffer when full).
    #[inline]
    fn room(&mut self, len: usize) -> &mut [u8] {
        if self.off + len > self.buf.len() {
            self.off = 0;
        }
        &mut self.buf[self.off..self.off + len]
    }
}

impl DirectReader for App<'_> {
    #[inline]
    fn copy_in(&mut self, _conn: ConnId, payload: &[u8], _psh: bool, verify: bool) -> Option<Sum> {
        Some(copy_maybe_sum(self.room(payload.len()), payload, verify))
    }
    #[inline]
    fn filled(&mut self, _conn: ConnId, len: usize, _psh: bool) {
        self.off += len;
        self.got += len as u64;
    }
}

// ---------------------------------------------------------------- smoltcp

struct Dev<'p> {
    pool: &'p mut Pool,
    queue: VecDeque<usize>,
    txbuf: Vec<u8>,
    handshake: Option<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    keep_sent: bool,
}

struct Rx<'a>(&'a [u8]);
struct Tx<'a>(&'a mut Vec<u8>, Option<&'a mut Vec<Vec<u8>>>);

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}
impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.0.len() < len {
            self.0.resize(len, 0);
        }
        let r = f(&mut self.0[..len]);
        if let Some(s) = self.1 {
            s.push(self.0[..len].to_vec());
        }
        r
    }
}

impl Device for Dev<'_> {
    type RxToken<'a>
        = Rx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a>
    where
        Self: 'a;
    fn receive(&mut self, _t: SmolInstant) -> Option<(Rx<'_>, Tx<'_>)> {
        let sent = if self.keep_sent {
            Some(&mut self.sent)
        } else {
            None
        };
        // A handshake frame is handed out by `handshake_poll`, which limits it to one poll.
        if let Some(h) = self.handshake.as_deref() {
            return Some((Rx(h), Tx(&mut self.txbuf, sent)));
        }
        let i = self.queue.pop_front()?;
        Some((Rx(&self.pool.frames[i]), Tx(&mut self.txbuf, sent)))
    }
    fn transmit(&mut self, _t: SmolInstant) -> Option<Tx<'_>> {
        let sent = if self.keep_sent {
            Some(&mut self.sent)
        } else {
            None
        };
        Some(Tx(&mut self.txbuf, sent))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 9014;
        if !verify_checksums() {
            // Received checksums are not verified; those of the ACKs are still computed.
            c.checksum.ipv4 = Checksum::Tx;
            c.checksum.tcp = Checksum::Tx;
        }
        c
    }
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&PEER_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&OUR_IP);
    f
}

fn run_smoltcp(pool: &mut Pool, total: u64, app: &mut [u8]) -> (Duration, u64) {
    let rxbuf = if pool.seg > 4000 { 4 << 20 } else { 1 << 20 };
    let mut dev = Dev {
        pool,
        queue: VecDeque::new(),
        txbuf: vec![0; 9100],
        handshake: None,
        sent: Vec::new(),
        keep_sent: true,
    };
    let mut iface = Interface::new(
        IfConfig::new(HardwareAddress::Ethernet(EthernetAddress(OUR_MAC))),
        &mut dev,
        SmolInstant::ZERO,
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(10, 0, 0, 1), 24)).unwrap();
    });
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rxbuf]),
        tcp::SocketBuffer::new(vec![0; 1024]),
    );
    sock.listen(PORT).unwrap();
    let mut sockets = SocketSet::new(vec![]);
    let h = sockets.add(sock);
    let t = SmolInstant::from_millis(1);
    for f in [arp_request(), syn()] {
        dev.handshake = Some(f);
        // One frame per poll: the device hands the handshake frame out once.
        handshake_poll(&mut iface, &mut dev, &mut sockets, t);
    }
    let isn = dev
        .sent
        .iter()
        .filter_map(|f| parse(f, ChecksumMode::Verify).ok())
        .find(|p| p.tcp.flags.syn())
        .expect("smoltcp SYN-ACK")
        .tcp
        .seq;
    dev.handshake = Some(final_ack(isn));
    handshake_poll(&mut iface, &mut dev, &mut sockets, t);
    dev.keep_sent = false;
    assert!(sockets.get::<tcp::Socket>(h).is_active());
    dev.pool.set_ack(isn.wrapping_add(1));
    smoltcp_loop(&mut iface, &mut dev, &mut sockets, h, total, app)
}

/// The timed receive loop (callgrind collects only this function: `--toggle-collect`).
#[inline(never)]
fn smoltcp_loop(
    iface: &mut Interface,
    dev: &mut Dev,
    sockets: &mut SocketSet,
    h: smoltcp::iface::SocketHandle,
    total: u64,
    app: &mut [u8],
) -> (Duration, u64) {
    let t = SmolInstant::from_millis(1);
    let mut app_off = 0usize;
    let mut got = 0u64;
    let mut lap = 0u64;
    let n = dev.pool.order.len();
    let start = StdInstant::now();
    'outer: loop {
        for chunk in 0..n.div_ceil(BATCH) {
            for k in chunk * BATCH..((chunk + 1) * BATCH).min(n) {
                let i = dev.pool.order[k];
                dev.pool.prepare(i, lap);
                dev.queue.push_back(i);
            }
            iface.poll(t, dev, sockets);
            let s = sockets.get_mut::<tcp::Socket>(h);
            loop {
                if app_off == app.len() {
                    app_off = 0;
                }
                let k = s.recv_slice(&mut app[app_off..]).unwrap_or(0);
                if k == 0 {
                    break;
                }
                app_off += k;
                got += k as u64;
            }
            if got >= total {
                break 'outer;
            }
        }
        lap += 1;
    }
    let el = start.elapsed();
    std::hint::black_box(&app);
    (el, got)
}

fn handshake_poll(iface: &mut Interface, dev: &mut Dev, sockets: &mut SocketSet, t: SmolInstant) {
    // Poll with the frame present, then clear it so later polls see an empty device.
    struct Once<'d, 'p>(&'d mut Dev<'p>, bool);
    impl Device for Once<'_, '_> {
        type RxToken<'a>
            = Rx<'a>
        where
            Self: 'a;
        type TxToken<'a>
            = Tx<'a>
        where
            Self: 'a;
        fn receive(&mut self, t: SmolInstant) -> Option<(Rx<'_>, Tx<'_>)> {
            if self.1 {
                return None;
            }
            self.1 = true;
            self.0.receive(t)
        }
        fn transmit(&mut self, t: SmolInstant) -> Option<Tx<'_>> {
            self.0.transmit(t)
        }
        fn capabilities(&self) -> DeviceCapabilities {
            self.0.capabilities()
        }
    }
    iface.poll(t, &mut Once(dev, false), sockets);
    dev.handshake = None;
    iface.poll(t, dev, sockets);
}

// ---------------------------------------------------------------- main

/// `NETRX_BENCH_CSUM=off`: neither side verifies received checksums (the callgrind report's
/// checksum column is the difference).
fn verify_checksums() -> bool {
    std::env::var("NETRX_BENCH_CSUM").map_or(true, |v| v != "off")
}

fn total_bytes() -> u64 {
    std::env::var("NETRX_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 << 20)
}

// ---------------------------------------------------------------- callgrind

/// Inclusive and exclusive instruction counts per function name from a callgrind output file.
fn callgrind_costs(out: &std::path::Path) -> (u64, Vec<(String, u64, u64)>) {
    let annotate = |inclusive: bool| -> String {
        let o = std::process::Command::new("callgrind_annotate")
            .arg(format!(
                "--inclusive={}",
                if inclusive { "yes" } else { "no" }
            ))
            .args(["--threshold=100", "--auto=no"])
            .arg(out)
            .output()
            .expect("callgrind_annotate (from valgrind) must be installed");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Inclusive listings name a function once per source file it has code from (inlined code
    // is listed under its own file): the largest entry is the function's inclusive cost.
    // Exclusive entries are summed.
    let parse = |text: &str, inclusive: bool| -> (u64, std::collections::HashMap<String, u64>) {
        let mut total = 0;
        let mut by_fn = std::collections::HashMap::new();
        for line in text.lines() {
            let line = line.trim_start();
            let Some((num, rest)) = line.split_once(' ') else {
                continue;
            };
            let Ok(n) = num.replace(',', "").parse::<u64>() else {
                continue;
            };
            let Some((_, rest)) = rest.split_once(')') else {
                continue;
            };
            let rest = rest.trim();
            if rest.starts_with("PROGRAM TOTALS") {
                total = n;
                continue;
            }
            // `file:function [object]`; inlined code is listed under its source file.
            let rest = rest.rsplit_once(" [").map_or(rest, |(a, _)| a);
            let func = rest.split_once(':').map_or(rest, |(_, f)| f);
            if inclusive {
                let e: &mut u64 = by_fn.entry(func.to_string()).or_default();
                *e = (*e).max(n);
            } else {
                *by_fn.entry(func.to_string()).or_default() += n;
            }
        }
        (total, by_fn)
    };
    let (total, inc) = parse(&annotate(true), true);
    let (_, exc) = parse(&annotate(false), false);
    let mut v: Vec<(String, u64, u64)> = inc
        .iter()
        .map(|(k, &i)| (k.clone(), i, exc.get(k).copied().unwrap_or(0)))
        .collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.2));
    (total, v)
}

/// `NETRX_BENCH_CALLGRIND`: instructions per segment of both receive loops under callgrind.
fn callgrind_report(bytes: Option<String>) {
    let exe = std::env::current_exe().expect("own path");
    let bytes = bytes.unwrap_or_else(|| (32u64 << 20).to_string());
    let dir = std::env::temp_dir().join(format!("rx_core_callgrind.{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!(
        "callgrind, only the timed receive loop collected, {} MiB per run ({})",
        bytes.parse::<u64>().unwrap_or(0) >> 20,
        dir.display()
    );
    println!(
        "{:8} {:8} {:>9} {:>8} {:>8} {:>8} {:>8}   (instructions per segment)",
        "workload", "side", "segments", "total", "copy", "checksum", "header"
    );
    for wl in ["1448", "1448r", "8948", "8948r"] {
        let seg: u64 = wl.trim_end_matches('r').parse().expect("size");
        for side in ["netrx", "smoltcp"] {
            let run = |csum: &str| -> (u64, u64, Vec<(String, u64, u64)>) {
                let out = dir.join(format!("callgrind.{side}.{wl}.csum-{csum}.out"));
                let run = std::process::Command::new("valgrind")
                    .args(["--tool=callgrind", "--quiet"])
                    .arg(format!("--callgrind-out-file={}", out.display()))
                    .arg(format!("--toggle-collect=rx_core::{side}_loop"))
                    .arg("--toggle-collect=rx_core::Pool::prepare")
                    .arg(&exe)
                    .env_remove("NETRX_BENCH_CALLGRIND")
                    .env("NETRX_BENCH_SIDE", side)
                    .env("NETRX_BENCH_ONLY", wl)
                    .env("NETRX_BENCH_BYTES", &bytes)
                    .env("NETRX_BENCH_CSUM", csum)
                    .output()
                    .expect("valgrind must be installed (apt-get install valgrind)");
                let stdout = String::from_utf8_lossy(&run.stdout);
                assert!(run.status.success(), "valgrind run failed: {stdout}");
                // "<side> <seg>B reorder=..: <got> bytes, .."
                let got: u64 = stdout
                    .split(": ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .expect("child's byte count");
                let (total, fns) = callgrind_costs(&out);
                (got, total, fns)
            };
            let (got, total, fns) = run("on");
            let (got_off, total_off, fns_off) = run("off");
            assert_eq!(got, got_off, "same stream with and without checksums");
            let segs = got / seg;
            // The payload copies are memcpy in the run without checksums (with them, netrx's
            // direct deliveries copy and sum in one pass: that pass minus the memcpy it
            // replaces is in the checksum column).
            let copy: u64 = fns_off
                .iter()
                .filter(|f| f.0.contains("memcpy") || f.0.contains("memmove"))
                .map(|f| f.2)
                .sum();
            // Header path: the run without checksums minus its copies. Checksum: what the run
            // with them adds, which can be negative where a fused copy-and-sum (3 instructions
            // per 8 bytes) replaces a memcpy that uses `rep movsb` (large copies; callgrind
            // counts each byte it moves as an instruction).
            let header = total_off.saturating_sub(copy);
            let csum = total as i64 - total_off as i64;
            let per = |x: u64| x as f64 / segs as f64;
            println!(
                "{wl:8} {side:8} {segs:>9} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
                per(total),
                per(copy),
                csum as f64 / segs as f64,
                per(header)
            );
            if std::env::var("NETRX_BENCH_CALLGRIND_TOP").is_ok() {
                for (name, i, e) in fns.iter().take(25) {
                    println!("      {:>8.1} self {:>8.1} incl  {name}", per(*e), per(*i));
                }
            }
        }
    }
}

fn main() {
    let total = total_bytes();
    let rounds: usize = std::env::var("NETRX_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut app = vec![0u8; APP_BUF];
    if let Ok(mode) = std::env::var("NETRX_BENCH_CALLGRIND") {
        callgrind_report(std::env::var("NETRX_BENCH_BYTES").ok());
        if mode == "only" {
            return;
        }
    }
    let workloads = [
        (1448usize, false),
        (1448, true),
        (8948, false),
        (8948, true),
    ];
    // `NETRX_BENCH_SIDE=netrx|smoltcp`: one run of one side per workload and nothing else (for
    // profilers such as callgrind).
    if let Ok(side) = std::env::var("NETRX_BENCH_SIDE") {
        let only = std::env::var("NETRX_BENCH_ONLY").ok();
        for &(seg, reorder) in &workloads {
            if only
                .as_deref()
                .is_some_and(|o| o != format!("{seg}{}", if reorder { "r" } else { "" }))
            {
                continue;
            }
            let mut pool = Pool::new(seg, total, reorder);
            let (d, got) = if side == "smoltcp" {
                run_smoltcp(&mut pool, total, &mut app)
            } else {
                run_netrx(&mut pool, total, &mut app)
            };
            let ns = d.as_nanos() as f64 * seg as f64 / got as f64;
            println!("{side} {seg}B reorder={reorder}: {got} bytes, {ns:.0} ns/seg");
        }
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut summary = Vec::new();
    for &(seg, reorder) in &workloads {
        let name = format!(
            "rx_core/{}B{}",
            seg,
            if reorder { "_reorder5" } else { "_inorder" }
        );
        let mut pool = Pool::new(seg, total, reorder);
        let mut g = c.benchmark_group(&name);
        g.throughput(Throughput::Bytes(total));
        g.bench_function("netrx", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| run_netrx(&mut pool, total, &mut app).0)
                    .sum()
            })
        });
        g.bench_function("smoltcp", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| run_smoltcp(&mut pool, total, &mut app).0)
                    .sum()
            })
        });
        g.finish();
        // Side by side, alternating, median of `rounds`.
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut pairs = Vec::new();
        for r in 0..rounds {
            // Alternate which side goes first; each pair runs back to back, so its ratio sees
            // the same machine load (the host's load swings between phases of a few seconds).
            let ((a, ga), (b, gb)) = if r % 2 == 0 {
                let x = run_netrx(&mut pool, total, &mut app);
                (x, run_smoltcp(&mut pool, total, &mut app))
            } else {
                let y = run_smoltcp(&mut pool, total, &mut app);
                (run_netrx(&mut pool, total, &mut app), y)
            };
            assert!(ga >= total && gb >= total);
            ours.push(a);
            theirs.push(b);
            pairs.push(b.as_secs_f64() / a.as_secs_f64());
        }
        ours.sort();
        theirs.sort();
        pairs.sort_by(f64::total_cmp);
        let (a, b) = (ours[rounds / 2], theirs[rounds / 2]);
        let gbps = |d: Duration| total as f64 * 8.0 / d.as_secs_f64() / 1e9;
        let segs = total as f64 / seg as f64;
        summary.push(format!(
            "{name:28} netrx {:6.1} Gbit/s ({:5.0} ns/seg)  smoltcp {:6.1} Gbit/s ({:5.0} ns/seg)  ratio netrx/smoltcp {:.2}  (pairs: median {:.2}, {:.2}-{:.2})",
            gbps(a),
            a.as_nanos() as f64 / segs,
            gbps(b),
            b.as_nanos() as f64 / segs,
            b.as_secs_f64() / a.as_secs_f64(),
            pairs[rounds / 2],
            pairs[0],
            pairs[rounds - 1]
        ));
    }
    c.final_summary();
    println!(
        "\nside by side, stream {} MiB, median of {rounds}:",
        total >> 20
    );
    for l in summary {
        println!("{l}");
    }
}
