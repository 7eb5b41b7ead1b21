//! The impairment relay: a netem stand-in between two interfaces.
//!
//! Whole Ethernet frames are forwarded both ways between interfaces `a` and `b` (normally
//! [`ThreeHost::relay_a`] and [`ThreeHost::relay_b`]); TCP frames are impaired per direction by
//! the pure state machine in [`core`] (loss, corruption, duplication, reordering, delay/jitter,
//! rate), everything else (ARP, IPv6 ND, UDP, ...) passes untouched.
//!
//! # Why AF_PACKET
//! The receiver under test (netrx) attaches its own XDP program to its veth end; an AF_XDP relay
//! would need XDP programs of its own on the relay's ends and would compete for the same
//! mechanisms we test. AF_PACKET sockets need no program, work in any namespace, see every frame
//! (`ETH_P_ALL`, promiscuous membership), and cost two syscalls per frame, which is plenty for
//! tests (see `docs/testing.md` for the measured ratio against the direct veth path).
//!
//! # Offload state
//! A frame re-sent from user space carries no offload state. The sockets use `PACKET_VNET_HDR`:
//! a frame that arrives with a partial checksum (the sender left it to "hardware") gets its TCP
//! or UDP checksum completed in software before impairment (counted as `csum_completed`), so a
//! corrupted frame still has a stale, wrong checksum. GSO super-frames (sender TSO/GSO on) cannot
//! be impaired per segment and exceed the MTU: they are dropped and counted (`gso_dropped`), with
//! a one-time warning — turn `tso`/`gso` off on the sender ([`ThreeHost`] does). GRO is turned
//! off on the relay's ends by [`ThreeHost`] for the same reason.
//!
//! # Use
//! ```no_run
//! use netrx_tests::netns::{LinkOpts, ThreeHost};
//! use netrx_tests::relay::{Impairment, Relay, RelaySettings};
//! # fn t() -> std::io::Result<()> {
//! let topo = ThreeHost::new(&LinkOpts::default())?;
//! let imp = Impairment { loss: 2.0, reorder: 25.0, duplicate: 1.0, corrupt: 0.1, ..Impairment::none() };
//! let relay = Relay::start(&topo, RelaySettings::both(imp, 7))?;
//! // ... traffic between topo.sender and topo.receiver ...
//! let counters = relay.stop(); // also on drop
//! println!("{}", counters.a_to_b);
//! # Ok(()) }
//! ```
//! From a shell: `cargo run -p netrx-tests --bin impair -- --a IF --b IF --loss 2 ...`.

pub mod core;
pub mod frame;

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use self::core::{Counters, Direction, Impairment};
use crate::netns::{Netns, ThreeHost};

/// Settings of both directions and the seed (the directions use separate RNG streams).
#[derive(Clone, Debug, PartialEq)]
pub struct RelaySettings {
    /// Frames read on `a`, sent on `b` (sender -> receiver in [`ThreeHost`]).
    pub a_to_b: Impairment,
    /// Frames read on `b`, sent on `a` (receiver -> sender).
    pub b_to_a: Impairment,
    /// RNG seed: the same seed with the same frame sequence makes the same decisions.
    pub seed: u64,
}

impl RelaySettings {
    /// The same impairment both ways.
    pub fn both(imp: Impairment, seed: u64) -> RelaySettings {
        RelaySettings {
            a_to_b: imp.clone(),
            b_to_a: imp,
            seed,
        }
    }

    /// Impair only `a -> b`; `b -> a` is transparent.
    pub fn a_to_b_only(imp: Impairment, seed: u64) -> RelaySettings {
        RelaySettings {
            a_to_b: imp,
            b_to_a: Impairment::none(),
            seed,
        }
    }

    /// A transparent relay (forwarding only).
    pub fn transparent() -> RelaySettings {
        RelaySettings::both(Impairment::none(), 0)
    }
}

/// Counters of both directions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Frames read on `a`, sent on `b`.
    pub a_to_b: Counters,
    /// Frames read on `b`, sent on `a`.
    pub b_to_a: Counters,
}

impl RelayCounters {
    /// Both directions summed.
    pub fn total(&self) -> Counters {
        let mut t = self.a_to_b.clone();
        t.add(&self.b_to_a);
        t
    }
}

impl std::fmt::Display for RelayCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "a->b: {}", self.a_to_b)?;
        write!(f, "b->a: {}", self.b_to_a)
    }
}

/// Starts relays.
pub struct Relay;

