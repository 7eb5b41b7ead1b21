//! `netrxd` command-line behaviour that needs no privileges: usage text, clear errors.

use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_netrxd");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_tells_the_bind_then_run_sequence() {
    let o = run(&["run", "--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("ioat-ctl bind"), "{out}");
    assert!(out.contains("netrxd run --iface"), "{out}");
    for flag in [
        "--queues",
        "--engine",
        "--policy",
        "--copybreak",
        "--rcvbuf",
        "--rcvlowat",
        "--sink",
        "--config",
        "--log",
        "--metrics",
    ] {
        assert!(out.contains(flag), "{flag} missing: {out}");
    }
}

#[test]
fn metrics_must_be_loopback() {
    let o = run(&[
        "run",
        "--iface",
        "lo",
        "--port",
        "5001",
        "--metrics",
        "0.0.0.0:9477",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("loopback"), "{}", stderr(&o));
}

#[test]
fn clear_errors_name_the_fix() {
    let o = run(&["run", "--port", "5001"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--iface"), "{}", stderr(&o));
    let o = run(&[
        "run", "--iface", "lo", "--port", "5001", "--policy", "netdma",
    ]);
    assert!(stderr(&o).contains("--engine model"), "{}", stderr(&o));
    let o = run(&[
        "run", "--iface", "lo", "--port", "5001", "--sink", "tape:/x",
    ]);
    assert!(stderr(&o).contains("dir:PATH"), "{}", stderr(&o));
    let o = run(&["run", "--iface", "lo", "--port", "5001", "--engine", "gpu"]);
    assert!(stderr(&o).contains("ioat-ctl bind"), "{}", stderr(&o));
    let o = run(&["run", "--config", "/nonexistent/netrxd.toml"]);
    assert!(
        stderr(&o).contains("cannot read config file"),
        "{}",
        stderr(&o)
    );
    let o = run(&["demo", "--engine", "cpu"]);
    assert_eq!(o.status.code(), Some(1));
    let o = run(&["stats", "--socket", "/nonexistent/x.sock"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("netrxd run"), "{}", stderr(&o));
}

/// Out-of-range and negative numbers: the message names the flag and the valid range (clap's
/// bare "unexpected argument '-1'" before).
#[test]
fn numbers_out_of_range_or_negative_name_the_flag_and_range() {
    let base = ["run", "--iface", "lo", "--port", "5001"];
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        let o = run(&a);
        assert_ne!(o.status.code(), Some(0), "{extra:?} accepted");
        stderr(&o)
    };
    let e = with(&["--rcvbuf", "-1"]);
    assert!(e.contains("--rcvbuf") && e.contains("negative"), "{e}");
    assert!(!e.contains("unexpected argument"), "{e}");
    let e = with(&["--rcvbuf", "99999999999999"]);
    assert!(
        e.contains("--rcvbuf") && e.contains("4096..=1073741824"),
        "{e}"
    );
    let e = with(&["--rcvlowat", "-200K"]);
    assert!(e.contains("--rcvlowat") && e.contains("negative"), "{e}");
    let e = with(&["--queues", "-1"]);
    assert!(e.contains("--queues") && e.contains("1..=64"), "{e}");
    let e = with(&["--queues", "65"]);
    assert!(e.contains("--queues") && e.contains("1..=64"), "{e}");
    let e = with(&["--drain-timeout-ms", "-5"]);
    assert!(
        e.contains("--drain-timeout-ms") && e.contains("0..=600000"),
        "{e}"
    );
    let o = run(&["run", "--iface", "lo", "--port", "-1"]);
    let e = stderr(&o);
    assert!(e.contains("--port") && e.contains("1..=65535"), "{e}");
    let o = run(&["run", "--iface", "lo", "--port", "70000"]);
    assert!(stderr(&o).contains("1..=65535"), "{}", stderr(&o));
    // The demo checks its numbers before it needs root or creates anything.
    for (flag, v, range) in [
        ("--seconds", "-1", "1..=600"),
        ("--repeats", "0", "1..=20"),
        ("--rcvbuf", "-1", "negative"),
        ("--rcvbuf", "1", "4096..="),
    ] {
        let o = run(&["demo", flag, v]);
        let e = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(if flag == "--rcvbuf" { 1 } else { 2 }),
            "{e}"
        );
        assert!(e.contains(flag) && e.contains(range), "{flag} {v}: {e}");
    }
}

/// `--engine` goes through the driver's PCI-address parser, the one `ioat-ctl bind` uses:
/// `0000:00:3.0` is 0000:00:03.0 for both; a device number above 1f is refused by both.
#[test]
fn engine_bdf_uses_the_drivers_parser() {
    // A bad policy stops the run after the engine was parsed: no device is opened.
    let o = run(&[
        "run",
        "--iface",
        "lo",
        "--port",
        "5001",
        "--engine",
        "0000:00:3.0",
        "--policy",
        "bogus",
    ]);
    let e = stderr(&o);
    assert!(!e.contains("engine") && e.contains("bogus"), "{e}");
    let o = run(&[
        "run",
        "--iface",
        "lo",
        "--port",
        "5001",
        "--engine",
        "0000:00:20.0",
        "--policy",
        "bogus",
    ]);
    let e = stderr(&o);
    assert!(e.contains("--engine") && e.contains("DDDD:BB:DD.F"), "{e}");
}

#[test]
fn sg_mode_is_checked() {
    let o = run(&["run", "--iface", "lo", "--port", "5001", "--sg", "maybe"]);
    let e = stderr(&o);
    assert!(e.contains("--sg") && e.contains("auto, on or off"), "{e}");
    let o = run(&["run", "--help"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("--sg <auto|on|off>"));
}

#[test]
fn config_file_with_unknown_key_is_refused() {
    let p = std::env::temp_dir().join(format!("netrxd-cli-{}.toml", std::process::id()));
    std::fs::write(&p, "iface = \"lo\"\nport = 5001\nqueus = 2\n").unwrap();
    let o = run(&["run", "--config", p.to_str().unwrap()]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("queus"), "{}", stderr(&o));
}
