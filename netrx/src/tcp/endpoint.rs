//! The endpoint: listeners, connection table, dispatch, output queues and timers.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use super::conn::{Conn, Io, Outcome, Released};
use super::reasm::SegRef;
use super::timers::{earliest, Instant};
use super::{Config, ConnId, ConnInfo, FrameId, State, TcpError};
use crate::wire::checksum::Checksum;
use crate::wire::fast::{self, FastSeg, FlowBytes};
use crate::wire::tcp::{OptionsOut, TcpFlags};
use crate::wire::{
    self, ChecksumMode, IpPair, Packet, ReplyAddrs, SegmentSpec, TxFrame, WireError,
};

/// Whether the endpoint kept a reference to a frame it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDisposition {
    /// The frame is referenced; it comes back as [`EndpointEvent::FrameReleased`].
    Held,
    /// Not referenced: the shell may reuse the frame at once.
    Free,
}

/// A piece of in-order payload handed to the consumer. Release it with
/// [`Endpoint::release`] once every copy out of it has completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxSegment {
    pub conn: ConnId,
    pub frame: FrameId,
    /// Offset of the payload in the frame.
    pub offset: u32,
    pub len: u32,
    /// Stream offset of the first byte (0 = first byte after the SYN).
    pub stream_offset: u64,
    /// The segment carried PSH and this piece ends it.
    pub psh: bool,
    slot: u32,
}

impl RxSegment {
    #[inline]
    fn new(conn: ConnId, frame: FrameId, g: SegRef) -> Self {
        RxSegment {
            conn,
            frame,
            offset: g.off,
            len: g.len,
            stream_offset: g.start,
            psh: g.psh,
            slot: g.slot,
        }
    }
}

/// A reader waiting for data, for [`Endpoint::on_frame_into`]: the next in-order payload of a
/// connection is copied straight into its buffer, and its checksum verified in the same pass
/// (the kernel's `csum_and_copy` into a waiting reader's iovec, `tcp_copy_to_iovec` under the
/// old `ucopy`). The frame is then free at once: no queue entry, no `read`, no `release`.
pub trait DirectReader {
    /// Copies `payload`, the next bytes of `conn`'s stream after everything the reader has, into
    /// its buffer if it wants them now; `None` declines (they are queued as usual). With
    /// `verify`, the copy sums as it goes ([`crate::wire::checksum::copy_and_sum`]) and returns
    /// the payload's sum; without, the sum is not looked at. The bytes are not the reader's
    /// until [`DirectReader::filled`]: after a `copy_in` without it (the segment failed its
    /// checksum) they are garbage to be overwritten.
    fn copy_in(
        &mut self,
        conn: ConnId,
        payload: &[u8],
        psh: bool,
        verify: bool,
    ) -> Option<Checksum>;
    /// The bytes of the last `copy_in` are the stream's (verified, in order, and counted as
    /// received and read); `psh` as given to that `copy_in`.
    fn filled(&mut self, conn: ConnId, len: usize, psh: bool);
}

/// What happened in the endpoint, for the shell or the per-queue core to act on, in order.
/// Drained with [`Endpoint::poll_event`] (one queue, like quinn-proto's `Connection::poll`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointEvent {
    /// A connection to `port` completed its handshake: [`Endpoint::accept`] returns it.
    Acceptable { port: u16 },
    /// An accepted connection has new in-order data (or data became readable on accept).
    Readable(ConnId),
    /// The peer's FIN arrived in order: after the data already readable, the stream ends.
    Fin(ConnId),
    /// The connection was reset by the peer.
    Reset(ConnId),
    /// The connection was aborted by a timeout (retransmissions or idle).
    TimedOut(ConnId),
    /// The endpoint no longer references this frame: give it back (fill ring).
    FrameReleased(FrameId),
}

/// Endpoint-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub frames_in: u64,
    /// Frames taken by header prediction (`Config::fast_path`); the rest took the full path.
    pub fast_path: u64,
    /// Of those, payloads copied straight to a waiting reader ([`Endpoint::on_frame_into`]).
    pub direct_deliveries: u64,
    pub parse_errors: u64,
    pub fragments: u64,
    pub bad_checksums: u64,
    pub not_tcp: u64,
    pub no_listener: u64,
    pub rst_sent: u64,
    pub syns: u64,
    pub syn_backlog_drops: u64,
    /// SYN-ACKs sent with a cookie (SYN backlog full).
    pub syn_cookies_sent: u64,
    /// Connections created from a valid cookie ACK.
    pub syn_cookies_ok: u64,
    /// ACKs to a listener that carried no valid cookie (answered with RST).
    pub syn_cookies_failed: u64,
    /// New connections refused at `Config::max_connections` (SYNs and cookie ACKs) because no
    /// connection was idle long enough to be reclaimed.
    pub conn_limit_drops: u64,
    /// Idle connections reset to make room at `Config::max_connections`.
    pub conns_reclaimed: u64,
    pub established: u64,
    pub closed: u64,
    /// Out-of-order segments refused because the frame pool was down to its reserve.
    pub pressure_drops: u64,
    /// Times the frames held crossed the pool's high-water mark (a prune ran).
    pub prune_runs: u64,
    /// Out-of-order segments pruned under pool pressure, and their frames.
    pub ooo_pruned_segments: u64,
    pub ooo_pruned_frames: u64,
    /// Frames (in `frame_truesize` units) held by all connections now, and the most so far.
    pub frames_held: u64,
    pub frames_held_peak: u64,
}

/// The MSS values a SYN cookie can carry (as Linux's `msstab`).
const COOKIE_MSS: [u16; 4] = [536, 1300, 1440, 1460];
const COOKIE_HASH_MASK: u32 = (1 << 19) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    /// `src` is the remote address.
    ip: IpPair,
    remote_port: u16,
    local_port: u16,
}

