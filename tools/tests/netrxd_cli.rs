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

#[test]
fn config_file_with_unknown_key_is_refused() {
    let p = std::env::temp_dir().join(format!("netrxd-cli-{}.toml", std::process::id()));
    std::fs::write(&p, "iface = \"lo\"\nport = 5001\nqueus = 2\n").unwrap();
    let o = run(&["run", "--config", p.to_str().unwrap()]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("queus"), "{}", stderr(&o));
}
