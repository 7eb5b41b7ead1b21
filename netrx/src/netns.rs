//! Private network namespaces, veth pairs, and ready two- and three-host topologies.
//!
//! `netrxd demo` runs its sender and receivers in namespaces built here; the end-to-end tests
//! (`netrx-tests`, which adds the root/CI guards on top) use the same code.
//!
//! Everything created here is named uniquely (`nrx<pid>-<counter>`), lives only inside
//! namespaces this process created (addresses from `10.77.0.0/24`, optionally `fd00:77::/64`),
//! and is torn down by `Drop` guards, also on panic. Namespaces left behind by a process that
//! died without unwinding (SIGKILL) are removed the next time a namespace is created here, but
//! only when the pid in their name no longer exists.
//!
//! # Building blocks
//! - [`Netns::new`] creates a namespace (loopback up); `Drop` deletes it.
//! - [`Netns::exec`] / [`Netns::run_cmd`] run a command inside it (`ip netns exec NAME ...`);
//!   [`Netns::spawn`] starts a background child there, returned as an [`NsChild`] that is killed
//!   by pid and reaped on `Drop`.
//! - [`Netns::run`] runs a closure on a fresh thread that has `setns(2)`-ed into the namespace and
//!   joins it (panics propagate); [`Netns::spawn_thread`] does the same without joining. Sockets
//!   created on such a thread belong to the namespace and stay there when the fd moves to another
//!   thread, so a `std::net::TcpStream` sender or an AF_XDP socket can live in this process.
//!   Threads spawned from a setns-ed thread inherit its namespace.
//! - [`Veth::create`] makes a veth pair between two namespaces with [`LinkOpts`] (MTU,
//!   `numrxqueues/numtxqueues`), brings both ends up; [`Netns::ethtool_off`] turns offloads off
//!   (`ethtool -K IF tx off`, `tso off`, `gso off`, `gro off`).
//!
//! # Topologies
//! - [`TwoHost`]: sender namespace `<->` receiver namespace over one veth pair.
//!   `sender_if` has [`SENDER_ADDR`], `receiver_if` has [`RECEIVER_ADDR`] (`/24`).
//! - [`ThreeHost`]: sender `<->` relay `<->` receiver over two veth pairs. The relay namespace has
//!   no addresses: it is an **L2 hop**. A relay (the tests' impairment relay) forwards whole
//!   Ethernet frames between `relay_a` and `relay_b`, so sender and receiver share one `/24`, ARP
//!   resolves end to end, and no routing, forwarding sysctls or TTL changes are involved; without a
//!   running relay the two hosts simply cannot reach each other. Because frames are re-sent from
//!   user space, they lose any checksum-offload state: `ThreeHost` therefore turns TX checksum
//!   offload off on both endpoint veths and TSO/GSO off on both (so the relay sees MTU-sized
//!   frames it can impair one by one), and GRO off on the relay's ends.
//!
//! All of it needs root (`ip netns`, `setns`).
//!
//! ```no_run
//! use netrx::netns::{LinkOpts, TwoHost};
//! use std::io::{Read, Write};
//! # fn t() {
//! let topo = TwoHost::new(&LinkOpts::default()).unwrap();
//! let listener = topo.receiver.run(|| std::net::TcpListener::bind("10.77.0.2:5001")).unwrap();
//! let reader = std::thread::spawn(move || {
//!     let (mut s, _) = listener.accept().unwrap();
//!     let mut v = Vec::new();
//!     s.read_to_end(&mut v).unwrap();
//!     v.len()
//! });
//! topo.sender.run(|| {
//!     let mut s = std::net::TcpStream::connect("10.77.0.2:5001").unwrap();
//!     s.write_all(&[0u8; 1000]).unwrap();
//! });
//! assert_eq!(reader.join().unwrap(), 1000);
//! # }
//! ```

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Sender address in every topology (inside the sender namespace only).
pub const SENDER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Receiver address in every topology (inside the receiver namespace only).
pub const RECEIVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Prefix length of [`SENDER_ADDR`] / [`RECEIVER_ADDR`].
pub const PREFIX_LEN: u8 = 24;
/// Sender IPv6 address when [`LinkOpts::ipv6`] is set.
pub const SENDER_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
/// Receiver IPv6 address when [`LinkOpts::ipv6`] is set.
pub const RECEIVER_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);

