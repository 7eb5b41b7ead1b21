//! AF_XDP I/O shell: our own XDP program (assembled in Rust, loaded with the raw `bpf()`
//! syscall, attached through a bpf_link), one AF_XDP socket per RX queue with its UMEM and four
//! rings, exact frame accounting, and one poller thread per queue.
//!
//! ```text
//! XdpService::open(XdpConfig)      iface checks -> XSKMAP -> program -> sockets -> bpf_link
//!   .take_sockets() -> Vec<XskSocket>   one per queue
//! poller::spawn(sockets, |queue| handler)   one thread per queue, each owning its socket
//! CoreIo: a handler's I/O around an `RxCore` (RX descriptors in, fill ring and TX out)
//! ```
//!
//! All `unsafe` of the AF_XDP path lives in this module (mmap'd rings, UMEM, syscalls).

pub mod bpf;
pub mod core_io;
pub mod cpu;
pub mod frames;
pub mod iface;
pub mod insn;
pub mod poller;
pub mod ring;
pub mod socket;

use std::io;

pub use bpf::{AttachMode, XdpLink, XdpMode, XdpProgram, XskMap};
pub use core_io::{CoreIo, TxStats};
pub use cpu::{Placement, QueueCpus};
pub use frames::{FrameId, FrameState};
pub use iface::IfaceInfo;
pub use insn::ProgramSpec;
pub use poller::{Pollers, QueueHandler, Waker};
pub use socket::{
    FrameCounts, KernelStats, RxDesc, RxPacket, SocketConfig, TxError, XskSocket, XskStats,
    XDP_HEADROOM,
};

/// Errors of the AF_XDP shell; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error(
        "interface {name:?} not found in this network namespace: check `ip link show` \
         (and that the process runs in the interface's namespace, e.g. `ip netns exec NS ...`)"
    )]
    NoInterface { name: String },

    #[error(
        "queue {queue} out of range: {ifname} has {count} RX queue(s) (0..{count}); use a queue \
         below {count}, or add queues (`ethtool -L {ifname} combined N`; veth: create it with \
         `numrxqueues N numtxqueues N`)"
    )]
    QueueOutOfRange {
        ifname: String,
        queue: u32,
        count: u32,
    },

    #[error(
        "{op}: permission denied ({source}); run as root or grant \
         CAP_NET_ADMIN,CAP_BPF,CAP_NET_RAW (plus CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK for the UMEM)"
    )]
    Permission { op: &'static str, source: io::Error },

    #[error(
        "MTU {mtu} of {ifname} needs frames of up to {needed} bytes, but a {frame_size}-byte UMEM \
         frame holds at most {max} bytes in copy mode (XDP headroom 256), and larger frames would \
         be dropped: enable scatter-gather (SocketConfig.sg = true: XDP_USE_SG with the \
         frags-aware program), or lower the MTU to {max_mtu} (`ip link set dev {ifname} mtu {max_mtu}`, \
         and the same on the sender)"
    )]
    MtuTooLarge {
        ifname: String,
        mtu: u32,
        needed: u32,
        frame_size: u32,
        max: u32,
        max_mtu: u32,
    },

    #[error(
        "an XDP program is already attached to {ifname} ({detail}): see it with \
         `ip -d link show dev {ifname}` (or `bpftool net`), and detach it with \
         `ip link set dev {ifname} xdp off` (`xdpgeneric off` for generic mode), or stop the \
         process that holds its bpf_link"
    )]
    AlreadyAttached { ifname: String, detail: String },

    #[error(
        "native XDP refused on {ifname} (ERANGE): the MTU of its veth peer is too large for XDP \
         without fragment support (veth caps it at 3506){}",
        if *frags { "; lower the peer's MTU" } else {
            "; enable scatter-gather (SocketConfig.sg = true) to load the frags-aware program, \
             or lower the peer's MTU to 3506 or less"
        }
    )]
    PeerMtuTooLarge { ifname: String, frags: bool },

    #[error("the kernel verifier rejected the XDP program ({source}); verifier log:\n{log}")]
    Verifier { source: io::Error, log: String },

    #[error("bind(AF_XDP) to {ifname} queue {queue} failed ({source}): {hint}")]
    Bind {
        ifname: String,
        queue: u32,
        source: io::Error,
        hint: String,
    },

    #[error("{op} failed: {source}")]
    Io { op: &'static str, source: io::Error },

    #[error("invalid configuration: {0}")]
    Config(String),
}

