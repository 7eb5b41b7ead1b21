//! The netrx receive service (`netrx::service`) behind [`RxListener`]/[`RxConn`].
//!
//! Each connection receives into a registered buffer from the listener's pool (DMA-eligible
//! under the policy); when the pool is exhausted it falls back to a plain buffer (CPU copies).
//! A receive blocks until the copier's wakeup rule fires; dropping the listener stops the
//! pollers, which ends every blocked receive with `ConnectionAborted`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use netrx::service::{EngineKind, Listener, RegisteredBuf, ServiceConfig, Stream};

use super::config::{EngineSpec, Settings, SgMode};
use super::rx::{RxConn, RxListener};
use super::stats::CopyCounters;

/// Maps the daemon's engine setting to the service's.
pub fn engine_kind(e: &EngineSpec) -> Result<EngineKind> {
    match e {
        EngineSpec::Cpu => Ok(EngineKind::Cpu),
        EngineSpec::Null => Ok(EngineKind::Null),
        EngineSpec::Model { preset } => format!("model:{preset}")
            .parse()
            .map_err(|e: String| anyhow!(e)),
        EngineSpec::Device { bdf } => bdf.parse().map_err(|e: String| anyhow!(e)),
    }
}

/// The service configuration for `s`.
pub fn service_config(s: &Settings) -> Result<ServiceConfig> {
    let mut cfg = ServiceConfig::new(&s.iface, s.port);
    cfg.queues = Some((0..s.queues).collect());
    cfg.engine = engine_kind(&s.engine)?;
    if let EngineKind::Vfio { bdfs } = &cfg.engine {
        if bdfs.len() < s.queues as usize {
            return Err(anyhow!(
                "--queues {} needs one I/OAT function per queue; --engine names {} ({}). \
                 Pass a comma-separated list of BDFs bound with `ioat-ctl bind`",
                s.queues,
                bdfs.len(),
                bdfs.join(",")
            ));
        }
    }
    cfg.policy = s.policy;
    if let Some(c) = s.copybreak {
        cfg.copybreak = c;
    }
    if let Some(b) = s.rcvbuf {
        cfg.rcvbuf = b;
    }
    cfg.rcvlowat = s.rcvlowat.unwrap_or(1).max(1);
    cfg.pool_buffer_size = s.recv_size;
    cfg.max_connections = s.max_connections;
    cfg.cpus = s.cpus.clone();
    cfg.socket.sg = match s.sg {
        SgMode::On => true,
        SgMode::Off => false,
        // The interface's MTU in this thread's namespace; when it cannot be read, bind reports
        // the missing interface.
        SgMode::Auto => netrx::xsk::iface::lookup(&s.iface)
            .map(|i| sg_needed(i.mtu, &cfg.socket))
            .unwrap_or(false),
    };
    // Keep the pool's memory bounded (pool_buffers x recv_size bytes, mapped once): at most
    // 256 MiB, since recv_size is at most 64 MiB (checked when the settings are merged).
    cfg.pool_buffers = (super::config::POOL_BYTES / s.recv_size.max(1)).clamp(4, 64);
    Ok(cfg)
}

/// Whether frames of an interface with this MTU need scatter-gather: the largest frame (MTU +
/// Ethernet header + one VLAN tag) does not fit one UMEM frame after the XDP headroom.
pub fn sg_needed(mtu: u32, socket: &netrx::xsk::SocketConfig) -> bool {
    netrx::xsk::check_mtu("", mtu, socket, true).is_err()
}

/// Rewrites the receive library's advice into what a daemon user can do: the library names its
/// API field (`SocketConfig.sg = true`), the daemon's users have `--sg on` / `sg = "on"`.
pub fn daemon_advice(msg: &str) -> String {
    msg.replace(
        "SocketConfig.sg = true",
        "`--sg on` or `sg = \"on\"` in the config file",
    )
}

/// Binds the service on `s.iface`/`s.port` with the engine, policy and per-stream options of `s`.
/// Must run on a thread inside the interface's network namespace.
pub fn bind(s: &Settings) -> Result<Box<dyn RxListener>> {
    Ok(Box::new(bind_listener(s)?))
}

