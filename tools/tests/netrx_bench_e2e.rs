//! End-to-end test of `netrx-bench e2e` (root; fails instead of skipping under CI=true): one
//! 1-second run per row at MTU 1500 with the built-in sender; the JSON carries every row (netrx
//! configurations and both kernel references) with its counters, and no namespace is left.

use std::process::{Command, Stdio};
use std::time::Instant;

use netrx_tests::netns;

const BIN: &str = env!("CARGO_BIN_EXE_netrx-bench");

#[test]
fn netrx_bench_e2e_one_second() {
    if !netns::require_root_or_skip("netrx_bench_e2e_one_second") {
        return;
    }
    let t0 = Instant::now();
    let svg = std::env::temp_dir().join(format!("netrx-bench-e2e-{}.svg", std::process::id()));
    let child = Command::new(BIN)
        .args([
            "e2e",
            "--seconds",
            "1",
            "--repeats",
            "1",
            "--mtu",
            "1500",
            "--window",
            "250K",
            "--sender",
            "builtin",
            "--json",
            "--svg",
        ])
        .arg(&svg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netrx-bench e2e");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "netrx-bench e2e failed ({}): {stderr}",
        out.status
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sender_kind"], "builtin", "{v}");
    assert_eq!(v["repeats"], 1);
    assert_eq!(v["cpus"], "auto", "the default placement is recorded: {v}");
    let rows = v["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["config"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "cpu",
            "adaptive",
            "kernel socket",
            "kernel socket + XDP_PASS"
        ]
    );
    for r in rows {
        assert!(r["error"].is_null(), "{r}");
        assert_eq!(r["mtu"], 1500);
        assert_eq!(r["window"], 256_000);
        assert!(r["gbit_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["runs_gbit_s"].as_array().unwrap().len(), 1, "{r}");
        assert!(r["bytes"].as_u64().unwrap() > 0, "{r}");
        assert!(r["machine_cpu_s_per_gb"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["ratio_kernel"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["ratio_kernel_xdp"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["segments"].as_u64().unwrap() > 0, "{r}");
        assert!(r["acks_per_segment"].as_f64().unwrap() > 0.0, "{r}");
        let netrx = !r["config"].as_str().unwrap().starts_with("kernel");
        for k in ["tx_kicks_per_segment", "mean_rx_batch", "wakeups_per_mb"] {
            assert_eq!(r[k].is_number(), netrx, "{k}: {r}");
        }
    }
    let pic = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(pic.contains("<svg") && pic.contains("XDP_PASS"), "{pic}");
    let list = netns::run_checked("ip", &["netns", "list"]).unwrap();
    assert!(
        !list.contains(&format!("nrx{pid}-")),
        "namespaces left: {list}"
    );
    eprintln!("netrx-bench e2e took {:?}", t0.elapsed());
}
