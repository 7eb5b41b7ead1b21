//! One connection: the receive state machine, its frame references and its timers.

use std::collections::VecDeque;
use std::time::Duration;

use super::reasm::{Insert, Reasm, SegRef};
use super::seq;
use super::timers::{earliest, Backoff, Instant};
use super::{Config, ConnError, ConnId, ConnStats, FrameId, State};
use crate::wire::build::AckTemplate;
use crate::wire::fast::FastSeg;
use crate::wire::tcp::{OptionsOut, TcpFlags};
use crate::wire::{IpPair, Packet, ReplyAddrs, SegmentSpec, TxFrame};

/// Frames no longer referenced, and the total truesize ever released (the endpoint's pool
/// accounting: frames held = truesize taken in - truesize released).
#[derive(Debug, Default)]
pub(crate) struct Released {
    pub frames: Vec<FrameId>,
    pub mem: u64,
}

impl Released {
    #[inline]
    pub fn push(&mut self, frame: FrameId, truesize: u32) {
        self.frames.push(frame);
        self.mem += truesize as u64;
    }
}

/// Where a connection's effects go: frames to send and frames no longer referenced.
pub(crate) struct Io<'a> {
    pub cfg: &'a Config,
    pub tx: &'a mut VecDeque<TxFrame>,
    pub released: &'a mut Released,
    /// Truesize an out-of-order segment may still take from the shared frame pool before it
    /// reaches the reserve kept for in-order data and handshakes (`u64::MAX`: no pool known).
    pub pool_free: u64,
}

/// What a segment or a timer did to the connection, for the endpoint's bookkeeping.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Outcome {
    /// The frame is now referenced by the connection (the shell must not reuse it).
    pub held: bool,
    /// The handshake completed.
    pub established: bool,
    /// Readable data, end of stream or an error appeared.
    pub notify: bool,
    /// In-order data wants an ACK at the end of the batch ([`Conn::batch_ack`]).
    pub batch_ack: bool,
    /// An out-of-order segment was refused for the pool's reserve.
    pub pressure_drop: bool,
}

/// A received frame the connection references.
#[derive(Debug, Clone, Copy)]
struct HeldFrame {
    frame: FrameId,
    truesize: u32,
    /// Queue references plus pieces handed to the consumer and not yet released (0: the slot
    /// is free).
    refs: u32,
    /// The next free slot when this one is free ([`NO_SLOT`] ends the list).
    next_free: u32,
}

/// End of the frame table's free list.
const NO_SLOT: u32 = u32::MAX;

const TWENTY_FOUR_DAYS_MS: u64 = 24 * 24 * 3600 * 1000;

/// PAWS tolerance in timestamp ticks: a TSval at most this much older than TS.Recent passes
/// (Linux `TCP_PAWS_WINDOW`). Reordered segments sent within the same tick as a retransmission
/// that already updated TS.Recent are not dropped.
const PAWS_WINDOW: i32 = 1;

/// Frames of receive memory kept out of the window: a sender may split segments at the right
/// edge (each piece costs a whole frame) and the scaled window is rounded up, so data inside
/// the advertised window always fits in `rcvbuf`.
const WINDOW_RESERVE_FRAMES: u64 = 4;

#[derive(Debug)]
pub(crate) struct Conn {
    pub id: ConnId,
    pub state: State,
    pub addrs: ReplyAddrs,
    /// The common ACK prebuilt (IPv4; `None` for IPv6).
    ack_tpl: Option<AckTemplate>,
    pub accepted: bool,
    pub app_closed: bool,
    pub in_ready: bool,
    /// Reset to make room at the connection cap (the record waits for the application).
    pub reclaimed: bool,
    pub error: Option<ConnError>,
    pub stats: ConnStats,
    // Send side (SYN and FIN only).
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    fin_sent: bool,
    max_snd_wnd: u32,
    snd_wscale: u8,
    ws_ok: bool,
    // Receive side.
    irs: u32,
    rcv_nxt: u32,
    /// Stream offset of `rcv_nxt` (offset 0 is the byte after the SYN).
    rcv_off: u64,
    /// Right edge of the window we advertised (never moves left).
    rcv_adv: u32,
    rcv_wscale: u8,
    last_ack_sent: u32,
    our_mss: u32,
    /// Estimate of the peer's full segment size (largest payload seen).
    rcv_mss: u32,
    rcvbuf: u32,
    /// The largest rcvbuf this connection had (memory may exceed a lowered rcvbuf until read).
    rcvbuf_peak: u32,
    /// Payload-to-truesize ratio used to turn free memory into window (num/den).
    ratio_num: u32,
    ratio_den: u32,
    pub sack_ok: bool,
    pub ts_ok: bool,
    ts_recent: u32,
    ts_recent_ms: u64,
    ts_offset: u32,
    /// A duplicate range to report as the first SACK block of the next ACK (RFC 2883 D-SACK).
    dsack: Option<(u32, u32)>,
    /// Bound on out-of-order truesize (`Config::max_ooo_mem`); the window is bounded by it too.
    ooo_cap: u64,
    /// Truesize kept out of the window (see [`WINDOW_RESERVE_FRAMES`]).
    reserve: u64,
    // Frames and queues.
    /// Held frames by slot; free slots are chained through `next_free` from `free_slot`, so
    /// taking and freeing a slot touches only the table.
    frames: Vec<HeldFrame>,
    free_slot: u32,
    pub mem: u64,
    in_order: VecDeque<SegRef>,
    pub available: u64,
    psh_queued: u32,
    pub(crate) reasm: Reasm,
    /// Truesize of the frames referenced by the out-of-order store.
    ooo_truesize: u64,
    /// Stream offset of a FIN received out of order.
    ooo_fin: Option<u64>,
    pub eof: bool,
    pub pieces_out: u32,
    // ACK scheduling.
    /// SACK compression (Linux `tcp_comp_sack_*`): `rcv_nxt` the duplicate-ACK counter is for,
    /// immediate duplicate ACKs sent for it, and ACKs held back since the last one sent.
    comp_rcv_nxt: u32,
    dup_ack_counter: u32,
    compressed: u32,
    /// Stream offsets of out-of-order data stored since the last ACK (SACK compression sends
    /// the ACK before more ranges changed than its SACK blocks can report).
    comp_touched: Vec<u64>,
    /// Receive-side RTT estimate from echoed timestamps (Linux `rcv_rtt_est`), microseconds.
    rcv_rtt_us: u64,
    /// The echoed timestamp of the last receive-RTT sample: a train of segments that echo the
    /// same value (all sent after one ACK) gives one sample, as Linux `tcp_rcv_rtt_measure_ts`.
    rcv_rtt_last_ecr: u32,
    unacked_bytes: u32,
    /// [`Conn::ack_stretch`] as of the last ACK sent (its inputs change only when an ACK goes
    /// out, the receive buffer changes or the payload/truesize ratio moves), so that the
    /// per-segment test is one compare.
    ack_limit: u32,
    quickack: u32,
    ack_deadline: Option<Instant>,
    // Timers.
    rtx: Option<Backoff>,
    rto: Duration,
    synack_sent_at: Instant,
    pub last_rx: Instant,
    tw_deadline: Option<Instant>,
    challenge_window: Instant,
    challenge_count: u32,
}

