//! The sans-IO TCP receive endpoint.
//!
//! [`Endpoint`] is a state machine: the shell feeds it received frames and the current time, and
//! takes out frames to transmit (SYN-ACK, ACK, FIN, RST), frames it no longer references (to
//! return to the fill ring), and connections with news. It never sends payload: the endpoint is
//! receive-only (see `docs/tcp.md`).
//!
//! Payload is never copied here. A connection holds references `(frame, offset, length)` to the
//! received frames and charges each frame's *truesize* against its receive buffer. The consumer
//! (the copy engine) takes pieces with [`Endpoint::read`] and hands them back with
//! [`Endpoint::release`] once its copies completed; only then can the frame be reused.

mod conn;
mod endpoint;
pub(crate) mod reasm;
pub mod seq;
pub mod timers;

pub use endpoint::{
    DirectReader, Endpoint, EndpointEvent, EndpointStats, FrameDisposition, RxSegment,
};
pub use timers::Instant;

use std::time::Duration;

use crate::wire::ChecksumMode;

/// An opaque frame handle chosen by the shell (for example a UMEM address).
pub type FrameId = u64;

/// A connection handle. Stale handles (of a connection that was removed) are detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

impl ConnId {
    /// A number unique among live connections, for logs.
    pub fn as_u64(self) -> u64 {
        ((self.gen as u64) << 32) | self.idx as u64
    }
}

/// TCP states of a receive-only endpoint (the passive-open subset of RFC 9293).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    SynReceived,
    Established,
    /// The peer sent FIN; the application has not closed yet.
    CloseWait,
    /// FIN sent after the peer's FIN; waiting for its ACK.
    LastAck,
    /// The application closed first; our FIN is not yet acknowledged.
    FinWait1,
    FinWait2,
    Closing,
    TimeWait,
    Closed,
}

/// Why a connection ended abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    #[error("connection reset by peer")]
    Reset,
    #[error("connection timed out")]
    TimedOut,
}

/// Errors of the endpoint API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TcpError {
    #[error("unknown or closed connection handle (it was removed after close)")]
    UnknownConnection,
    #[error("port {0} already has a listener")]
    PortInUse(u16),
    #[error("the endpoint is receive-only: it never sends payload (use a kernel socket to send)")]
    ReceiveOnly,
    #[error("the piece was already released or does not belong to this connection")]
    BadRelease,
}

