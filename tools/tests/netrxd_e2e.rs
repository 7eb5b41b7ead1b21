//! End-to-end tests of the `netrxd` binary (root; they fail instead of skipping under CI=true):
//! - `netrxd demo --seconds 3` exits 0 with five rows of non-zero bandwidth and leaves nothing
//!   behind; its sender is iperf 2 when installed, and `--sender builtin --repeats 2 --svg` runs
//!   the built-in sender twice per row and draws the picture;
//! - `netrxd run` with a `dir:` sink receives kernel TCP senders, and the files' SHA-256 match;
//!   stats (Unix socket and Prometheus on loopback) report them; SIGTERM exits 0 and detaches XDP;
//! - SIGTERM mid-transfer: exit 0, no XDP program left, and the cut connection is a `.partial`
//!   file, never a complete-looking one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netrx_tests::netns::{self, LinkOpts, NsChild, TwoHost, RECEIVER_ADDR};
use netrx_tests::stream::{send_generated, SendOpts};

const BIN: &str = env!("CARGO_BIN_EXE_netrxd");

fn guard(test: &str, tools: &[&str]) -> bool {
    netns::require_root_or_skip(test) && netns::require_tools_or_skip(test, tools)
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("netrxd-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Deterministic pseudo-random bytes (xorshift64*), so a stream is checkable.
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Sends `len` bytes seeded by `seed`, half-closes, waits for the receiver's close.
fn send_stream(port: u16, len: u64, seed: u64) -> std::io::Result<[u8; 32]> {
    let opts = SendOpts {
        write_timeout: Duration::from_secs(20),
        read_timeout: Duration::from_secs(20),
        ..SendOpts::default()
    };
    let mut st = seed | 1;
    let to = SocketAddr::from((RECEIVER_ADDR, port));
    send_generated(to, len, |b| fill(b, &mut st), &opts).map(|(_, sha)| sha)
}

fn sha_file(p: &Path) -> [u8; 32] {
    netrx_tests::stream::sha256_file(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn topo() -> TwoHost {
    TwoHost::new(&LinkOpts {
        sender_tx_csum_off: true,
        sender_tso_off: true,
        ..LinkOpts::default()
    })
    .expect("topology")
}

/// Starts `netrxd run` in the receiver namespace and waits for its stats socket.
fn start_daemon(t: &TwoHost, port: u16, dir: &Path, extra: &[&str]) -> (NsChild, PathBuf) {
    let sock = dir.join("stats.sock");
    let sink = format!("dir:{}", dir.join("out").display());
    let p = port.to_string();
    let mut args = vec![
        "run",
        "--iface",
        &t.receiver_if,
        "--port",
        &p,
        "--engine",
        "model",
        "--sink",
        &sink,
        "--log",
        "info",
    ];
    if !extra.contains(&"--policy") {
        args.extend(["--policy", "adaptive"]);
    }
    let sock_s = sock.display().to_string();
    args.extend(["--stats-socket", &sock_s]);
    args.extend(extra);
    let child = t.receiver.spawn(BIN, &args).expect("spawn netrxd run");
    let t0 = Instant::now();
    while !sock.exists() {
        if t0.elapsed() > Duration::from_secs(20) {
            let out = child.wait_timeout(Duration::from_secs(1));
            panic!("netrxd run did not come up: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, sock)
}

fn stats_json(sock: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["stats", "--json", "--socket"])
        .arg(sock)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "netrxd stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sigterm(child: &NsChild) {
    child.signal(libc::SIGTERM).expect("SIGTERM to netrxd");
}

fn no_xdp(t: &TwoHost) {
    let link = t
        .receiver
        .run_cmd("ip", &["-d", "link", "show", "dev", &t.receiver_if])
        .unwrap();
    assert!(!link.contains("prog/xdp"), "XDP left attached: {link}");
    assert!(!link.contains(" xdp"), "XDP left attached: {link}");
}

fn files(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut complete = Vec::new();
    let mut partial = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.to_string_lossy().ends_with(".partial") {
            partial.push(p);
        } else {
            complete.push(p);
        }
    }
    (complete, partial)
}

#[test]
fn netrxd_demo_seconds_3() {
    if !guard("netrxd_demo_seconds_3", &[]) {
        return;
    }
    let t0 = Instant::now();
    let child = Command::new(BIN)
        .args(["demo", "--seconds", "3", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netrxd demo");
    let demo_pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "netrxd demo failed ({}): {stderr}",
        out.status
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["config"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "cpu",
            "netdma",
            "netdma + rcvlowat 200 KB",
            "adaptive",
            "kernel socket"
        ]
    );
    for r in rows {
        assert!(r["gbit_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["bytes"].as_u64().unwrap() > 0, "{r}");
    }
    assert!(v["label"]
        .as_str()
        .unwrap()
        .contains("simulated by the device model"));
    assert!(stderr.contains("[5/5]"), "progress on stderr: {stderr}");
    // iperf 2 when it is installed, the built-in sender otherwise; the report says which.
    let iperf2 = Command::new("iperf")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).contains("iperf version 2"))
        .unwrap_or(false);
    let kind = v["sender_kind"].as_str().unwrap();
    assert_eq!(kind, if iperf2 { "iperf" } else { "builtin" }, "{v}");
    assert_eq!(
        v["cpus"], "auto",
        "the demo's default placement is recorded: {v}"
    );
    assert!(
        v["sender"].as_str().unwrap().contains("-w 250K -l 2M"),
        "{v}"
    );
    eprintln!(
        "demo took {:?}:\n{}",
        t0.elapsed(),
        serde_json::to_string_pretty(&v).unwrap()
    );
    // The demo's namespaces are gone (the harness names them nrx<pid>-...).
    let list = netns::run_checked("ip", &["netns", "list"]).unwrap();
    assert!(
        !list.contains(&format!("nrx{demo_pid}-")),
        "namespaces left: {list}"
    );
}

#[test]
fn netrxd_run_dir_sink_sha256_stats_metrics() {
    if !guard("netrxd_run_dir_sink_sha256_stats_metrics", &[]) {
        return;
    }
    let t = topo();
    let dir = tmpdir("sha");
    let port = 5301;
    let (child, sock) = start_daemon(&t, port, &dir, &["--metrics", "127.0.0.1:19477"]);
    let lens = [6u64 << 20, (3 << 20) + 12345];
    let mut want: Vec<(u64, [u8; 32])> = Vec::new();
    for (i, len) in lens.iter().enumerate() {
        let sha = t
            .sender
            .run(move || send_stream(port, *len, 77 + i as u64))
            .unwrap_or_else(|e| panic!("sender {i}: {e}"));
        want.push((*len, sha));
    }
    // Wait for both files to be complete.
    let t0 = Instant::now();
    loop {
        let v = stats_json(&sock);
        if v["files_complete"].as_u64() == Some(2) {
            assert_eq!(v["connections_completed"].as_u64(), Some(2), "{v}");
            assert_eq!(
                v["bytes_received"].as_u64(),
                Some(lens.iter().sum::<u64>()),
                "{v}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "files not complete: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The human table and Prometheus text (loopback inside the receiver namespace).
    let table = Command::new(BIN)
        .args(["stats", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("bytes by path"), "{table}");
    let metrics = t.receiver.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:19477").unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    });
    assert!(
        metrics.contains("netrxd_files_total{") && metrics.contains("state=\"complete\"} 2"),
        "{metrics}"
    );
    sigterm(&child);
    let out = child.wait_timeout(Duration::from_secs(20)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {log}", out.status);
    no_xdp(&t);
    assert!(!sock.exists(), "stats socket removed at exit");
    let (complete, partial) = files(&dir.join("out"));
    assert!(partial.is_empty(), "{partial:?}");
    let mut got: Vec<(u64, [u8; 32])> = complete
        .iter()
        .map(|p| (std::fs::metadata(p).unwrap().len(), sha_file(p)))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "files match the sent streams (length, SHA-256)");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// MTU 9000: `netrxd run` picks scatter-gather frames by itself (`--sg auto`, the default) and
/// receives the stream intact; with `--sg off` it refuses and names only what a daemon user can
/// do (`--sg`, the MTU), never the library's `SocketConfig.sg`.
#[test]
fn netrxd_jumbo_mtu_sg_auto_and_off() {
    if !guard("netrxd_jumbo_mtu_sg_auto_and_off", &[]) {
        return;
    }
    let t = TwoHost::new(&LinkOpts {
        mtu: 9000,
        sender_tx_csum_off: true,
        sender_tso_off: true,
        ..LinkOpts::default()
    })
    .expect("topology, MTU 9000");
    let dir = tmpdir("jumbo");
    // --sg off: refused, with the daemon's own words.
    let p = "5311".to_string();
    let off = t
        .receiver
        .spawn(
            BIN,
            &[
                "run",
                "--iface",
                &t.receiver_if,
                "--port",
                &p,
                "--sg",
                "off",
            ],
        )
        .unwrap()
        .wait_timeout(Duration::from_secs(20))
        .unwrap();
    let e = String::from_utf8_lossy(&off.stderr);
    assert_eq!(off.status.code(), Some(1), "{e}");
    assert!(e.contains("MTU 9000") && e.contains("--sg on"), "{e}");
    assert!(
        !e.contains("SocketConfig"),
        "library field in a daemon message: {e}"
    );
    eprintln!("--sg off at MTU 9000: {e}");
    no_xdp(&t);
    // --sg auto (default): on, and the stream arrives intact.
    let port = 5312;
    let (child, sock) = start_daemon(&t, port, &dir, &[]);
    let len = (5 << 20) + 4321;
    let sha = t
        .sender
        .run(move || send_stream(port, len, 99))
        .unwrap_or_else(|e| panic!("sender: {e}"));
    let t0 = Instant::now();
    while stats_json(&sock)["files_complete"].as_u64() != Some(1) {
        assert!(t0.elapsed() < Duration::from_secs(20), "file not complete");
        std::thread::sleep(Duration::from_millis(100));
    }
    sigterm(&child);
    let out = child.wait_timeout(Duration::from_secs(20)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {log}", out.status);
    assert!(log.contains("scatter-gather on"), "{log}");
    let (complete, partial) = files(&dir.join("out"));
    assert!(partial.is_empty(), "{partial:?}");
    assert_eq!(complete.len(), 1);
    assert_eq!(std::fs::metadata(&complete[0]).unwrap().len(), len);
    assert_eq!(
        sha_file(&complete[0]),
        sha,
        "the file matches the sent stream"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn netrxd_sigterm_mid_transfer() {
    if !guard("netrxd_sigterm_mid_transfer", &[]) {
        return;
    }
    let t = topo();
    let dir = tmpdir("term");
    let port = 5302;
    let (child, sock) = start_daemon(&t, port, &dir, &["--drain-timeout-ms", "300"]);
    // A sender that would send 4 GiB: it is cut by the daemon's shutdown long before.
    let sender = t
        .sender
        .spawn_thread(move || send_stream(port, 4 << 30, 5))
        .unwrap();
    let t0 = Instant::now();
    loop {
        let v = stats_json(&sock);
        if v["bytes_received"].as_u64().unwrap_or(0) > 4 << 20 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "transfer did not start: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(&child);
    let out = child.wait_timeout(Duration::from_secs(20)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {log}", out.status);
    no_xdp(&t);
    // The sender sees the connection die (reset by the kernel once XDP is gone), or times out.
    let r = sender.join().unwrap();
    assert!(r.is_err(), "the 4 GiB sender cannot have finished");
    let (complete, partial) = files(&dir.join("out"));
    assert!(
        complete.is_empty(),
        "a cut transfer looks complete: {complete:?}"
    );
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert!(std::fs::metadata(&partial[0]).unwrap().len() > 0);
    assert!(log.contains("partial"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The built-in sender (what runs on a machine without iperf), two runs per row, and the picture.
#[test]
fn netrxd_demo_builtin_sender_repeats_svg() {
    if !guard("netrxd_demo_builtin_sender_repeats_svg", &[]) {
        return;
    }
    let dir = tmpdir("demo-svg");
    let svg = dir.join("demo.svg");
    let out = Command::new(BIN)
        .args([
            "demo",
            "--seconds",
            "1",
            "--repeats",
            "2",
            "--sender",
            "builtin",
            "--svg",
        ])
        .arg(&svg)
        .stdin(Stdio::null())
        .output()
        .expect("run netrxd demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}): {stderr}",
        out.status
    );
    assert!(
        stdout.contains("sender: netrxd's built-in kernel-TCP sender")
            && stdout.contains("SO_SNDBUF 256000, 2097152-byte writes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("min-max"),
        "two runs show the range: {stdout}"
    );
    assert!(stderr.contains("[10/10]"), "{stderr}");
    for row in ["cpu", "netdma", "adaptive", "kernel socket"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row}: {stdout}"));
        // Columns are separated by at least two spaces; the second one is Gbit/s.
        let g: f64 = line
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(g > 0.0, "{line}");
    }
    let pic = std::fs::read_to_string(&svg).unwrap();
    assert!(pic.starts_with("<svg") && pic.trim_end().ends_with("</svg>"));
    assert!(
        pic.contains("netdma + rcvlowat 200 KB") && pic.contains("whisker"),
        "{pic}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn netrxd_demo_ctrl_c_cleans_up() {
    if !guard("netrxd_demo_ctrl_c_cleans_up", &[]) {
        return;
    }
    let child = Command::new(BIN)
        .args(["demo", "--seconds", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netrxd demo");
    let pid = child.id();
    // Wait until the first configuration runs (its namespaces exist), then Ctrl-C.
    let t0 = Instant::now();
    loop {
        let list = netns::run_checked("ip", &["netns", "list"]).unwrap();
        if list.matches(&format!("nrx{pid}-")).count() >= 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "demo did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on the pid of our own unreaped child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let t1 = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        t1.elapsed() < Duration::from_secs(15),
        "demo took {:?} to stop",
        t1.elapsed()
    );
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let list = netns::run_checked("ip", &["netns", "list"]).unwrap();
    assert!(
        !list.contains(&format!("nrx{pid}-")),
        "namespaces left: {list}"
    );
}

/// A tmpfs mounted for one test, unmounted (and its mount point removed) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(tag: &str, size: &str) -> Tmpfs {
        let d = tmpdir(tag);
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&d)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs on {}", d.display());
        Tmpfs(d)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A full sink filesystem is never a clean close: the daemon resets the connection, so the
/// sender sees an error for data that was acknowledged and could not be stored; the
/// `.partial` keeps what was stored, and the stats and the log say so.
#[test]
fn netrxd_full_sink_resets_the_sender() {
    if !guard("netrxd_full_sink_resets_the_sender", &[]) {
        return;
    }
    let t = topo();
    let fs = Tmpfs::mount("fullsink", "4m");
    let port = 5303;
    let (child, sock) = start_daemon(&t, port, &fs.0, &[]);
    let sender = t
        .sender
        .spawn_thread(move || send_stream(port, 16 << 20, 9))
        .unwrap();
    let r = sender.join().unwrap();
    let v = stats_json(&sock);
    sigterm(&child);
    let out = child.wait_timeout(Duration::from_secs(20)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {log}", out.status);
    let e = r.expect_err("16 MiB into a 4 MiB filesystem cannot look complete to the sender");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "the sender sees a reset, not a timeout: {e}"
    );
    assert!(v["sink_errors"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["connections_aborted"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["connections_completed"].as_u64().unwrap(), 0, "{v}");
    let (complete, partial) = files(&fs.0.join("out"));
    assert!(complete.is_empty(), "{complete:?}");
    assert_eq!(partial.len(), 1, "{partial:?}");
    let kept = std::fs::metadata(&partial[0]).unwrap().len();
    assert!(kept > 0 && kept <= 4 << 20, "kept {kept} bytes");
    assert!(log.contains("the sink failed"), "{log}");
    eprintln!(
        "full sink: sender error {e}; .partial {kept} bytes; stats sink_errors {}",
        v["sink_errors"]
    );
}

/// Rehearsing DMA faults from the command line (`--fault`, model engine): channel errors
/// re-armed every 20 descriptors on slow descriptors, then a hung channel. Every stream arrives
/// intact (the copies that failed are redone by the CPU) and the counters show the faults.
#[test]
fn netrxd_fault_injection_rehearsal() {
    if !guard("netrxd_fault_injection_rehearsal", &[]) {
        return;
    }
    let t = topo();
    for (k, (spec, counter)) in [
        ("error-every=20,slow-us=2", "dma_errors"),
        ("hang-after=200", "dma_timeouts"),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmpdir(&format!("fault{k}"));
        let port = 5310 + k as u16;
        let (child, sock) = start_daemon(
            &t,
            port,
            &dir,
            &[
                "--policy",
                "netdma",
                "--copybreak",
                "0",
                "--rcvlowat",
                "200K",
                "--fault",
                spec,
            ],
        );
        let len = 8u64 << 20;
        let sha = t
            .sender
            .run(move || send_stream(port, len, 31 + k as u64))
            .unwrap_or_else(|e| panic!("{spec}: sender: {e}"));
        let t0 = Instant::now();
        let v = loop {
            let v = stats_json(&sock);
            if v["files_complete"].as_u64() == Some(1) {
                break v;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{spec}: {v}");
            std::thread::sleep(Duration::from_millis(100));
        };
        sigterm(&child);
        let out = child.wait_timeout(Duration::from_secs(20)).unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{spec}: exit {}: {log}", out.status);
        assert!(log.contains("injecting faults"), "{log}");
        let c = &v["copy"];
        let faults = c[counter].as_u64().unwrap();
        let min = if counter == "dma_errors" { 2 } else { 1 };
        assert!(faults >= min, "{spec}: {counter} {faults}: {v}");
        assert!(c["cpu_redos"].as_u64().unwrap() >= 1, "{spec}: {v}");
        assert!(c["bytes_dma"].as_u64().unwrap() > 0, "{spec}: {v}");
        let (complete, partial) = files(&dir.join("out"));
        assert!(partial.is_empty(), "{partial:?}");
        assert_eq!(complete.len(), 1);
        assert_eq!(
            sha_file(&complete[0]),
            sha,
            "{spec}: the file matches the sent stream"
        );
        eprintln!(
            "fault {spec}: {counter} {faults}, cpu_redos {}, bytes_dma {}, bytes_redo {}",
            c["cpu_redos"], c["bytes_dma"], c["bytes_redo"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
