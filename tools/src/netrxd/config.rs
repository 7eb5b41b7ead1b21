//! Settings of `netrxd run`: a TOML file, overridden flag by flag by the command line.
//!
//! Everything here is pure (parsing and merging); the daemon turns [`Settings`] into a
//! `netrx::service` configuration.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use ioat_driver::discover::Bdf;
use netrx::copy::PolicyKind;
use netrx::service::Placement;
use serde::Deserialize;

/// Default directory of the stats sockets.
pub const RUN_DIR: &str = "/run/netrxd";
/// Default receive size per `recv` call (iperf 2's `-l 2M` on the reading side).
pub const DEFAULT_RECV_SIZE: usize = 2 << 20;

/// Which copy engine moves payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineSpec {
    /// CPU memcpy only.
    Cpu,
    /// The driver's software I/OAT device (DMA timing simulated), with a preset name.
    Model { preset: String },
    /// Real I/OAT functions bound to vfio-pci, by PCI address (comma-separated: one per queue).
    Device { bdf: String },
    /// The null engine (tests).
    Null,
}

impl FromStr for EngineSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        match s {
            "cpu" => return Ok(EngineSpec::Cpu),
            "null" => return Ok(EngineSpec::Null),
            "model" => {
                return Ok(EngineSpec::Model {
                    preset: "skx".into(),
                })
            }
            _ => {}
        }
        if let Some(p) = s.strip_prefix("model:") {
            return match p {
                "skx" | "bdx" | "icx" => Ok(EngineSpec::Model { preset: p.into() }),
                _ => bail!("unknown model preset {p:?}; use model:skx, model:bdx or model:icx"),
            };
        }
        if s.contains(':') {
            // PCI addresses: the driver's one parser (`ioat_driver::discover::Bdf`, the same
            // `ioat-ctl` uses), written back in canonical form (0000:00:04.0).
            let bdfs = s
                .split(',')
                .map(|b| b.parse::<Bdf>().map(|b| b.to_string()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow!("--engine: {e}; bind it first with `ioat-ctl bind BDF`"))?;
            return Ok(EngineSpec::Device {
                bdf: bdfs.join(","),
            });
        }
        bail!(
            "unknown engine {s:?}; use cpu, model[:skx|bdx|icx], or a PCI address like \
             0000:00:04.0 (bind it first: `ioat-ctl bind 0000:00:04.0`)"
        )
    }
}

impl fmt::Display for EngineSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineSpec::Cpu => f.write_str("cpu"),
            EngineSpec::Null => f.write_str("null"),
            EngineSpec::Model { preset } => write!(f, "model:{preset}"),
            EngineSpec::Device { bdf } => f.write_str(bdf),
        }
    }
}

/// Scatter-gather frames (`XDP_USE_SG` with the frags-aware XDP program): needed when the
/// interface's MTU makes frames larger than one 4 KiB UMEM frame holds (MTU above 3822).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SgMode {
    /// On exactly when the interface's MTU needs it (checked when the service binds).
    #[default]
    Auto,
    On,
    Off,
}

impl FromStr for SgMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "auto" => Ok(SgMode::Auto),
            "on" => Ok(SgMode::On),
            "off" => Ok(SgMode::Off),
            other => bail!("unknown sg mode {other:?}; use auto, on or off"),
        }
    }
}

impl fmt::Display for SgMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SgMode::Auto => "auto",
            SgMode::On => "on",
            SgMode::Off => "off",
        })
    }
}

/// Where received bytes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    /// Read and drop (benchmarking, like iperf's server).
    Discard,
    /// One file per connection in this directory.
    Dir(PathBuf),
}

impl FromStr for SinkSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "discard" {
            return Ok(SinkSpec::Discard);
        }
        if let Some(p) = s.strip_prefix("dir:") {
            if p.is_empty() {
                bail!("sink `dir:` needs a directory, e.g. dir:/var/lib/netrxd");
            }
            return Ok(SinkSpec::Dir(PathBuf::from(p)));
        }
        bail!("unknown sink {s:?}; use discard or dir:PATH")
    }
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkSpec::Discard => f.write_str("discard"),
            SinkSpec::Dir(p) => write!(f, "dir:{}", p.display()),
        }
    }
}

