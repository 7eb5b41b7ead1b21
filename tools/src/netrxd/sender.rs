//! The demo's senders: iperf 2 when it is installed, otherwise a built-in kernel-TCP sender with
//! the same parameters, so `netrxd demo` runs on a machine with nothing but the binary.
//!
//! The built-in sender is this binary again (`netrxd __send-tcp`, a hidden subcommand), started
//! in the sender namespace with `ip netns exec NS /proc/<our pid>/exe ...`: a separate process,
//! like iperf, so its CPU time is never counted as the receiver's, and `/proc/<pid>/exe` is the
//! very binary that runs even if the file on disk is rebuilt meanwhile.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Which program sends in the demo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderChoice {
    /// iperf 2 if `iperf -v` says version 2, otherwise the built-in sender.
    Auto,
    /// iperf 2; an error when it is missing.
    Iperf,
    /// The built-in kernel-TCP sender.
    Builtin,
}

impl FromStr for SenderChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SenderChoice::Auto),
            "iperf" => Ok(SenderChoice::Iperf),
            "builtin" => Ok(SenderChoice::Builtin),
            _ => Err(format!("unknown sender {s:?}; use auto, iperf or builtin")),
        }
    }
}

/// The sender that runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    Iperf2,
    Builtin,
}

impl Sender {
    /// `iperf` or `builtin` (the JSON report's `sender_kind`).
    pub fn kind(self) -> &'static str {
        match self {
            Sender::Iperf2 => "iperf",
            Sender::Builtin => "builtin",
        }
    }
}

/// The version line of an installed iperf 2 (`iperf -v`), if any.
pub fn iperf2_version() -> Option<String> {
    let out = std::process::Command::new("iperf")
        .arg("-v")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    // iperf 2 prints its version on stderr ("iperf version 2.1.8 (...)").
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text.lines().find(|l| l.contains("iperf version 2"))?;
    Some(line.trim().to_string())
}

/// Picks the sender for `choice`.
pub fn choose(choice: SenderChoice) -> Result<Sender> {
    match (choice, iperf2_version()) {
        (SenderChoice::Builtin, _) => Ok(Sender::Builtin),
        (SenderChoice::Auto, None) => Ok(Sender::Builtin),
        (_, Some(_)) => Ok(Sender::Iperf2),
        (SenderChoice::Iperf, None) => bail!(
            "--sender iperf: iperf 2 not found (apt-get install -y iperf); \
             --sender auto or builtin uses the built-in kernel-TCP sender instead"
        ),
    }
}

/// Parameters of the built-in sender (the seed's `iperf -c ADDR -w 250K -l 2M -t N`); also the
/// arguments of the hidden `__send-tcp` subcommand of `netrxd` and `netrx-bench`.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct SendParams {
    #[arg(long)]
    pub to: SocketAddr,
    /// SO_SNDBUF, as iperf's `-w` (250 KB = 256000 bytes).
    #[arg(long)]
    pub sndbuf: usize,
    /// Bytes per write, as iperf's `-l` (2 MB).
    #[arg(long)]
    pub len: usize,
    /// Seconds of sending, as iperf's `-t`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
}

/// What the built-in sender did.
#[derive(Clone, Debug)]
pub struct SendReport {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl SendReport {
    /// One line in iperf 2's shape (the demo keeps the sender's line that has "bits/sec").
    pub fn line(&self) -> String {
        let s = self.elapsed.as_secs_f64();
        format!(
            "[  1] 0.00-{s:.2} sec  {:.2} GBytes  {:.2} Gbits/sec (netrxd built-in sender)",
            self.bytes as f64 / (1u64 << 30) as f64,
            self.bytes as f64 * 8.0 / s.max(1e-9) / 1e9
        )
    }
}

/// Connects (5 s timeout), sets SO_SNDBUF, writes `len`-byte buffers for `seconds`, then closes
/// the sending side. Bounded in time (the deadline, a 10 s write timeout) and in count (at most
/// 50 GB per second of sending, i.e. 400 Gbit/s, whatever the write size).
pub fn send(p: &SendParams) -> Result<SendReport> {
    if p.len == 0 || p.seconds == 0 {
        bail!("--len and --seconds must be positive");
    }
    let mut s = TcpStream::connect_timeout(&p.to, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {}", p.to))?;
    set_sndbuf(&s, p.sndbuf).context("SO_SNDBUF")?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let buf: Vec<u8> = (0..p.len).map(|i| (i % 251) as u8).collect();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(p.seconds);
    let max_writes = p.seconds.saturating_mul(50_000_000_000) / p.len as u64 + 1;
    let mut bytes = 0u64;
    let mut writes = 0u64;
    while Instant::now() < deadline && writes < max_writes {
        match s.write_all(&buf) {
            Ok(()) => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                bail!("a write made no progress for 10 s after {bytes} bytes")
            }
            Err(e) => return Err(e).context(format!("write after {bytes} bytes")),
        }
        bytes += p.len as u64;
        writes += 1;
    }
    s.flush()?;
    s.shutdown(Shutdown::Write).context("shutdown")?;
    Ok(SendReport {
        bytes,
        elapsed: t0.elapsed(),
    })
}

fn set_sndbuf(s: &TcpStream, bytes: usize) -> io::Result<()> {
    let v: libc::c_int = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt on our socket's fd with a pointer to a c_int that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn choice_parses() {
        assert_eq!("auto".parse(), Ok(SenderChoice::Auto));
        assert_eq!("builtin".parse(), Ok(SenderChoice::Builtin));
        assert!("x"
            .parse::<SenderChoice>()
            .unwrap_err()
            .contains("auto, iperf or builtin"));
    }

    /// The built-in sender over loopback: sends for its duration and closes cleanly.
    #[test]
    fn builtin_sends_for_its_duration_over_loopback() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                match c.read(&mut buf).unwrap() {
                    0 => break n,
                    k => n += k as u64,
                }
            }
        });
        let r = send(&SendParams {
            to,
            sndbuf: 256_000,
            len: 64 << 10,
            seconds: 1,
        })
        .unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got, r.bytes);
        assert!(r.bytes > 0 && r.elapsed >= Duration::from_secs(1), "{r:?}");
        assert!(r.line().contains("Gbits/sec"), "{}", r.line());
    }
}
