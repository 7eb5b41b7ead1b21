//! Shared pieces of the stream tests: a kernel TCP sender of a seeded pseudo-random stream that
//! returns the SHA-256 of what it wrote, and the seed's iperf 2 client (`-w 250K -l 2M`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::netns::{Netns, NsChild, RECEIVER_ADDR};

/// How [`send_seeded`] sends.
#[derive(Debug, Clone)]
pub struct SendOpts {
    /// Bytes per `write_all`.
    pub chunk: usize,
    /// `SO_SNDBUF` to set before sending; `None` leaves the kernel default.
    pub sndbuf: Option<libc::c_int>,
    pub connect_timeout: Duration,
    /// Bounds every write.
    pub write_timeout: Duration,
    /// Bounds the wait for the receiver's FIN.
    pub read_timeout: Duration,
    /// The whole send loop fails with `TimedOut` once this has passed.
    pub deadline: Option<Instant>,
}

impl Default for SendOpts {
    fn default() -> Self {
        SendOpts {
            chunk: 256 * 1024,
            sndbuf: None,
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            deadline: None,
        }
    }
}

/// Connects to `to`, sends `len` bytes from ChaCha8 seeded with `seed`, half-closes, then waits
/// for the receiver's FIN (bounded by the socket timeout). Returns (bytes sent, SHA-256).
pub fn send_seeded(
    to: SocketAddr,
    len: u64,
    seed: u64,
    o: &SendOpts,
) -> io::Result<(u64, [u8; 32])> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    send_generated(to, len, |b| rng.fill_bytes(b), o)
}

/// [`send_seeded`] with the bytes of each chunk written by `fill` (called on consecutive chunks
/// of the stream, in order).
pub fn send_generated(
    to: SocketAddr,
    len: u64,
    mut fill: impl FnMut(&mut [u8]),
    o: &SendOpts,
) -> io::Result<(u64, [u8; 32])> {
    let mut s = TcpStream::connect_timeout(&to, o.connect_timeout)?;
    if let Some(sndbuf) = o.sndbuf {
        // SAFETY: setsockopt on our own socket with a live c_int.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &sndbuf as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    s.set_write_timeout(Some(o.write_timeout))?;
    s.set_read_timeout(Some(o.read_timeout))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; o.chunk];
    let mut sent = 0u64;
    while sent < len {
        if o.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("deadline passed after {sent} of {len} bytes"),
            ));
        }
        let n = ((len - sent) as usize).min(buf.len());
        fill(&mut buf[..n]);
        h.update(&buf[..n]);
        s.write_all(&buf[..n])?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // The receiver closes after reading everything: our read sees EOF.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok((sent, h.finalize().into()))
}

/// Starts the seed's iperf 2 client in `ns`: `-w 250K -l 2M -n <mib>M -e` to
/// [`RECEIVER_ADDR`]:`port`.
pub fn spawn_iperf2_client(ns: &Netns, port: u16, mib: u64) -> io::Result<NsChild> {
    ns.spawn(
        "iperf",
        &[
            "-c",
            &RECEIVER_ADDR.to_string(),
            "-p",
            &port.to_string(),
            "-w",
            "250K",
            "-l",
            "2M",
            "-n",
            &format!("{mib}M"),
            "-e",
        ],
    )
}

/// SHA-256 of a file's contents (what a receiver stored, to compare with what was sent).
pub fn sha256_file(p: &std::path::Path) -> io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}
