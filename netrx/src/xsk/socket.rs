//! One AF_XDP socket bound to one queue, with its own UMEM and the four rings.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::cpu::QueueCpus;
use super::frames::{FrameError, FrameId, FrameState, FrameTable, StateCounts};
use super::ring::{Ring, RingOffsets};
use super::XskError;
use crate::copy::RegionMemory;
use ioat_driver::vfio::EventFd;

/// XDP headroom the kernel leaves in front of a received frame in copy mode.
pub const XDP_HEADROOM: u32 = 256;

/// Socket and UMEM sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketConfig {
    /// UMEM chunk size: 2048 or 4096.
    pub frame_size: u32,
    /// UMEM frames (chunks).
    pub frame_count: u32,
    /// Ring sizes (powers of two).
    pub fill_size: u32,
    pub comp_size: u32,
    pub rx_size: u32,
    pub tx_size: u32,
    /// Frames kept free for TX (never put into the fill ring).
    pub tx_reserve: u32,
    /// Bind with `XDP_USE_SG` (multi-descriptor frames for MTU above `frame_size - 256`).
    pub sg: bool,
    /// Kick TX from a helper thread instead of inline (copy mode). In copy mode the kick
    /// (`sendto`) transmits synchronously: on veth it runs the peer's whole receive path, and
    /// the peer's next transmissions (our received data, through XDP into this socket) in the
    /// kicking thread. A helper thread moves that work off the poller's core, so the kernel's
    /// half and ours run in parallel.
    pub tx_kick_thread: bool,
    /// The CPUs of this queue's poller and TX kicker threads (`None`: they float). See
    /// [`super::cpu::Placement`].
    pub cpus: Option<QueueCpus>,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            frame_size: 4096,
            frame_count: 4096,
            fill_size: 2048,
            comp_size: 1024,
            rx_size: 2048,
            tx_size: 1024,
            tx_reserve: 256,
            sg: false,
            tx_kick_thread: false,
            cpus: None,
        }
    }
}

impl SocketConfig {
    pub fn validate(&self) -> Result<(), XskError> {
        let bad = |m: String| Err(XskError::Config(m));
        if self.frame_size != 2048 && self.frame_size != 4096 {
            return bad(format!(
                "frame_size {} must be 2048 or 4096",
                self.frame_size
            ));
        }
        for (n, v) in [
            ("fill_size", self.fill_size),
            ("comp_size", self.comp_size),
            ("rx_size", self.rx_size),
            ("tx_size", self.tx_size),
        ] {
            if !v.is_power_of_two() || v < 2 {
                return bad(format!("{n} {v} must be a power of two >= 2"));
            }
        }
        if self.tx_reserve >= self.frame_count {
            return bad(format!(
                "tx_reserve {} must be below frame_count {}",
                self.tx_reserve, self.frame_count
            ));
        }
        Ok(())
    }

    /// The same UMEM in 2 KiB chunks (twice as many) when a frame of `mtu` (plus Ethernet and
    /// an optional VLAN header) fits one and scatter-gather is off; unchanged otherwise.
    pub fn with_small_frames(&self, mtu: u32, vlan: bool) -> SocketConfig {
        let l2 = 14 + if vlan { 4 } else { 0 };
        if self.sg || self.frame_size != 4096 || mtu + l2 > 2048 - XDP_HEADROOM {
            return self.clone();
        }
        SocketConfig {
            frame_size: 2048,
            frame_count: self.frame_count * 2,
            ..self.clone()
        }
    }

    /// Largest Ethernet frame (without FCS) one chunk holds in copy mode.
    pub fn max_linear_frame(&self) -> u32 {
        self.frame_size - XDP_HEADROOM
    }
}

/// One received descriptor: bytes `offset..offset+len` of UMEM frame `frame`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxDesc {
    pub frame: FrameId,
    pub offset: u32,
    pub len: u32,
}

/// One received packet: one descriptor, or several with `XDP_USE_SG`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxPacket {
    pub queue: u32,
    pub first: RxDesc,
    /// Further descriptors of a multi-buffer frame (empty, and not allocated, otherwise).
    pub more: Vec<RxDesc>,
}