impl Conn {
    /// A new embryonic connection from a SYN; the SYN-ACK is queued.
    pub fn from_syn(id: ConnId, p: &Packet, iss: u32, now: Instant, io: &mut Io) -> Conn {
        let cfg = io.cfg;
        let o = &p.tcp.options;
        let ip_overhead = match p.ip {
            IpPair::V4 { .. } => 40,
            IpPair::V6 { .. } => 60,
        };
        let our_mss = (cfg.mtu as u32).saturating_sub(ip_overhead).max(64);
        let default_peer_mss = if ip_overhead == 40 { 536 } else { 1220 };
        let peer_mss = (o.mss.unwrap_or(default_peer_mss) as u32).max(64);
        let sack_ok = cfg.sack && o.sack_permitted;
        let ts_ok = cfg.timestamps && o.timestamps.is_some();
        let ws_ok = cfg.window_scaling && o.window_scale.is_some();
        let rcv_mss = our_mss
            .min(peer_mss)
            .saturating_sub(if ts_ok { 12 } else { 0 })
            .max(64);
        let ratio_den = cfg.frame_truesize.max(1);
        let ratio_num = rcv_mss.min(ratio_den);
        let max_space = (cfg.rcvbuf as u64 * ratio_num as u64 / ratio_den as u64) as u32;
        let mut rcv_wscale = 0u8;
        if ws_ok {
            while rcv_wscale < 14 && (max_space >> rcv_wscale) > 65535 {
                rcv_wscale += 1;
            }
        }
        let irs = p.tcp.seq;
        let mut c = Conn {
            id,
            state: State::SynReceived,
            addrs: ReplyAddrs::reply_to(p),
            ack_tpl: AckTemplate::new(&ReplyAddrs::reply_to(p), ts_ok),
            accepted: false,
            app_closed: false,
            in_ready: false,
            reclaimed: false,
            error: None,
            stats: ConnStats::default(),
            iss,
            snd_una: iss,
            snd_nxt: iss.wrapping_add(1),
            fin_sent: false,
            max_snd_wnd: p.tcp.window as u32,
            snd_wscale: if ws_ok {
                o.window_scale.unwrap_or(0)
            } else {
                0
            },
            ws_ok,
            irs,
            rcv_nxt: irs.wrapping_add(1),
            rcv_off: 0,
            rcv_adv: irs.wrapping_add(1),
            rcv_wscale,
            last_ack_sent: irs.wrapping_add(1),
            our_mss,
            rcv_mss,
            rcvbuf: cfg.rcvbuf,
            rcvbuf_peak: cfg.rcvbuf,
            ratio_num,
            ratio_den,
            sack_ok,
            ts_ok,
            ts_recent: o.timestamps.map(|t| t.0).unwrap_or(0),
            ts_recent_ms: now.as_millis(),
            ts_offset: iss.rotate_left(13),
            dsack: None,
            ooo_cap: cfg.ooo_limit(),
            reserve: (WINDOW_RESERVE_FRAMES * cfg.frame_truesize.max(1) as u64)
                .min(cfg.rcvbuf as u64 / 8),
            frames: Vec::new(),
            free_slot: NO_SLOT,
            mem: 0,
            in_order: VecDeque::new(),
            available: 0,
            psh_queued: 0,
            reasm: Reasm::new(cfg.max_ooo_ranges),
            ooo_truesize: 0,
            ooo_fin: None,
            eof: false,
            pieces_out: 0,
            comp_rcv_nxt: irs.wrapping_add(1),
            dup_ack_counter: 0,
            compressed: 0,
            comp_touched: Vec::new(),
            rcv_rtt_us: 0,
            rcv_rtt_last_ecr: 0,
            unacked_bytes: 0,
            ack_limit: 0,
            quickack: cfg.quickack_segments,
            ack_deadline: None,
            rtx: Some(Backoff::start(now, cfg.synack_rto)),
            rto: cfg.synack_rto,
            synack_sent_at: now,
            last_rx: now,
            tw_deadline: None,
            challenge_window: now,
            challenge_count: 0,
        };
        c.send_synack(now, io);
        c
    }

    fn ts_val(&self, now: Instant) -> u32 {
        (now.as_millis() as u32).wrapping_add(self.ts_offset)
    }

    /// The timestamps option (TSval, TSecr) to send, when timestamps were negotiated.
    fn ts_option(&self, now: Instant) -> Option<(u32, u32)> {
        self.ts_ok.then(|| (self.ts_val(now), self.ts_recent))
    }

    fn emit(&mut self, io: &mut Io, seq: u32, flags: u8, window: u16, options: OptionsOut) {
        if let Some(t) = &self.ack_tpl {
            if flags == TcpFlags::ACK && t.fits(&options) {
                t.push(io.tx, seq, self.rcv_nxt, window, options.timestamps);
                return;
            }
        }
        let spec = SegmentSpec {
            seq,
            ack: self.rcv_nxt,
            flags,
            window,
            options,
        };
        TxFrame::push_built(io.tx, &self.addrs, &spec);
    }

    fn send_synack(&mut self, now: Instant, io: &mut Io) {
        let space = self.window_space().min(65535);
        self.rcv_adv = self.rcv_nxt.wrapping_add(space);
        self.ack_limit = self.ack_stretch(io.cfg);
        let options = OptionsOut {
            mss: Some(self.our_mss.min(65535) as u16),
            window_scale: if self.ws_ok {
                Some(self.rcv_wscale)
            } else {
                None
            },
            sack_permitted: self.sack_ok,
            timestamps: self.ts_option(now),
            ..Default::default()
        };
        self.emit(
            io,
            self.iss,
            TcpFlags::SYN | TcpFlags::ACK,
            space as u16,
            options,
        );
        self.stats.acks_sent += 1;
    }

    /// Bytes of window the free receive memory allows, converted by the payload/truesize ratio.
    ///
    /// Everything the peer may send lies in `[rcv_nxt, rcv_adv)`, so bounding the window by
    /// free memory (minus a small reserve) makes every in-window full-sized segment fit, in order
    /// or not; bounding it by `ooo_cap` makes out-of-order data fit `max_ooo_mem`. The receiver
    /// therefore never has to drop in-window data or renege on SACKed data for a sender of
    /// full-sized segments.
    fn window_space(&self) -> u32 {
        let free = (self.rcvbuf as u64)
            .saturating_sub(self.mem + self.reserve)
            .min(self.ooo_cap);
        let space = free * self.ratio_num as u64 / self.ratio_den as u64;
        let cap = (65535u64 << self.rcv_wscale).min(1 << 30);
        space.min(cap) as u32
    }