static COUNTER: AtomicU32 = AtomicU32::new(0);
static STALE_CLEANED: OnceLock<()> = OnceLock::new();
/// `true` when `prog` is on `PATH` or in one of the usual system directories.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(prog).is_file())
}

/// Runs a command to completion; an error (with stderr) when it fails.
pub fn run_checked<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> io::Result<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run `{prog}`: {e}")))?;
    check_output(prog, args, out)
}

fn check_output<S: AsRef<OsStr>>(prog: &str, args: &[S], out: Output) -> io::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let cmd: Vec<String> = std::iter::once(prog.to_string())
            .chain(
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned()),
            )
            .collect();
        Err(io::Error::other(format!(
            "`{}` failed ({}): {}",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // base 36 keeps interface names within IFNAMSIZ (15): "nrx" + pid (<= 7) + "-" + 3 + role.
    let mut s = String::new();
    let mut v = n;
    loop {
        s.insert(0, std::char::from_digit(v % 36, 36).unwrap_or('0'));
        v /= 36;
        if v == 0 {
            break;
        }
    }
    format!("nrx{}-{}", std::process::id(), s)
}

/// Deletes namespaces named `nrx<pid>-...` whose pid no longer exists (left by a killed run).
fn clean_stale() {
    STALE_CLEANED.get_or_init(|| {
        let Ok(rd) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("nrx") else {
                continue;
            };
            let Some((pid, _)) = rest.split_once('-') else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = run_checked("ip", &["netns", "del", &name]);
            }
        }
    });
}

/// A network namespace created by this process; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a uniquely named namespace with `lo` up.
    pub fn new() -> io::Result<Netns> {
        clean_stale();
        let name = unique_suffix();
        run_checked("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.run_cmd("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `prog args...` inside the namespace and returns its raw output.
    pub fn exec<S: AsRef<OsStr>>(&self, prog: &str, args: &[S]) -> io::Result<Output> {
        self.command(prog, args).stdin(Stdio::null()).output()
    }

    /// Runs `prog args...` inside the namespace; stdout on success, an error with stderr otherwise.
    pub fn run_cmd<S: AsRef<OsStr>>(&self, prog: &str, args: &[S]) -> io::Result<String> {
        let out = self.exec(prog, args)?;
        check_output(prog, args, out)
    }

    /// A `Command` (`ip netns exec NAME prog args...`) to adjust and run yourself.
    pub fn command<S: AsRef<OsStr>>(&self, prog: &str, args: &[S]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]).args(args);
        c
    }

    /// Starts `prog args...` in the background inside the namespace (stdin null, stdout and stderr
    /// piped). The child is killed by pid and reaped when the returned guard drops.
    pub fn spawn<S: AsRef<OsStr>>(&self, prog: &str, args: &[S]) -> io::Result<NsChild> {
        let child = self
            .command(prog, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(NsChild { child: Some(child) })
    }

    /// Runs `f` on a new thread that has entered this namespace, waits for it and returns its
    /// result. Panics in `f` propagate; panics with a clear message if `setns` fails.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open().unwrap_or_else(|e| panic!("{e}"));
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                enter(&file).unwrap_or_else(|e| panic!("{e}"));
                f()
            });
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Like [`Netns::run`] but fallible instead of panicking on `setns` failure.
    pub fn try_run<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open()?;
        std::thread::scope(|s| {
            let h = s.spawn(move || enter(&file).map(|()| f()));
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Spawns a thread that enters this namespace and runs `f`. Join it before the namespace drops
    /// (a thread still inside keeps the namespace alive after `ip netns del`).
    pub fn spawn_thread<F, R>(&self, f: F) -> io::Result<std::thread::JoinHandle<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = self.open()?;
        Ok(std::thread::spawn(move || {
            enter(&file).unwrap_or_else(|e| panic!("{e}"));
            drop(file);
            f()
        }))
    }

    /// Turns the given offload features off on `ifname` inside this namespace, e.g.
    /// `&["tx", "tso", "gso"]`, as `ethtool -K IF tx off tso off gso off` does: `tx` is every
    /// `tx-checksum-*` feature, `tso` every `tx-tcp*-segmentation`, `gso`
    /// `tx-generic-segmentation`, `gro` `rx-gro`. Done with the `SIOCETHTOOL` ioctl from a thread
    /// inside the namespace (so the `ethtool` program is not needed), and checked afterwards.
    pub fn ethtool_off(&self, ifname: &str, features: &[&str]) -> io::Result<()> {
        for f in features {
            if feature_matcher(f).is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unknown offload feature {f:?}; use tx, tso, gso or gro"),
                ));
            }
        }
        self.try_run(|| features_off(ifname, features))?
            .map_err(|e| io::Error::new(e.kind(), format!("{ifname}: offloads off: {e}")))
    }

    /// The interface index of `ifname` inside this namespace.
    pub fn ifindex(&self, ifname: &str) -> io::Result<u32> {
        let name = std::ffi::CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has NUL"))?;
        let idx = self.try_run(|| {
            // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        })?;
        if idx == 0 {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface `{ifname}` in namespace {}", self.name),
            ))
        } else {
            Ok(idx)
        }
    }

    fn open(&self) -> io::Result<File> {
        File::open(format!("/run/netns/{}", self.name)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open /run/netns/{}: {e}", self.name),
            )
        })
    }
}