impl Relay {
    /// Starts forwarding between `topo.relay_a` and `topo.relay_b` inside `topo.relay`.
    pub fn start(topo: &ThreeHost, settings: RelaySettings) -> io::Result<RelayGuard<'_>> {
        Relay::start_on(Some(&topo.relay), &topo.relay_a, &topo.relay_b, settings)
    }

    /// Starts forwarding between interfaces `a` and `b` of namespace `ns` (`None`: the current
    /// thread's namespace). The interfaces should carry no addresses of their own.
    pub fn start_on<'t>(
        ns: Option<&'t Netns>,
        a: &str,
        b: &str,
        settings: RelaySettings,
    ) -> io::Result<RelayGuard<'t>> {
        let invalid = |dir: &str, e: String| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("relay {dir}: {e}"))
        };
        let d_ab = Direction::new(settings.a_to_b.clone(), settings.seed, 0)
            .map_err(|e| invalid("a->b", e))?;
        let d_ba = Direction::new(settings.b_to_a.clone(), settings.seed, 1)
            .map_err(|e| invalid("b->a", e))?;
        let open = || -> io::Result<(OwnedFd, OwnedFd)> {
            Ok((PacketSocket::open(a)?, PacketSocket::open(b)?))
        };
        let (sa, sb) = match ns {
            Some(ns) => ns.try_run(open)??,
            None => open()?,
        };
        // SAFETY: eventfd has no memory preconditions; the result is checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor we own.
        let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let live = [
            Arc::new(Mutex::new(Counters::default())),
            Arc::new(Mutex::new(Counters::default())),
        ];
        let flag = Arc::new(AtomicBool::new(false));
        let (stop2, flag2, live2) = (stop.clone(), flag.clone(), live.clone());
        let h = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || relay_loop([d_ab, d_ba], [sa, sb], &stop2, &flag2, &live2))?;
        let threads = vec![h];
        Ok(RelayGuard {
            stop,
            flag,
            threads,
            live,
            _topology: PhantomData,
        })
    }
}

/// A running relay; stops and joins its thread on [`RelayGuard::stop`] or drop. It borrows the
/// topology (or namespace) it runs in, so it always stops before that is torn down.
pub struct RelayGuard<'t> {
    stop: Arc<OwnedFd>,
    flag: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    live: [Arc<Mutex<Counters>>; 2],
    _topology: PhantomData<&'t Netns>,
}

impl RelayGuard<'_> {
    /// A snapshot of the counters (updated by the relay threads every few milliseconds).
    pub fn counters(&self) -> RelayCounters {
        let get = |m: &Mutex<Counters>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
        RelayCounters {
            a_to_b: get(&self.live[0]),
            b_to_a: get(&self.live[1]),
        }
    }

    /// Stops forwarding, joins the threads and returns the final counters.
    pub fn stop(mut self) -> RelayCounters {
        self.shutdown();
        self.counters()
    }

    fn shutdown(&mut self) {
        self.flag.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for RelayGuard<'_> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

const ETH_P_ALL: u16 = 0x0003;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;

struct PacketSocket;

impl PacketSocket {
    /// An AF_PACKET raw socket bound to `ifname` in the calling thread's namespace: all
    /// protocols, promiscuous, own transmissions ignored, virtio-net header on.
    fn open(ifname: &str) -> io::Result<OwnedFd> {
        let cname = std::ffi::CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has NUL"))?;
        // SAFETY: `cname` is NUL-terminated and outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "relay: no interface `{ifname}` in this network namespace (check `ip link`)"
                ),
            ));
        }
        // Protocol 0 at creation: nothing is queued until bind names the interface.
        // SAFETY: plain socket(2) call; result checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("relay: AF_PACKET socket: {e} (needs root / CAP_NET_RAW)"),
            ));
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        setsockopt_int(raw, libc::SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")?;
        setsockopt_int(
            raw,
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            1,
            "PACKET_IGNORE_OUTGOING",
        )?;
        // Large buffers ride out scheduling gaps on a busy machine (best effort).
        let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20, "");
        let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20, "");
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and the length matches it.
        let rc = unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("relay: bind to `{ifname}`: {e}"),
            ));
        }
        // SAFETY: packet_mreq is plain data; all-zero is valid.
        let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mr.mr_ifindex = ifindex as i32;
        mr.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY: `mr` is a valid packet_mreq and the length matches it.
        let rc = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mr as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as u32,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("relay: promiscuous mode on `{ifname}`: {e}"),
            ));
        }
        Ok(fd)
    }
}

fn setsockopt_int(fd: RawFd, level: i32, opt: i32, v: i32, what: &str) -> io::Result<()> {
    // SAFETY: passes a valid i32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("relay: setsockopt {what}: {e}"),
        ));
    }
    Ok(())
}

/// Kernel-side drops since the last call (PACKET_STATISTICS resets on read).
fn kernel_drops(fd: RawFd) -> u64 {
    // SAFETY: tpacket_stats is plain data; all-zero is valid.
    let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `st` and `len` are valid for writing and describe the same buffer.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        u64::from(st.tp_drops)
    } else {
        0
    }
}

