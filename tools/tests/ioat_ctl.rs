//! ioat-ctl end to end: the binary run as a user would, against the software model and
//! against fake sysfs trees (IOAT_SYSFS_ROOT), plus the real host for `list`/`info`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ioat_driver::discover::fake::{build, FakeFn};
use serde_json::Value;

fn ctl(args: &[&str], sysfs: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ioat-ctl"));
    c.args(args).env_remove("IOAT_SYSFS_ROOT");
    if let Some(p) = sysfs {
        c.env("IOAT_SYSFS_ROOT", p);
    }
    c.output().expect("run ioat-ctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", stdout(o)))
}

/// A temp directory removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!(
            "ioat-ctl-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn skx(bdf: &'static str, driver: Option<&'static str>, group: u32) -> FakeFn {
    FakeFn {
        bdf,
        vendor: 0x8086,
        device: 0x2021,
        driver,
        group: Some(group),
        numa: 0,
    }
}

#[test]
fn selftest_model_passes_every_channel() {
    let o = ctl(&["selftest", "model"], None);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("channel 0: PASS"), "{s}");
    assert!(s.contains("PASS: 1 of 1 channel(s) passed"), "{s}");

    let o = ctl(
        &[
            "selftest",
            "model",
            "--channels",
            "3",
            "--preset",
            "bdx",
            "--json",
        ],
        None,
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert_eq!(v["passed"], true);
    let chans = v["channels"].as_array().unwrap();
    assert_eq!(chans.len(), 3);
    for c in chans {
        assert_eq!(c["passed"], true, "{c}");
        assert!(c["checks"].as_array().unwrap().len() >= 8);
    }
    assert!(v["model_violations"].as_array().unwrap().is_empty());
}

#[test]
fn regs_model_json_has_chansts_and_chanerr_per_channel() {
    for preset in ["skx", "bdx", "icx"] {
        let o = ctl(
            &[
                "regs",
                "model",
                "--json",
                "--preset",
                preset,
                "--channels",
                "2",
            ],
            None,
        );
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
        let v = json(&o);
        let chans = v["channels"].as_array().unwrap();
        assert_eq!(chans.len(), 2);
        for c in chans {
            assert!(c["CHANSTS"]["value"].is_string(), "{c}");
            assert_eq!(c["CHANSTS"]["state"], "HALTED", "fresh model channel: {c}");
            assert_eq!(c["CHANERR"]["value"], "0x0");
            assert!(c["CHANERR"]["names"].is_array());
            assert!(c["CHANCTRL"]["bits"].is_array());
        }
        assert!(v["general"]["CBVER"]["version"].is_string());
    }
    let o = ctl(
        &[
            "regs",
            "model",
            "--json",
            "--channels",
            "2",
            "--channel",
            "1",
        ],
        None,
    );
    let v = json(&o);
    assert_eq!(v["channels"].as_array().unwrap().len(), 1);
    assert_eq!(v["channels"][0]["channel"], 1);
    let o = ctl(&["regs", "model", "--channel", "4"], None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("channel 4 does not exist"),
        "{}",
        stderr(&o)
    );
    // Human output decodes the state.
    let o = ctl(&["regs", "model"], None);
    assert!(stdout(&o).contains("state HALTED"), "{}", stdout(&o));
}