fn enter(file: &File) -> io::Result<()> {
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("setns into a network namespace failed: {e} (needs root)"),
        ));
    }
    Ok(())
}

/// Which `ETH_SS_FEATURES` names an `ethtool -K` offload name covers.
fn feature_matcher(feature: &str) -> Option<fn(&str) -> bool> {
    match feature {
        "tx" => Some(|n| n.starts_with("tx-checksum-")),
        "tso" => Some(|n| n.starts_with("tx-tcp") && n.ends_with("segmentation")),
        "gso" => Some(|n| n == "tx-generic-segmentation"),
        "gro" => Some(|n| n == "rx-gro"),
        _ => None,
    }
}

// linux/ethtool.h
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// One `SIOCETHTOOL` ioctl on `ifname` with `buf` as the command's struct (its first word is
/// the command); `buf` is updated in place.
fn ethtool_ioctl(sock: &std::os::fd::OwnedFd, ifname: &str, buf: &mut [u32]) -> io::Result<()> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = buf.as_mut_ptr().cast();
    // SAFETY: the kernel reads the NUL-terminated name and reads/writes the command struct at
    // `ifru_data`; every caller sizes `buf` for its command's struct (header + the element
    // count it declares), and both live across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Turns the features off in the calling thread's network namespace and checks they are off.