/// Endpoint configuration. `Default` gives Linux-like values.
#[derive(Debug, Clone)]
pub struct Config {
    /// Interface MTU; our MSS is MTU - 40 (IPv4) or MTU - 60 (IPv6).
    pub mtu: u16,
    /// Receive buffer per connection, in bytes of frame truesize (like SO_RCVBUF).
    pub rcvbuf: u32,
    /// Expected truesize of one frame (UMEM chunk size); with the MSS it sets the initial
    /// payload/truesize ratio that turns free memory into window. Refined from full segments.
    pub frame_truesize: u32,
    /// Embryonic (SYN-RECEIVED) connections per listener.
    pub syn_backlog: usize,
    /// Established connections waiting for `accept` per listener.
    pub accept_backlog: usize,
    /// Live connections in total (embryonic included). At the cap an idle connection may be
    /// reclaimed ([`Config::reclaim_idle_after`]).
    pub max_connections: usize,
    pub checksum: ChecksumMode,
    pub sack: bool,
    pub timestamps: bool,
    pub window_scaling: bool,
    pub delayed_ack: Duration,
    /// Segments acknowledged immediately at the start of a connection.
    pub quickack_segments: u32,
    pub synack_rto: Duration,
    pub synack_retries: u32,
    pub min_rto: Duration,
    pub fin_retries: u32,
    /// A connection that receives nothing for this long is aborted with RST (0: never).
    pub idle_timeout: Duration,
    pub time_wait: Duration,
    /// Out-of-order: at most this many disjoint ranges ...
    pub max_ooo_ranges: usize,
    /// ... and at most this much frame truesize. The advertised window is bounded by it too
    /// (window <= `max_ooo_mem` x payload/truesize), so in-window data is never dropped and
    /// SACKed data never discarded for it. Default: no bound beyond `rcvbuf`.
    pub max_ooo_mem: u32,
    /// Report duplicate segments in the first SACK block (D-SACK, RFC 2883); needs SACK.
    pub dsack: bool,
    /// SACK compression (Linux `tcp_comp_sack_nr`): after three immediate duplicate ACKs for
    /// the same `rcv_nxt`, at most this many out-of-order ACKs are merged into one (0: off).
    pub comp_sack_nr: u32,
    /// ... held at most min(RTT / 20, this) (Linux `tcp_comp_sack_delay_ns`).
    pub comp_sack_delay: Duration,
    /// Challenge ACKs per connection per second (RFC 5961 section 7).
    pub challenge_ack_limit: u32,
    /// Secret for initial sequence numbers (RFC 6528); set it randomly in production.
    pub isn_secret: u64,
    /// SYN cookies (RFC 4987, as Linux `tcp_syncookies = 1`): when a listener's SYN backlog
    /// is full, a SYN is answered with a SYN-ACK whose sequence number encodes the connection
    /// (see [`Endpoint`]'s cookie notes) and no state is kept; a valid returning ACK creates
    /// the connection. A SYN flood then cannot lock real clients out.
    pub syn_cookies: bool,
    /// Batch-level ACKs, as Linux acknowledges one GRO aggregate per NAPI poll: in-order data
    /// that would be acknowledged at once (two full segments unacknowledged) is acknowledged by
    /// one cumulative ACK per connection at the end of the batch ([`Endpoint::flush`]), unless
    /// the unacknowledged bytes reach [`Config::ack_stretch`]. Out-of-order data, duplicates,
    /// FIN and quickack at the start are still acknowledged at once. Off: every second full
    /// segment is acknowledged as it arrives.
    pub batch_acks: bool,
    /// The most bytes one batch-end ACK acknowledges (GRO's 64 KB aggregate); also bounded by a
    /// quarter of the receive window, so the sender's window keeps moving.
    pub ack_stretch: u32,
    /// Header prediction: the common segment (established, next in order, ACK or ACK|PSH,
    /// timestamps or no options, fits the window and memory, nothing out of order) is parsed
    /// and queued by a short path that gives exactly the full path's result. Off: every frame
    /// takes the full path (the reference; the differential tests compare the two).
    pub fast_path: bool,
    /// Frames in the shared pool the endpoint's frames come from (the UMEM frames available
    /// to RX), each of `frame_truesize`. 0: unknown, no pool-wide accounting (each connection
    /// is bounded by its `rcvbuf` only). See "Memory pressure" in `docs/tcp.md`.
    pub frame_pool: u32,
    /// High-water mark, percent of the pool: when the frames held by all connections exceed
    /// it, out-of-order data is pruned (the connection holding the most out-of-order frames
    /// first, highest sequence first) down to the low-water mark (high minus 1/16 of the pool),
    /// as Linux prunes under `tcp_mem` pressure.
    pub pool_high_pct: u8,
    /// Reserve, percent of the pool, kept for in-order data and handshakes: an out-of-order
    /// segment is refused when storing it would leave fewer free frames than this.
    pub pool_reserve_pct: u8,
    /// Out-of-order share, percent of the pool: the most frame truesize one connection may
    /// hold out of order (and its window is bounded by it, like `max_ooo_mem`; at least four
    /// frames).
    pub ooo_pool_pct: u8,
    /// Connection-cap reclaim: when `max_connections` is reached, a new connection takes the
    /// place of the connection idle longest, if it received nothing for at least this long
    /// (established or closing, no copy in progress; it is reset and its application sees
    /// `Reset`). `Duration::ZERO`: never reclaim (new connections are refused at the cap).
    pub reclaim_idle_after: Duration,
}

