//! The raw `bpf()` syscall: XSKMAP creation and updates, program load (with the verifier log on
//! failure), and XDP attachment through a bpf_link (detached by the kernel when the fd closes,
//! SIGKILL included).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::insn::{self, Insn, ProgramSpec};
use super::XskError;

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_PROG_LOAD: u32 = 5;
const BPF_LINK_CREATE: u32 = 28;

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// Attach type `BPF_XDP`.
const BPF_XDP: u32 = 37;
/// Program flag: the program understands multi-buffer (fragmented) frames.
pub const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `union bpf_attr`, as a zeroed byte buffer written field by field at the kernel's offsets.
/// 128 bytes covers every field used here; the kernel copies only `size` bytes and treats the
/// rest as zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn name(&mut self, off: usize, name: &str) -> &mut Self {
        // BPF object names: up to 15 bytes of [A-Za-z0-9_.], NUL-terminated.
        let clean: Vec<u8> = name
            .bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
            .take(15)
            .collect();
        self.0[off..off + clean.len()].copy_from_slice(&clean);
        self
    }
}

fn sys_bpf(cmd: u32, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, initialized 128-byte buffer that lives across the call; every
    // pointer stored inside it (instructions, license, log buffer, key/value) is set by the
    // callers below to memory that outlives this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_long,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_result(op: &'static str, r: io::Result<i64>) -> Result<OwnedFd, XskError> {
    let fd = r.map_err(|e| XskError::from_os(op, e))?;
    // SAFETY: the kernel returned a fresh file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// An `XSKMAP`: queue index -> AF_XDP socket.
#[derive(Debug)]
pub struct XskMap {
    fd: OwnedFd,
    max_entries: u32,
}

impl XskMap {
    pub fn create(max_entries: u32) -> Result<Self, XskError> {
        let mut a = Attr::new();
        a.u32(0, BPF_MAP_TYPE_XSKMAP)
            .u32(4, 4)
            .u32(8, 4)
            .u32(12, max_entries.max(1))
            .name(28, "netrx_xsks");
        let fd = fd_result(
            "bpf(BPF_MAP_CREATE, XSKMAP)",
            sys_bpf(BPF_MAP_CREATE, &mut a),
        )?;
        Ok(Self {
            fd,
            max_entries: max_entries.max(1),
        })
    }

    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    /// Put socket `sock_fd` in slot `queue`.
    pub fn insert(&self, queue: u32, sock_fd: RawFd) -> Result<(), XskError> {
        let key = queue;
        let value = sock_fd as u32;
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32)
            .u64(8, &key as *const u32 as u64)
            .u64(16, &value as *const u32 as u64)
            .u64(24, 0);
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a)
            .map(|_| ())
            .map_err(|e| XskError::from_os("bpf(BPF_MAP_UPDATE_ELEM, XSKMAP)", e))
    }

    /// Empty slot `queue` (frames for it then fall back to the kernel via XDP_PASS).
    pub fn remove(&self, queue: u32) -> Result<(), XskError> {
        let key = queue;
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32)
            .u64(8, &key as *const u32 as u64);
        sys_bpf(BPF_MAP_DELETE_ELEM, &mut a)
            .map(|_| ())
            .map_err(|e| XskError::from_os("bpf(BPF_MAP_DELETE_ELEM, XSKMAP)", e))
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A loaded XDP program.
#[derive(Debug)]
pub struct XdpProgram {
    fd: OwnedFd,
    insn_count: usize,
    frags: bool,
}

impl XdpProgram {
    /// Load the redirect program for `spec` pointing at `map`. `frags` loads it with
    /// `BPF_F_XDP_HAS_FRAGS` (needed for jumbo MTU with `XDP_USE_SG`).
    pub fn load_redirect(spec: &ProgramSpec, map: &XskMap, frags: bool) -> Result<Self, XskError> {
        let insns = insn::redirect_program(spec, map.raw_fd());
        Self::load(&insns, frags, "netrx_redir")
    }

    /// Load arbitrary instructions as an XDP program. On failure the load is repeated with the
    /// verifier log enabled and the log is returned inside the error.
    pub fn load(insns: &[Insn], frags: bool, name: &str) -> Result<Self, XskError> {
        let flags = if frags { BPF_F_XDP_HAS_FRAGS } else { 0 };
        match Self::try_load(insns, flags, name, None) {
            Ok(fd) => Ok(Self {
                fd,
                insn_count: insns.len(),
                frags,
            }),
            Err(e) if is_perm(&e) => Err(XskError::from_os("bpf(BPF_PROG_LOAD)", e)),
            Err(first) => {
                let mut log = vec![0u8; 1 << 20];
                let second = Self::try_load(insns, flags, name, Some(&mut log));
                let text = CStr::from_bytes_until_nul(&log)
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match second {
                    // Loading with a log succeeded where loading without failed: odd, but fine.
                    Ok(fd) => Ok(Self {
                        fd,
                        insn_count: insns.len(),
                        frags,
                    }),
                    Err(_) => Err(XskError::Verifier {
                        source: first,
                        log: tail(&text, 4000),
                    }),
                }
            }
        }
    }

