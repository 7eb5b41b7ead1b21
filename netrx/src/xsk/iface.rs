//! Interface facts read from the kernel in the calling thread's network namespace (ioctls on a
//! socket, not /sys, which shows the namespace sysfs was mounted in).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::XskError;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const SIOCGIFMTU: libc::c_ulong = 0x8921;
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// What the service needs to know about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceInfo {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
    /// RX queues usable for AF_XDP binds (`None` if the driver does not report channels and
    /// sysfs does not describe this namespace).
    pub rx_queues: Option<u32>,
}

#[repr(C)]
struct IfReqPtr {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

#[repr(C)]
struct IfReqInt {
    name: [libc::c_char; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

fn name_field(name: &str) -> [libc::c_char; libc::IFNAMSIZ] {
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *o = b as libc::c_char;
    }
    out
}

fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the returned fd is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Look `name` up: index, MTU and RX queue count.
pub fn lookup(name: &str) -> Result<IfaceInfo, XskError> {
    let missing = || XskError::NoInterface {
        name: name.to_string(),
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(missing());
    }
    let c = CString::new(name).map_err(|_| missing())?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return Err(missing());
    }
    let sock = ctl_socket().map_err(|e| XskError::from_os("socket(AF_INET) for ioctls", e))?;

    let mut mreq = IfReqInt {
        name: name_field(name),
        value: 0,
        _pad: [0; 20],
    };
    // SAFETY: SIOCGIFMTU reads the name and writes an int into our ifreq-sized struct.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFMTU as _, &mut mreq) };
    if r < 0 {
        return Err(XskError::from_os(
            "ioctl(SIOCGIFMTU)",
            io::Error::last_os_error(),
        ));
    }
    let mtu = mreq.value.max(0) as u32;

    let rx_queues = channels(&sock, name).or_else(|| sysfs_rx_queues(name, ifindex));
    Ok(IfaceInfo {
        name: name.to_string(),
        ifindex,
        mtu,
        rx_queues,
    })
}

fn channels(sock: &OwnedFd, name: &str) -> Option<u32> {
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    let mut req = IfReqPtr {
        name: name_field(name),
        data: &mut ch as *mut EthtoolChannels as *mut libc::c_void,
        _pad: [0; 16],
    };
    // SAFETY: SIOCETHTOOL with ETHTOOL_GCHANNELS writes into `ch`, which outlives the call and
    // has the layout of `struct ethtool_channels`.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if r < 0 {
        return None;
    }
    let n = ch.rx_count + ch.combined_count;
    (n > 0).then_some(n)
}

/// Count `/sys/class/net/NAME/queues/rx-*`, but only if sysfs shows this namespace's interface
/// (same ifindex).
fn sysfs_rx_queues(name: &str, ifindex: u32) -> Option<u32> {
    let base = format!("/sys/class/net/{name}");
    let idx: u32 = std::fs::read_to_string(format!("{base}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if idx != ifindex {
        return None;
    }
    let n = std::fs::read_dir(format!("{base}/queues"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    (n > 0).then_some(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface_names_the_fix() {
        let e = lookup("nx-no-such-if").unwrap_err();
        assert!(matches!(e, XskError::NoInterface { .. }));
        assert!(e.to_string().contains("ip link"), "{e}");
        assert!(matches!(lookup(""), Err(XskError::NoInterface { .. })));
        assert!(matches!(
            lookup("a-name-much-too-long-for-linux"),
            Err(XskError::NoInterface { .. })
        ));
    }

    #[test]
    fn loopback_is_found() {
        let lo = lookup("lo").unwrap();
        assert_eq!(lo.ifindex, 1);
        assert!(lo.mtu >= 1500);
    }
}