fn features_off(ifname: &str, features: &[&str]) -> io::Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {ifname:?}"),
        ));
    }
    // SAFETY: plain socket(2) call; the fd is owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // struct ethtool_sset_info { cmd, reserved, u64 sset_mask, u32 data[] }
    let mut info = [ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0, 0];
    ethtool_ioctl(&sock, ifname, &mut info)?;
    let count = info[4] as usize;
    if info[2] == 0 || count == 0 || count > 4096 {
        return Err(io::Error::other("the device reports no feature names"));
    }
    // struct ethtool_gstrings { cmd, string_set, len, u8 data[len * 32] }
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count as u32]);
    ethtool_ioctl(&sock, ifname, &mut strings)?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let names: Vec<String> = bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|c| {
            let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect();
    let matchers: Vec<fn(&str) -> bool> =
        features.iter().filter_map(|f| feature_matcher(f)).collect();
    let off: Vec<usize> = (0..count)
        .filter(|&i| matchers.iter().any(|m| m(&names[i])))
        .collect();
    let blocks = count.div_ceil(32);
    // struct ethtool_sfeatures { cmd, size, { valid, requested }[size] }
    let mut set = vec![0u32; 2 + 2 * blocks];
    set[0] = ETHTOOL_SFEATURES;
    set[1] = blocks as u32;
    for &i in &off {
        set[2 + 2 * (i / 32)] |= 1 << (i % 32); // valid; requested stays 0 (off)
    }
    ethtool_ioctl(&sock, ifname, &mut set)?;
    // struct ethtool_gfeatures { cmd, size, { available, requested, active, never_changed }[size] }
    let mut get = vec![0u32; 2 + 4 * blocks];
    get[0] = ETHTOOL_GFEATURES;
    get[1] = blocks as u32;
    ethtool_ioctl(&sock, ifname, &mut get)?;
    let still_on: Vec<&str> = off
        .iter()
        .filter(|&&i| {
            let b = 2 + 4 * (i / 32);
            let bit = 1 << (i % 32);
            get[b] & bit != 0 && get[b + 2] & bit != 0 // changeable, yet active
        })
        .map(|&i| names[i].as_str())
        .collect();
    if !still_on.is_empty() {
        return Err(io::Error::other(format!(
            "still on after turning them off: {}",
            still_on.join(", ")
        )));
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Retry briefly: a just-killed child may still hold the namespace.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match run_checked("ip", &["netns", "del", &self.name]) {
                Ok(_) => return,
                Err(e) => {
                    if Instant::now() > deadline {
                        tracing::warn!("cannot delete network namespace {}: {e}", self.name);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// A background process inside a namespace; killed (SIGKILL, by pid) and reaped on drop.
#[derive(Debug)]
pub struct NsChild {
    child: Option<Child>,
}

impl NsChild {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Mutable access to the underlying child (e.g. to take its stdout).
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to the child by pid.
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        let pid = self.id() as libc::pid_t;
        // SAFETY: kill on the pid of our own un-reaped child.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the child to exit; returns its output (stdout/stderr if piped).
    /// On timeout the child is killed and an error returned.
    pub fn wait_timeout(mut self, timeout: Duration) -> io::Result<Output> {
        let mut child = self.child.take().expect("child present until drop");
        let deadline = Instant::now() + timeout;
        // Drain pipes on threads so a chatty child cannot block on a full pipe.
        let out = child.stdout.take().map(|mut o| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = io::Read::read_to_end(&mut o, &mut v);
                v
            })
        });
        let err = child.stderr.take().map(|mut o| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = io::Read::read_to_end(&mut o, &mut v);
                v
            })
        });
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("child {} did not exit within {timeout:?}", child.id()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Output {
            status,
            stdout: out.and_then(|h| h.join().ok()).unwrap_or_default(),
            stderr: err.and_then(|h| h.join().ok()).unwrap_or_default(),
        })
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Options of a veth link.
#[derive(Clone, Debug)]
pub struct LinkOpts {
    /// MTU on both ends (default 1500).
    pub mtu: u32,
    /// `numrxqueues` and `numtxqueues` of both ends (default 1).
    pub queues: u32,
    /// `ethtool -K <sender end> tx off` (TX checksum offload; needed when frames are received by
    /// AF_XDP or re-sent from user space). Default false for [`TwoHost`].
    pub sender_tx_csum_off: bool,
    /// `ethtool -K <sender end> tso off gso off`: the sender emits MTU-sized frames.
    pub sender_tso_off: bool,
    /// `ethtool -K <receiver end> tx off` (the receiver's ACKs carry full checksums).
    pub receiver_tx_csum_off: bool,
    /// Also add `fd00:77::1/64` and `fd00:77::2/64` (nodad).
    pub ipv6: bool,
}

impl Default for LinkOpts {
    fn default() -> Self {
        LinkOpts {
            mtu: 1500,
            queues: 1,
            sender_tx_csum_off: false,
            sender_tso_off: false,
            receiver_tx_csum_off: false,
            ipv6: false,
        }
    }
}

/// One veth pair (`a` end in one namespace, `b` end in another), both up. Dropping it deletes the
/// pair (deleting the namespace also does).
#[derive(Debug)]
pub struct Veth {
    /// Name of the `a` end.
    pub a: String,
    /// Name of the `b` end.
    pub b: String,
    a_ns: String,
}

impl Veth {
    /// Creates `a` in `ns_a` and `b` in `ns_b` (names must be unique in their namespaces and at
    /// most 15 bytes), sets MTU and queue counts, brings both up.
    pub fn create(
        ns_a: &Netns,
        a: &str,
        ns_b: &Netns,
        b: &str,
        opts: &LinkOpts,
    ) -> io::Result<Veth> {
        if opts.queues == 0 || opts.queues > 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("veth queues must be 1..=64, got {}", opts.queues),
            ));
        }
        let q = opts.queues.to_string();
        let mtu = opts.mtu.to_string();
        run_checked(
            "ip",
            &[
                "link",
                "add",
                a,
                "netns",
                &ns_a.name,
                "numrxqueues",
                &q,
                "numtxqueues",
                &q,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                b,
                "netns",
                &ns_b.name,
                "numrxqueues",
                &q,
                "numtxqueues",
                &q,
                "mtu",
                &mtu,
            ],
        )?;
        let v = Veth {
            a: a.to_string(),
            b: b.to_string(),
            a_ns: ns_a.name.clone(),
        };
        ns_a.run_cmd("ip", &["link", "set", a, "up"])?;
        ns_b.run_cmd("ip", &["link", "set", b, "up"])?;
        Ok(v)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = run_checked("ip", &["-n", &self.a_ns, "link", "del", &self.a]);
    }
}