#[test]
fn list_on_this_host_exits_zero() {
    let o = ctl(&["list"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let host = ioat_driver::discover::Host::system();
    if host.scan_ioat().map(|l| l.is_empty()).unwrap_or(true) {
        assert!(
            stdout(&o).contains("no I/OAT device found"),
            "{}",
            stdout(&o)
        );
        let v = json(&ctl(&["list", "--json"], None));
        assert_eq!(v["count"], 0);
    }
}

#[test]
fn list_reads_a_fake_sysfs_tree() {
    let t = Tmp::new("list");
    build(
        &t.0,
        &[
            skx("0000:00:04.0", Some("ioatdma"), 20),
            FakeFn {
                bdf: "0000:80:01.0",
                vendor: 0x8086,
                device: 0x0b00,
                driver: None,
                group: Some(31),
                numa: 1,
            },
            FakeFn {
                bdf: "0000:00:1f.3",
                vendor: 0x8086,
                device: 0xa348,
                driver: Some("snd_hda_intel"),
                group: Some(12),
                numa: -1,
            },
        ],
        false,
    )
    .unwrap();
    let o = ctl(&["list"], Some(&t.0));
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("0000:00:04.0") && s.contains("SKX") && s.contains("ioatdma"),
        "{s}"
    );
    assert!(
        s.contains("0000:80:01.0") && s.contains("ICX") && s.contains("3.4"),
        "{s}"
    );
    assert!(!s.contains("0000:00:1f.3"), "{s}");
    let v = json(&ctl(&["list", "--json"], Some(&t.0)));
    assert_eq!(v["count"], 2);
    assert_eq!(v["devices"][0]["iommu_group"], 20);
    assert_eq!(v["devices"][1]["numa_node"], 1);
    assert_eq!(v["devices"][1]["driver"], Value::Null);
    // An empty tree: says so, exits 0.
    let e = Tmp::new("empty");
    let o = ctl(&["list"], Some(&e.0));
    assert!(o.status.success());
    assert!(stdout(&o).contains("no I/OAT device found"));
}

#[test]
fn info_missing_bdf_is_one_line_naming_it() {
    // On this host (no such device here) and on an empty fake tree.
    let e = Tmp::new("info");
    for root in [None, Some(e.0.as_path())] {
        let o = ctl(&["info", "0000:00:1f.7"], root);
        assert!(!o.status.success());
        let err = stderr(&o);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains("0000:00:1f.7"), "{err}");
        if root.is_some() || !Path::new("/sys/bus/pci/devices/0000:00:1f.7").exists() {
            assert!(lines[0].contains("no such PCI device"), "{err}");
        }
    }
    let o = ctl(&["info", "0000:00:1f.7", "--json"], Some(&e.0));
    assert!(!o.status.success());
    assert!(json(&o)["error"].as_str().unwrap().contains("0000:00:1f.7"));
    let o = ctl(&["info", "not-a-device"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("DDDD:BB:DD.F"), "{}", stderr(&o));
}

#[test]
fn info_explains_how_to_bind() {
    let t = Tmp::new("bindhint");
    build(&t.0, &[skx("0000:00:04.0", Some("ioatdma"), 3)], false).unwrap();
    let o = ctl(&["info", "0000:00:04.0"], Some(&t.0));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("ioat-ctl bind 0000:00:04.0"), "{err}");
    assert!(err.contains("driver_override"), "{err}");
}

#[test]
fn bind_and_unbind_on_a_fake_tree() {
    let t = Tmp::new("bind");
    build(
        &t.0,
        &[
            skx("0000:00:04.0", Some("ioatdma"), 3),
            skx("0000:00:04.1", Some("vfio-pci"), 4),
        ],
        false,
    )
    .unwrap();
    // The fake kernel does not rebind, so bind writes the attributes and then says the
    // kernel did not bind it.
    let o = ctl(&["bind", "0000:00:04.0"], Some(&t.0));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("did not bind"), "{}", stderr(&o));
    let dev = t.0.join("sys/bus/pci/devices/0000:00:04.0");
    assert_eq!(
        std::fs::read_to_string(dev.join("driver_override")).unwrap(),
        "vfio-pci"
    );
    assert_eq!(
        std::fs::read_to_string(t.0.join("sys/bus/pci/drivers_probe")).unwrap(),
        "0000:00:04.0"
    );
    let o = ctl(&["bind", "0000:00:04.1", "--json"], Some(&t.0));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["already_bound"], true);
    let o = ctl(&["unbind", "0000:00:04.1"], Some(&t.0));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ctl(&["unbind", "0000:00:04.0"], Some(&t.0));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not bound to vfio-pci"));
}