/// A byte size: `262144`, `250K`, `250KB`, `2M`, `2MiB`, `1G` (K = 1024).
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    if t.starts_with('-') {
        bail!("size {s:?} is negative; use a byte count like 262144, 250K or 2M");
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| anyhow!("bad size {s:?}; use a byte count like 262144, 250K or 2M"))?;
    let mult: usize = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        u => bail!("bad size unit {u:?} in {s:?}; use K, M or G (powers of 1024)"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("size {s:?} is too large"))
}

/// A size in the TOML file: an integer or a string with a unit.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn get(&self, key: &str) -> Result<usize> {
        match self {
            SizeValue::Bytes(b) => usize::try_from(*b).map_err(|_| anyhow!("{key}: too large")),
            SizeValue::Text(t) => parse_size(t).with_context(|| format!("in `{key}`")),
        }
    }
}

/// The TOML file (`--config`). Every key is optional; flags win.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub iface: Option<String>,
    pub port: Option<u16>,
    pub queues: Option<u32>,
    pub engine: Option<String>,
    pub policy: Option<String>,
    pub copybreak: Option<SizeValue>,
    pub rcvbuf: Option<SizeValue>,
    pub rcvlowat: Option<SizeValue>,
    pub recv_size: Option<SizeValue>,
    pub sink: Option<String>,
    pub log: Option<String>,
    pub metrics: Option<String>,
    pub stats_socket: Option<PathBuf>,
    pub drain_timeout_ms: Option<u64>,
    /// "auto" (default), "on" or "off".
    pub sg: Option<String>,
    pub max_connections: Option<u64>,
    /// Model-engine fault injection (`docs/netrxd.md`, "Rehearsing DMA faults").
    pub fault: Option<String>,
    /// Thread placement: "float" (default), "auto", or a CPU list such as "0,1".
    pub cpus: Option<String>,
}

impl FileConfig {
    pub fn parse(text: &str) -> Result<FileConfig> {
        toml::from_str(text).map_err(|e| anyhow!("{e}"))
    }

    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        FileConfig::parse(&text).with_context(|| {
            format!(
                "bad config file {} (see docs/netrxd.example.toml)",
                path.display()
            )
        })
    }
}

/// Flags of `netrxd run` as given (all optional so the file can fill them).
#[derive(Clone, Debug, Default)]
pub struct FlagConfig {
    pub iface: Option<String>,
    pub port: Option<u16>,
    pub queues: Option<u32>,
    pub engine: Option<String>,
    pub policy: Option<String>,
    pub copybreak: Option<String>,
    pub rcvbuf: Option<String>,
    pub rcvlowat: Option<String>,
    pub recv_size: Option<String>,
    pub sink: Option<String>,
    pub log: Option<String>,
    pub metrics: Option<String>,
    pub stats_socket: Option<PathBuf>,
    pub drain_timeout_ms: Option<u64>,
    pub sg: Option<String>,
    pub max_connections: Option<u64>,
    pub fault: Option<String>,
    pub cpus: Option<String>,
}

/// The merged, validated settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub iface: String,
    pub port: u16,
    pub queues: u32,
    pub engine: EngineSpec,
    pub policy: PolicyKind,
    /// `None`: the policy's default (NET_DMA's 4096 for netdma; measured for adaptive).
    pub copybreak: Option<usize>,
    pub rcvbuf: Option<usize>,
    pub rcvlowat: Option<usize>,
    pub recv_size: usize,
    pub sink: SinkSpec,
    pub log: String,
    pub metrics: Option<SocketAddr>,
    pub stats_socket: PathBuf,
    pub drain_timeout_ms: u64,
    /// Scatter-gather frames (jumbo MTUs).
    pub sg: SgMode,
    /// Connections per RX queue (at the cap the longest-idle one is reclaimed).
    pub max_connections: usize,
    /// Faults injected into the model engine (rehearsals).
    pub fault: Option<super::faults::FaultPlan>,
    /// Where each queue's poller and TX kicker run.
    pub cpus: Placement,
}

/// Valid range of `rcvbuf`, `rcvlowat`, `copybreak` and `recv_size`, bytes.
pub const SIZE_MAX: usize = 1 << 30;
/// Smallest `rcvbuf`.
pub const RCVBUF_MIN: usize = 4 << 10;
/// Default and largest `max_connections` (per RX queue).
pub const MAX_CONNECTIONS_DEFAULT: u64 = 16_384;
pub const MAX_CONNECTIONS_MAX: u64 = 1_000_000;
/// Longest `drain_timeout_ms`.
pub const DRAIN_TIMEOUT_MAX_MS: u64 = 600_000;