impl XskError {
    /// Map an OS error of `op`: EPERM/EACCES become [`XskError::Permission`].
    pub fn from_os(op: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => XskError::Permission { op, source },
            Some(libc::ENOMEM) if op.contains("UMEM") => XskError::Io {
                op: "register UMEM (ENOMEM: raise RLIMIT_MEMLOCK, e.g. `ulimit -l unlimited`, \
                     or grant CAP_IPC_LOCK)",
                source,
            },
            _ => XskError::Io { op, source },
        }
    }
}

/// What to open.
#[derive(Clone, Debug)]
pub struct XdpConfig {
    pub ifname: String,
    /// TCP destination port redirected to the sockets.
    pub port: u16,
    /// Queues to open a socket on; `None` = every RX queue of the interface.
    pub queues: Option<Vec<u32>>,
    pub attach: AttachMode,
    pub socket: SocketConfig,
    /// Parse one VLAN tag in the program.
    pub vlan: bool,
    /// Where each queue's poller and TX kicker run (overrides `socket.cpus`).
    pub cpus: Placement,
}

impl XdpConfig {
    pub fn new(ifname: &str, port: u16) -> Self {
        Self {
            ifname: ifname.to_string(),
            port,
            queues: None,
            attach: AttachMode::Auto,
            socket: SocketConfig::default(),
            vlan: true,
            cpus: Placement::Float,
        }
    }
}

/// Check the interface's MTU against the frame size (without SG the largest frame must fit one
/// chunk after the XDP headroom). Pure, so it is unit-tested.
pub fn check_mtu(ifname: &str, mtu: u32, cfg: &SocketConfig, vlan: bool) -> Result<(), XskError> {
    if cfg.sg {
        return Ok(());
    }
    let l2 = 14 + if vlan { 4 } else { 0 };
    let needed = mtu + l2;
    let max = cfg.max_linear_frame();
    if needed > max {
        return Err(XskError::MtuTooLarge {
            ifname: ifname.to_string(),
            mtu,
            needed,
            frame_size: cfg.frame_size,
            max,
            max_mtu: max - l2,
        });
    }
    Ok(())
}

/// Check the requested queues against the interface's queue count. Pure.
pub fn check_queues(ifname: &str, queues: &[u32], count: Option<u32>) -> Result<(), XskError> {
    if queues.is_empty() {
        return Err(XskError::Config("no queue selected".into()));
    }
    if let Some(count) = count {
        if let Some(&q) = queues.iter().find(|&&q| q >= count) {
            return Err(XskError::QueueOutOfRange {
                ifname: ifname.to_string(),
                queue: q,
                count,
            });
        }
    }
    Ok(())
}

/// The attached service: program, XSKMAP, bpf_link, and the sockets until taken.
///
/// Dropping it detaches the program (the bpf_link closes). Sockets taken with
/// [`take_sockets`](Self::take_sockets) stay valid; once the program is gone they simply stop
/// receiving.
#[derive(Debug)]
pub struct XdpService {
    iface: IfaceInfo,
    sockets: Vec<XskSocket>,
    queues: Vec<u32>,
    // Drop order: link (detach) first, then program and map.
    link: XdpLink,
    prog: XdpProgram,
    map: XskMap,
}

impl XdpService {
    /// Look the interface up, check queues and MTU, build and load the program, open one socket
    /// per queue, put them in the XSKMAP, and attach the program (native preferred).
    pub fn open(cfg: &XdpConfig) -> Result<Self, XskError> {
        cfg.socket.validate()?;
        let iface = iface::lookup(&cfg.ifname)?;
        let queues: Vec<u32> = match &cfg.queues {
            Some(q) => q.clone(),
            None => (0..iface.rx_queues.unwrap_or(1)).collect(),
        };
        check_queues(&iface.name, &queues, iface.rx_queues)?;
        check_mtu(&iface.name, iface.mtu, &cfg.socket, cfg.vlan)?;
        let mut per_queue = Vec::with_capacity(queues.len());
        for i in 0..queues.len() {
            let cpus = cfg
                .cpus
                .for_queue(i, queues.len())
                .map_err(|e| XskError::Config(format!("thread placement: {e}")))?;
            let cpus = cpus.or(cfg.socket.cpus);
            if let Some(c) = cpus {
                tracing::info!(
                    queue = queues[i],
                    poller_cpu = c.poller,
                    kicker_cpu = c.kicker,
                    "thread placement"
                );
            }
            per_queue.push(SocketConfig {
                cpus,
                ..cfg.socket.clone()
            });
        }

        let max_q = queues.iter().copied().max().unwrap_or(0);
        let map = XskMap::create(iface.rx_queues.unwrap_or(0).max(max_q + 1))?;
        let spec = ProgramSpec {
            vlan: cfg.vlan,
            ..ProgramSpec::new(cfg.port)
        };
        let prog = XdpProgram::load_redirect(&spec, &map, cfg.socket.sg)?;

        let mut sockets = Vec::with_capacity(queues.len());
        for (&q, scfg) in queues.iter().zip(&per_queue) {
            let s = XskSocket::open(iface.ifindex, &iface.name, q, scfg)?;
            map.insert(q, s.raw_fd())?;
            sockets.push(s);
        }
        let link = XdpLink::attach(&prog, iface.ifindex, &iface.name, cfg.attach)?;
        tracing::info!(
            ifname = %iface.name, ifindex = iface.ifindex, port = cfg.port, mode = %link.mode(),
            queues = ?queues, sg = cfg.socket.sg, mtu = iface.mtu, insns = prog.insn_count(),
            "AF_XDP service attached"
        );
        Ok(Self {
            iface,
            sockets,
            queues,
            link,
            prog,
            map,
        })
    }