impl FlowKey {
    fn of(p: &Packet) -> Self {
        FlowKey {
            ip: p.ip,
            remote_port: p.tcp.src_port,
            local_port: p.tcp.dst_port,
        }
    }
}

/// Entries of the header-prediction flow cache (direct-mapped by [`FlowBytes::hash`]).
const FLOW_CACHE: usize = 64;

/// A flow-cache entry: the IPv4 flow's wire bytes and its connection slot. The key is always
/// compared whole, so collisions (even crafted ones) only cost a miss and the full path.
#[derive(Debug, Clone, Copy)]
struct FlowEntry {
    key: FlowBytes,
    idx: u32,
    gen: u32,
}

const NO_FLOW: FlowEntry = FlowEntry {
    key: FlowBytes { addrs: 0, ports: 0 },
    idx: u32::MAX,
    gen: 0,
};

#[inline]
fn flow_slot(key: &FlowBytes) -> usize {
    (key.hash() >> (64 - FLOW_CACHE.trailing_zeros())) as usize
}

/// Header prediction's connection for `s`: the flow cache's entry, if it still names a live
/// connection (an exact key compare and the slot's generation).
#[inline(always)]
fn predicted<'a>(flows: &[FlowEntry], slots: &'a mut [Slot], s: &FastSeg) -> Option<&'a mut Conn> {
    let e = flows[flow_slot(&s.key)];
    if e.key != s.key {
        return None;
    }
    let slot = slots.get_mut(e.idx as usize)?;
    if slot.gen != e.gen {
        return None;
    }
    slot.conn.as_deref_mut()
}

/// Notes `id` in a list of connections to check at the next [`Endpoint::flush`] (which sorts
/// and deduplicates; a run of the same connection is noted once here).
#[inline(always)]
fn note(list: &mut Vec<ConnId>, id: ConnId) {
    if list.last() != Some(&id) {
        list.push(id);
    }
}

#[derive(Debug, Default)]
struct Listener {
    embryonic: usize,
    accept: VecDeque<ConnId>,
}

#[derive(Debug)]
struct Slot {
    gen: u32,
    conn: Option<Box<Conn>>,
    /// Events already reported for this connection (`REPORTED_*`).
    reported: u8,
}

const REPORTED_FIN: u8 = 1;
const REPORTED_ERR: u8 = 2;

/// The receive endpoint. See the module documentation.
#[derive(Debug)]
pub struct Endpoint {
    cfg: Config,
    listeners: HashMap<u16, Listener>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    map: HashMap<FlowKey, u32>,
    last: Option<(FlowKey, u32)>,
    /// Header prediction's flow lookup: no general-purpose hash, an exact compare.
    flows: Box<[FlowEntry; FLOW_CACHE]>,
    tx: VecDeque<TxFrame>,
    released: Released,
    /// Truesize of every frame ever held (minus `released.mem`: what is held now).
    held_in: u64,
    held_peak: u64,
    /// `cfg.pool_high()`, or `u64::MAX` without a pool (computed once: it is read per frame).
    pool_high: u64,
    /// Reclaimed connections whose record waits for the application's close: they no longer
    /// count against `max_connections`.
    reclaimed_live: usize,
    /// No connection can be reclaimed before this time (a failed scan's lower bound).
    reclaim_not_before: Instant,
    events: VecDeque<EndpointEvent>,
    /// Connections whose memory shrank since the last window-update check.
    wnd_check: Vec<ConnId>,
    /// Connections with in-order data waiting for the batch-end ACK.
    ack_check: Vec<ConnId>,
    stats: EndpointStats,
}

impl Endpoint {
    pub fn new(cfg: Config) -> Self {
        let pool_high = if cfg.frame_pool == 0 {
            u64::MAX
        } else {
            cfg.pool_high()
        };
        Endpoint {
            cfg,
            listeners: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            map: HashMap::new(),
            last: None,
            flows: Box::new([NO_FLOW; FLOW_CACHE]),
            tx: VecDeque::new(),
            released: Released::default(),
            held_in: 0,
            held_peak: 0,
            pool_high,
            reclaimed_live: 0,
            reclaim_not_before: Instant::from_nanos(0),
            events: VecDeque::new(),
            wnd_check: Vec::new(),
            ack_check: Vec::new(),
            stats: EndpointStats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> EndpointStats {
        let ts = self.cfg.frame_truesize.max(1) as u64;
        EndpointStats {
            frames_held: self.held_mem().div_ceil(ts),
            frames_held_peak: self.held_peak.div_ceil(ts),
            ..self.stats
        }
    }

    /// Truesize of the frames all connections hold now (queued, out of order, being copied).
    pub fn held_mem(&self) -> u64 {
        self.held_in.saturating_sub(self.released.mem)
    }

    /// Truesize an out-of-order segment may take before the pool reaches its reserve.
    #[inline]
    fn pool_free(&self) -> u64 {
        if self.cfg.frame_pool == 0 {
            return u64::MAX;
        }
        self.cfg
            .pool_mem()
            .saturating_sub(self.cfg.pool_reserve())
            .saturating_sub(self.held_mem())
    }

    /// Accepts connections to `port`.
    pub fn listen(&mut self, port: u16) -> Result<(), TcpError> {
        if self.listeners.contains_key(&port) {
            return Err(TcpError::PortInUse(port));
        }
        self.listeners.insert(port, Listener::default());
        Ok(())
    }

    /// The next established connection on `port`, if any. What it already received is
    /// reported at once (`Readable`, `Fin`, `Reset`/`TimedOut` events).
    pub fn accept(&mut self, port: u16) -> Option<ConnId> {
        let id = self.listeners.get_mut(&port)?.accept.pop_front()?;
        if let Some(c) = self.conn_mut(id) {
            c.accepted = true;
            let news = c.available > 0 || c.eof || c.error.is_some();
            self.report(id.idx, news);
        }
        Some(id)
    }

    /// Connections waiting in `port`'s accept queue.
    pub fn accept_queue_len(&self, port: u16) -> usize {
        self.listeners.get(&port).map_or(0, |l| l.accept.len())
    }

    /// Number of live connection records (embryonic, established, closing, and closed ones the
    /// application has not closed yet).
    pub fn connection_count(&self) -> usize {
        self.live
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        let s = self.slots.get(id.idx as usize)?;
        if s.gen != id.gen {
            return None;
        }
        s.conn.as_deref()
    }

    /// Runs `f` on a live connection with its I/O context.
    fn with_conn<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut Conn, &mut Io) -> R,
    ) -> Result<R, TcpError> {
        let s = self
            .slots
            .get_mut(id.idx as usize)
            .ok_or(TcpError::UnknownConnection)?;
        if s.gen != id.gen {
            return Err(TcpError::UnknownConnection);
        }
        let c = s.conn.as_deref_mut().ok_or(TcpError::UnknownConnection)?;
        let mut io = Io {
            cfg: &self.cfg,
            tx: &mut self.tx,
            released: &mut self.released,
            pool_free: u64::MAX,
        };
        Ok(f(c, &mut io))
    }