    fn try_load(
        insns: &[Insn],
        flags: u32,
        name: &str,
        log: Option<&mut Vec<u8>>,
    ) -> io::Result<OwnedFd> {
        // "Dual MIT/GPL" is GPL-compatible for the kernel and matches this crate's licence.
        static LICENSE: &[u8] = b"Dual MIT/GPL\0";
        let mut a = Attr::new();
        a.u32(0, BPF_PROG_TYPE_XDP)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, LICENSE.as_ptr() as u64)
            .u32(44, flags)
            .name(48, name)
            .u32(68, BPF_XDP);
        if let Some(buf) = log {
            a.u32(24, 1)
                .u32(28, buf.len() as u32)
                .u64(32, buf.as_mut_ptr() as u64);
            let r = sys_bpf(BPF_PROG_LOAD, &mut a)?;
            // SAFETY: fresh fd returned by the kernel, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let r = sys_bpf(BPF_PROG_LOAD, &mut a)?;
        // SAFETY: fresh fd returned by the kernel, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
    }

    pub fn insn_count(&self) -> usize {
        self.insn_count
    }
    pub fn has_frags(&self) -> bool {
        self.frags
    }
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

fn is_perm(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Where the XDP program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (`ip link` shows `xdp`): needed for per-queue steering on veth.
    Native,
    /// In the generic skb path (`ip link` shows `xdpgeneric`).
    Generic,
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
}

/// Which modes to try when attaching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native, falling back to generic if the driver has no XDP support.
    #[default]
    Auto,
    Native,
    Generic,
}

/// An attached XDP program (bpf_link). Dropping it, or the process dying, detaches it.
#[derive(Debug)]
pub struct XdpLink {
    fd: OwnedFd,
    mode: XdpMode,
    ifindex: u32,
}

impl XdpLink {
    /// Attach `prog` to `ifindex` (named `ifname` in errors).
    pub fn attach(
        prog: &XdpProgram,
        ifindex: u32,
        ifname: &str,
        mode: AttachMode,
    ) -> Result<Self, XskError> {
        let order: &[XdpMode] = match mode {
            AttachMode::Auto => &[XdpMode::Native, XdpMode::Generic],
            AttachMode::Native => &[XdpMode::Native],
            AttachMode::Generic => &[XdpMode::Generic],
        };
        let mut last = None;
        for &m in order {
            let flags = match m {
                XdpMode::Native => XDP_FLAGS_DRV_MODE,
                XdpMode::Generic => XDP_FLAGS_SKB_MODE,
            };
            let mut a = Attr::new();
            a.u32(0, prog.raw_fd() as u32)
                .u32(4, ifindex)
                .u32(8, BPF_XDP)
                .u32(12, flags);
            match sys_bpf(BPF_LINK_CREATE, &mut a) {
                Ok(fd) => {
                    // SAFETY: fresh fd returned by the kernel, owned by nobody else.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
                    tracing::info!(ifname, ifindex, mode = %m, frags = prog.has_frags(),
                        "XDP program attached via bpf_link");
                    return Ok(Self {
                        fd,
                        mode: m,
                        ifindex,
                    });
                }
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(0);
                    match errno {
                        libc::EPERM | libc::EACCES => {
                            return Err(XskError::from_os("bpf(BPF_LINK_CREATE)", e))
                        }
                        libc::EBUSY | libc::EEXIST => {
                            return Err(XskError::AlreadyAttached {
                                ifname: ifname.to_string(),
                                detail: format!("{m} attach refused: {e}"),
                            })
                        }
                        libc::ERANGE => {
                            return Err(XskError::PeerMtuTooLarge {
                                ifname: ifname.to_string(),
                                frags: prog.has_frags(),
                            })
                        }
                        _ => {
                            tracing::warn!(ifname, mode = %m, error = %e, "XDP attach failed");
                            last = Some((m, e));
                        }
                    }
                }
            }
        }
        let (m, e) = last.expect("at least one mode was tried");
        Err(XskError::Io {
            op: if m == XdpMode::Native {
                "attach native XDP"
            } else {
                "attach generic XDP"
            },
            source: e,
        })
    }

    pub fn mode(&self) -> XdpMode {
        self.mode
    }
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
