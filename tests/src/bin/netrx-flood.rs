//! `netrx-flood`: hostile peers against a TCP receiver, for the flood tests (docs/reliability.md).
//!
//! Runs in the sender's network namespace and speaks TCP through an AF_PACKET socket on the
//! sender's interface as many **spoofed** peers (source addresses the sender does not own; the
//! receiver answers to the source MAC, the sender's kernel drops the answers without a RST):
//!
//! ```text
//! ip netns exec SENDER netrx-flood syn  --iface IF --dst 10.77.0.2 --port 5001 --count 20000 --rate 5000
//! ip netns exec SENDER netrx-flood ooo  --iface IF --dst 10.77.0.2 --port 5001 --conns 8 --segments 1100 --timeout 30
//! ip netns exec SENDER netrx-flood idle --iface IF --dst 10.77.0.2 --port 5001 --conns 1000 --timeout 30
//! ```
//! `syn` sends N SYNs and never completes a handshake; `ooo` completes C handshakes in userspace,
//! then each connection sends S one-byte segments behind a one-byte hole it never fills, and
//! holds; `idle` completes C handshakes and holds. Everything is bounded in count and by
//! `--timeout` (and SIGINT/SIGTERM). Stdout gets `ready ...` once the flood is in place (for
//! `syn`: once sending started) and a final `summary ...` line of `key=value` counters.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand};
use netrx_tests::flood::{FloodStats, Peers, PeersConfig, SynFlood, Target};

#[derive(Parser, Debug)]
#[command(
    name = "netrx-flood",
    version,
    about = "Spoofed SYN, out-of-order and idle floods"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(ClapArgs, Debug, Clone)]
struct Common {
    /// The sender's interface (frames leave through it with its MAC).
    #[arg(long)]
    iface: String,
    /// The receiver's IPv4 address.
    #[arg(long)]
    dst: Ipv4Addr,
    /// The receiver's TCP port.
    #[arg(long)]
    port: u16,
    /// The receiver's MAC (default: resolved by ARP from this namespace).
    #[arg(long)]
    dst_mac: Option<String>,
    /// Spoofed source addresses, `LO-HI` (addresses the sender's host does not own).
    #[arg(long, default_value = "10.77.0.100-10.77.0.250")]
    spoof: String,
    /// Frames per second at most.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Stop after this many seconds whatever happened.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// RNG seed (addresses, ports, sequence numbers).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// N spoofed SYNs, never completed.
    Syn {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 20_000)]
        count: u64,
        /// After the last SYN, keep counting answers this long (seconds).
        #[arg(long, default_value_t = 0.5)]
        linger: f64,
    },
    /// C connections, each S one-byte segments behind a hole, then hold until --timeout.
    Ooo {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 8)]
        conns: usize,
        #[arg(long, default_value_t = 1100)]
        segments: u32,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 64)]
        inflight: usize,
    },
    /// C connections that sit idle until --timeout.
    Idle {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 64)]
        inflight: usize,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("netrx-flood: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow!("MAC `{s}`: expected six hex bytes like 02:00:00:00:00:01"))?;
    v.try_into()
        .map_err(|_| anyhow!("MAC `{s}`: expected six hex bytes like 02:00:00:00:00:01"))
}

fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| anyhow!("--spoof `{s}`: expected LO-HI, e.g. 10.77.0.100-10.77.0.250"))?;
    let (a, b): (Ipv4Addr, Ipv4Addr) = (
        a.trim().parse().context("--spoof: low address")?,
        b.trim().parse().context("--spoof: high address")?,
    );
    if u32::from(a) > u32::from(b) {
        bail!("--spoof `{s}`: the low address is above the high one");
    }
    Ok((a, b))
}