/// Completes a partial (offloaded) checksum: the 16-bit field at `start + off` holds the
/// pseudo-header sum; the Internet checksum of `frame[start..]` goes there. Returns false when
/// the offsets do not fit the frame.
fn complete_csum(frame: &mut [u8], start: usize, off: usize) -> bool {
    let Some(field) = start.checked_add(off) else {
        return false;
    };
    if field + 2 > frame.len() || start >= frame.len() {
        return false;
    }
    let mut sum: u64 = 0;
    let data = &frame[start..];
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Frames read or sent per syscall (`recvmmsg` / `sendmmsg`).
const BATCH: usize = 64;
/// Receive slot per frame: jumbo frames fit; anything longer is truncated and counted.
const SLOT: usize = 16 * 1024;

/// Receive buffers for one `recvmmsg` call.
struct RxBatch {
    bufs: Vec<u8>,
    hdrs: Vec<[u8; VNET_HDR_LEN]>,
    iovs: Vec<[libc::iovec; 2]>,
    msgs: Vec<libc::mmsghdr>,
}

impl RxBatch {
    fn new() -> RxBatch {
        RxBatch {
            bufs: vec![0u8; BATCH * SLOT],
            hdrs: vec![[0u8; VNET_HDR_LEN]; BATCH],
            iovs: Vec::with_capacity(BATCH),
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            msgs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
        }
    }

    /// Reads up to `BATCH` frames; returns how many (0 when none are waiting or on error).
    /// Frame `i` is `(msg_len, header, slot)`, via [`RxBatch::frame`].
    fn recv(&mut self, fd: RawFd) -> usize {
        self.iovs.clear();
        for (h, b) in self.hdrs.iter_mut().zip(self.bufs.chunks_exact_mut(SLOT)) {
            self.iovs.push([
                libc::iovec {
                    iov_base: h.as_mut_ptr().cast(),
                    iov_len: VNET_HDR_LEN,
                },
                libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: SLOT,
                },
            ]);
        }
        for (m, iov) in self.msgs.iter_mut().zip(self.iovs.iter_mut()) {
            // SAFETY: msghdr is plain data; all-zero is valid.
            m.msg_hdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov.as_mut_ptr();
            m.msg_hdr.msg_iovlen = 2;
            m.msg_len = 0;
        }
        // SAFETY: every mmsghdr points at two iovecs into `hdrs`/`bufs`, which stay alive and
        // unaliased for the call; MSG_TRUNC makes msg_len the real frame length.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        // Errors (EAGAIN, or e.g. ENETDOWN reported once) mean "nothing now".
        n.max(0) as usize
    }

    /// Frame `i` of the last batch: (real length, virtio-net header, received bytes).
    fn frame(&self, i: usize) -> (usize, [u8; VNET_HDR_LEN], &[u8]) {
        let total = self.msgs[i].msg_len as usize;
        let len = total.saturating_sub(VNET_HDR_LEN);
        let got = len.min(SLOT);
        (len, self.hdrs[i], &self.bufs[i * SLOT..i * SLOT + got])
    }
}

/// Sends `frames` with all-zero virtio-net headers (no offloads) in `sendmmsg` batches. Retries
/// briefly while the device is busy; returns how many frames could not be sent.
fn send_batch(fd: RawFd, frames: &[Vec<u8>]) -> u64 {
    let hdr = [0u8; VNET_HDR_LEN];
    let iovs: Vec<[libc::iovec; 2]> = frames
        .iter()
        .map(|f| {
            [
                libc::iovec {
                    iov_base: hdr.as_ptr() as *mut libc::c_void,
                    iov_len: VNET_HDR_LEN,
                },
                libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                },
            ]
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov.as_ptr() as *mut libc::iovec;
            m.msg_hdr.msg_iovlen = 2;
            m
        })
        .collect();
    let mut failed = 0;
    let mut at = 0;
    let mut busy_retries = 0;
    while at < msgs.len() {
        let rest = &mut msgs[at..];
        // SAFETY: each mmsghdr points at iovecs over `hdr` and a frame, all alive for the call;
        // the kernel only reads them.
        let n =
            unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, libc::MSG_DONTWAIT) };
        if n > 0 {
            at += n as usize;
            busy_retries = 0;
            continue;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR) if busy_retries < 200 => {
                busy_retries += 1;
                if busy_retries < 20 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            // This frame is refused (EMSGSIZE, ...) or the device stayed busy: skip it.
            _ => {
                failed += 1;
                at += 1;
                busy_retries = 0;
            }
        }
    }
    failed
}

/// Per-direction shell state beside the pure core.
struct Port {
    d: Direction,
    extra: Counters,
    warned_gso: bool,
    out: Vec<Vec<u8>>,
}