impl RxPacket {
    pub fn len(&self) -> usize {
        self.first.len as usize + self.more.iter().map(|d| d.len as usize).sum::<usize>()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn descs(&self) -> impl Iterator<Item = &RxDesc> {
        std::iter::once(&self.first).chain(self.more.iter())
    }
}

/// Counters of one socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    /// `recv` calls that returned packets (rx_packets / rx_batches = mean batch).
    pub rx_batches: u64,
    pub rx_packets: u64,
    pub rx_descs: u64,
    pub rx_bytes: u64,
    /// Descriptors with a bad address/length or for a frame not given to the kernel.
    pub rx_invalid: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_completed: u64,
    pub tx_completion_invalid: u64,
    pub tx_ring_full: u64,
    pub tx_kicks: u64,
    pub fill_wakeups: u64,
    pub releases_invalid: u64,
}

/// Where the socket's frames are, by ring (see [`XskSocket::outstanding`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCounts {
    pub total: u32,
    /// In the fill ring, not yet taken by the kernel.
    pub fill_ring: u32,
    /// Taken by the kernel for receiving (in flight or in the RX ring, unread).
    pub kernel_rx: u32,
    /// Received and held by the application.
    pub held: u32,
    /// Allocated for TX and being written by the application.
    pub tx_alloc: u32,
    /// Free list.
    pub free: u32,
    /// In the TX ring, not yet taken by the kernel.
    pub tx_ring: u32,
    /// Taken by the kernel for TX, not yet in the completion ring.
    pub tx_kernel: u32,
    /// In the completion ring, not yet reaped.
    pub completion: u32,
}

/// Kernel-side counters (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// Why a TX submission did not happen (the frame stays allocated to the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("TX ring full: flush and reap completions, then retry")]
    RingFull,
    #[error("frame of {len} bytes does not fit a {frame_size}-byte UMEM frame")]
    TooLong { len: usize, frame_size: u32 },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The UMEM mapping. Shared (`Arc`) between its socket and the copy path, which reads frames