/// The interface's MAC (SIOCGIFHWADDR in this namespace).
fn iface_mac(fd: &OwnedFd, iface: &str) -> Result<[u8; 6]> {
    if iface.len() >= libc::IFNAMSIZ {
        bail!("--iface `{iface}`: name too long");
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr of the live ifreq we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
        bail!(
            "--iface {iface}: cannot read its MAC: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the ioctl succeeded, so ifr_hwaddr is the member it wrote.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// The receiver's MAC from this namespace's ARP table, after a UDP datagram to its discard
/// port has made the kernel resolve it.
fn resolve_mac(dst: Ipv4Addr) -> Result<[u8; 6]> {
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").context("UDP socket for ARP")?;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let _ = udp.send_to(b"arp", (dst, 9));
        let arp = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
        for l in arp.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            // IP address, HW type, Flags (0x2 = complete), HW address, Mask, Device
            if f.len() >= 4 && f[0] == dst.to_string() && f[2] == "0x2" {
                return parse_mac(f[3]);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("cannot resolve {dst}'s MAC by ARP in 3 s; pass --dst-mac")
}

/// An AF_PACKET socket bound to `iface`, non-blocking, ignoring our own transmissions.
fn packet_socket(iface: &str) -> Result<(OwnedFd, i32)> {
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto as i32,
        )
    };
    if raw < 0 {
        bail!(
            "AF_PACKET socket: {} (run as root)",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: raw is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    if ifindex == 0 {
        bail!("--iface {iface}: no such interface in this namespace");
    }
    // SAFETY: sockaddr_ll is plain old data; zeroes are valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex;
    // SAFETY: bind with a live sockaddr_ll of the size we pass.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    } != 0
    {
        bail!("bind to {iface}: {}", std::io::Error::last_os_error());
    }
    for (level, opt, v) in [
        (libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1),
        (libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20),
        (libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20),
    ] {
        let v: libc::c_int = v;
        // SAFETY: setsockopt with a live c_int of the size we pass.
        if unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                opt,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } != 0
        {
            bail!("setsockopt {opt}: {}", std::io::Error::last_os_error());
        }
    }
    Ok((fd, ifindex))
}

/// Frame I/O on the packet socket, with a pacing budget.
struct Io {
    fd: OwnedFd,
    buf: Vec<u8>,
    rate: u64,
    t0: Instant,
    budget_used: u64,
    /// Frames built but not yet sent (the socket said ENOBUFS/EAGAIN).
    backlog: std::collections::VecDeque<Vec<u8>>,
}

impl Io {
    /// Frames the rate allows now.
    fn budget(&self) -> usize {
        let allowed = (self.t0.elapsed().as_secs_f64() * self.rate as f64) as u64 + 1;
        allowed.saturating_sub(self.budget_used) as usize
    }

    /// Receives everything waiting; calls `f` per frame. Bounded to 4096 frames per call.
    fn recv_all(&mut self, mut f: impl FnMut(&[u8])) {
        for _ in 0..4096 {
            // SAFETY: recv into our own buffer of the length we pass.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return;
            }
            f(&self.buf[..n as usize]);
        }
    }

    /// Sends queued frames within the rate; keeps what the socket refused for later.
    fn send(&mut self, frames: &mut Vec<Vec<u8>>) -> Result<()> {
        self.backlog.extend(frames.drain(..));
        while let Some(fr) = self.backlog.front() {
            if self.budget() == 0 {
                return Ok(());
            }
            // SAFETY: send of a live buffer on our bound packet socket.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    fr.as_ptr() as *const libc::c_void,
                    fr.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => return Ok(()),
                    _ => bail!("send on the packet socket: {e}"),
                }
            }
            self.budget_used += 1;
            self.backlog.pop_front();
        }
        Ok(())
    }

    /// Waits up to `ms` for a frame to arrive.
    fn wait(&self, ms: i32) {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one live pollfd.
        unsafe { libc::poll(&mut p, 1, ms) };
    }
}

fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

fn summary(mode: &str, elapsed: Duration, extra: &str, s: &FloodStats) {
    say(&format!(
        "summary mode={mode} elapsed_s={:.3} {extra} {}",
        elapsed.as_secs_f64(),
        s.line()
    ));
}