/// A `--metrics` address: loopback only.
pub fn parse_metrics_addr(s: &str) -> Result<SocketAddr> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| anyhow!("bad metrics address {s:?}; use 127.0.0.1:PORT or [::1]:PORT"))?;
    if !a.ip().is_loopback() {
        bail!(
            "metrics address {a} is not a loopback address: netrxd serves metrics on loopback only \
             (use 127.0.0.1:PORT or [::1]:PORT, and let a local Prometheus agent or a proxy export them)"
        );
    }
    Ok(a)
}

/// Default stats socket of an interface and port.
pub fn default_stats_socket(iface: &str, port: u16) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{iface}-{port}.sock"))
}

fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

fn size(flag: Option<String>, file: Option<SizeValue>, key: &str) -> Result<Option<usize>> {
    match (flag, file) {
        (Some(f), _) => parse_size(&f)
            .map(Some)
            .with_context(|| format!("in --{key}")),
        (None, Some(v)) => v.get(key).map(Some),
        (None, None) => Ok(None),
    }
}

impl Settings {
    /// Flags override the file; validates everything and names the fix on error.
    pub fn merge(flags: FlagConfig, file: FileConfig) -> Result<Settings> {
        let iface = pick(flags.iface, file.iface).ok_or_else(|| {
            anyhow!("no interface: pass --iface IF (or `iface = \"IF\"` in the config file)")
        })?;
        if iface.is_empty() || iface.len() > 15 {
            bail!("interface name {iface:?} must be 1..=15 bytes");
        }
        let port = pick(flags.port, file.port)
            .ok_or_else(|| anyhow!("no port: pass --port P (or `port = P` in the config file)"))?;
        if port == 0 {
            bail!("port 0 is not a listening port; pass --port 1..=65535");
        }
        let queues = pick(flags.queues, file.queues).unwrap_or(1);
        if queues == 0 || queues > 64 {
            bail!("--queues must be 1..=64, got {queues}");
        }
        let sg: SgMode = match pick(flags.sg, file.sg) {
            Some(m) => m.parse().context("in --sg (or `sg` in the config file)")?,
            None => SgMode::Auto,
        };
        let engine: EngineSpec = match pick(flags.engine, file.engine) {
            Some(e) => e.parse()?,
            None => EngineSpec::Cpu,
        };
        let policy: PolicyKind = match pick(flags.policy, file.policy) {
            Some(p) => p.parse().map_err(|e: String| anyhow!(e))?,
            None => {
                if engine == EngineSpec::Cpu {
                    PolicyKind::Cpu
                } else {
                    PolicyKind::Adaptive
                }
            }
        };
        if engine == EngineSpec::Cpu && policy != PolicyKind::Cpu {
            bail!(
                "policy {policy} needs a DMA engine: pass --engine model (simulated) or \
                 --engine BDF (a device bound with `ioat-ctl bind BDF`), or use --policy cpu"
            );
        }
        let copybreak = size(flags.copybreak, file.copybreak, "copybreak")?;
        let rcvbuf = size(flags.rcvbuf, file.rcvbuf, "rcvbuf")?;
        let rcvlowat = size(flags.rcvlowat, file.rcvlowat, "rcvlowat")?;
        let recv_size =
            size(flags.recv_size, file.recv_size, "recv-size")?.unwrap_or(DEFAULT_RECV_SIZE);
        check_recv_size(recv_size)?;
        if let Some(b) = rcvbuf {
            check_range("rcvbuf", b, RCVBUF_MIN)?;
        }
        if let Some(b) = rcvlowat {
            check_range("rcvlowat", b, 1)?;
        }
        if let Some(b) = copybreak {
            check_range("copybreak", b, 0)?;
        }
        let sink: SinkSpec = match pick(flags.sink, file.sink) {
            Some(s) => s.parse()?,
            None => SinkSpec::Discard,
        };
        let log = pick(flags.log, file.log).unwrap_or_else(|| "info".into());
        check_log(&log)?;
        let metrics = match pick(flags.metrics, file.metrics) {
            Some(m) => Some(parse_metrics_addr(&m)?),
            None => None,
        };
        let stats_socket = pick(flags.stats_socket, file.stats_socket)
            .unwrap_or_else(|| default_stats_socket(&iface, port));
        let drain_timeout_ms = pick(flags.drain_timeout_ms, file.drain_timeout_ms).unwrap_or(2000);
        if drain_timeout_ms > DRAIN_TIMEOUT_MAX_MS {
            bail!("--drain-timeout-ms must be 0..={DRAIN_TIMEOUT_MAX_MS}, got {drain_timeout_ms}");
        }
        let max_connections =
            pick(flags.max_connections, file.max_connections).unwrap_or(MAX_CONNECTIONS_DEFAULT);
        if !(1..=MAX_CONNECTIONS_MAX).contains(&max_connections) {
            bail!(
                "--max-connections must be 1..={MAX_CONNECTIONS_MAX} (per RX queue), got \
                 {max_connections}"
            );
        }
        let fault: Option<super::faults::FaultPlan> = match pick(flags.fault, file.fault) {
            Some(f) => Some(f.parse()?),
            None => None,
        };
        if fault.is_some() && !matches!(engine, EngineSpec::Model { .. }) {
            bail!(
                "--fault injects into the simulated engine only: pass --engine model (a real \
                 device's faults cannot be injected)"
            );
        }
        let cpus: Placement = match pick(flags.cpus, file.cpus) {
            Some(c) => c
                .parse()
                .map_err(|e: String| anyhow!("in --cpus (or `cpus` in the config file): {e}"))?,
            None => Placement::Float,
        };
        Ok(Settings {
            cpus,
            iface,
            port,
            queues,
            engine,
            policy,
            copybreak,
            rcvbuf,
            rcvlowat,
            recv_size,
            sink,
            log,
            metrics,
            stats_socket,
            drain_timeout_ms,
            sg,
            max_connections: max_connections as usize,
            fault,
        })
    }
}