#[test]
fn reset_and_info_on_the_model() {
    let o = ctl(&["reset", "model", "--channel", "0"], None);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("reset and restarted"), "{}", stdout(&o));
    let o = ctl(&["reset", "model", "--channel", "0", "--json"], None);
    assert_eq!(json(&o)["ok"], true);
    let o = ctl(&["info", "model", "--preset", "icx", "--json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["cb_version"], "3.4");
    assert_eq!(v["identity"]["platform"], "ICX");
}

#[test]
fn bench_model_json_reports_sizes_and_crossover() {
    let t = Tmp::new("bench");
    let svg = t.0.join("bench.svg");
    let o = ctl(
        &[
            "bench",
            "model",
            "--json",
            "--time-ms",
            "3",
            "--max-size",
            "65536",
            "--svg",
            svg.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let rs = v["results"].as_array().unwrap();
    assert_eq!(rs.len(), 11, "64 B .. 64 KiB");
    assert_eq!(rs[0]["size"], 64);
    for r in rs {
        assert!(r["dma_gbps"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["cpu_gbps"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["dma_latency_us"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(v["simulated"], true);
    assert!(v.get("crossover_bytes").is_some());
    assert!(v.get("crossover_cpu_cost_bytes").is_some());
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.contains("polyline"), "{s}");
    assert!(
        stderr(&o).contains("bench: [11/11]"),
        "progress: {}",
        stderr(&o)
    );
}

/// Sizes and counts out of range are refused with the valid range (before: `--max-size
/// 99999999999999` silently stopped at 4 MiB), and negative numbers name their flag (before:
/// clap's bare "unexpected argument '-1'").
#[test]
fn bench_numbers_out_of_range_name_the_flag_and_range() {
    for (args, flag, want) in [
        (
            vec!["--max-size", "99999999999999"],
            "--max-size",
            "1..=4194304",
        ),
        (vec!["--max-size", "-1"], "--max-size", "negative"),
        (vec!["--min-size", "0"], "--min-size", "1..=4194304"),
        (vec!["--time-ms", "0"], "--time-ms", "1..=60000"),
        (vec!["--channel", "-1"], "--channel", "negative"),
        (vec!["--model-desc-ns", "-3"], "--model-desc-ns", "negative"),
    ] {
        let mut a = vec!["bench", "model"];
        a.extend(args.iter());
        let o = ctl(&a, None);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(flag) && e.contains(want), "{args:?}: {e}");
        assert!(!e.contains("unexpected argument"), "{args:?}: {e}");
    }
    let o = ctl(
        &["bench", "model", "--min-size", "4096", "--max-size", "64"],
        None,
    );
    assert!(stderr(&o).contains("at most --max-size"), "{}", stderr(&o));
    let o = ctl(&["regs", "model", "--channel", "-2"], None);
    assert!(stderr(&o).contains("--channel") && stderr(&o).contains("negative"));
}

/// One PCI-address parser (the driver's) for every tool: `0000:00:3.0` is 0000:00:03.0 for
/// `ioat-ctl bind` as it is for `netrxd --engine` (tools/tests/netrxd_cli.rs).
#[test]
fn bind_accepts_the_short_device_number_and_refuses_bad_addresses() {
    let t = Tmp::new("bind-short");
    build(&t.0, &[skx("0000:00:03.0", Some("vfio-pci"), 5)], false).unwrap();
    let o = ctl(&["bind", "0000:00:3.0", "--json"], Some(&t.0));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["already_bound"], true);
    let o = ctl(&["bind", "0000:00:20.0"], Some(&t.0));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("DDDD:BB:DD.F"), "{}", stderr(&o));
}

#[test]
fn regs_model_shows_pci_state_and_both_fault_classes() {
    let o = ctl(&["regs", "model", "--json"], None);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    let m = &v["model"];
    assert_eq!(m["pci_command"]["memory"], true, "{m}");
    assert_eq!(m["pci_command"]["bus_master"], false, "{m}");
    let caps: Vec<&str> = m["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(caps, ["MSI-X", "PCI Express"]);
    // Reading registers is not a fault of either class.
    assert_eq!(m["device_errors"].as_array().unwrap().len(), 0);
    assert_eq!(m["misuse"].as_array().unwrap().len(), 0);
    let o = ctl(&["regs", "model"], None);
    let s = stdout(&o);
    assert!(s.contains("device errors (reported by the hardware"), "{s}");
    assert!(
        s.contains("misuse (the hardware would not report it): 0"),
        "{s}"
    );
}