impl Port {
    /// Reads one batch of frames from `input` into the core; returns how many were read.
    fn rx(&mut self, input: RawFd, rxb: &mut RxBatch, now: &dyn Fn() -> u64) -> usize {
        let n = rxb.recv(input);
        if n == 0 {
            return 0;
        }
        let t = now();
        for i in 0..n {
            let (len, h, bytes) = rxb.frame(i);
            if len > bytes.len() || h[1] != 0 {
                self.extra.gso_dropped += 1;
                self.extra.max_frame_len = self.extra.max_frame_len.max(len as u64);
                if !self.warned_gso {
                    self.warned_gso = true;
                    eprintln!(
                        "relay: dropping GSO/GRO super-frames ({len} bytes): turn TSO off on the \
                         sender (`ethtool -K IF tso off gso off`) and GRO off on the relay's \
                         interfaces (`ethtool -K IF gro off`)"
                    );
                }
                continue;
            }
            let mut frame = bytes.to_vec();
            if h[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                let cs = usize::from(u16::from_le_bytes([h[6], h[7]]));
                let co = usize::from(u16::from_le_bytes([h[8], h[9]]));
                if complete_csum(&mut frame, cs, co) {
                    self.extra.csum_completed += 1;
                }
            }
            self.d.push(frame, t);
        }
        n
    }

    /// Sends every frame due at `now` to `output`; returns how many left the core.
    fn tx(&mut self, output: RawFd, now: u64) -> usize {
        let mut n = 0;
        loop {
            self.out.clear();
            while self.out.len() < BATCH {
                match self.d.pop_ready(now) {
                    Some(f) => self.out.push(f),
                    None => break,
                }
            }
            if self.out.is_empty() {
                return n;
            }
            n += self.out.len();
            self.extra.send_errors += send_batch(output, &self.out);
        }
    }

    fn publish(&self, live: &Mutex<Counters>) {
        let mut c = self.d.counters.clone();
        c.add(&self.extra);
        *live.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }
}

/// The relay's single poll loop: both directions on one thread. One thread (rather than one per
/// direction) matters on a busy machine: sending a frame runs the receiving namespace's stack
/// inline, and the ACKs it produces are picked up in the same loop without a thread wake-up.
fn relay_loop(
    dirs: [Direction; 2],
    socks: [OwnedFd; 2],
    stop: &OwnedFd,
    flag: &AtomicBool,
    live: &[Arc<Mutex<Counters>>; 2],
) {
    let start = Instant::now();
    let now_ns = || start.elapsed().as_nanos() as u64;
    let mut rxb = RxBatch::new();
    let [d0, d1] = dirs;
    let mut ports = [d0, d1].map(|d| Port {
        d,
        extra: Counters::default(),
        warned_gso: false,
        out: Vec::with_capacity(BATCH),
    });
    let fds = [socks[0].as_raw_fd(), socks[1].as_raw_fd()];
    let mut last_publish = Instant::now();
    while !flag.load(Ordering::Relaxed) {
        let mut moved = 0;
        for i in 0..2 {
            moved += ports[i].rx(fds[i], &mut rxb, &now_ns);
            moved += ports[i].tx(fds[1 - i], now_ns());
        }
        if last_publish.elapsed() >= Duration::from_millis(5) {
            for i in 0..2 {
                ports[i].extra.kernel_rx_drops += kernel_drops(fds[i]);
                ports[i].publish(&live[i]);
            }
            last_publish = Instant::now();
        }
        if moved > 0 {
            continue;
        }
        // Idle: sleep until input, the stop signal, or the next deadline.
        let now = now_ns();
        let timeout_ns = ports
            .iter()
            .filter_map(|p| p.d.next_deadline())
            .min()
            .map_or(100_000_000, |dl| dl.saturating_sub(now).min(100_000_000));
        if timeout_ns == 0 {
            continue;
        }
        let mut pfds = [fds[0], fds[1], stop.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: `pfds` and `ts` are valid for the call; no signal mask is changed.
        unsafe { libc::ppoll(pfds.as_mut_ptr(), 3, &ts, std::ptr::null()) };
    }
    for i in 0..2 {
        ports[i].d.discard();
        ports[i].extra.kernel_rx_drops += kernel_drops(fds[i]);
        ports[i].publish(&live[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csum_completion_matches_a_full_sum() {
        // The checksum field holds the pseudo-header sum (0x1234); after completion, the covered
        // range plus that pseudo-header sum must fold to 0xffff (what the receiver verifies).
        let mut f: Vec<u8> = (0..101u8).collect();
        f[20] = 0x12;
        f[21] = 0x34;
        assert!(complete_csum(&mut f, 4, 16));
        let mut sum: u64 = 0x1234;
        for c in f[4..].chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert!(!complete_csum(&mut f, 100, 16));
        assert!(!complete_csum(&mut f, usize::MAX, 16));
    }
}