/// Log levels `--log` accepts.
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `--log`: a level, or comma-separated `LEVEL` / `TARGET=LEVEL` items (`info,netrx=debug`).
/// Anything else is refused: a bare word would be taken as a target name and silence every
/// other log line.
pub fn check_log(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.split(',').all(|item| {
            let level = match item.split_once('=') {
                Some((target, level)) => {
                    if target.is_empty() {
                        return false;
                    }
                    level
                }
                None => item,
            };
            LOG_LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
        });
    if !ok {
        bail!(
            "--log {v:?} is not a log level; use one of {} (or items like info,netrx=debug)",
            LOG_LEVELS.join(", ")
        );
    }
    Ok(())
}

/// Largest `--recv-size`: the registered pool holds at least 4 buffers and at most
/// [`POOL_BYTES`], so one buffer is at most a quarter of it.
pub const RECV_SIZE_MAX: usize = 64 << 20;
/// Memory of the registered buffer pool (mapped and locked at start).
pub const POOL_BYTES: usize = 256 << 20;

/// `--recv-size` in 1..=64M: what a receive asks for is also the size of each registered
/// buffer, and the pool's memory must stay within its documented 256 MiB.
pub fn check_recv_size(v: usize) -> Result<()> {
    if !(1..=RECV_SIZE_MAX).contains(&v) {
        bail!(
            "--recv-size {v} is out of range; use 1..={RECV_SIZE_MAX} bytes (1..=64M): each \
             receive's registered buffer is this size and the pool of at least 4 of them is \
             bounded to 256 MiB"
        );
    }
    Ok(())
}