/// through it as a [`RegionMemory`]; unmapped when the last owner drops, after the socket closed.
struct Umem {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory reached only through raw pointers; moving the owner to
// another thread moves nothing but the address.
unsafe impl Send for Umem {}
// SAFETY: as above; no `&`-reference into the mapping is handed out by `Umem` itself.
unsafe impl Sync for Umem {}
// SAFETY: the mapping stays at `base` for `len` bytes until the last `Arc<Umem>` drops.
unsafe impl RegionMemory for Umem {
    fn as_ptr(&self) -> *mut u8 {
        self.base
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `XskSocket::open`; the socket (and with
        // it the kernel's registration) is closed before this runs (field order in XskSocket).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// Kicks a socket's TX from its own thread (see [`SocketConfig::tx_kick_thread`]). The poller
/// arms it and writes its eventfd only when it is not armed already; the thread disarms it
/// before each `sendto`, so descriptors produced meanwhile get another kick.
struct TxKicker {
    efd: Arc<EventFd>,
    armed: Arc<std::sync::atomic::AtomicBool>,
    /// Set while the thread is inside `sendto` (holding the socket's TX mutex).
    busy: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TxKicker {
    fn start(sock: RawFd, queue: u32, cpu: Option<usize>) -> io::Result<TxKicker> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let efd = Arc::new(EventFd::new()?);
        let armed = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b, st, ev) = (armed.clone(), busy.clone(), stop.clone(), efd.clone());
        let thread = std::thread::Builder::new()
            .name(format!("netrx-tx{queue}"))
            .spawn(move || {
                if let Some(c) = cpu {
                    super::cpu::pin_or_warn(c, "TX kicker");
                }
                while !st.load(Ordering::Acquire) {
                    if !matches!(ev.wait(std::time::Duration::from_millis(100)), Ok(Some(_))) {
                        continue;
                    }
                    b.store(true, Ordering::SeqCst);
                    a.store(false, Ordering::SeqCst);
                    // SAFETY: a zero-length sendto only kicks TX; the socket fd outlives this
                    // thread (XskSocket joins it before closing the fd).
                    unsafe {
                        libc::sendto(
                            sock,
                            std::ptr::null(),
                            0,
                            libc::MSG_DONTWAIT,
                            std::ptr::null(),
                            0,
                        )
                    };
                    b.store(false, Ordering::SeqCst);
                }
            })?;
        Ok(TxKicker {
            efd,
            armed,
            busy,
            stop,
            thread: Some(thread),
        })
    }

    /// A kick is asked for or running.
    fn active(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.armed.load(Ordering::SeqCst) || self.busy.load(Ordering::SeqCst)
    }

    /// Asks for a kick unless one is already asked for. Returns true if it wrote the eventfd.
    fn kick(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.armed.swap(true, Ordering::SeqCst) {
            return false;
        }
        let _ = self.efd.signal();
        true
    }
}

impl Drop for TxKicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.armed.store(false, std::sync::atomic::Ordering::SeqCst);
        self.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An AF_XDP socket on one queue. Owns its UMEM; not shared between threads.
pub struct XskSocket {
    // Field order = drop order: the TX kicker thread (it uses the fd), rings, then the socket
    // fd, then the UMEM.
    kicker: Option<TxKicker>,
    fill: Ring<u64>,
    comp: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fd: OwnedFd,
    umem: Arc<Umem>,
    frames: FrameTable,
    cfg: SocketConfig,
    ifindex: u32,
    queue: u32,
    copy_mode: bool,
    stats: XskStats,
}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("fd", &self.fd.as_raw_fd())
            .field("ifindex", &self.ifindex)
            .field("queue", &self.queue)
            .field("frames", &self.frames.counts())
            .field("stats", &self.stats)
            .finish()
    }
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points to a live, initialized T of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            v as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl XskSocket {
    /// Create a socket with its UMEM and rings and bind it (copy mode) to `queue` of `ifindex`.
    /// `ifname` is used in error messages only.
    pub fn open(
        ifindex: u32,
        ifname: &str,
        queue: u32,
        cfg: &SocketConfig,
    ) -> Result<Self, XskError> {
        cfg.validate()?;
        let e = |op: &'static str| move |err: io::Error| XskError::from_os(op, err);

        // SAFETY: plain socket(2); the fd is checked and then owned.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(XskError::from_os(
                "socket(AF_XDP)",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: fresh fd, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let len = cfg.frame_size as usize * cfg.frame_count as usize;
        // SAFETY: anonymous private mapping; checked against MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(XskError::from_os("mmap(UMEM)", io::Error::last_os_error()));
        }
        let umem = Arc::new(Umem {
            base: base as *mut u8,
            len,
        });

        // Zero the whole struct: on recent kernels the old padding is `tx_metadata_len`.
        // SAFETY: xdp_umem_reg is plain integers; all-zero is a valid value.
        let mut reg: libc::xdp_umem_reg = unsafe { std::mem::zeroed() };
        reg.addr = umem.base as u64;
        reg.len = len as u64;
        reg.chunk_size = cfg.frame_size;
        reg.headroom = 0;
        reg.flags = 0;
        setsockopt(raw, libc::XDP_UMEM_REG, &reg).map_err(e("setsockopt(XDP_UMEM_REG)"))?;
        setsockopt(raw, libc::XDP_UMEM_FILL_RING, &cfg.fill_size)
            .map_err(e("setsockopt(XDP_UMEM_FILL_RING)"))?;
        setsockopt(raw, libc::XDP_UMEM_COMPLETION_RING, &cfg.comp_size)
            .map_err(e("setsockopt(XDP_UMEM_COMPLETION_RING)"))?;
        setsockopt(raw, libc::XDP_RX_RING, &cfg.rx_size).map_err(e("setsockopt(XDP_RX_RING)"))?;
        setsockopt(raw, libc::XDP_TX_RING, &cfg.tx_size).map_err(e("setsockopt(XDP_TX_RING)"))?;

        // SAFETY: plain integers; zero is valid.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut optlen = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` is a writable buffer of `optlen` bytes.
        let r = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                &mut off as *mut _ as *mut libc::c_void,
                &mut optlen,
            )
        };
        if r < 0 {
            return Err(XskError::from_os(
                "getsockopt(XDP_MMAP_OFFSETS)",
                io::Error::last_os_error(),
            ));
        }
        if optlen as usize != std::mem::size_of::<libc::xdp_mmap_offsets>() {
            return Err(XskError::Config(format!(
                "kernel returned {optlen}-byte XDP_MMAP_OFFSETS (pre-5.4 layout): a newer kernel is needed"
            )));
        }
        let rx = Ring::map(
            raw,
            libc::XDP_PGOFF_RX_RING as u64,
            off.rx.into(),
            cfg.rx_size,
        )
        .map_err(e("mmap(RX ring)"))?;
        let tx = Ring::map(
            raw,
            libc::XDP_PGOFF_TX_RING as u64,
            off.tx.into(),
            cfg.tx_size,
        )
        .map_err(e("mmap(TX ring)"))?;
        let fill = Ring::map(
            raw,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            off.fr.into(),
            cfg.fill_size,
        )
        .map_err(e("mmap(fill ring)"))?;
        let comp = Ring::map(
            raw,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            RingOffsets::from(off.cr),
            cfg.comp_size,
        )
        .map_err(e("mmap(completion ring)"))?;