    /// Native or generic.
    pub fn mode(&self) -> XdpMode {
        self.link.mode()
    }
    pub fn iface(&self) -> &IfaceInfo {
        &self.iface
    }
    pub fn queues(&self) -> &[u32] {
        &self.queues
    }
    pub fn program(&self) -> &XdpProgram {
        &self.prog
    }
    pub fn map(&self) -> &XskMap {
        &self.map
    }
    /// The sockets (one per queue, in `queues()` order); empty after `take_sockets`.
    pub fn sockets_mut(&mut self) -> &mut [XskSocket] {
        &mut self.sockets
    }
    /// Hand the sockets to their pollers.
    pub fn take_sockets(&mut self) -> Vec<XskSocket> {
        std::mem::take(&mut self.sockets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_frames_when_the_mtu_fits_one() {
        let cfg = SocketConfig::default();
        let s = cfg.with_small_frames(1500, true);
        assert_eq!((s.frame_size, s.frame_count), (2048, 2 * cfg.frame_count));
        assert!(check_mtu("v0", 1500, &s, true).is_ok());
        assert!(s.validate().is_ok());
        let s = cfg.with_small_frames(1774, true);
        assert_eq!(s.frame_size, 2048, "1774 + 18 = 1792 = 2048 - headroom");
        assert_eq!(cfg.with_small_frames(1775, true).frame_size, 4096);
        assert_eq!(cfg.with_small_frames(3000, false).frame_size, 4096);
        let sg = SocketConfig { sg: true, ..cfg };
        assert_eq!(sg.with_small_frames(1500, true).frame_size, 4096);
    }

    #[test]
    fn mtu_check_names_the_fix() {
        let cfg = SocketConfig::default();
        assert!(check_mtu("v0", 1500, &cfg, true).is_ok());
        assert!(check_mtu("v0", 3822, &cfg, true).is_ok());
        let e = check_mtu("v0", 9000, &cfg, true).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("sg = true") && m.contains("mtu 3822"), "{m}");
        let small = SocketConfig {
            frame_size: 2048,
            ..cfg.clone()
        };
        assert!(check_mtu("v0", 1500, &small, true).is_ok());
        assert!(check_mtu("v0", 1800, &small, true).is_err());
        let sg = SocketConfig { sg: true, ..cfg };
        assert!(check_mtu("v0", 9000, &sg, true).is_ok());
    }

    #[test]
    fn queue_check_names_the_count() {
        assert!(check_queues("v0", &[0, 3], Some(4)).is_ok());
        let m = check_queues("v0", &[0, 4], Some(4))
            .unwrap_err()
            .to_string();
        assert!(m.contains("queue 4") && m.contains("4 RX queue"), "{m}");
        assert!(check_queues("v0", &[7], None).is_ok());
        assert!(check_queues("v0", &[], Some(1)).is_err());
    }

    #[test]
    fn permission_errors_name_the_capabilities() {
        let e = XskError::from_os("socket(AF_XDP)", io::Error::from_raw_os_error(libc::EPERM));
        assert!(
            e.to_string().contains("CAP_NET_ADMIN,CAP_BPF,CAP_NET_RAW"),
            "{e}"
        );
        let e = XskError::AlreadyAttached {
            ifname: "v0".into(),
            detail: "x".into(),
        };
        assert!(e.to_string().contains("ip link set dev v0 xdp off"));
    }

    #[test]
    fn socket_config_is_validated() {
        assert!(SocketConfig::default().validate().is_ok());
        let bad = SocketConfig {
            frame_size: 3000,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = SocketConfig {
            rx_size: 1000,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