    #[inline]
    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let s = self.slots.get_mut(id.idx as usize)?;
        if s.gen != id.gen {
            return None;
        }
        s.conn.as_deref_mut()
    }

    /// Parses `bytes` and processes the segment. `frame` identifies the buffer for later
    /// release; `truesize` is what it costs against rcvbuf (the UMEM chunk size, or several for
    /// a multi-buffer frame).
    #[inline(always)]
    pub fn on_frame(
        &mut self,
        now: Instant,
        frame: FrameId,
        bytes: &[u8],
        truesize: u32,
    ) -> FrameDisposition {
        self.stats.frames_in += 1;
        let fast = if self.cfg.fast_path {
            self.on_frame_fast(now, frame, bytes, truesize)
        } else {
            None
        };
        let d = match fast {
            Some(d) => d,
            None => self.on_frame_full(now, frame, bytes, truesize),
        };
        if d == FrameDisposition::Held {
            self.took(truesize);
        }
        d
    }

    /// [`Endpoint::on_frame`] with a waiting reader: a segment header prediction accepts goes
    /// straight into `reader`'s buffer (copied and checksummed in one pass) when the
    /// connection has nothing else unread; it is then [`FrameDisposition::Free`] at once.
    /// Everything else takes [`Endpoint::on_frame`].
    #[inline(always)]
    pub fn on_frame_into(
        &mut self,
        now: Instant,
        frame: FrameId,
        bytes: &[u8],
        truesize: u32,
        reader: &mut impl DirectReader,
    ) -> FrameDisposition {
        if self.cfg.fast_path && self.on_frame_direct(now, bytes, truesize, reader) {
            self.stats.frames_in += 1;
            return FrameDisposition::Free;
        }
        self.on_frame(now, frame, bytes, truesize)
    }

    /// The direct delivery of [`Endpoint::on_frame_into`]; false leaves the frame untouched
    /// (a bad checksum is then found again, and counted, by the usual path).
    #[inline(always)]
    fn on_frame_direct(
        &mut self,
        now: Instant,
        bytes: &[u8],
        truesize: u32,
        reader: &mut impl DirectReader,
    ) -> bool {
        let Some(s) = fast::parse(bytes) else {
            return false;
        };
        let Some(c) = predicted(&self.flows[..], &mut self.slots, &s) else {
            return false;
        };
        if !c.direct_ok() || !c.fast_accepts(&s, truesize, now) {
            return false;
        }
        let (at, len) = (s.payload_offset as usize, s.payload_len as usize);
        let Some(src) = bytes.get(at..at + len) else {
            return false;
        };
        let verify = self.cfg.checksum == ChecksumMode::Verify;
        let Some(sum) = reader.copy_in(c.id, src, s.psh(), verify) else {
            return false;
        };
        if verify && !fast::verify_with_payload_sum(bytes, &s, sum) {
            return false;
        }
        let (cfg, tx, released) = (&self.cfg, &mut self.tx, &mut self.released);
        let batch_ack = c.fast_apply(&s, None, truesize, now, cfg, || Io {
            cfg,
            tx,
            released,
            pool_free: u64::MAX,
        });
        let id = c.id;
        reader.filled(id, len, s.psh());
        self.stats.fast_path += 1;
        self.stats.direct_deliveries += 1;
        if batch_ack {
            note(&mut self.ack_check, id);
        }
        // The data was read as it arrived: the window may want an update, as after a release.
        note(&mut self.wnd_check, id);
        true
    }

    /// Pool accounting for a frame just taken in; prunes when above the high-water mark.
    #[inline(always)]
    fn took(&mut self, truesize: u32) {
        self.held_in += truesize as u64;
        let held = self.held_mem();
        self.held_peak = self.held_peak.max(held);
        if held > self.pool_high {
            self.prune();
        }
    }

    /// Pool pressure (Linux `tcp_prune_ofo_queue` under `tcp_mem`): out-of-order data goes,
    /// from the connection holding the most out-of-order truesize first, highest sequence
    /// first, until the frames held are down to the low-water mark. In-order data and pieces
    /// being copied are never touched.
    #[inline(never)]
    fn prune(&mut self) {
        self.stats.prune_runs += 1;
        let low = self.cfg.pool_low();
        let ts = self.cfg.frame_truesize.max(1) as u64;
        while self.held_mem() > low {
            // The largest out-of-order holder and the runner-up.
            let mut best: Option<(u64, usize)> = None;
            let mut second = 0u64;
            for (i, sl) in self.slots.iter().enumerate() {
                let Some(c) = sl.conn.as_deref() else {
                    continue;
                };
                let m = c.ooo_mem();
                if m == 0 {
                    continue;
                }
                match best {
                    Some((b, _)) if m <= b => second = second.max(m),
                    _ => {
                        second = second.max(best.map_or(0, |b| b.0));
                        best = Some((m, i));
                    }
                }
            }
            let Some((_, idx)) = best else {
                break;
            };
            let c = self.slots[idx]
                .conn
                .as_deref_mut()
                .expect("scanned a live slot");
            let mut pruned = false;
            while self.held_in.saturating_sub(self.released.mem) > low && c.ooo_mem() >= second {
                let before = self.released.mem;
                if !c.prune_ooo_last(&mut self.released) {
                    break;
                }
                pruned = true;
                self.stats.ooo_pruned_segments += 1;
                self.stats.ooo_pruned_frames += (self.released.mem - before).div_ceil(ts);
                if c.ooo_mem() == 0 {
                    break;
                }
            }
            if !pruned {
                break;
            }
        }
    }

    /// The full path: [`wire::parse`] and [`Endpoint::on_packet`], the reference for every
    /// frame.
    #[inline(never)]
    fn on_frame_full(
        &mut self,
        now: Instant,
        frame: FrameId,
        bytes: &[u8],
        truesize: u32,
    ) -> FrameDisposition {
        match wire::parse(bytes, self.cfg.checksum) {
            Ok(p) => self.on_packet(now, &p, frame, truesize),
            Err(e) => {
                self.stats.parse_errors += 1;
                match e {
                    WireError::Fragment => self.stats.fragments += 1,
                    WireError::BadIpv4Checksum | WireError::BadTcpChecksum => {
                        self.stats.bad_checksums += 1
                    }
                    WireError::NotTcp(_) | WireError::NotIp(_) => self.stats.not_tcp += 1,
                    _ => {}
                }
                FrameDisposition::Free
            }
        }
    }

    /// Header prediction: the common data segment of a cached flow, parsed with
    /// [`fast::parse`] and appended by [`Conn::fast_apply`]; `None` (nothing changed) for
    /// anything else, which the full path then handles. The result is exactly the full path's.
    #[inline(always)]
    fn on_frame_fast(
        &mut self,
        now: Instant,
        frame: FrameId,
        bytes: &[u8],
        truesize: u32,
    ) -> Option<FrameDisposition> {
        let s = fast::parse(bytes)?;
        let c = predicted(&self.flows[..], &mut self.slots, &s)?;
        if !c.fast_accepts(&s, truesize, now) {
            return None;
        }
        // A bad checksum is counted (and the frame dropped) by the full path.
        if self.cfg.checksum == ChecksumMode::Verify && !fast::verify(bytes, &s) {
            return None;
        }
        let (cfg, tx, released) = (&self.cfg, &mut self.tx, &mut self.released);
        let batch_ack = c.fast_apply(&s, Some(frame), truesize, now, cfg, || Io {
            cfg,
            tx,
            released,
            pool_free: u64::MAX,
        });
        self.stats.fast_path += 1;
        // `after` for an established connection that got data (no FIN, no error here).
        let id = c.id;
        if batch_ack {
            note(&mut self.ack_check, id);
        }
        if !c.in_ready && c.accepted {
            c.in_ready = true;
            self.events.push_back(EndpointEvent::Readable(id));
        }
        Some(FrameDisposition::Held)
    }

    /// Remembers an IPv4 flow's slot for header prediction.
    fn cache_flow(&mut self, p: &Packet, idx: u32) {
        if let IpPair::V4 { src, dst } = p.ip {
            let key = FlowBytes::v4(src, dst, p.tcp.src_port, p.tcp.dst_port);
            self.flows[flow_slot(&key)] = FlowEntry {
                key,
                idx,
                gen: self.slots[idx as usize].gen,
            };
        }
    }

    /// Processes an already parsed segment (checksums as the caller verified them).
    pub fn on_packet(
        &mut self,
        now: Instant,
        p: &Packet,
        frame: FrameId,
        truesize: u32,
    ) -> FrameDisposition {
        let key = FlowKey::of(p);
        let idx = match self.last {
            Some((k, i)) if k == key => Some(i),
            _ => self.map.get(&key).copied(),
        };
        if let Some(idx) = idx {
            self.last = Some((key, idx));
            if self.cfg.fast_path {
                self.cache_flow(p, idx);
            }
            let time_wait_syn = p.tcp.flags.syn() && !p.tcp.flags.ack() && {
                let c = self.slots[idx as usize]
                    .conn
                    .as_deref()
                    .expect("mapped slot is live");
                c.state == State::TimeWait
            };
            if !time_wait_syn {
                return self.dispatch(idx, p, frame, truesize, now);
            }
            // A new SYN for a connection in TIME-WAIT: end it and open a new one.
            self.unmap(idx);
            if let Some(c) = self.slots[idx as usize].conn.as_deref_mut() {
                c.state = State::Closed;
            }
            self.reap(idx);
        }
        self.on_listen(p, frame, truesize, now)
    }

    fn dispatch(
        &mut self,
        idx: u32,
        p: &Packet,
        frame: FrameId,
        truesize: u32,
        now: Instant,
    ) -> FrameDisposition {
        let port = p.tcp.dst_port;
        let accept_room = self
            .listeners
            .get(&port)
            .is_some_and(|l| l.accept.len() < self.cfg.accept_backlog);
        let pool_free = self.pool_free();
        let slot = &mut self.slots[idx as usize];
        let c = slot.conn.as_deref_mut().expect("mapped slot is live");
        let was_embryonic = c.state == State::SynReceived;
        let mut io = Io {
            cfg: &self.cfg,
            tx: &mut self.tx,
            released: &mut self.released,
            pool_free,
        };
        let out = c.on_segment(p, frame, truesize, accept_room, now, &mut io);
        self.stats.pressure_drops += out.pressure_drop as u64;
        self.after(idx, out, was_embryonic);
        if out.held {
            FrameDisposition::Held
        } else {
            FrameDisposition::Free
        }
    }

    /// Bookkeeping after a connection changed: accept queue, ready list, table removal.
    fn after(&mut self, idx: u32, out: Outcome, was_embryonic: bool) {
        let c = self.slots[idx as usize].conn.as_deref_mut().expect("live");
        let id = c.id;
        let state = c.state;
        let port = c.addrs.local_port;
        if out.batch_ack {
            note(&mut self.ack_check, id);
        }
        self.report(idx, out.notify);
        if was_embryonic && state != State::SynReceived {
            if let Some(l) = self.listeners.get_mut(&port) {
                l.embryonic -= 1;
                if out.established {
                    self.stats.established += 1;
                    l.accept.push_back(id);
                    self.events.push_back(EndpointEvent::Acceptable { port });
                }
            }
        }
        if state == State::Closed {
            self.unmap(idx);
            self.reap(idx);
        }
    }

    /// Queues the events of an accepted connection: `Readable` (once until it is polled) when
    /// `news`, then `Fin` and `Reset`/`TimedOut` the first time they are true.
    fn report(&mut self, idx: u32, news: bool) {
        let slot = &mut self.slots[idx as usize];
        let Some(c) = slot.conn.as_deref_mut() else {
            return;
        };
        if !c.accepted {
            return;
        }
        let id = c.id;
        if news && !c.in_ready {
            c.in_ready = true;
            self.events.push_back(EndpointEvent::Readable(id));
        }
        if c.eof && slot.reported & REPORTED_FIN == 0 {
            slot.reported |= REPORTED_FIN;
            self.events.push_back(EndpointEvent::Fin(id));
        }
        if let Some(e) = c.error.filter(|_| slot.reported & REPORTED_ERR == 0) {
            slot.reported |= REPORTED_ERR;
            self.events.push_back(match e {
                super::ConnError::Reset => EndpointEvent::Reset(id),
                super::ConnError::TimedOut => EndpointEvent::TimedOut(id),
            });
        }
    }

    fn unmap(&mut self, idx: u32) {
        let Some(c) = self.slots[idx as usize].conn.as_deref() else {
            return;
        };
        let key = FlowKey {
            ip: c.addrs.ip.reversed(),
            remote_port: c.addrs.remote_port,
            local_port: c.addrs.local_port,
        };
        if self.map.get(&key) == Some(&idx) {
            self.map.remove(&key);
        }
        if self.last.is_some_and(|(_, i)| i == idx) {
            self.last = None;
        }
        for e in self.flows.iter_mut() {
            if e.idx == idx {
                *e = NO_FLOW;
            }
        }
    }

    /// Frees a closed connection's record once nobody can use it: the application closed it
    /// (or never accepted it) and no piece is out with the consumer.
    fn reap(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        let Some(c) = slot.conn.as_deref() else {
            return;
        };
        if c.state != State::Closed || c.pieces_out > 0 || (c.accepted && !c.app_closed) {
            return;
        }
        let id = c.id;
        let port = c.addrs.local_port;
        if let Some(l) = self.listeners.get_mut(&port) {
            if !c.accepted {
                l.accept.retain(|&x| x != id);
            }
        }
        if c.reclaimed {
            self.reclaimed_live -= 1;
        }
        slot.conn = None;
        slot.reported = 0;
        slot.gen = slot.gen.wrapping_add(1);
        self.free.push(idx);
        self.live -= 1;
        self.stats.closed += 1;
    }

    fn on_listen(
        &mut self,
        p: &Packet,
        frame: FrameId,
        truesize: u32,
        now: Instant,
    ) -> FrameDisposition {
        let f = p.tcp.flags;
        let Some(l) = self.listeners.get(&p.tcp.dst_port) else {
            self.stats.no_listener += 1;
            self.reset_for(p);
            return FrameDisposition::Free;
        };
        if f.rst() {
            return FrameDisposition::Free;
        }
        if f.ack() {
            if self.cfg.syn_cookies && !f.syn() {
                return self.cookie_ack(p, frame, truesize, now);
            }
            self.reset_for(p);
            return FrameDisposition::Free;
        }
        if !f.syn() || f.fin() {
            return FrameDisposition::Free;
        }
        self.stats.syns += 1;
        let backlog_full = l.embryonic >= self.cfg.syn_backlog;
        let at_cap = self.live - self.reclaimed_live >= self.cfg.max_connections;
        if self.cfg.syn_cookies && (backlog_full || at_cap) {
            // No state: at the cap, the connection is made (an idle one reclaimed) only when
            // the cookie comes back, so spoofed SYNs cannot reclaim anything.
            self.cookie_synack(p, now);
            return FrameDisposition::Free;
        }
        if backlog_full {
            self.stats.syn_backlog_drops += 1;
            return FrameDisposition::Free;
        }
        if !self.room_for_one(now) {
            self.stats.conn_limit_drops += 1;
            return FrameDisposition::Free;
        }
        let iss = self.isn(p, now);
        let mut tx = std::mem::take(&mut self.tx);
        self.open_embryonic(p, iss, now, &mut tx);
        self.tx = tx;
        FrameDisposition::Free
    }

    /// A new SYN-RECEIVED connection for `syn` (its SYN-ACK goes to `tx`).
    fn open_embryonic(
        &mut self,
        syn: &Packet,
        iss: u32,
        now: Instant,
        tx: &mut VecDeque<TxFrame>,
    ) -> u32 {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    conn: None,
                    reported: 0,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let id = ConnId {
            idx,
            gen: self.slots[idx as usize].gen,
        };
        let mut io = Io {
            cfg: &self.cfg,
            tx,
            released: &mut self.released,
            pool_free: u64::MAX,
        };
        let c = Conn::from_syn(id, syn, iss, now, &mut io);
        self.slots[idx as usize].conn = Some(Box::new(c));
        self.live += 1;
        self.map.insert(FlowKey::of(syn), idx);
        if let Some(l) = self.listeners.get_mut(&syn.tcp.dst_port) {
            l.embryonic += 1;
        }
        idx
    }

    /// Whether one more connection fits under `max_connections`, reclaiming the connection
    /// idle longest when the cap is reached (see [`Config::reclaim_idle_after`]).
    fn room_for_one(&mut self, now: Instant) -> bool {
        if self.live - self.reclaimed_live < self.cfg.max_connections {
            return true;
        }
        let after = self.cfg.reclaim_idle_after;
        if after.is_zero() || now < self.reclaim_not_before {
            return false;
        }
        // The oldest idle candidate. A connection's last receive time only moves forward and
        // new connections start idle at `now`, so when none qualifies the earliest time one
        // can is a lower bound that spares the scans until then (a SYN flood at the cap costs
        // one scan per bound).
        let mut oldest: Option<(Instant, u32)> = None;
        let mut next = now + after;
        for (i, sl) in self.slots.iter().enumerate() {
            let Some(c) = sl.conn.as_deref() else {
                continue;
            };
            if c.reclaimed || c.state == State::Closed || c.state == State::SynReceived {
                continue;
            }
            let due = c.last_rx + after;
            if due <= now && c.reclaimable() {
                if oldest.is_none_or(|(t, _)| c.last_rx < t) {
                    oldest = Some((c.last_rx, i as u32));
                }
            } else if due > now && due < next {
                next = due;
            }
        }
        let Some((_, idx)) = oldest else {
            // Connections with a copy in progress may become candidates at any time.
            let busy = self
                .slots
                .iter()
                .filter_map(|s| s.conn.as_deref())
                .any(|c| c.pieces_out > 0);
            if !busy {
                self.reclaim_not_before = next;
            }
            return false;
        };
        let c = self.slots[idx as usize]
            .conn
            .as_deref_mut()
            .expect("scanned a live slot");
        let mut io = Io {
            cfg: &self.cfg,
            tx: &mut self.tx,
            released: &mut self.released,
            pool_free: u64::MAX,
        };
        c.reclaim(&mut io);
        self.reclaimed_live += 1;
        self.stats.conns_reclaimed += 1;
        tracing::debug!(conn = idx, "connection cap: idle connection reclaimed");
        self.unmap(idx);
        self.report(idx, true);
        self.reap(idx);
        true
    }

    // ----- SYN cookies -----
    //
    // The cookie is our initial sequence number: bits 31-27 a 64-second counter (mod 32),
    // 26-25 an index into COOKIE_MSS (the largest entry not above the peer's MSS), 24 the
    // peer offered window scaling, 23-20 its shift, 19 it offered SACK, 18-0 a keyed hash of
    // the 4-tuple, the peer's ISN, the counter and bits 31-19. Timestamps need no bit: the
    // peer sends them on the ACK only if both sides agreed. A cookie is accepted for two
    // counter periods (64-128 s). An attacker guesses the 19-bit hash with probability 2^-19
    // per forged ACK, and must also know the peer's ISN.

    fn cookie_counter(now: Instant) -> u32 {
        (now.as_nanos() / 64_000_000_000) as u32
    }

    fn cookie_hash(&self, p: &Packet, peer_isn: u32, counter: u32, bits: u32) -> u32 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.cfg.isn_secret.hash(&mut h);
        0x636f_6f6b_6965u64.hash(&mut h);
        FlowKey::of(p).hash(&mut h);
        (peer_isn, counter, bits).hash(&mut h);
        (h.finish() as u32) & COOKIE_HASH_MASK
    }

    fn cookie_synack(&mut self, syn: &Packet, now: Instant) {
        let o = &syn.tcp.options;
        let peer_mss = o.mss.unwrap_or(536);
        let mss_idx = COOKIE_MSS.iter().rposition(|&m| m <= peer_mss).unwrap_or(0) as u32;
        let counter = Self::cookie_counter(now) & 0x1f;
        let mut bits = (counter << 27) | (mss_idx << 25);
        if let Some(ws) = o.window_scale {
            bits |= 1 << 24 | (u32::from(ws.min(14)) << 20);
        }
        if o.sack_permitted {
            bits |= 1 << 19;
        }
        let cookie = bits | self.cookie_hash(syn, syn.tcp.seq, counter, bits);
        // Build the SYN-ACK exactly as a SYN-RECEIVED connection would, then keep nothing.
        let mut io = Io {
            cfg: &self.cfg,
            tx: &mut self.tx,
            released: &mut self.released,
            pool_free: u64::MAX,
        };
        let _ = Conn::from_syn(ConnId { idx: 0, gen: 0 }, syn, cookie, now, &mut io);
        self.stats.syn_cookies_sent += 1;
    }

    /// An ACK to a listener for no known connection: a valid cookie creates the connection
    /// (as if its SYN had been kept) and the ACK is processed by it; anything else gets RST.
    fn cookie_ack(
        &mut self,
        p: &Packet,
        frame: FrameId,
        truesize: u32,
        now: Instant,
    ) -> FrameDisposition {
        let cookie = p.tcp.ack.wrapping_sub(1);
        let peer_isn = p.tcp.seq.wrapping_sub(1);
        let bits = cookie & !COOKIE_HASH_MASK;
        let counter = bits >> 27;
        let cur = Self::cookie_counter(now);
        let fresh = [cur, cur.wrapping_sub(1)]
            .iter()
            .any(|&c| c & 0x1f == counter);
        if !fresh || cookie & COOKIE_HASH_MASK != self.cookie_hash(p, peer_isn, counter, bits) {
            self.stats.syn_cookies_failed += 1;
            self.reset_for(p);
            return FrameDisposition::Free;
        }
        // The SYN as it was, rebuilt from the cookie and the ACK.
        let mut syn = *p;
        syn.tcp.flags = TcpFlags(TcpFlags::SYN);
        syn.tcp.seq = peer_isn;
        syn.tcp.ack = 0;
        syn.payload_len = 0;
        let mut o = crate::wire::tcp::TcpOptions {
            mss: Some(COOKIE_MSS[((bits >> 25) & 3) as usize]),
            sack_permitted: bits & (1 << 19) != 0,
            timestamps: p.tcp.options.timestamps.map(|(val, _)| (val, 0)),
            ..Default::default()
        };
        if bits & (1 << 24) != 0 {
            o.window_scale = Some(((bits >> 20) & 0xf) as u8);
        }
        syn.tcp.options = o;
        // A valid cookie but a full accept queue (as Linux's listen overflow): the ACK is
        // dropped and the peer retransmits it. A connection made now could not leave
        // SYN-RECEIVED and would take the listener past its SYN backlog.
        let accept_full = self
            .listeners
            .get(&p.tcp.dst_port)
            .is_none_or(|l| l.accept.len() >= self.cfg.accept_backlog);
        if accept_full {
            return FrameDisposition::Free;
        }
        if !self.room_for_one(now) {
            // At the cap: the ACK is dropped (the cookie stays valid; the peer retransmits).
            self.stats.conn_limit_drops += 1;
            return FrameDisposition::Free;
        }
        let mut scratch = VecDeque::new();
        let idx = self.open_embryonic(&syn, cookie, now, &mut scratch);
        self.stats.syn_cookies_ok += 1;
        self.dispatch(idx, p, frame, truesize, now)
    }

    /// RFC 6528: ISN = M + F(4-tuple, secret), M a 4-microsecond clock.
    fn isn(&self, p: &Packet, now: Instant) -> u32 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.cfg.isn_secret.hash(&mut h);
        FlowKey::of(p).hash(&mut h);
        (h.finish() as u32).wrapping_add((now.as_nanos() / 4000) as u32)
    }

    /// A RST answering a segment that belongs to no connection (RFC 9293 3.10.7.1).
    fn reset_for(&mut self, p: &Packet) {
        if p.tcp.flags.rst() {
            return;
        }
        let addrs = ReplyAddrs::reply_to(p);
        let spec = if p.tcp.flags.ack() {
            SegmentSpec {
                seq: p.tcp.ack,
                ack: 0,
                flags: TcpFlags::RST,
                window: 0,
                options: OptionsOut::default(),
            }
        } else {
            SegmentSpec {
                seq: 0,
                ack: p.tcp.seq.wrapping_add(p.seg_len()),
                flags: TcpFlags::RST | TcpFlags::ACK,
                window: 0,
                options: OptionsOut::default(),
            }
        };
        self.tx.push_back(TxFrame::build(&addrs, &spec));
        self.stats.rst_sent += 1;
    }

    // ----- output -----

    /// The next frame to transmit.
    pub fn pop_tx(&mut self) -> Option<TxFrame> {
        self.tx.pop_front()
    }

    /// Frames waiting to be transmitted.
    pub fn tx_len(&self) -> usize {
        self.tx.len()
    }

    /// The next event, in order: frames released first (so that they go back to the fill ring
    /// as early as possible), then connection events. See [`EndpointEvent`].
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        if let Some(f) = self.released.frames.pop() {
            return Some(EndpointEvent::FrameReleased(f));
        }
        let ev = self.events.pop_front()?;
        if let EndpointEvent::Readable(id) = ev {
            if let Some(c) = self.conn_mut(id) {
                c.in_ready = false;
            }
        }
        Some(ev)
    }

    // ----- per connection -----

    /// What the copy policy and the application need to know about a connection.
    pub fn info(&self, id: ConnId) -> Option<ConnInfo> {
        let c = self.conn(id)?;
        Some(ConnInfo {
            id,
            state: c.state,
            addrs: c.addrs,
            available: c.available,
            rcvbuf: c.rcvbuf(),
            mem: c.mem,
            ooo_mem: c.ooo_mem(),
            ooo_bytes: c.reasm.bytes(),
            ooo_segments: c.reasm.segments(),
            ooo_ranges: c.reasm.ranges(),
            psh: c.psh_queued(),
            eof: c.eof,
            error: c.error,
            pieces_out: c.pieces_out,
            window: c.advertised_window(),
            sack: c.sack_ok,
            timestamps: c.ts_ok,
            stats: c.stats,
        })
    }

    /// Bytes in order and unread.
    pub fn available(&self, id: ConnId) -> u64 {
        self.conn(id).map_or(0, |c| c.available)
    }

    /// The unread in-order segments, in order, without taking them.
    pub fn peek(&self, id: ConnId) -> impl Iterator<Item = RxSegment> + '_ {
        self.conn(id).into_iter().flat_map(move |c| {
            c.queued()
                .map(move |(frame, g)| RxSegment::new(id, frame, g))
        })
    }

    /// Takes up to `max` bytes from the head of the in-order queue (at most one segment). The
    /// frame stays referenced until [`Endpoint::release`] is called for the piece.
    #[inline]
    pub fn read(&mut self, id: ConnId, max: usize) -> Result<Option<RxSegment>, TcpError> {
        let c = self.conn_mut(id).ok_or(TcpError::UnknownConnection)?;
        Ok(c.read(max).map(|(frame, g)| RxSegment::new(id, frame, g)))
    }

    /// The consumer finished with a piece from [`Endpoint::read`] (its copies completed).
    /// A window update, if the freed memory warrants one, is sent by the next [`Endpoint::flush`]
    /// (or `handle_timeout`, `consume`), so that a batch of releases sends one update.
    #[inline]
    pub fn release(&mut self, seg: &RxSegment) -> Result<(), TcpError> {
        let id = seg.conn;
        let s = self
            .slots
            .get_mut(id.idx as usize)
            .ok_or(TcpError::UnknownConnection)?;
        if s.gen != id.gen {
            return Err(TcpError::UnknownConnection);
        }
        let c = s.conn.as_deref_mut().ok_or(TcpError::UnknownConnection)?;
        if c.pieces_out == 0 {
            return Err(TcpError::BadRelease);
        }
        c.release(seg.slot, &mut self.released);
        let closed = c.state == State::Closed;
        note(&mut self.wnd_check, id);
        if closed {
            self.reap(id.idx);
        }
        Ok(())
    }

    /// Ends a batch: sends the batch-end ACKs of the connections that received in-order data
    /// (see [`Config::batch_acks`]), then the window updates made due by releases since the
    /// last call. Call it once per received batch, after the consumer took what it could.
    pub fn flush(&mut self, now: Instant) {
        let mut list = std::mem::take(&mut self.ack_check);
        list.sort_unstable();
        list.dedup();
        for id in list.drain(..) {
            let _ = self.with_conn(id, |c, io| c.batch_ack(now, io));
        }
        self.ack_check = list;
        let mut list = std::mem::take(&mut self.wnd_check);
        list.sort_unstable();
        list.dedup();
        for id in list.drain(..) {
            let _ = self.with_conn(id, |c, io| c.maybe_window_update(now, io));
        }
        self.wnd_check = list;
    }

    /// Reads and releases up to `n` bytes at once, calling `f` for each piece before its release
    /// (for a consumer that copies synchronously), then flushes. Returns the bytes consumed.
    /// The same effects as [`Endpoint::read`] and [`Endpoint::release`] piece by piece, with one
    /// connection lookup for the whole run. An unknown connection is an error, and then nothing
    /// is done (no flush either).
    pub fn consume(
        &mut self,
        now: Instant,
        id: ConnId,
        n: usize,
        mut f: impl FnMut(&RxSegment),
    ) -> Result<usize, TcpError> {
        let c = self
            .slots
            .get_mut(id.idx as usize)
            .filter(|s| s.gen == id.gen)
            .and_then(|s| s.conn.as_deref_mut())
            .ok_or(TcpError::UnknownConnection)?;
        let mut done = 0;
        while done < n {
            let Some((frame, g)) = c.read(n - done) else {
                break;
            };
            f(&RxSegment::new(id, frame, g));
            done += g.len as usize;
            c.release(g.slot, &mut self.released);
        }
        if done > 0 {
            let closed = c.state == State::Closed;
            note(&mut self.wnd_check, id);
            if closed {
                self.reap(id.idx);
            }
        }
        self.flush(now);
        Ok(done)
    }

    /// The application closes the connection: FIN (or RST when unread data remains). The
    /// handle stays valid until the connection is fully closed and every piece is released.
    pub fn close(&mut self, now: Instant, id: ConnId) -> Result<(), TcpError> {
        let idx = id.idx;
        let closed = self.with_conn(id, |c, io| {
            c.close(now, io);
            c.state == State::Closed
        })?;
        if closed {
            self.unmap(idx);
        }
        self.reap(idx);
        Ok(())
    }

    /// The application aborts the connection: RST, queued data dropped (its frames released),
    /// so the peer sees an error rather than a clean close. The handle stays valid until every
    /// piece is released, as with [`Endpoint::close`].
    pub fn abort(&mut self, id: ConnId) -> Result<(), TcpError> {
        let idx = id.idx;
        self.with_conn(id, |c, io| c.abort(io))?;
        self.unmap(idx);
        self.reap(idx);
        Ok(())
    }

    /// Sets a connection's receive buffer.
    pub fn set_rcvbuf(&mut self, now: Instant, id: ConnId, bytes: u32) -> Result<(), TcpError> {
        self.with_conn(id, |c, io| c.set_rcvbuf(bytes, now, io))
    }

    /// The endpoint is receive-only: sending is always an error.
    pub fn send(&mut self, _id: ConnId, _data: &[u8]) -> Result<usize, TcpError> {
        Err(TcpError::ReceiveOnly)
    }

    // ----- time -----

    /// The earliest time `handle_timeout` has work to do (a scan over the connections; a
    /// poller owns few connections).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut d = None;
        for s in &self.slots {
            if let Some(c) = s.conn.as_deref() {
                d = earliest(d, c.next_deadline(&self.cfg));
            }
        }
        d
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.flush(now);
        for idx in 0..self.slots.len() as u32 {
            let Some(c) = self.slots[idx as usize].conn.as_deref_mut() else {
                continue;
            };
            if c.next_deadline(&self.cfg).is_none_or(|d| d > now) {
                continue;
            }
            let was_embryonic = c.state == State::SynReceived;
            let mut io = Io {
                cfg: &self.cfg,
                tx: &mut self.tx,
                released: &mut self.released,
                pool_free: u64::MAX,
            };
            let changed = c.on_timeout(now, &mut io);
            let out = Outcome {
                notify: changed,
                ..Outcome::default()
            };
            self.after(idx, out, was_embryonic);
        }
    }

    /// Checks every connection's invariants (tests and fuzzing).
    pub fn check_invariants(&self) {
        let mut live = 0;
        for s in &self.slots {
            if let Some(c) = s.conn.as_deref() {
                live += 1;
                c.check();
            }
        }
        assert_eq!(live, self.live);
        let mem: u64 = self
            .slots
            .iter()
            .filter_map(|s| s.conn.as_deref())
            .map(|c| c.mem)
            .sum();
        assert_eq!(
            mem,
            self.held_mem(),
            "pool accounting: held = sum of connections"
        );
        let reclaimed = self
            .slots
            .iter()
            .filter_map(|s| s.conn.as_deref())
            .filter(|c| c.reclaimed)
            .count();
        assert_eq!(reclaimed, self.reclaimed_live);
        for l in self.listeners.values() {
            assert!(l.embryonic <= self.cfg.syn_backlog);
        }
    }
}