    fn max_space(&self) -> u32 {
        let mem = (self.rcvbuf as u64)
            .saturating_sub(self.reserve)
            .min(self.ooo_cap);
        (mem * self.ratio_num as u64 / self.ratio_den as u64).min(1 << 30) as u32
    }

    /// Chooses the window to advertise, moving the right edge only forward and not by tiny
    /// amounts (receiver-side silly window avoidance, RFC 1122 4.2.3.3).
    fn select_window(&mut self) -> u16 {
        if seq::gt(self.rcv_nxt, self.rcv_adv) {
            self.rcv_adv = self.rcv_nxt;
        }
        let new_right = self.rcv_nxt.wrapping_add(self.window_space());
        if seq::gt(new_right, self.rcv_adv) {
            let grow = new_right.wrapping_sub(self.rcv_adv);
            let cur = self.rcv_adv.wrapping_sub(self.rcv_nxt);
            let sws = self.rcv_mss.min(self.max_space() / 2).max(1);
            if grow >= sws || cur >= sws {
                self.rcv_adv = new_right;
            }
        }
        let wnd = self.rcv_adv.wrapping_sub(self.rcv_nxt);
        let unit = 1u32 << self.rcv_wscale;
        let field = wnd.div_ceil(unit).min(65535);
        let edge = self.rcv_nxt.wrapping_add(field << self.rcv_wscale);
        if seq::gt(edge, self.rcv_adv) {
            self.rcv_adv = edge;
        }
        if field == 0 {
            self.stats.zero_window_acks += 1;
        }
        field as u16
    }

    /// The window the peer currently sees (right edge minus `rcv_nxt`).
    pub fn advertised_window(&self) -> u32 {
        if seq::gt(self.rcv_nxt, self.rcv_adv) {
            0
        } else {
            self.rcv_adv.wrapping_sub(self.rcv_nxt)
        }
    }

    /// Sends an ACK now (with SACK blocks and timestamps when negotiated).
    pub fn send_ack(&mut self, now: Instant, io: &mut Io) {
        let window = self.select_window();
        let mut options = OptionsOut {
            timestamps: self.ts_option(now),
            ..Default::default()
        };
        let dsack = self.dsack.take().filter(|_| io.cfg.dsack);
        if self.sack_ok && (dsack.is_some() || !self.reasm.is_empty()) {
            let mut r = [(0u64, 0u64); 4];
            let max = if self.ts_ok { 3 } else { 4 };
            let mut k = 0;
            if let Some(d) = dsack {
                // RFC 2883: the duplicate range goes first, the usual blocks follow.
                options.sack[0] = d;
                k = 1;
                self.stats.dsacks_sent += 1;
            }
            let n = self.reasm.sack_ranges(max - k, &mut r);
            for (i, &(s, e)) in r[..n].iter().enumerate() {
                options.sack[k + i] = (self.seq_of(s), self.seq_of(e));
            }
            options.sack_count = (k + n) as u8;
        }
        self.emit(io, self.snd_nxt, TcpFlags::ACK, window, options);
        self.last_ack_sent = self.rcv_nxt;
        self.unacked_bytes = 0;
        self.ack_limit = self.ack_stretch(io.cfg);
        self.ack_deadline = None;
        self.compressed = 0;
        self.comp_touched.clear();
        self.stats.acks_sent += 1;
    }

    fn seq_of(&self, off: u64) -> u32 {
        self.irs.wrapping_add(1).wrapping_add(off as u32)
    }

    fn send_fin(&mut self, now: Instant, io: &mut Io) {
        let window = self.select_window();
        let options = OptionsOut {
            timestamps: self.ts_option(now),
            ..Default::default()
        };
        self.emit(
            io,
            self.snd_nxt.wrapping_sub(1),
            TcpFlags::FIN | TcpFlags::ACK,
            window,
            options,
        );
        self.last_ack_sent = self.rcv_nxt;
        self.ack_deadline = None;
        self.unacked_bytes = 0;
        self.ack_limit = self.ack_stretch(io.cfg);
    }

    fn send_rst(&mut self, io: &mut Io) {
        self.emit(
            io,
            self.snd_nxt,
            TcpFlags::RST | TcpFlags::ACK,
            0,
            OptionsOut::default(),
        );
        self.stats.rst_sent += 1;
    }

    fn challenge_ack(&mut self, now: Instant, io: &mut Io) {
        if now.saturating_since(self.challenge_window) >= Duration::from_secs(1) {
            self.challenge_window = now;
            self.challenge_count = 0;
        }
        if self.challenge_count < io.cfg.challenge_ack_limit {
            self.challenge_count += 1;
            self.stats.challenge_acks += 1;
            self.send_ack(now, io);
        }
    }

    #[inline(always)]
    fn alloc_slot(&mut self, frame: FrameId, truesize: u32) -> u32 {
        self.mem += truesize as u64;
        let h = HeldFrame {
            frame,
            truesize,
            refs: 1,
            next_free: NO_SLOT,
        };
        let i = self.free_slot;
        match self.frames.get_mut(i as usize) {
            Some(free) => {
                self.free_slot = free.next_free;
                *free = h;
                i
            }
            None => {
                self.frames.push(h);
                (self.frames.len() - 1) as u32
            }
        }
    }

    /// Drops one reference to a slot; frees the frame when none remain.
    #[inline]
    fn unref(&mut self, slot: u32, released: &mut Released) {
        let h = &mut self.frames[slot as usize];
        h.refs -= 1;
        if h.refs == 0 {
            self.mem -= h.truesize as u64;
            released.push(h.frame, h.truesize);
            h.next_free = self.free_slot;
            self.free_slot = slot;
        }
    }

    /// Drops every queued reference (reset, abort).
    fn discard_queues(&mut self, released: &mut Released) {
        let q: Vec<SegRef> = self.in_order.drain(..).chain(self.reasm.drain()).collect();
        self.ooo_truesize = 0;
        for g in q {
            self.unref(g.slot, released);
        }
        self.available = 0;
        self.psh_queued = 0;
    }

    fn enter_closed(&mut self, io: &mut Io, error: Option<ConnError>) {
        if error.is_some() {
            self.discard_queues(io.released);
            if self.error.is_none() {
                self.error = error;
            }
        }
        self.state = State::Closed;
        self.rtx = None;
        self.ack_deadline = None;
        self.tw_deadline = None;
    }

    fn enter_time_wait(&mut self, now: Instant, io: &mut Io) {
        self.state = State::TimeWait;
        self.rtx = None;
        self.tw_deadline = Some(now + io.cfg.time_wait);
    }

