//! The network-namespace harness of the end-to-end tests: the product's
//! [`netrx::netns`] (namespaces, veth pairs, two- and three-host topologies; re-exported here)
//! plus the root/CI guard every privileged test starts with.
//!
//! # Guard
//! ```no_run
//! # fn t() {
//! if !netrx_tests::netns::require_root_or_skip("my_test") {
//!     return; // printed "skipped: ..."
//! }
//! # }
//! ```
//! It returns `false` after printing `skipped: <reason>` when the process is not root, `ip` is
//! missing or a namespace cannot be created; with `CI=true` in the environment it **panics**
//! instead, so CI fails rather than silently skipping. [`require_tools_or_skip`] does the same for
//! extra programs (`ethtool`, `iperf`).

pub use netrx::netns::*;

use std::sync::OnceLock;

static PROBE: OnceLock<Result<(), String>> = OnceLock::new();

fn ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Reports an unmet precondition: panics under `CI=true`, otherwise prints
/// `skipped: <test>: <reason>` and returns `false`.
pub fn skip_or_fail(test: &str, reason: &str) -> bool {
    if ci() {
        panic!("{test}: cannot run under CI=true: {reason}");
    }
    eprintln!("skipped: {test}: {reason}");
    false
}

/// `true` when the process is root and can create network namespaces. Otherwise prints
/// `skipped: ...` and returns `false`, or panics when `CI=true`.
pub fn require_root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip_or_fail(
            test,
            "needs root (network namespaces); run the tests as root",
        );
    }
    let probe = PROBE.get_or_init(|| match Netns::new() {
        Ok(ns) => {
            drop(ns);
            Ok(())
        }
        Err(e) => Err(format!(
            "cannot create a network namespace ({e}); install iproute2 and run as root"
        )),
    });
    match probe {
        Ok(()) => true,
        Err(e) => skip_or_fail(test, e),
    }
}

/// `true` when every program in `tools` is on `PATH`; otherwise skips/fails like
/// [`require_root_or_skip`] naming the Debian package to install.
pub fn require_tools_or_skip(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        if !on_path(t) {
            let pkg = match *t {
                "ip" => "iproute2",
                other => other,
            };
            return skip_or_fail(
                test,
                &format!("`{t}` not found; install it (`apt-get install -y {pkg}`)"),
            );
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Mutex;
    use std::time::Duration;

    #[test]
    fn two_host_tcp_child_and_teardown() {
        if !require_root_or_skip("two_host_tcp_child_and_teardown") {
            return;
        }
        let opts = LinkOpts {
            queues: 2,
            mtu: 3000,
            sender_tx_csum_off: on_path("ethtool"),
            ..LinkOpts::default()
        };
        let topo = TwoHost::new(&opts).unwrap();
        let names = (
            topo.sender.name().to_string(),
            topo.receiver.name().to_string(),
        );
        let link = topo
            .receiver
            .run_cmd("ip", &["-d", "link", "show", &topo.receiver_if])
            .unwrap();
        assert!(link.contains("mtu 3000"), "{link}");
        assert!(link.contains("numrxqueues 2"), "{link}");
        // A closure on a setns-ed thread owns the listener; the accept runs on a plain thread.
        let listener = topo
            .receiver
            .run(|| std::net::TcpListener::bind((RECEIVER_ADDR, 0)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let reader = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            (v, peer)
        });
        topo.sender.run(|| {
            let mut s = std::net::TcpStream::connect_timeout(
                &(RECEIVER_ADDR, port).into(),
                Duration::from_secs(5),
            )
            .unwrap();
            s.write_all(&[7u8; 100_000]).unwrap();
        });
        let (v, peer) = reader.join().unwrap();
        assert_eq!(v.len(), 100_000);
        assert_eq!(peer.ip(), std::net::IpAddr::V4(SENDER_ADDR));
        // The root namespace cannot see the receiver's address.
        assert!(std::net::TcpStream::connect_timeout(
            &(RECEIVER_ADDR, port).into(),
            Duration::from_millis(200)
        )
        .is_err());
        // A child in the namespace, killed on drop.
        let child = topo.sender.spawn("sleep", &["30"]).unwrap();
        let pid = child.id();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        drop(child);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .map(|c| !c.contains("sleep"))
                    .unwrap_or(true)
        );
        drop(topo);
        let list = run_checked("ip", &["netns", "list"]).unwrap();
        assert!(
            !list.contains(&names.0) && !list.contains(&names.1),
            "{list}"
        );
    }

    #[test]
    fn teardown_on_panic() {
        if !require_root_or_skip("teardown_on_panic") {
            return;
        }
        let name = std::sync::Arc::new(Mutex::new(String::new()));
        let n2 = name.clone();
        let r = std::panic::catch_unwind(move || {
            let topo = TwoHost::new(&LinkOpts::default()).unwrap();
            *n2.lock().unwrap() = topo.sender.name().to_string();
            panic!("boom");
        });
        assert!(r.is_err());
        let list = run_checked("ip", &["netns", "list"]).unwrap();
        let n = name.lock().unwrap().clone();
        assert!(!n.is_empty() && !list.contains(&n), "{list}");
    }

    #[test]
    fn three_host_is_silent_without_relay() {
        if !require_root_or_skip("three_host_is_silent_without_relay")
            || !require_tools_or_skip("three_host_is_silent_without_relay", &["ethtool"])
        {
            return;
        }
        let topo = ThreeHost::new(&LinkOpts::default()).unwrap();
        let k = topo
            .sender
            .run_cmd("ethtool", &["-k", &topo.sender_if])
            .unwrap();
        assert!(k.contains("tx-checksumming: off"), "{k}");
        assert!(k.contains("tcp-segmentation-offload: off"), "{k}");
        let r = topo.sender.run(|| {
            std::net::TcpStream::connect_timeout(
                &(RECEIVER_ADDR, 9).into(),
                Duration::from_millis(300),
            )
        });
        assert!(r.is_err());
    }
}