fn setup(c: &Common) -> Result<(Io, Target, Instant)> {
    if !(0.1..=86_400.0).contains(&c.timeout) {
        bail!("--timeout must be between 0.1 and 86400 s");
    }
    if !(1..=10_000_000).contains(&c.rate) {
        bail!("--rate must be between 1 and 10000000 frames/s");
    }
    let (spoof_lo, spoof_hi) = parse_range(&c.spoof)?;
    let (fd, _ifindex) = packet_socket(&c.iface)?;
    let src_mac = iface_mac(&fd, &c.iface)?;
    let dst_mac = match &c.dst_mac {
        Some(m) => parse_mac(m)?,
        None => resolve_mac(c.dst)?,
    };
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing an async-signal-safe handler (one atomic store).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let t = Target {
        src_mac,
        dst_mac,
        dst_ip: c.dst,
        dst_port: c.port,
        spoof_lo,
        spoof_hi,
    };
    let t0 = Instant::now();
    let io = Io {
        fd,
        buf: vec![0u8; 65536],
        rate: c.rate,
        t0,
        budget_used: 0,
        backlog: Default::default(),
    };
    Ok((io, t, t0))
}

fn run(cli: Cli) -> Result<bool> {
    match cli.mode {
        Mode::Syn { c, count, linger } => {
            if count > 100_000_000 {
                bail!("--count at most 100000000");
            }
            let (mut io, t, t0) = setup(&c)?;
            let deadline = t0 + Duration::from_secs_f64(c.timeout);
            let mut f = SynFlood::new(t, c.seed);
            let mut out = Vec::new();
            say("ready mode=syn");
            let mut last_sent = None;
            while Instant::now() < deadline && !STOP.load(Ordering::Relaxed) {
                io.recv_all(|fr| f.on_frame(fr));
                let b = io.budget().min(256);
                while f.stats.syns < count && out.len() < b {
                    out.push(f.next_syn());
                }
                io.send(&mut out)?;
                if f.stats.syns == count && io.backlog.is_empty() {
                    let at = *last_sent.get_or_insert_with(Instant::now);
                    if at.elapsed().as_secs_f64() >= linger {
                        break;
                    }
                    io.wait(5);
                } else if io.budget() == 0 {
                    io.wait(1);
                }
            }
            let sent = io.budget_used;
            summary("syn", t0.elapsed(), &format!("sent={sent}"), &f.stats);
            Ok(sent == count)
        }
        Mode::Ooo {
            c,
            conns,
            segments,
            inflight,
        } => flood_peers(&c, "ooo", conns, segments, inflight),
        Mode::Idle { c, conns, inflight } => flood_peers(&c, "idle", conns, 0, inflight),
    }
}

fn flood_peers(
    c: &Common,
    mode: &str,
    conns: usize,
    segments: u32,
    inflight: usize,
) -> Result<bool> {
    if conns == 0 || conns > 1_000_000 {
        bail!("--conns must be between 1 and 1000000");
    }
    if segments > 1_000_000 {
        bail!("--segments at most 1000000");
    }
    let (mut io, t, t0) = setup(c)?;
    let deadline = t0 + Duration::from_secs_f64(c.timeout);
    let mut p = Peers::new(
        t,
        PeersConfig {
            conns,
            segments,
            max_inflight: inflight.clamp(1, 100_000),
            seed: c.seed,
            ..PeersConfig::default()
        },
    );
    let mut out = Vec::new();
    let mut ready_at = None;
    let mut last_report = Instant::now();
    while Instant::now() < deadline && !STOP.load(Ordering::Relaxed) {
        let now = t0.elapsed();
        io.recv_all(|fr| p.on_frame(now, fr, &mut out));
        let budget = io.budget().saturating_sub(io.backlog.len() + out.len());
        p.poll(now, budget.min(1024), &mut out);
        io.send(&mut out)?;
        if ready_at.is_none() && p.complete() {
            ready_at = Some(t0.elapsed());
            say(&format!(
                "ready mode={mode} established={} setup_s={:.3} {}",
                p.established(),
                t0.elapsed().as_secs_f64(),
                p.stats.line()
            ));
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "netrx-flood {mode}: {:.1} s: established {} of {conns}, {}",
                t0.elapsed().as_secs_f64(),
                p.established(),
                p.stats.line()
            );
        }
        if io.backlog.is_empty() && (p.complete() || io.budget() == 0) {
            io.wait(if p.complete() { 20 } else { 1 });
        }
    }
    let est = p.established();
    summary(
        mode,
        t0.elapsed(),
        &format!(
            "established={est} conns={conns} ready_s={}",
            ready_at.map_or("never".into(), |d| format!("{:.3}", d.as_secs_f64()))
        ),
        &p.stats,
    );
    Ok(ready_at.is_some())
}