        let kicker = if cfg.tx_kick_thread {
            Some(
                TxKicker::start(raw, queue, cfg.cpus.map(|c| c.kicker))
                    .map_err(e("TX kicker thread"))?,
            )
        } else {
            None
        };
        let mut s = Self {
            kicker,
            fill,
            comp,
            rx,
            tx,
            fd,
            umem,
            frames: FrameTable::new(cfg.frame_count),
            cfg: cfg.clone(),
            ifindex,
            queue,
            copy_mode: true,
            stats: XskStats::default(),
        };
        // Pre-fill the fill ring before binding.
        s.refill();

        // With the TX kicker thread, no XDP_USE_NEED_WAKEUP: with it, every poll() on the socket
        // also transmits in copy mode (xsk_poll drives TX), and the poller's sleep would queue
        // on the socket's TX mutex behind the kicker's sendto. Copy mode needs no fill-ring
        // wakeups, and TX is always kicked in copy mode anyway.
        let mut flags = libc::XDP_COPY;
        if !cfg.tx_kick_thread {
            flags |= libc::XDP_USE_NEED_WAKEUP;
        }
        if cfg.sg {
            flags |= libc::XDP_USE_SG;
        }
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // A socket closed just before (e.g. a restarted service) releases its queue in a
        // deferred kernel work item: retry EBUSY for a short while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let bound = loop {
            // SAFETY: `sa` is a valid sockaddr_xdp of the length passed.
            let r = unsafe {
                libc::bind(
                    raw,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break Ok(());
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) || std::time::Instant::now() >= deadline {
                break Err(err);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        if let Err(err) = bound {
            return Err(match err.raw_os_error() {
                Some(libc::EINVAL) => XskError::Bind {
                    ifname: ifname.to_string(),
                    queue,
                    source: err,
                    hint: "check that the queue exists (`ethtool -l IF`, veth: `numrxqueues`) and that the interface is up".into(),
                },
                Some(libc::EBUSY) => XskError::Bind {
                    ifname: ifname.to_string(),
                    queue,
                    source: err,
                    hint: "another AF_XDP socket is bound to this queue: stop its owner".into(),
                },
                Some(libc::EPERM) | Some(libc::EACCES) => XskError::from_os("bind(AF_XDP)", err),
                _ => XskError::Bind {
                    ifname: ifname.to_string(),
                    queue,
                    source: err,
                    hint: "copy-mode bind refused".into(),
                },
            });
        }
        tracing::debug!(
            ifname,
            queue,
            sg = cfg.sg,
            frames = cfg.frame_count,
            "AF_XDP socket bound"
        );
        Ok(s)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
    /// Host address and length of the UMEM (for registering it once with a DMA mapper). It stays
    /// mapped at this address until the socket drops. Reach it only through raw pointers: the
    /// kernel writes frames that are in the fill ring at any time.
    pub fn umem_range(&self) -> (*mut u8, usize) {
        (self.umem.base, self.umem.len)
    }
    /// The UMEM as a copy region: the copy path reads received frames through it (region
    /// offset = UMEM address). It keeps the mapping alive even after the socket is dropped.
    pub fn umem_region(&self) -> Arc<dyn RegionMemory> {
        self.umem.clone()
    }
    pub fn queue(&self) -> u32 {
        self.queue
    }
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
    pub fn config(&self) -> &SocketConfig {
        &self.cfg
    }
    pub fn stats(&self) -> XskStats {
        self.stats
    }

    /// Put free frames (beyond the TX reserve) into the fill ring; wake the kernel if it asks.
    pub fn refill(&mut self) -> u32 {
        let spare = self.frames.free_count().saturating_sub(self.cfg.tx_reserve);
        let n = self.fill.free_slots(spare).min(spare);
        let mut written = 0;
        while written < n {
            let Some(f) = self.frames.take_free(FrameState::Fill) else {
                break;
            };
            self.fill
                .write(written, f as u64 * self.cfg.frame_size as u64);
            written += 1;
        }
        if written > 0 {
            self.fill.submit(written);
        }
        if self.fill.needs_wakeup() {
            self.wake_rx();
        }
        written
    }

    fn wake_rx(&mut self) {
        self.stats.fill_wakeups += 1;
        // SAFETY: recvfrom with a null buffer of length 0 only kicks the socket.
        unsafe {
            libc::recvfrom(
                self.raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// True while the TX kicker thread has a kick asked for or running. The data the kick
    /// makes the peer send is about to arrive, so a poller should poll its RX ring rather than
    /// sleep then: waking up after each batch was measured to cost more bandwidth than the spin
    /// saves CPU (`docs/performance.md`). (With a kicker the socket is bound without
    /// `XDP_USE_NEED_WAKEUP`, so a `poll()` would not transmit under the kicker's TX mutex.)
    pub fn tx_busy(&self) -> bool {
        self.kicker.as_ref().is_some_and(TxKicker::active)
    }

    /// Wait up to `timeout_ms` for received frames (poll POLLIN). Returns true if readable.
    pub fn wait_rx(&self, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: self.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        r > 0 && p.revents & libc::POLLIN != 0
    }

    /// Receive up to `max` packets into `out` (appended). The frames of every returned packet
    /// are held by the caller until [`release`](Self::release)/[`release_packet`](Self::release_packet).
    pub fn recv(&mut self, out: &mut Vec<RxPacket>, max: usize) -> usize {
        let avail = self.rx.available();
        // First pass: how many descriptors form complete packets (at most `max` of them).
        let mut take = 0u32;
        let mut packets = 0usize;
        let mut i = 0u32;
        while i < avail && packets < max {
            let d = self.rx.read(i);
            i += 1;
            if d.options & libc::XDP_PKT_CONTD == 0 {
                packets += 1;
                take = i;
            }
        }
        if take > 0 {
            self.stats.rx_batches += 1;
        }
        // Second pass: take those descriptors.
        let mut cur: Option<RxPacket> = None;
        let mut bad = false;
        let mut got = 0;
        for i in 0..take {
            let d = self.rx.read(i);
            self.stats.rx_descs += 1;
            match self.accept_desc(d) {
                Ok(rd) => match cur.as_mut() {
                    Some(p) => p.more.push(rd),
                    None => {
                        cur = Some(RxPacket {
                            queue: self.queue,
                            first: rd,
                            more: Vec::new(),
                        })
                    }
                },
                Err(()) => bad = true,
            }
            if d.options & libc::XDP_PKT_CONTD == 0 {
                match cur.take() {
                    Some(p) if !bad => {
                        self.stats.rx_packets += 1;
                        self.stats.rx_bytes += p.len() as u64;
                        out.push(p);
                        got += 1;
                    }
                    Some(p) => self.release_packet(&p),
                    None => {}
                }
                bad = false;
            }
        }
        if take > 0 {
            self.rx.release(take);
        }
        self.refill();
        got
    }

    fn accept_desc(&mut self, d: libc::xdp_desc) -> Result<RxDesc, ()> {
        let fs = self.cfg.frame_size as u64;
        let frame = d.addr / fs;
        let offset = (d.addr % fs) as u32;
        match self
            .frames
            .transition(frame, FrameState::Fill, FrameState::Held)
        {
            Ok(id) => {
                if offset as u64 + d.len as u64 > fs {
                    self.stats.rx_invalid += 1;
                    let _ = self
                        .frames
                        .transition(id as u64, FrameState::Held, FrameState::Free);
                    return Err(());
                }
                Ok(RxDesc {
                    frame: id,
                    offset,
                    len: d.len,
                })
            }
            Err(err) => {
                self.stats.rx_invalid += 1;
                tracing::warn!(queue = self.queue, addr = d.addr, %err, "invalid RX descriptor");
                Err(())
            }
        }
    }

    /// The bytes of a held descriptor (empty if the descriptor is not held by the caller).
    pub fn desc_bytes(&self, d: &RxDesc) -> &[u8] {
        if self.frames.state(d.frame) != Some(FrameState::Held) {
            return &[];
        }
        self.frame_slice(d.frame, d.offset, d.len)
    }

    /// The bytes of a single-descriptor packet, or of its first descriptor.
    pub fn packet_bytes(&self, p: &RxPacket) -> &[u8] {
        self.desc_bytes(&p.first)
    }

    /// Append all bytes of a (possibly multi-descriptor) packet to `out`.
    pub fn gather(&self, p: &RxPacket, out: &mut Vec<u8>) {
        for d in p.descs() {
            out.extend_from_slice(self.desc_bytes(d));
        }
    }

    fn frame_slice(&self, frame: FrameId, offset: u32, len: u32) -> &[u8] {
        let fs = self.cfg.frame_size as usize;
        let start = frame as usize * fs + offset as usize;
        if frame >= self.cfg.frame_count || offset as usize + len as usize > fs {
            return &[];
        }
        // SAFETY: the range lies inside one UMEM frame (checked above) that the application
        // owns (Held or TxAlloc, checked by callers), so the kernel does not write it while the
        // returned borrow of `self` lives.
        unsafe { std::slice::from_raw_parts(self.umem.base.add(start), len as usize) }
    }

    /// Give a received frame back (it returns to the fill ring on the next refill).
    pub fn release(&mut self, frame: FrameId) -> Result<(), FrameError> {
        let r = self
            .frames
            .transition(frame as u64, FrameState::Held, FrameState::Free)
            .map(|_| ());
        if r.is_err() {
            self.stats.releases_invalid += 1;
        }
        r
    }

    /// Release every frame of `p`.
    pub fn release_packet(&mut self, p: &RxPacket) {
        for d in p.descs() {
            let _ = self.release(d.frame);
        }
    }

    // ---- TX ----

    /// Allocate a frame to build a TX frame in (reaping completions if the pool is empty).
    pub fn tx_alloc(&mut self) -> Option<FrameId> {
        if self.frames.free_count() == 0 {
            self.reap_completions();
        }
        self.frames.take_free(FrameState::TxAlloc)
    }

    /// The whole writable chunk of a frame allocated with [`tx_alloc`](Self::tx_alloc).
    pub fn tx_buffer(&mut self, frame: FrameId) -> Option<&mut [u8]> {
        if self.frames.state(frame) != Some(FrameState::TxAlloc) {
            return None;
        }
        let fs = self.cfg.frame_size as usize;
        // SAFETY: the frame is inside the UMEM (state lookup succeeded) and in TxAlloc, so
        // neither the kernel nor another borrow touches it while `&mut self` is held.
        Some(unsafe { std::slice::from_raw_parts_mut(self.umem.base.add(frame as usize * fs), fs) })
    }

    /// Give an allocated frame back without sending it.
    pub fn tx_cancel(&mut self, frame: FrameId) -> Result<(), FrameError> {
        self.frames
            .transition(frame as u64, FrameState::TxAlloc, FrameState::Free)
            .map(|_| ())
    }

    /// Queue the first `len` bytes of an allocated frame for TX (published by
    /// [`flush`](Self::flush)). On error the frame stays allocated.
    pub fn tx_submit(&mut self, frame: FrameId, len: usize) -> Result<(), TxError> {
        if len > self.cfg.frame_size as usize {
            return Err(TxError::TooLong {
                len,
                frame_size: self.cfg.frame_size,
            });
        }
        match self.frames.state(frame) {
            Some(FrameState::TxAlloc) => {}
            Some(actual) => {
                return Err(FrameError::WrongState {
                    frame,
                    expected: FrameState::TxAlloc,
                    actual,
                }
                .into())
            }
            None => return Err(FrameError::OutOfRange(frame as u64).into()),
        }
        if self.tx.free_slots(1) == 0 {
            self.stats.tx_ring_full += 1;
            return Err(TxError::RingFull);
        }
        self.frames
            .transition(frame as u64, FrameState::TxAlloc, FrameState::Tx)?;
        let desc = libc::xdp_desc {
            addr: frame as u64 * self.cfg.frame_size as u64,
            len: len as u32,
            options: 0,
        };
        self.tx.write(0, desc);
        // Publishing per frame keeps the accounting exact; the kick is batched in `flush`.
        self.tx.submit(1);
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += len as u64;
        Ok(())
    }

    /// Copy `bytes` into a fresh frame and queue it. `Ok(false)` when no frame or ring slot is
    /// free right now (retry after [`flush`](Self::flush)).
    pub fn send(&mut self, bytes: &[u8]) -> Result<bool, TxError> {
        if bytes.len() > self.cfg.frame_size as usize {
            return Err(TxError::TooLong {
                len: bytes.len(),
                frame_size: self.cfg.frame_size,
            });
        }
        let Some(f) = self.tx_alloc() else {
            return Ok(false);
        };
        if let Some(buf) = self.tx_buffer(f) {
            buf[..bytes.len()].copy_from_slice(bytes);
        }
        match self.tx_submit(f, bytes.len()) {
            Ok(()) => Ok(true),
            Err(TxError::RingFull) => {
                let _ = self.tx_cancel(f);
                Ok(false)
            }
            Err(e) => {
                let _ = self.tx_cancel(f);
                Err(e)
            }
        }
    }

    /// Kick the kernel to transmit queued frames (always needed in copy mode) and reap
    /// completions.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.tx.produced_pending() > 0 && (self.copy_mode || self.tx.needs_wakeup()) {
            if let Some(k) = &self.kicker {
                if k.kick() {
                    self.stats.tx_kicks += 1;
                }
                self.reap_completions();
                return Ok(());
            }
            self.stats.tx_kicks += 1;
            // SAFETY: sendto with a null buffer of length 0 only kicks TX processing.
            let r = unsafe {
                libc::sendto(
                    self.raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    // Transient: the kernel is busy or out of buffers; retried on the next flush.
                    Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS)
                    | Some(libc::EINTR) => {}
                    _ => return Err(err),
                }
            }
        }
        self.reap_completions();
        Ok(())
    }

    /// Move completed TX frames back to the free list (then on to the fill ring).
    pub fn reap_completions(&mut self) -> u32 {
        let n = self.comp.available();
        let fs = self.cfg.frame_size as u64;
        for i in 0..n {
            let addr = self.comp.read(i);
            match self
                .frames
                .transition(addr / fs, FrameState::Tx, FrameState::Free)
            {
                Ok(_) => self.stats.tx_completed += 1,
                Err(err) => {
                    self.stats.tx_completion_invalid += 1;
                    tracing::warn!(queue = self.queue, addr, %err, "invalid completion");
                }
            }
        }
        if n > 0 {
            self.comp.release(n);
        }
        n
    }

    /// Flush and reap until no frame is in TX, or `timeout` passes. Returns frames still in TX.
    pub fn drain_tx(&mut self, timeout: std::time::Duration) -> u32 {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let _ = self.flush();
            let tx = self.frames.counts().tx;
            if tx == 0 || std::time::Instant::now() >= deadline {
                return tx;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    // ---- accounting ----

    /// Where every frame is right now.
    pub fn outstanding(&mut self) -> FrameCounts {
        let c: StateCounts = self.frames.counts();
        let fill_ring = self.fill.produced_pending().min(c.fill);
        let tx_ring = self.tx.produced_pending().min(c.tx);
        let completion = self
            .comp
            .producer_index()
            .wrapping_sub(self.comp.local)
            .min(c.tx - tx_ring);
        FrameCounts {
            total: self.frames.len(),
            fill_ring,
            kernel_rx: c.fill - fill_ring,
            held: c.held,
            tx_alloc: c.tx_alloc,
            free: c.free,
            tx_ring,
            tx_kernel: c.tx - tx_ring - completion,
            completion,
        }
    }

    /// Check that the accounting is consistent and that no frame is held by the application or
    /// stuck in TX (flushing TX for up to 1 s first). Call when the application is done.
    pub fn check_no_leak(&mut self) -> Result<FrameCounts, String> {
        self.drain_tx(std::time::Duration::from_secs(1));
        self.frames.check_consistent()?;
        let c = self.outstanding();
        let sum = c.fill_ring
            + c.kernel_rx
            + c.held
            + c.tx_alloc
            + c.free
            + c.tx_ring
            + c.tx_kernel
            + c.completion;
        if sum != c.total || c.total != self.cfg.frame_count {
            return Err(format!("frames do not add up: {c:?}"));
        }
        if c.held != 0 || c.tx_alloc != 0 || c.tx_ring + c.tx_kernel + c.completion != 0 {
            return Err(format!("frames leaked: {c:?}"));
        }
        Ok(c)
    }

    /// The kernel's counters for this socket.
    pub fn kernel_stats(&self) -> io::Result<KernelStats> {
        // SAFETY: plain integers; zero is valid.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `s` is a writable buffer of `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                self.raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                &mut s as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }
}