fn add_addrs(ns: &Netns, ifname: &str, v4: Ipv4Addr, v6: Option<Ipv6Addr>) -> io::Result<()> {
    ns.run_cmd(
        "ip",
        &["addr", "add", &format!("{v4}/{PREFIX_LEN}"), "dev", ifname],
    )?;
    if let Some(v6) = v6 {
        ns.run_cmd(
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ],
        )?;
    }
    Ok(())
}

fn apply_offloads(
    sender: &Netns,
    s_if: &str,
    receiver: &Netns,
    r_if: &str,
    o: &LinkOpts,
) -> io::Result<()> {
    let mut feats = Vec::new();
    if o.sender_tx_csum_off {
        feats.push("tx");
    }
    if o.sender_tso_off {
        feats.extend(["tso", "gso"]);
    }
    if !feats.is_empty() {
        sender.ethtool_off(s_if, &feats)?;
    }
    if o.receiver_tx_csum_off {
        receiver.ethtool_off(r_if, &["tx"])?;
    }
    Ok(())
}

// Serialises topology construction: `ip` commands racing from parallel tests are fine, but
// building one topology at a time keeps failures readable and CPU bursts short.
static BUILD: Mutex<()> = Mutex::new(());

/// Sender namespace `<->` receiver namespace over one veth pair.
///
/// Field order is drop order: the veth goes first, then the namespaces.
#[derive(Debug)]
pub struct TwoHost {
    /// The veth pair (`a` = `sender_if`, `b` = `receiver_if`).
    pub veth: Veth,
    /// Sender namespace; its end has [`SENDER_ADDR`].
    pub sender: Netns,
    /// Receiver namespace; its end has [`RECEIVER_ADDR`].
    pub receiver: Netns,
    /// Sender-side interface name (in `sender`).
    pub sender_if: String,
    /// Receiver-side interface name (in `receiver`).
    pub receiver_if: String,
    /// Options used.
    pub opts: LinkOpts,
}

/// Gives the sender's and receiver's ends [`SENDER_ADDR`] and [`RECEIVER_ADDR`] (and, with
/// `ipv6`, [`SENDER_ADDR6`] and [`RECEIVER_ADDR6`]).
fn address_ends(
    sender: &Netns,
    sender_if: &str,
    receiver: &Netns,
    receiver_if: &str,
    ipv6: bool,
) -> io::Result<()> {
    add_addrs(sender, sender_if, SENDER_ADDR, ipv6.then_some(SENDER_ADDR6))?;
    add_addrs(
        receiver,
        receiver_if,
        RECEIVER_ADDR,
        ipv6.then_some(RECEIVER_ADDR6),
    )
}