impl Config {
    /// Truesize of the whole pool (0: no pool known).
    pub fn pool_mem(&self) -> u64 {
        self.frame_pool as u64 * self.frame_truesize.max(1) as u64
    }
    fn pool_pct(&self, pct: u8) -> u64 {
        self.pool_mem() * pct.min(100) as u64 / 100
    }
    /// Held truesize above which out-of-order data is pruned.
    pub fn pool_high(&self) -> u64 {
        self.pool_pct(self.pool_high_pct)
    }
    /// Held truesize pruning brings the pool back to.
    pub fn pool_low(&self) -> u64 {
        self.pool_high().saturating_sub(self.pool_mem() / 16)
    }
    /// Truesize kept free for in-order data and handshakes.
    pub fn pool_reserve(&self) -> u64 {
        self.pool_pct(self.pool_reserve_pct)
    }
    /// Out-of-order truesize one connection may hold (`max_ooo_mem` and the pool share).
    pub fn ooo_limit(&self) -> u64 {
        let share = if self.frame_pool == 0 {
            u64::MAX
        } else {
            self.pool_pct(self.ooo_pool_pct)
                .max(4 * self.frame_truesize.max(1) as u64)
        };
        share.min(self.max_ooo_mem as u64)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mtu: 1500,
            rcvbuf: 4 << 20,
            frame_truesize: 4096,
            syn_backlog: 256,
            accept_backlog: 128,
            max_connections: 4096,
            checksum: ChecksumMode::Verify,
            sack: true,
            timestamps: true,
            window_scaling: true,
            delayed_ack: Duration::from_millis(40),
            quickack_segments: 16,
            synack_rto: Duration::from_secs(1),
            synack_retries: 5,
            min_rto: Duration::from_millis(200),
            fin_retries: 8,
            idle_timeout: Duration::from_secs(600),
            time_wait: Duration::from_secs(30),
            max_ooo_ranges: 64,
            max_ooo_mem: u32::MAX,
            dsack: true,
            comp_sack_nr: 44,
            comp_sack_delay: Duration::from_millis(1),
            challenge_ack_limit: 10,
            isn_secret: 0x6e65_7472_7820_6973,
            syn_cookies: true,
            batch_acks: true,
            ack_stretch: 64 << 10,
            fast_path: true,
            frame_pool: 0,
            pool_high_pct: 75,
            pool_reserve_pct: 12,
            ooo_pool_pct: 12,
            reclaim_idle_after: Duration::from_secs(10),
        }
    }
}

/// Per-connection counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub segments_in: u64,
    /// Payload bytes that entered the in-order queue (each stream byte counts once).
    pub payload_in: u64,
    /// Bytes already received (trimmed or dropped as duplicates).
    pub dup_bytes: u64,
    pub beyond_window_bytes: u64,
    pub out_of_window: u64,
    pub ooo_segments: u64,
    pub ooo_replaced: u64,
    pub ooo_pruned: u64,
    pub ooo_range_drops: u64,
    /// Segments dropped because the receive memory (rcvbuf) was full.
    pub mem_drops: u64,
    /// Out-of-order segments refused because the shared frame pool reached its reserve.
    pub pressure_drops: u64,
    /// Out-of-order segments pruned under pool pressure (counted in `ooo_pruned` too).
    pub pressure_pruned: u64,
    pub acks_sent: u64,
    pub dup_acks_sent: u64,
    /// Out-of-order ACKs held back and merged (SACK compression).
    pub acks_compressed: u64,
    pub delayed_acks: u64,
    /// ACKs sent at the end of a batch (cumulative, for several segments).
    pub batch_acks: u64,
    pub window_updates: u64,
    pub zero_window_acks: u64,
    pub paws_drops: u64,
    /// ACKs that carried a D-SACK block (RFC 2883).
    pub dsacks_sent: u64,
    pub challenge_acks: u64,
    pub rst_received: u64,
    pub rst_sent: u64,
    pub synack_retransmits: u64,
    pub fin_retransmits: u64,
    pub handshake_timeouts: u64,
    pub idle_timeouts: u64,
    pub accept_queue_drops: u64,
    pub data_after_close: u64,
    pub aborted_unread: u64,
    /// Connections the application aborted (RST) with `Endpoint::abort`.
    pub aborted_by_app: u64,
}

/// What the copy engine and the application need to know about one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub id: ConnId,
    pub state: State,
    /// Local and remote addresses (`ip.src` is local).
    pub addrs: crate::wire::ReplyAddrs,
    /// Bytes in order, not yet read.
    pub available: u64,
    /// Receive buffer size.
    pub rcvbuf: u32,
    /// Frame truesize currently held (queued, out of order and pieces being copied).
    pub mem: u64,
    /// Truesize held by the out-of-order store.
    pub ooo_mem: u64,
    /// Out-of-order payload bytes, segments and disjoint ranges held.
    pub ooo_bytes: u64,
    pub ooo_segments: usize,
    pub ooo_ranges: usize,
    /// A queued, unread segment carries PSH.
    pub psh: bool,
    /// The peer's FIN was received in order: after `available` bytes the stream ends.
    pub eof: bool,
    pub error: Option<ConnError>,
    /// Pieces handed out by `read` and not yet released.
    pub pieces_out: u32,
    /// The window currently advertised to the peer.
    pub window: u32,
    pub sack: bool,
    pub timestamps: bool,
    pub stats: ConnStats,
}