/// `--KEY` in `min..=SIZE_MAX` bytes, or an error giving the range.
pub fn check_range(key: &str, v: usize, min: usize) -> Result<()> {
    if v < min || v > SIZE_MAX {
        bail!(
            "--{key} {v} is out of range; use {}..={} bytes ({}..=1G)",
            min,
            SIZE_MAX,
            if min >= 1024 {
                format!("{}K", min >> 10)
            } else {
                min.to_string()
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("262144").unwrap(), 262144);
        assert_eq!(parse_size("250K").unwrap(), 256000);
        assert_eq!(parse_size("200KB").unwrap(), 204800);
        assert_eq!(parse_size("2M").unwrap(), 2 << 20);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert!(parse_size("2X").unwrap_err().to_string().contains("unit"));
        assert!(parse_size("-1")
            .unwrap_err()
            .to_string()
            .contains("negative"));
        assert!(parse_size("").is_err());
    }

    #[test]
    fn engines() {
        assert_eq!("cpu".parse::<EngineSpec>().unwrap(), EngineSpec::Cpu);
        assert_eq!(
            "model".parse::<EngineSpec>().unwrap(),
            EngineSpec::Model {
                preset: "skx".into()
            }
        );
        assert_eq!(
            "model:icx".parse::<EngineSpec>().unwrap(),
            EngineSpec::Model {
                preset: "icx".into()
            }
        );
        assert_eq!(
            "0000:00:04.0".parse::<EngineSpec>().unwrap(),
            EngineSpec::Device {
                bdf: "0000:00:04.0".into()
            }
        );
        // One parser with ioat-ctl: a one-digit device number is accepted and written back in
        // canonical form; a list is canonicalised element by element.
        assert_eq!(
            "0000:00:3.0".parse::<EngineSpec>().unwrap(),
            EngineSpec::Device {
                bdf: "0000:00:03.0".into()
            }
        );
        assert_eq!(
            "00:04.0,0000:00:04.1".parse::<EngineSpec>().unwrap(),
            EngineSpec::Device {
                bdf: "0000:00:04.0,0000:00:04.1".into()
            }
        );
        let e = "0000:00:20.0"
            .parse::<EngineSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("DDDD:BB:DD.F"), "{e}");
        let e = "gpu".parse::<EngineSpec>().unwrap_err().to_string();
        assert!(e.contains("ioat-ctl bind"), "{e}");
        assert!("model:zzz".parse::<EngineSpec>().is_err());
    }

    #[test]
    fn ranges_and_sg() {
        let base = || FlagConfig {
            iface: Some("eth0".into()),
            port: Some(5001),
            ..FlagConfig::default()
        };
        let err = |f: FlagConfig| {
            format!(
                "{:#}",
                Settings::merge(f, FileConfig::default()).unwrap_err()
            )
        };
        let e = err(FlagConfig {
            rcvbuf: Some("99999999999999".into()),
            ..base()
        });
        assert!(
            e.contains("--rcvbuf") && e.contains("4096..=1073741824"),
            "{e}"
        );
        let e = err(FlagConfig {
            rcvbuf: Some("-1".into()),
            ..base()
        });
        assert!(e.contains("--rcvbuf") && e.contains("negative"), "{e}");
        let e = err(FlagConfig {
            rcvlowat: Some("0".into()),
            ..base()
        });
        assert!(e.contains("--rcvlowat") && e.contains("1..="), "{e}");
        let e = err(FlagConfig {
            drain_timeout_ms: Some(u64::MAX),
            ..base()
        });
        assert!(e.contains("0..=600000"), "{e}");
        assert_eq!(
            Settings::merge(base(), FileConfig::default()).unwrap().sg,
            SgMode::Auto
        );
        let f = FileConfig::parse("sg = \"on\"").unwrap();
        assert_eq!(Settings::merge(base(), f).unwrap().sg, SgMode::On);
        let e = err(FlagConfig {
            sg: Some("maybe".into()),
            ..base()
        });
        assert!(e.contains("auto, on or off"), "{e}");
        // Regression: `--log bogus` was accepted and silenced every log line.
        let e = err(FlagConfig {
            log: Some("bogus".into()),
            ..base()
        });
        assert!(
            e.contains("--log") && e.contains("error, warn, info"),
            "{e}"
        );
        for good in ["debug", "WARN", "info,netrx=debug", "netrxd=trace"] {
            let f = FlagConfig {
                log: Some(good.into()),
                ..base()
            };
            assert!(Settings::merge(f, FileConfig::default()).is_ok(), "{good}");
        }
        // Regression: `--recv-size 1G` cost 3.35 GB at start-up against a documented 256 MiB.
        let e = err(FlagConfig {
            recv_size: Some("1G".into()),
            ..base()
        });
        assert!(e.contains("--recv-size") && e.contains("1..=64M"), "{e}");
        let f = FlagConfig {
            recv_size: Some("64M".into()),
            ..base()
        };
        let s = Settings::merge(f, FileConfig::default()).unwrap();
        let pool = crate::netrxd::rx_netrx::service_config(&s).unwrap();
        assert!(pool.pool_buffers * pool.pool_buffer_size <= POOL_BYTES);
        let f = FileConfig::parse("max_connections = 0").unwrap();
        let e = format!("{:#}", Settings::merge(base(), f).unwrap_err());
        assert!(
            e.contains("--max-connections") && e.contains("1..=1000000"),
            "{e}"
        );
        let f = FileConfig::parse("max_connections = 500").unwrap();
        assert_eq!(Settings::merge(base(), f).unwrap().max_connections, 500);
        assert_eq!(
            Settings::merge(base(), FileConfig::default())
                .unwrap()
                .max_connections,
            16_384
        );
    }

    #[test]
    fn sinks() {
        assert_eq!("discard".parse::<SinkSpec>().unwrap(), SinkSpec::Discard);
        assert_eq!(
            "dir:/tmp/x".parse::<SinkSpec>().unwrap(),
            SinkSpec::Dir("/tmp/x".into())
        );
        assert!("dir:".parse::<SinkSpec>().is_err());
        assert!("file:/x".parse::<SinkSpec>().is_err());
    }

    #[test]
    fn metrics_loopback_only() {
        assert!(parse_metrics_addr("127.0.0.1:9477").is_ok());
        assert!(parse_metrics_addr("[::1]:9477").is_ok());
        let e = parse_metrics_addr("0.0.0.0:9477").unwrap_err().to_string();
        assert!(e.contains("loopback"), "{e}");
        assert!(parse_metrics_addr("10.0.0.1:80").is_err());
        assert!(parse_metrics_addr("localhost").is_err());
    }

    #[test]
    fn flags_override_file() {
        let file = FileConfig::parse(
            r#"
            iface = "eth1"
            port = 5001
            engine = "model:bdx"
            policy = "netdma"
            rcvlowat = "200K"
            rcvbuf = 262144
            sink = "dir:/srv/in"
            metrics = "127.0.0.1:9477"
            cpus = "auto"
            "#,
        )
        .unwrap();
        let flags = FlagConfig {
            port: Some(6000),
            policy: Some("adaptive".into()),
            ..FlagConfig::default()
        };
        let s = Settings::merge(flags.clone(), file.clone()).unwrap();
        assert_eq!(s.cpus, Placement::Auto);
        let s2 = Settings::merge(
            FlagConfig {
                cpus: Some("0".into()),
                ..flags.clone()
            },
            file.clone(),
        )
        .unwrap();
        assert_eq!(s2.cpus, Placement::Cpus(vec![0]));
        let e = format!(
            "{:#}",
            Settings::merge(
                FlagConfig {
                    cpus: Some("0,x".into()),
                    ..flags.clone()
                },
                file.clone(),
            )
            .unwrap_err()
        );
        assert!(e.contains("--cpus") && e.contains("auto, float"), "{e}");
        let s = Settings::merge(flags, file).unwrap();
        assert_eq!(s.iface, "eth1");
        assert_eq!(s.port, 6000);
        assert_eq!(s.policy, PolicyKind::Adaptive);
        assert_eq!(
            s.engine,
            EngineSpec::Model {
                preset: "bdx".into()
            }
        );
        assert_eq!(s.rcvlowat, Some(200 << 10));
        assert_eq!(s.rcvbuf, Some(262144));
        assert_eq!(s.sink, SinkSpec::Dir("/srv/in".into()));
        assert_eq!(s.stats_socket, PathBuf::from("/run/netrxd/eth1-6000.sock"));
        assert_eq!(s.recv_size, DEFAULT_RECV_SIZE);
    }

    #[test]
    fn clear_errors() {
        let e = Settings::merge(FlagConfig::default(), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--iface"), "{e}");
        let flags = FlagConfig {
            iface: Some("eth0".into()),
            port: Some(1),
            policy: Some("netdma".into()),
            ..FlagConfig::default()
        };
        let e = Settings::merge(flags, FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--engine model"), "{e}");
        let e = FileConfig::parse("bogus = 1").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../docs/netrxd.example.toml");
        let f = FileConfig::parse(text).unwrap();
        let s = Settings::merge(FlagConfig::default(), f).unwrap();
        assert!(s.metrics.unwrap().ip().is_loopback());
    }
}