impl TwoHost {
    /// Builds the topology with `opts`; everything is torn down on drop.
    pub fn new(opts: &LinkOpts) -> io::Result<TwoHost> {
        let _g = BUILD.lock().unwrap_or_else(|p| p.into_inner());
        let sender = Netns::new()?;
        let receiver = Netns::new()?;
        let sender_if = format!("{}s", sender.name);
        let receiver_if = format!("{}r", receiver.name);
        let veth = Veth::create(&sender, &sender_if, &receiver, &receiver_if, opts)?;
        address_ends(&sender, &sender_if, &receiver, &receiver_if, opts.ipv6)?;
        apply_offloads(&sender, &sender_if, &receiver, &receiver_if, opts)?;
        Ok(TwoHost {
            veth,
            sender,
            receiver,
            sender_if,
            receiver_if,
            opts: opts.clone(),
        })
    }
}

/// Sender `<->` relay `<->` receiver: two veth pairs, the relay namespace an L2 hop with no
/// addresses (see the module docs for why). Nothing passes until a relay forwards frames between
/// `relay_a` and `relay_b` (e.g. the tests' `netrx_tests::relay::Relay::start`).
#[derive(Debug)]
pub struct ThreeHost {
    /// Sender `<->` relay pair (`a` = `sender_if`, `b` = `relay_a`).
    pub veth_a: Veth,
    /// Relay `<->` receiver pair (`a` = `relay_b`, `b` = `receiver_if`).
    pub veth_b: Veth,
    /// Sender namespace; its end has [`SENDER_ADDR`].
    pub sender: Netns,
    /// Relay namespace (no addresses, IPv6 disabled so it emits nothing of its own).
    pub relay: Netns,
    /// Receiver namespace; its end has [`RECEIVER_ADDR`].
    pub receiver: Netns,
    /// Sender-side interface (in `sender`).
    pub sender_if: String,
    /// Relay interface facing the sender (in `relay`).
    pub relay_a: String,
    /// Relay interface facing the receiver (in `relay`).
    pub relay_b: String,
    /// Receiver-side interface (in `receiver`).
    pub receiver_if: String,
    /// Options used (after forcing the offload settings the relay needs).
    pub opts: LinkOpts,
}

impl ThreeHost {
    /// Builds the topology. `opts.mtu` and `opts.queues` apply to both pairs (the relay side keeps
    /// one queue pair per queue too); TX checksum offload is forced off on both endpoints and
    /// TSO/GSO off on both endpoints, GRO off on the relay's ends, whatever `opts` says.
    pub fn new(opts: &LinkOpts) -> io::Result<ThreeHost> {
        let _g = BUILD.lock().unwrap_or_else(|p| p.into_inner());
        let mut opts = opts.clone();
        opts.sender_tx_csum_off = true;
        opts.sender_tso_off = true;
        opts.receiver_tx_csum_off = true;
        let sender = Netns::new()?;
        let relay = Netns::new()?;
        let receiver = Netns::new()?;
        // The relay namespace must stay silent: no IPv6 link-local addresses, no NDP/MLD.
        relay.run_cmd("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        relay.run_cmd("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        let sender_if = format!("{}s", sender.name);
        let relay_a = format!("{}a", relay.name);
        let relay_b = format!("{}b", relay.name);
        let receiver_if = format!("{}r", receiver.name);
        let veth_a = Veth::create(&sender, &sender_if, &relay, &relay_a, &opts)?;
        let veth_b = Veth::create(&relay, &relay_b, &receiver, &receiver_if, &opts)?;
        address_ends(&sender, &sender_if, &receiver, &receiver_if, opts.ipv6)?;
        sender.ethtool_off(&sender_if, &["tx", "tso", "gso"])?;
        receiver.ethtool_off(&receiver_if, &["tx", "tso", "gso"])?;
        for i in [&relay_a, &relay_b] {
            relay.ethtool_off(i, &["gro", "tso", "gso"])?;
            relay.run_cmd("ip", &["link", "set", i, "promisc", "on"])?;
        }
        Ok(ThreeHost {
            veth_a,
            veth_b,
            sender,
            relay,
            receiver,
            sender_if,
            relay_a,
            relay_b,
            receiver_if,
            opts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_ifnamsiz() {
        let a = unique_suffix();
        let b = unique_suffix();
        assert_ne!(a, b);
        assert!(a.len() < 15, "{a}");
    }
}