    /// Processes one segment for this connection.
    pub fn on_segment(
        &mut self,
        p: &Packet,
        frame: FrameId,
        truesize: u32,
        accept_room: bool,
        now: Instant,
        io: &mut Io,
    ) -> Outcome {
        let mut out = Outcome::default();
        let t = &p.tcp;
        let flags = t.flags;
        self.stats.segments_in += 1;
        self.last_rx = now;

        if self.state == State::SynReceived {
            if flags.rst() {
                if t.seq == self.rcv_nxt {
                    self.stats.rst_received += 1;
                    self.enter_closed(io, Some(ConnError::Reset));
                    out.notify = true;
                } else if seq::in_range(t.seq, self.rcv_nxt, self.rcv_adv.wrapping_add(1)) {
                    self.challenge_ack(now, io);
                }
                return out;
            }
            if flags.syn() {
                if t.seq == self.irs && !flags.ack() {
                    // The peer retransmitted its SYN: our SYN-ACK was lost.
                    self.stats.synack_retransmits += 1;
                    self.send_synack(now, io);
                } else {
                    self.challenge_ack(now, io);
                }
                return out;
            }
            if !flags.ack() {
                return out;
            }
            if t.ack != self.snd_nxt {
                // RFC 793: an unacceptable ACK in SYN-RECEIVED is answered with a reset.
                let spec = SegmentSpec {
                    seq: t.ack,
                    ack: 0,
                    flags: TcpFlags::RST,
                    window: 0,
                    options: OptionsOut::default(),
                };
                io.tx.push_back(TxFrame::build(&self.addrs, &spec));
                self.stats.rst_sent += 1;
                return out;
            }
            if !accept_room {
                // Accept queue full: drop the ACK like Linux; the peer or our SYN-ACK timer
                // retries.
                self.stats.accept_queue_drops += 1;
                return out;
            }
            self.snd_una = t.ack;
            self.state = State::Established;
            self.rtx = None;
            let rtt = now.saturating_since(self.synack_sent_at);
            self.rto = (rtt * 3).clamp(io.cfg.min_rto, Duration::from_secs(3));
            self.rcv_rtt_us = (rtt.as_micros() as u64).max(1);
            out.established = true;
            out.notify = true;
        }

        if self.state == State::Closed {
            return out;
        }

        // PAWS (RFC 7323 5.3).
        if self.ts_ok && !flags.rst() {
            if let Some((tsval, _)) = t.options.timestamps {
                if (self.ts_recent.wrapping_sub(tsval) as i32) > PAWS_WINDOW
                    && now.as_millis().saturating_sub(self.ts_recent_ms) < TWENTY_FOUR_DAYS_MS
                {
                    self.stats.paws_drops += 1;
                    // Only the part below rcv_nxt is a known duplicate (as Linux
                    // `tcp_send_dupack`): reporting dropped data above it would read as a SACK.
                    let end = t.seq.wrapping_add(p.payload_len as u32);
                    if seq::lt(t.seq, self.rcv_nxt) {
                        let end = if seq::gt(end, self.rcv_nxt) {
                            self.rcv_nxt
                        } else {
                            end
                        };
                        self.set_dsack(t.seq, end);
                    }
                    self.send_ack(now, io);
                    self.stats.dup_acks_sent += 1;
                    return out;
                }
            }
        }

        // Acceptability (RFC 793 p.69) against the window we advertised.
        let mut len = p.payload_len as u32;
        let mut fin = flags.fin();
        let seg_len = len + fin as u32;
        let wnd = self.advertised_window();
        let mut zero_window_probe = false;
        let acceptable = if seg_len == 0 {
            if wnd == 0 {
                t.seq == self.rcv_nxt
            } else {
                seq::in_range(t.seq, self.rcv_nxt, self.rcv_nxt.wrapping_add(wnd))
            }
        } else if wnd == 0 {
            // A bare FIN at rcv_nxt is accepted even with a zero window (as Linux does: it
            // costs no memory); data is a window probe.
            let bare_fin = len == 0 && t.seq == self.rcv_nxt;
            zero_window_probe = t.seq == self.rcv_nxt && !bare_fin;
            bare_fin
        } else {
            let end = t.seq.wrapping_add(seg_len - 1);
            seq::in_range(t.seq, self.rcv_nxt, self.rcv_nxt.wrapping_add(wnd))
                || seq::in_range(end, self.rcv_nxt, self.rcv_nxt.wrapping_add(wnd))
        };
        if !acceptable && !zero_window_probe {
            if !flags.rst() {
                self.stats.out_of_window += 1;
                if seq::lt(t.seq, self.rcv_nxt) {
                    self.stats.dup_bytes += len as u64;
                    let end = t.seq.wrapping_add(len);
                    if len > 0 && seq::le(end, self.rcv_nxt) {
                        self.set_dsack(t.seq, end);
                    }
                }
                self.send_ack(now, io);
                self.stats.dup_acks_sent += 1;
            }
            return out;
        }

        // RST (RFC 5961 3.2): exact sequence resets, anything else in the window is challenged.
        if flags.rst() {
            if t.seq == self.rcv_nxt {
                self.stats.rst_received += 1;
                let err = if self.app_closed {
                    None
                } else {
                    Some(ConnError::Reset)
                };
                self.discard_queues(io.released);
                self.enter_closed(io, err);
                out.notify = true;
            } else {
                self.challenge_ack(now, io);
            }
            return out;
        }
        // SYN in a synchronized state (RFC 5961 4.2): challenge ACK.
        if flags.syn() {
            self.challenge_ack(now, io);
            return out;
        }
        if !flags.ack() {
            return out;
        }
        // ACK field (RFC 5961 5.2).
        if seq::gt(t.ack, self.snd_nxt) {
            self.send_ack(now, io);
            return out;
        }
        if seq::lt(t.ack, self.snd_una.wrapping_sub(self.max_snd_wnd.max(1))) {
            self.challenge_ack(now, io);
            return out;
        }
        self.max_snd_wnd = self.max_snd_wnd.max((t.window as u32) << self.snd_wscale);
        if seq::gt(t.ack, self.snd_una) {
            self.snd_una = t.ack;
            if self.fin_sent && self.snd_una == self.snd_nxt {
                self.rtx = None;
                match self.state {
                    State::FinWait1 => self.state = State::FinWait2,
                    State::Closing => self.enter_time_wait(now, io),
                    State::LastAck => {
                        self.enter_closed(io, None);
                        out.notify = true;
                        return out;
                    }
                    _ => {}
                }
            }
        }
        // Timestamp bookkeeping (RFC 7323 4.3).
        if self.ts_ok {
            if let Some((tsval, _)) = t.options.timestamps {
                if seq::le(t.seq, self.last_ack_sent) && seq::ge(tsval, self.ts_recent) {
                    self.ts_recent = tsval;
                    self.ts_recent_ms = now.as_millis();
                }
            }
        }
        if zero_window_probe {
            self.send_ack(now, io);
            return out;
        }

        // Trim to [rcv_nxt, rcv_adv).
        let mut seg_seq = t.seq;
        let mut off = p.payload_offset as u32;
        if seq::lt(seg_seq, self.rcv_nxt) {
            let cut = self.rcv_nxt.wrapping_sub(seg_seq).min(len);
            self.stats.dup_bytes += cut as u64;
            if cut > 0 {
                self.set_dsack(seg_seq, seg_seq.wrapping_add(cut));
            }
            len -= cut;
            off += cut;
            seg_seq = seg_seq.wrapping_add(cut);
            if fin && seq::lt(seg_seq, self.rcv_nxt) {
                fin = false; // a FIN already consumed
            }
        }
        let right = self.rcv_adv;
        if len > 0 && seq::gt(seg_seq.wrapping_add(len), right) {
            len = right.wrapping_sub(seg_seq).min(len);
            fin = false;
            self.stats.beyond_window_bytes += 1;
        }

        let data_allowed = matches!(
            self.state,
            State::Established | State::FinWait1 | State::FinWait2
        );
        if len > 0 && !data_allowed && self.eof {
            // Data beyond the peer's FIN: ignore.
            self.send_ack(now, io);
            return out;
        }
        if len > 0 && self.app_closed {
            // The application closed: data cannot be delivered (RFC 9293 3.10.7.4, Linux).
            self.send_rst(io);
            self.enter_closed(io, None);
            self.stats.data_after_close += 1;
            out.notify = true;
            return out;
        }

        let mut immediate_ack = false;
        if len > 0 {
            self.sample_rcv_rtt(t.options.timestamps, now);
            if len > self.rcv_mss {
                self.rcv_mss = len.min(self.our_mss);
                self.ack_limit = self.ack_stretch(io.cfg);
            }
            if len >= self.rcv_mss {
                self.set_ratio(len, truesize, io.cfg);
            }
            let start = self.rcv_off + seg_seq.wrapping_sub(self.rcv_nxt) as u64;
            let in_order = start == self.rcv_off;
            if !in_order && self.reasm.covers(start, start + len as u64) {
                // Every byte is already held out of order: report it (D-SACK), store nothing.
                self.stats.dup_bytes += len as u64;
                self.set_dsack(seg_seq, seg_seq.wrapping_add(len));
                self.stats.dup_acks_sent += 1;
                self.send_ack(now, io);
                return out;
            }
            // Memory admission. The window is derived from the same accounting, so a sender of
            // full-sized segments never gets here with in-window data that does not fit.
            let fits = |c: &Conn| {
                c.mem + truesize as u64 <= c.rcvbuf as u64
                    && (in_order || c.ooo_truesize + truesize as u64 <= c.ooo_cap)
            };
            if in_order {
                // Last resort against senders of tiny segments (each costs a whole frame):
                // without room for the next in-order byte the connection could never advance,
                // so out-of-order data is given up (reneging, as Linux `tcp_prune_ofo_queue`).
                while !fits(self) {
                    match self.reasm.pop_last() {
                        Some(g) => {
                            self.stats.ooo_pruned += 1;
                            self.ooo_leave(g.slot);
                            self.unref(g.slot, io.released);
                        }
                        None => break,
                    }
                }
            }
            if !fits(self) {
                // Out-of-order data that does not fit is dropped; data already held (and
                // SACKed) is never discarded for it.
                self.stats.mem_drops += 1;
                self.send_ack(now, io);
                return out;
            }
            if !in_order && truesize as u64 > io.pool_free {
                // The shared pool is down to its reserve: it is kept for in-order data and
                // handshakes, out-of-order data waits for the retransmission.
                self.stats.pressure_drops += 1;
                out.pressure_drop = true;
                self.send_ack(now, io);
                return out;
            }
            let seg = SegRef {
                slot: 0,
                off,
                len,
                start,
                psh: flags.psh(),
            };
            if in_order {
                let had_ooo = !self.reasm.is_empty();
                let slot = self.alloc_slot(frame, truesize);
                out.held = true;
                self.push_in_order(SegRef { slot, ..seg });
                self.pull_reassembled(io);
                out.notify = true;
                immediate_ack |= had_ooo;
                self.unacked_bytes += len;
                if self.quickack > 0 {
                    self.quickack -= 1;
                    immediate_ack = true;
                }
                if self.unacked_bytes >= 2 * self.rcv_mss {
                    if io.cfg.batch_acks && self.unacked_bytes < self.ack_limit {
                        out.batch_ack = true;
                    } else {
                        immediate_ack = true;
                    }
                }
            } else {
                let slot = self.alloc_slot(frame, truesize);
                let mut released = Vec::new();
                let r = self.reasm.insert(SegRef { slot, ..seg }, &mut |g: SegRef| {
                    released.push(g.slot)
                });
                for s in released {
                    self.stats.ooo_replaced += 1;
                    self.ooo_leave(s);
                    self.unref(s, io.released);
                }
                match r {
                    Insert::Stored => {
                        out.held = true;
                        self.ooo_truesize += truesize as u64;
                        self.stats.ooo_segments += 1;
                    }
                    Insert::Duplicate => {
                        self.stats.dup_bytes += len as u64;
                        self.set_dsack(seg_seq, seg_seq.wrapping_add(len));
                        self.forget_slot(slot);
                    }
                    Insert::TooManyRanges => {
                        self.stats.ooo_range_drops += 1;
                        self.forget_slot(slot);
                    }
                }
                let stored = out.held;
                if self.compress_sack(now, io, stored.then_some(start)) {
                    self.stats.acks_compressed += 1;
                } else {
                    immediate_ack = true;
                    self.stats.dup_acks_sent += 1;
                }
            }
        } else if p.payload_len > 0 {
            // Entirely duplicate payload (partially acceptable segments trimmed to nothing).
            immediate_ack = true;
            self.stats.dup_acks_sent += 1;
        }

        if fin && self.eof {
            // A FIN at or beyond the end of a stream whose FIN was consumed: nothing valid can
            // follow a FIN, so it is not consumed again (rcv_nxt would move over a sequence
            // number the peer never validly sent; Linux ignores such segments in CLOSE-WAIT).
            immediate_ack = true;
        } else if fin {
            let fin_off =
                self.rcv_off + seg_seq.wrapping_add(len).wrapping_sub(self.rcv_nxt) as u64;
            if fin_off == self.rcv_off && self.ooo_fin.is_none() {
                self.consume_fin(now, io);
                out.notify = true;
            } else if fin_off > self.rcv_off {
                self.ooo_fin = Some(fin_off);
            }
            immediate_ack = true;
        } else if let Some(f) = self.ooo_fin {
            if f == self.rcv_off && !self.eof {
                self.ooo_fin = None;
                self.consume_fin(now, io);
                out.notify = true;
                immediate_ack = true;
            }
        }

        if self.state == State::Closed {
            return out;
        }
        if immediate_ack {
            self.send_ack(now, io);
        } else if len > 0 && self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + io.cfg.delayed_ack);
            self.stats.delayed_acks += 1;
        }
        out
    }

    /// The most unacknowledged bytes a batch-end ACK may cover (see [`Config::ack_stretch`]):
    /// also at most half the window the last ACK offered, so the sender never runs out of
    /// window waiting for the end of our batch.
    fn ack_stretch(&self, cfg: &Config) -> u32 {
        let offered = self.rcv_adv.wrapping_sub(self.last_ack_sent);
        cfg.ack_stretch
            .min(self.max_space() / 4)
            .min(offered / 2)
            .max(2 * self.rcv_mss)
    }

    /// Records the payload/truesize ratio of a full-sized segment (it scales the window).
    #[inline]
    fn set_ratio(&mut self, len: u32, truesize: u32, cfg: &Config) {
        let (num, den) = (len.min(truesize.max(1)), truesize.max(1));
        if (num, den) != (self.ratio_num, self.ratio_den) {
            self.ratio_num = num;
            self.ratio_den = den;
            self.ack_limit = self.ack_stretch(cfg);
        }
    }

    /// End of a batch: one cumulative ACK if in-order data still waits for one.
    pub fn batch_ack(&mut self, now: Instant, io: &mut Io) {
        if self.unacked_bytes >= 2 * self.rcv_mss
            && matches!(
                self.state,
                State::Established | State::FinWait1 | State::FinWait2
            )
        {
            self.stats.batch_acks += 1;
            self.send_ack(now, io);
        }
    }

    /// Header prediction (Van Jacobson): whether `s` is the segment the full path
    /// ([`Conn::on_segment`]) would simply append to the in-order queue. True exactly when the
    /// full path would take none of its other branches: established, no RST/SYN/FIN (the
    /// parser checked), PAWS passes, exactly the next sequence number with the window open for
    /// all of it, the ACK field acknowledging exactly what we sent, the application not closed,
    /// nothing out of order (no reassembly to pull, no pending FIN) and room in memory without
    /// pruning. Pure: the caller verifies the checksum before [`Conn::fast_apply`].
    #[inline(always)]
    pub fn fast_accepts(&self, s: &FastSeg, truesize: u32, now: Instant) -> bool {
        if self.state != State::Established
            || s.seq != self.rcv_nxt
            || s.ack != self.snd_una
            || self.app_closed
            || self.ooo_fin.is_some()
            || !self.reasm.is_empty()
            || self.mem + truesize as u64 > self.rcvbuf as u64
            || s.payload_len > self.advertised_window()
        {
            return false;
        }
        // PAWS (the same test as the full path): a segment it would drop is not predicted.
        if self.ts_ok {
            if let Some((tsval, _)) = s.ts {
                if (self.ts_recent.wrapping_sub(tsval) as i32) > PAWS_WINDOW
                    && now.as_millis().saturating_sub(self.ts_recent_ms) < TWENTY_FOUR_DAYS_MS
                {
                    return false;
                }
            }
        }
        true
    }

    /// Appends a segment [`Conn::fast_accepts`] accepted (and whose checksum was verified) to
    /// the in-order queue: the full path's effects for that case, so that state, counters and
    /// ACKs are identical (the connection always has news: data was queued). Returns whether
    /// the segment wants the batch-end ACK (`Outcome::batch_ack` of the full path).
    ///
    /// `frame`: `Some` queues the payload, held in that frame; `None` is a direct delivery
    /// (the endpoint already copied the payload to a waiting reader, which has read it: nothing
    /// is queued or held, and the window stays open by what was delivered).
    #[inline(always)]
    pub fn fast_apply<'a>(
        &mut self,
        s: &FastSeg,
        frame: Option<FrameId>,
        truesize: u32,
        now: Instant,
        cfg: &Config,
        io: impl FnOnce() -> Io<'a>,
    ) -> bool {
        self.stats.segments_in += 1;
        self.last_rx = now;
        // ACK field: equal to snd_una (checked), so only the peer's window is recorded.
        self.max_snd_wnd = self.max_snd_wnd.max((s.window as u32) << self.snd_wscale);
        if self.ts_ok {
            if let Some((tsval, ecr)) = s.ts {
                // Timestamp bookkeeping (RFC 7323 4.3).
                if seq::le(s.seq, self.last_ack_sent) && seq::ge(tsval, self.ts_recent) {
                    self.ts_recent = tsval;
                    self.ts_recent_ms = now.as_millis();
                }
                self.sample_rcv_rtt(Some((tsval, ecr)), now);
            }
        }
        let len = s.payload_len;
        if len > self.rcv_mss {
            self.rcv_mss = len.min(self.our_mss);
            self.ack_limit = self.ack_stretch(cfg);
        }
        if len >= self.rcv_mss {
            self.set_ratio(len, truesize, cfg);
        }
        match frame {
            Some(frame) => {
                let slot = self.alloc_slot(frame, truesize);
                self.push_in_order(SegRef {
                    slot,
                    off: s.payload_offset,
                    len,
                    start: self.rcv_off,
                    psh: s.psh(),
                });
            }
            None => self.advance(len),
        }
        self.unacked_bytes += len;
        // The full path's ACK decision for in-order data (see `on_segment`).
        let mut immediate_ack = false;
        let mut batch_ack = false;
        if self.quickack > 0 {
            self.quickack -= 1;
            immediate_ack = true;
        }
        if self.unacked_bytes >= 2 * self.rcv_mss {
            if cfg.batch_acks && self.unacked_bytes < self.ack_limit {
                batch_ack = true;
            } else {
                immediate_ack = true;
            }
        }
        if immediate_ack {
            // The effects' destination is built only when there is an effect.
            self.send_ack(now, &mut io());
        } else if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + cfg.delayed_ack);
            self.stats.delayed_acks += 1;
        }
        batch_ack
    }

    /// Truesize of the frames held by the out-of-order store.
    pub fn ooo_mem(&self) -> u64 {
        self.ooo_truesize
    }

    /// Pool pressure: gives up the highest out-of-order segment (its frame is referenced by
    /// the store only, never by a copy). What is pruned was never acknowledged, only SACKed:
    /// the next ACK's SACK blocks no longer cover it (RFC 2018 reneging; the sender keeps it
    /// for retransmission). Returns false when nothing is left out of order.
    pub fn prune_ooo_last(&mut self, released: &mut Released) -> bool {
        let Some(g) = self.reasm.pop_last() else {
            return false;
        };
        self.stats.ooo_pruned += 1;
        self.stats.pressure_pruned += 1;
        self.ooo_leave(g.slot);
        self.unref(g.slot, released);
        true
    }

    /// Whether the connection may be reset to make room at the connection cap: the peer holds
    /// it open (established, half-closed, or TIME-WAIT) and no copy out of it is in progress
    /// (the endpoint checks how long it has been idle, `last_rx`).
    pub fn reclaimable(&self) -> bool {
        matches!(
            self.state,
            State::Established | State::CloseWait | State::FinWait2 | State::TimeWait
        ) && self.pieces_out == 0
            && !self.reclaimed
    }

    /// Resets the connection to make room at the connection cap (TIME-WAIT just ends, like
    /// Linux when its TIME-WAIT buckets run out). The application sees `Reset`.
    pub fn reclaim(&mut self, io: &mut Io) {
        self.reclaimed = true;
        if self.state == State::TimeWait {
            self.enter_closed(io, None);
            return;
        }
        self.send_rst(io);
        self.discard_queues(io.released);
        let err = if self.app_closed {
            None
        } else {
            Some(ConnError::Reset)
        };
        self.enter_closed(io, err);
    }

    /// Whether to hold back the duplicate ACK for out-of-order data (SACK compression, as Linux
    /// `__tcp_ack_snd_check`): the first three for each `rcv_nxt` go out at once so fast
    /// retransmit triggers, later ones are held for min(RTT / 20, `comp_sack_delay`) and at
    /// most `comp_sack_nr` are merged into one ACK.
    ///
    /// Like Linux (`tcp_sack_new_ofo_skb` sends the pending ACK before a SACK block would be
    /// forgotten), the ACK goes out as soon as the ranges changed since the last ACK fill its
    /// SACK blocks: a range extended but never reported would look lost to the sender, which
    /// retransmits it spuriously.
    fn compress_sack(&mut self, now: Instant, io: &Io, stored: Option<u64>) -> bool {
        if !self.sack_ok || io.cfg.comp_sack_nr == 0 || self.compressed >= io.cfg.comp_sack_nr {
            return false;
        }
        if let Some(off) = stored {
            self.comp_touched.push(off);
            let mut idx: Vec<usize> = self
                .comp_touched
                .iter()
                .filter_map(|&o| self.reasm.range_index(o))
                .collect();
            idx.sort_unstable();
            idx.dedup();
            let blocks = if self.ts_ok { 3 } else { 4 } - self.dsack.is_some() as usize;
            if idx.len() >= blocks {
                return false;
            }
        }
        if self.comp_rcv_nxt != self.rcv_nxt {
            self.comp_rcv_nxt = self.rcv_nxt;
            self.dup_ack_counter = 0;
        }
        if self.dup_ack_counter < 3 {
            self.dup_ack_counter += 1;
            return false;
        }
        self.compressed += 1;
        let delay = io
            .cfg
            .comp_sack_delay
            .min(Duration::from_micros(self.rcv_rtt_us.max(1000) / 20));
        let d = now + delay;
        if self.ack_deadline.is_none_or(|x| x > d) {
            self.ack_deadline = Some(d);
        }
        true
    }

    /// Updates the receive RTT estimate from the echoed timestamp of a data segment.
    #[inline(always)]
    fn sample_rcv_rtt(&mut self, ts: Option<(u32, u32)>, now: Instant) {
        if !self.ts_ok {
            return;
        }
        if let Some((_, ecr)) = ts {
            if ecr == 0 || ecr == self.rcv_rtt_last_ecr {
                return;
            }
            self.rcv_rtt_last_ecr = ecr;
            let ms = self.ts_val(now).wrapping_sub(ecr) as i32;
            if !(0..60_000).contains(&ms) {
                return;
            }
            let sample = (ms.max(1) as u64) * 1000;
            self.rcv_rtt_us = if self.rcv_rtt_us == 0 {
                sample
            } else {
                (self.rcv_rtt_us * 7 + sample) / 8
            };
        }
    }

    /// Remembers a duplicate range for the next ACK (RFC 2883); the latest one wins.
    fn set_dsack(&mut self, start: u32, end: u32) {
        if self.sack_ok && seq::lt(start, end) {
            self.dsack = Some((start, end));
        }
    }

    /// A segment leaves the out-of-order store (to the in-order queue or released).
    fn ooo_leave(&mut self, slot: u32) {
        self.ooo_truesize -= self.frames[slot as usize].truesize as u64;
    }

    /// Frees a slot that was allocated but never queued.
    fn forget_slot(&mut self, slot: u32) {
        let mut v = Released::default();
        self.unref(slot, &mut v);
        // The frame was never held from the shell's point of view: the caller returns `held =
        // false`, so it is not reported as released.
        debug_assert_eq!(v.frames.len(), 1);
    }

    #[inline(always)]
    fn push_in_order(&mut self, g: SegRef) {
        self.advance(g.len);
        self.available += g.len as u64;
        self.psh_queued += g.psh as u32;
        self.in_order.push_back(g);
    }

    /// `len` more bytes received in order.
    #[inline(always)]
    fn advance(&mut self, len: u32) {
        self.rcv_nxt = self.rcv_nxt.wrapping_add(len);
        self.rcv_off += len as u64;
        self.stats.payload_in += len as u64;
    }

    /// A direct delivery may go to the application: it accepted the connection and nothing
    /// received in order waits to be read (the order of the stream is kept).
    #[inline(always)]
    pub fn direct_ok(&self) -> bool {
        self.available == 0 && self.accepted
    }

    fn pull_reassembled(&mut self, io: &mut Io) {
        loop {
            let mut released = Vec::new();
            let next = self
                .reasm
                .pop_ready(self.rcv_off, &mut |g: SegRef| released.push(g.slot));
            for s in released {
                self.ooo_leave(s);
                self.unref(s, io.released);
            }
            match next {
                Some(g) => {
                    self.ooo_leave(g.slot);
                    self.push_in_order(g)
                }
                None => break,
            }
        }
        if let Some(f) = self.ooo_fin {
            if f < self.rcv_off {
                self.ooo_fin = None;
            }
        }
    }

    fn consume_fin(&mut self, now: Instant, io: &mut Io) {
        self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        self.eof = true;
        self.ooo_fin = None;
        match self.state {
            State::Established => self.state = State::CloseWait,
            State::FinWait1 => self.state = State::Closing,
            State::FinWait2 => self.enter_time_wait(now, io),
            _ => {}
        }
    }

    // ----- consumer side -----

    /// The in-order segments not yet read, as (frame, offset, length, stream offset, psh).
    pub fn queued(&self) -> impl Iterator<Item = (FrameId, SegRef)> + '_ {
        self.in_order
            .iter()
            .map(|g| (self.frames[g.slot as usize].frame, *g))
    }

    pub fn psh_queued(&self) -> bool {
        self.psh_queued > 0
    }

    /// Takes up to `max` bytes from the head of the in-order queue. The frame stays referenced
    /// until [`Conn::release`] is called for the returned piece.
    #[inline]
    pub fn read(&mut self, max: usize) -> Option<(FrameId, SegRef)> {
        let head = self.in_order.front_mut()?;
        let n = (max.min(u32::MAX as usize) as u32).min(head.len);
        if n == 0 {
            return None;
        }
        let mut piece = *head;
        piece.len = n;
        let whole = n == head.len;
        piece.psh = head.psh && whole;
        if whole {
            // The queue's reference becomes the piece's reference.
            self.in_order.pop_front();
            self.psh_queued -= piece.psh as u32;
        } else {
            head.trim_front(n);
            self.frames[piece.slot as usize].refs += 1;
        }
        self.available -= n as u64;
        self.pieces_out += 1;
        Some((self.frames[piece.slot as usize].frame, piece))
    }

    /// The consumer is done with a piece. Frees its frame when nothing else references it and
    /// sends a window update when the window grew enough (Linux `tcp_cleanup_rbuf` rule).
    #[inline]
    pub fn release(&mut self, slot: u32, released: &mut Released) {
        self.pieces_out -= 1;
        self.unref(slot, released);
    }

    pub fn maybe_window_update(&mut self, now: Instant, io: &mut Io) {
        if !matches!(
            self.state,
            State::Established | State::FinWait1 | State::FinWait2
        ) || self.eof
        {
            return;
        }
        let cur = self.advertised_window();
        let max = self.max_space();
        if cur.saturating_mul(2) <= max {
            let space = self.window_space();
            let sws = self.rcv_mss.min(max / 2).max(1);
            if space >= sws && space >= cur.saturating_mul(2) {
                self.stats.window_updates += 1;
                self.send_ack(now, io);
            }
        }
    }

    /// The application closes the connection. Unread data makes it an abort (RST), as in Linux.
    pub fn close(&mut self, now: Instant, io: &mut Io) {
        self.app_closed = true;
        let unread = self.available > 0 || !self.reasm.is_empty();
        match self.state {
            State::Established | State::CloseWait if unread => {
                self.send_rst(io);
                self.discard_queues(io.released);
                self.enter_closed(io, None);
                self.stats.aborted_unread += 1;
            }
            State::Established | State::CloseWait => {
                self.snd_nxt = self.snd_nxt.wrapping_add(1);
                self.fin_sent = true;
                self.state = if self.state == State::Established {
                    State::FinWait1
                } else {
                    State::LastAck
                };
                self.send_fin(now, io);
                self.rtx = Some(Backoff::start(now, self.rto));
            }
            State::SynReceived => {
                self.send_rst(io);
                self.enter_closed(io, None);
            }
            _ => {}
        }
    }

    /// The application aborts the connection (its data cannot be kept, e.g. the sink failed):
    /// RST whatever was read, so the sender sees an error instead of a clean close.
    pub fn abort(&mut self, io: &mut Io) {
        self.app_closed = true;
        if matches!(self.state, State::Closed | State::TimeWait) {
            return;
        }
        self.send_rst(io);
        self.discard_queues(io.released);
        self.enter_closed(io, None);
        self.stats.aborted_by_app += 1;
    }

    /// Changes the receive buffer (the window never shrinks below what was advertised).
    pub fn set_rcvbuf(&mut self, bytes: u32, now: Instant, io: &mut Io) {
        self.rcvbuf = bytes.max(4096);
        self.rcvbuf_peak = self.rcvbuf_peak.max(self.rcvbuf);
        self.ack_limit = self.ack_stretch(io.cfg);
        self.maybe_window_update(now, io);
    }

    pub fn rcvbuf(&self) -> u32 {
        self.rcvbuf
    }

    // ----- timers -----

    pub fn next_deadline(&self, cfg: &Config) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut d = earliest(self.ack_deadline, self.rtx.map(|r| r.deadline));
        d = earliest(d, self.tw_deadline);
        if self.state != State::TimeWait && !cfg.idle_timeout.is_zero() {
            d = earliest(d, Some(self.last_rx + cfg.idle_timeout));
        }
        d
    }

    /// Runs the timers that are due. Returns true when the connection changed visibly.
    pub fn on_timeout(&mut self, now: Instant, io: &mut Io) -> bool {
        if self.state == State::Closed {
            return false;
        }
        if self.tw_deadline.is_some_and(|d| d <= now) {
            self.enter_closed(io, None);
            return true;
        }
        if let Some(mut r) = self.rtx {
            if r.deadline <= now {
                match self.state {
                    State::SynReceived => {
                        if r.retries >= io.cfg.synack_retries {
                            self.stats.handshake_timeouts += 1;
                            self.enter_closed(io, Some(ConnError::TimedOut));
                            return true;
                        }
                        r.back_off(now);
                        self.rtx = Some(r);
                        self.stats.synack_retransmits += 1;
                        self.send_synack(now, io);
                    }
                    State::FinWait1 | State::Closing | State::LastAck => {
                        if r.retries >= io.cfg.fin_retries {
                            self.send_rst(io);
                            self.enter_closed(io, Some(ConnError::TimedOut));
                            return true;
                        }
                        r.back_off(now);
                        self.rtx = Some(r);
                        self.stats.fin_retransmits += 1;
                        self.send_fin(now, io);
                    }
                    _ => self.rtx = None,
                }
            }
        }
        if self.ack_deadline.is_some_and(|d| d <= now) {
            self.send_ack(now, io);
        }
        if self.state != State::TimeWait
            && !io.cfg.idle_timeout.is_zero()
            && self.last_rx + io.cfg.idle_timeout <= now
        {
            self.stats.idle_timeouts += 1;
            self.send_rst(io);
            self.enter_closed(io, Some(ConnError::TimedOut));
            return true;
        }
        false
    }

    /// Checks internal invariants (tests and fuzzing).
    pub fn check(&self) {
        self.reasm.check();
        let queued: u64 = self.in_order.iter().map(|g| g.len as u64).sum();
        assert_eq!(queued, self.available);
        let held: u64 = self
            .frames
            .iter()
            .filter(|h| h.refs > 0)
            .map(|h| h.truesize as u64)
            .sum();
        assert_eq!(held, self.mem, "memory accounting");
        // The free list holds exactly the free slots, each once.
        let (mut free, mut at) = (0usize, self.free_slot);
        while at != NO_SLOT {
            let h = &self.frames[at as usize];
            assert_eq!(h.refs, 0, "a slot on the free list is free");
            free += 1;
            assert!(free <= self.frames.len(), "free list without a cycle");
            at = h.next_free;
        }
        assert_eq!(free, self.frames.iter().filter(|h| h.refs == 0).count());
        assert!(
            self.mem <= self.rcvbuf_peak as u64,
            "memory bounded by rcvbuf"
        );
    }
}