/// [`bind`], keeping the concrete listener (the daemon's worker pool uses its streams and
/// buffers directly).
pub fn bind_listener(s: &Settings) -> Result<NetrxListener> {
    let cfg = service_config(s)?;
    let sg = cfg.socket.sg;
    let l = Listener::bind(cfg).map_err(|e| {
        let mut m = daemon_advice(&e.to_string());
        if s.sg == SgMode::Off && m.contains("scatter-gather") {
            m.push_str(" (this daemon runs with --sg off; the default, --sg auto, turns it on when the MTU needs it)");
        }
        anyhow!("{m}")
    })?;
    tracing::info!(sg, sg_mode = %s.sg, "frames: scatter-gather {}", if sg { "on" } else { "off" });
    tracing::info!(mode = ?l.xdp_mode(), queues = ?l.queues(), engine = %l.engine(), policy = %l.policy(), "netrx service bound");
    Ok(NetrxListener {
        l,
        recv_size: s.recv_size,
    })
}

pub struct NetrxListener {
    l: Listener,
    recv_size: usize,
}

impl NetrxListener {
    /// Waits up to `timeout` for a connection (`None`: none came).
    pub fn accept_stream(&mut self, timeout: Duration) -> io::Result<Option<Stream>> {
        match self.l.accept_timeout(timeout) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The listener's registered buffers (DMA-eligible receives).
    pub fn buffers(&self) -> netrx::service::BufPool {
        self.l.buffers()
    }

    /// TCP admission and memory counters, summed over the queues.
    pub fn tcp_counters(&self) -> super::stats::TcpCounters {
        let mut t = super::stats::TcpCounters::default();
        for q in &self.l.stats().queues {
            t.add(&q.endpoint);
        }
        t
    }

    /// The simulated device, with `--engine model`.
    pub fn model(&self) -> Option<std::sync::Arc<netrx::service::ModelDevice>> {
        self.l.model_device().cloned()
    }

    /// Size of one receive (`--recv-size`).
    pub fn recv_size(&self) -> usize {
        self.recv_size
    }
}

impl RxListener for NetrxListener {
    fn accept(&mut self, timeout: Duration) -> io::Result<Option<Box<dyn RxConn>>> {
        match self.l.accept_timeout(timeout) {
            Ok(s) => {
                let buf = self.l.buffers().take();
                Ok(Some(Box::new(NetrxConn {
                    s,
                    buf,
                    plain: Vec::new(),
                    recv_size: self.recv_size,
                })))
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn copy_counters(&self) -> Option<CopyCounters> {
        Some(CopyCounters::from_copy_stats(&self.l.stats().total))
    }

    fn path_counters(&self) -> Option<super::rx::PathCounters> {
        let mut p = super::rx::PathCounters::default();
        for q in &self.l.stats().queues {
            p.frames_in += q.endpoint.frames_in;
            p.tx_frames += q.tx.tx_frames;
            p.tx_kicks += q.xsk.tx_kicks;
            p.rx_batches += q.xsk.rx_batches;
            p.rx_packets += q.xsk.rx_packets;
        }
        Some(p)
    }
}

struct NetrxConn {
    s: Stream,
    /// The registered buffer (None: the pool was empty; plain CPU receives then).
    buf: Option<RegisteredBuf>,
    plain: Vec<u8>,
    recv_size: usize,
}

impl RxConn for NetrxConn {
    fn peer(&self) -> Option<SocketAddr> {
        Some(self.s.peer_addr())
    }

    fn recv_into(
        &mut self,
        _timeout: Duration,
        f: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<usize> {
        match self.buf.take() {
            Some(b) => {
                let (b, n) = self.s.recv_registered(b)?;
                let r = f(&b.as_slice()[..n]);
                self.buf = Some(b);
                r.map(|()| n)
            }
            None => {
                if self.plain.is_empty() {
                    self.plain = vec![0u8; self.recv_size];
                }
                let n = self.s.recv(&mut self.plain)?;
                f(&self.plain[..n])?;
                Ok(n)
            }
        }
    }

    fn abort(self: Box<Self>) {
        self.s.abort();
    }
}
