//! A tiny eBPF instruction builder and the XDP redirect program (pure, no syscalls).
//!
//! The program is assembled here as bytes so no clang/libbpf is needed at build or run time.
//! [`redirect_program`] builds: parse Ethernet (optionally one 802.1Q/802.1ad tag), IPv4 or IPv6,
//! TCP to the service's destination port -> `bpf_redirect_map(XSKMAP, rx_queue_index, XDP_PASS)`;
//! everything else (ARP, other ports, IP fragments, IPv6 extension headers) -> `XDP_PASS`.
//!
//! [`interpret`] is a small interpreter for exactly the instruction subset the builder emits, so
//! unit tests can run the program on crafted frames without privileges.

use std::collections::HashMap;

/// eBPF registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    R0 = 0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}

/// One 8-byte eBPF instruction, laid out as the kernel's `struct bpf_insn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    /// dst register in the low nibble, src register in the high nibble.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub fn dst(&self) -> u8 {
        self.regs & 0x0f
    }
    pub fn src(&self) -> u8 {
        self.regs >> 4
    }
    /// The instruction's 8 bytes in host order (what the kernel reads).
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = self.regs;
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }
}

// Instruction classes, sizes, modes, operations (linux/bpf_common.h, linux/bpf.h).
pub const BPF_LD: u8 = 0x00;
pub const BPF_LDX: u8 = 0x01;
pub const BPF_ALU64: u8 = 0x07;
pub const BPF_JMP: u8 = 0x05;
pub const BPF_W: u8 = 0x00;
pub const BPF_H: u8 = 0x08;
pub const BPF_B: u8 = 0x10;
pub const BPF_DW: u8 = 0x18;
pub const BPF_IMM: u8 = 0x00;
pub const BPF_MEM: u8 = 0x60;
pub const BPF_K: u8 = 0x00;
pub const BPF_X: u8 = 0x08;
pub const BPF_ADD: u8 = 0x00;
pub const BPF_AND: u8 = 0x50;
pub const BPF_LSH: u8 = 0x60;
pub const BPF_MOV: u8 = 0xb0;
pub const BPF_JA: u8 = 0x00;
pub const BPF_JEQ: u8 = 0x10;
pub const BPF_JGT: u8 = 0x20;
pub const BPF_JNE: u8 = 0x50;
pub const BPF_JLT: u8 = 0xa0;
pub const BPF_CALL: u8 = 0x80;
pub const BPF_EXIT: u8 = 0x90;
/// `src_reg` value of a 64-bit immediate load meaning "imm is a map fd".
pub const BPF_PSEUDO_MAP_FD: u8 = 1;

/// Helper id of `bpf_redirect_map`.
pub const HELPER_REDIRECT_MAP: i32 = 51;
/// XDP return codes.
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_REDIRECT: i32 = 4;

/// Offsets in `struct xdp_md`.
pub const XDP_MD_DATA: i16 = 0;
pub const XDP_MD_DATA_END: i16 = 4;
pub const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// Size operand of a memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    B,
    H,
    W,
    DW,
}

impl Size {
    fn code(self) -> u8 {
        match self {
            Size::B => BPF_B,
            Size::H => BPF_H,
            Size::W => BPF_W,
            Size::DW => BPF_DW,
        }
    }
}

/// A jump condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Eq,
    Ne,
    /// unsigned >
    Gt,
    /// unsigned <
    Lt,
}

impl Cond {
    fn code(self) -> u8 {
        match self {
            Cond::Eq => BPF_JEQ,
            Cond::Ne => BPF_JNE,
            Cond::Gt => BPF_JGT,
            Cond::Lt => BPF_JLT,
        }
    }
}

/// A jump target resolved when the program is finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Label(u32);

/// Builder error (a bug in the program text, never caused by input data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("label {0} used but never bound")]
    Unbound(u32),
    #[error("jump from {from} to {to} does not fit a 16-bit offset")]
    TooFar { from: usize, to: usize },
}

fn regs(dst: Reg, src: Reg) -> u8 {
    (dst as u8) | ((src as u8) << 4)
}

/// Instruction builder with named helpers and forward labels.
#[derive(Default, Debug)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: HashMap<u32, usize>,
    next_label: u32,
    /// (instruction index, label) of jumps to patch.
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, code: u8, r: u8, off: i16, imm: i32) -> &mut Self {
        self.insns.push(Insn {
            code,
            regs: r,
            off,
            imm,
        });
        self
    }

    pub fn label(&mut self) -> Label {
        self.next_label += 1;
        Label(self.next_label)
    }

    /// Bind `l` to the next emitted instruction.
    pub fn bind(&mut self, l: Label) -> &mut Self {
        self.labels.insert(l.0, self.insns.len());
        self
    }

    /// `dst = src` (64-bit).
    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(BPF_ALU64 | BPF_MOV | BPF_X, regs(dst, src), 0, 0)
    }
    /// `dst = imm` (64-bit, sign-extended).
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(BPF_ALU64 | BPF_MOV | BPF_K, regs(dst, Reg::R0), 0, imm)
    }
    /// `dst += imm`.
    pub fn add_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(BPF_ALU64 | BPF_ADD | BPF_K, regs(dst, Reg::R0), 0, imm)
    }
    /// `dst += src`.
    pub fn add(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(BPF_ALU64 | BPF_ADD | BPF_X, regs(dst, src), 0, 0)
    }
    /// `dst &= imm`.
    pub fn and_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(BPF_ALU64 | BPF_AND | BPF_K, regs(dst, Reg::R0), 0, imm)
    }
    /// `dst <<= imm`.
    pub fn lsh_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(BPF_ALU64 | BPF_LSH | BPF_K, regs(dst, Reg::R0), 0, imm)
    }
    /// `dst = *(size *)(src + off)`.
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.push(BPF_LDX | BPF_MEM | size.code(), regs(dst, src), off, 0)
    }
    /// `dst = map_by_fd(fd)` (two instruction slots).
    pub fn load_map_fd(&mut self, dst: Reg, fd: i32) -> &mut Self {
        let r = (dst as u8) | (BPF_PSEUDO_MAP_FD << 4);
        self.push(BPF_LD | BPF_DW | BPF_IMM, r, 0, fd);
        self.push(0, 0, 0, 0)
    }
    /// `if dst <cond> imm goto target`.
    pub fn jmp_imm(&mut self, cond: Cond, dst: Reg, imm: i32, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.push(BPF_JMP | cond.code() | BPF_K, regs(dst, Reg::R0), 0, imm)
    }
    /// `if dst <cond> src goto target`.
    pub fn jmp_reg(&mut self, cond: Cond, dst: Reg, src: Reg, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.push(BPF_JMP | cond.code() | BPF_X, regs(dst, src), 0, 0)
    }
    /// `goto target`.
    pub fn ja(&mut self, target: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), target));
        self.push(BPF_JMP | BPF_JA, 0, 0, 0)
    }
    /// `call helper`.
    pub fn call(&mut self, helper: i32) -> &mut Self {
        self.push(BPF_JMP | BPF_CALL, 0, 0, helper)
    }
    pub fn exit(&mut self) -> &mut Self {
        self.push(BPF_JMP | BPF_EXIT, 0, 0, 0)
    }

    /// Resolve labels and return the instructions.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        for &(at, label) in &self.fixups {
            let to = *self
                .labels
                .get(&label.0)
                .ok_or(AsmError::Unbound(label.0))?;
            let rel = to as i64 - at as i64 - 1;
            let off = i16::try_from(rel).map_err(|_| AsmError::TooFar { from: at, to })?;
            self.insns[at].off = off;
        }
        Ok(self.insns)
    }
}

/// A 16-bit big-endian wire value as a native-endian 16-bit packet load sees it.
pub const fn be16_as_loaded(v: u16) -> i32 {
    u16::from_ne_bytes(v.to_be_bytes()) as i32
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: i32 = 6;

/// What the redirect program matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramSpec {
    /// TCP destination port redirected to the sockets.
    pub port: u16,
    /// Also parse one VLAN tag (802.1Q or 802.1ad).
    pub vlan: bool,
    /// Match IPv4.
    pub ipv4: bool,
    /// Match IPv6 (without extension headers).
    pub ipv6: bool,
}

impl ProgramSpec {
    pub fn new(port: u16) -> Self {
        Self {
            port,
            vlan: true,
            ipv4: true,
            ipv6: true,
        }
    }
}

/// `return XDP_PASS`: hands every frame to the kernel stack. The benchmarks attach it to the
/// receiving veth (native mode) so that a kernel socket pays the same XDP path netrx does.
pub fn pass_program() -> Vec<Insn> {
    const XDP_PASS: i32 = 2;
    let mut a = Asm::new();
    a.mov_imm(Reg::R0, XDP_PASS).exit();
    // No labels, so nothing to resolve: finish cannot fail.
    a.finish().unwrap_or_default()
}

/// Build the XDP program for `spec`, redirecting into the XSKMAP whose fd is `map_fd`.
pub fn redirect_program(spec: &ProgramSpec, map_fd: i32) -> Vec<Insn> {
    use Reg::*;
    let mut a = Asm::new();
    let pass = a.label();
    let l3 = a.label();
    let vlan = a.label();
    let ipv4 = a.label();
    let ipv6 = a.label();
    let port = a.label();

    // r6 = ctx; r2 = data; r3 = data_end
    a.mov(R6, R1);
    a.load(Size::W, R2, R6, XDP_MD_DATA);
    a.load(Size::W, R3, R6, XDP_MD_DATA_END);
    // Ethernet header present?
    a.mov(R4, R2)
        .add_imm(R4, 14)
        .jmp_reg(Cond::Gt, R4, R3, pass);
    a.load(Size::H, R5, R2, 12);
    if spec.vlan {
        a.jmp_imm(Cond::Eq, R5, be16_as_loaded(ETH_P_8021Q), vlan);
        a.jmp_imm(Cond::Eq, R5, be16_as_loaded(ETH_P_8021AD), vlan);
        a.ja(l3);
        a.bind(vlan);
        a.mov(R4, R2)
            .add_imm(R4, 18)
            .jmp_reg(Cond::Gt, R4, R3, pass);
        a.load(Size::H, R5, R2, 16);
        // From here on r2 + 14 is the start of the L3 header.
        a.add_imm(R2, 4);
    }
    a.bind(l3);
    if spec.ipv4 {
        a.jmp_imm(Cond::Eq, R5, be16_as_loaded(ETH_P_IP), ipv4);
    }
    if spec.ipv6 {
        a.jmp_imm(Cond::Eq, R5, be16_as_loaded(ETH_P_IPV6), ipv6);
    }
    a.ja(pass);

    if spec.ipv4 {
        a.bind(ipv4);
        // Fixed IPv4 header (20 bytes) present?
        a.mov(R4, R2)
            .add_imm(R4, 14 + 20)
            .jmp_reg(Cond::Gt, R4, R3, pass);
        // protocol == TCP
        a.load(Size::B, R5, R2, 14 + 9);
        a.jmp_imm(Cond::Ne, R5, IPPROTO_TCP, pass);
        // Fragments (MF set or offset != 0) go to the kernel.
        a.load(Size::H, R5, R2, 14 + 6);
        a.and_imm(R5, be16_as_loaded(0x3fff));
        a.jmp_imm(Cond::Ne, R5, 0, pass);
        // r5 = IHL * 4, at least 20.
        a.load(Size::B, R5, R2, 14);
        a.and_imm(R5, 0x0f).lsh_imm(R5, 2);
        a.jmp_imm(Cond::Lt, R5, 20, pass);
        // r2 + 14 = TCP header; need its first 4 bytes.
        a.add(R2, R5);
        a.mov(R4, R2)
            .add_imm(R4, 14 + 4)
            .jmp_reg(Cond::Gt, R4, R3, pass);
        a.load(Size::H, R5, R2, 14 + 2);
        a.ja(port);
    }
    if spec.ipv6 {
        a.bind(ipv6);
        // IPv6 header (40) + TCP ports (4) present?
        a.mov(R4, R2)
            .add_imm(R4, 14 + 40 + 4)
            .jmp_reg(Cond::Gt, R4, R3, pass);
        a.load(Size::B, R5, R2, 14 + 6);
        a.jmp_imm(Cond::Ne, R5, IPPROTO_TCP, pass);
        a.load(Size::H, R5, R2, 14 + 40 + 2);
    }
    a.bind(port);
    a.jmp_imm(Cond::Ne, R5, be16_as_loaded(spec.port), pass);
    // return bpf_redirect_map(map, ctx->rx_queue_index, XDP_PASS)
    a.load_map_fd(R1, map_fd);
    a.load(Size::W, R2, R6, XDP_MD_RX_QUEUE_INDEX);
    a.mov_imm(R3, XDP_PASS);
    a.call(HELPER_REDIRECT_MAP);
    a.exit();
    a.bind(pass);
    a.mov_imm(R0, XDP_PASS);
    a.exit();
    a.finish()
        .expect("the redirect program's labels are all bound and near")
}

/// Serialize instructions as the kernel reads them.
pub fn to_bytes(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.to_bytes()).collect()
}

/// Result of [`interpret`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `XDP_PASS` returned directly.
    Pass,
    /// `bpf_redirect_map(map, key, fallback)` called and its result returned.
    Redirect { key: u32, fallback: i32 },
    /// Any other return value.
    Other(u64),
}

/// Why [`interpret`] stopped: the program did something the kernel's verifier would reject or
/// that this interpreter does not model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpError {
    #[error("out-of-bounds packet access at insn {pc}: offset {off}, size {size}, packet {len}")]
    OutOfBounds {
        pc: usize,
        off: i64,
        size: usize,
        len: usize,
    },
    #[error("unsupported instruction {code:#04x} at {pc}")]
    Unsupported { pc: usize, code: u8 },
    #[error("jump out of program at {0}")]
    BadJump(usize),
    #[error("step limit reached")]
    StepLimit,
}

/// Run `insns` on `frame` with `rx_queue_index = queue`. Packet pointers are modelled as
/// `PKT_BASE + offset`; every packet load is bounds-checked against the frame (the kernel's
/// verifier guarantees the same by proof).
pub fn interpret(insns: &[Insn], frame: &[u8], queue: u32) -> Result<Verdict, InterpError> {
    const CTX: u64 = 0x1000;
    const PKT_BASE: u64 = 0x1_0000_0000;
    let mut r = [0u64; 11];
    r[1] = CTX;
    let mut pc = 0usize;
    let mut redirect: Option<(u32, i32)> = None;
    for _ in 0..10_000 {
        let i = *insns.get(pc).ok_or(InterpError::BadJump(pc))?;
        let (d, s) = (i.dst() as usize, i.src() as usize);
        if d > 10 || s > 10 {
            return Err(InterpError::Unsupported { pc, code: i.code });
        }
        let imm = i.imm as i64 as u64;
        let mut next = pc + 1;
        match i.code {
            c if c == BPF_ALU64 | BPF_MOV | BPF_X => r[d] = r[s],
            c if c == BPF_ALU64 | BPF_MOV | BPF_K => r[d] = imm,
            c if c == BPF_ALU64 | BPF_ADD | BPF_K => r[d] = r[d].wrapping_add(imm),
            c if c == BPF_ALU64 | BPF_ADD | BPF_X => r[d] = r[d].wrapping_add(r[s]),
            c if c == BPF_ALU64 | BPF_AND | BPF_K => r[d] &= imm,
            c if c == BPF_ALU64 | BPF_LSH | BPF_K => r[d] = r[d].wrapping_shl(i.imm as u32),
            c if c & 0x07 == BPF_LDX && c & 0xe0 == BPF_MEM => {
                let size = match c & 0x18 {
                    BPF_B => 1,
                    BPF_H => 2,
                    BPF_W => 4,
                    _ => 8,
                };
                let addr = r[s].wrapping_add(i.off as i64 as u64);
                r[d] = if r[s] == CTX {
                    match i.off {
                        XDP_MD_DATA => PKT_BASE,
                        XDP_MD_DATA_END => PKT_BASE + frame.len() as u64,
                        XDP_MD_RX_QUEUE_INDEX => queue as u64,
                        _ => return Err(InterpError::Unsupported { pc, code: c }),
                    }
                } else {
                    let off = addr.wrapping_sub(PKT_BASE) as i64;
                    let bad = InterpError::OutOfBounds {
                        pc,
                        off,
                        size,
                        len: frame.len(),
                    };
                    if off < 0 || off as usize + size > frame.len() {
                        return Err(bad);
                    }
                    let b = &frame[off as usize..off as usize + size];
                    let mut v = [0u8; 8];
                    v[..size].copy_from_slice(b);
                    // Native-endian load (the program's constants are built for the host).
                    match size {
                        1 => b[0] as u64,
                        2 => u16::from_ne_bytes([b[0], b[1]]) as u64,
                        4 => u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u64,
                        _ => u64::from_ne_bytes(v),
                    }
                };
            }
            c if c == BPF_LD | BPF_DW | BPF_IMM => {
                let hi = insns.get(pc + 1).ok_or(InterpError::BadJump(pc + 1))?;
                r[d] = (i.imm as u32 as u64) | ((hi.imm as u32 as u64) << 32);
                next = pc + 2;
            }
            c if c == BPF_JMP | BPF_JA => next = jump(pc, i.off, insns.len())?,
            c if c == BPF_JMP | BPF_CALL => {
                if i.imm != HELPER_REDIRECT_MAP {
                    return Err(InterpError::Unsupported { pc, code: c });
                }
                redirect = Some((r[2] as u32, r[3] as i32));
                r[0] = XDP_REDIRECT as u64;
            }
            c if c == BPF_JMP | BPF_EXIT => {
                return Ok(match redirect {
                    Some((key, fallback)) if r[0] == XDP_REDIRECT as u64 => {
                        Verdict::Redirect { key, fallback }
                    }
                    _ if r[0] == XDP_PASS as u64 => Verdict::Pass,
                    _ => Verdict::Other(r[0]),
                });
            }
            c if c & 0x07 == BPF_JMP => {
                let rhs = if c & BPF_X != 0 { r[s] } else { imm };
                let lhs = r[d];
                let taken = match c & 0xf0 {
                    BPF_JEQ => lhs == rhs,
                    BPF_JNE => lhs != rhs,
                    BPF_JGT => lhs > rhs,
                    BPF_JLT => lhs < rhs,
                    _ => return Err(InterpError::Unsupported { pc, code: c }),
                };
                if taken {
                    next = jump(pc, i.off, insns.len())?;
                }
            }
            c => return Err(InterpError::Unsupported { pc, code: c }),
        }
        pc = next;
    }
    Err(InterpError::StepLimit)
}

fn jump(pc: usize, off: i16, len: usize) -> Result<usize, InterpError> {
    let t = pc as i64 + 1 + off as i64;
    if t < 0 || t as usize >= len {
        return Err(InterpError::BadJump(pc));
    }
    Ok(t as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_program_returns_xdp_pass() {
        let p = pass_program();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].code, p[0].dst(), p[0].imm),
            (BPF_ALU64 | BPF_MOV | BPF_K, 0, 2)
        );
        assert_eq!(p[1].code, BPF_JMP | BPF_EXIT);
    }

    fn bytes(i: &mut Asm) -> Vec<u8> {
        to_bytes(&std::mem::take(i).finish().unwrap())
    }

    #[test]
    fn encodes_known_instructions() {
        // Reference encodings (as printed by `bpftool prog dump xlated opcodes` on x86_64).
        let mut a = Asm::new();
        a.mov_imm(Reg::R0, 2);
        assert_eq!(bytes(&mut a), [0xb7, 0x00, 0, 0, 2, 0, 0, 0]);
        a.exit();
        assert_eq!(bytes(&mut a), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        a.mov(Reg::R6, Reg::R1);
        assert_eq!(bytes(&mut a), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        a.load(Size::W, Reg::R2, Reg::R6, 4);
        assert_eq!(bytes(&mut a), [0x61, 0x62, 4, 0, 0, 0, 0, 0]);
        a.load(Size::H, Reg::R5, Reg::R2, 12);
        assert_eq!(bytes(&mut a), [0x69, 0x25, 12, 0, 0, 0, 0, 0]);
        a.load(Size::B, Reg::R5, Reg::R2, 23);
        assert_eq!(bytes(&mut a), [0x71, 0x25, 23, 0, 0, 0, 0, 0]);
        a.add_imm(Reg::R4, 14);
        assert_eq!(bytes(&mut a), [0x07, 0x04, 0, 0, 14, 0, 0, 0]);
        a.add(Reg::R2, Reg::R5);
        assert_eq!(bytes(&mut a), [0x0f, 0x52, 0, 0, 0, 0, 0, 0]);
        a.and_imm(Reg::R5, 0x0f);
        assert_eq!(bytes(&mut a), [0x57, 0x05, 0, 0, 0x0f, 0, 0, 0]);
        a.lsh_imm(Reg::R5, 2);
        assert_eq!(bytes(&mut a), [0x67, 0x05, 0, 0, 2, 0, 0, 0]);
        a.call(51);
        assert_eq!(bytes(&mut a), [0x85, 0, 0, 0, 51, 0, 0, 0]);
        a.load_map_fd(Reg::R1, 7);
        assert_eq!(
            bytes(&mut a),
            [0x18, 0x11, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn jumps_resolve_forward_and_backward() {
        let mut a = Asm::new();
        let end = a.label();
        let top = a.label();
        a.bind(top);
        a.jmp_reg(Cond::Gt, Reg::R4, Reg::R3, end); // 0 -> 3: off 2
        a.jmp_imm(Cond::Ne, Reg::R5, 6, top); // 1 -> 0: off -2
        a.ja(end); // 2 -> 3: off 0
        a.bind(end);
        a.exit();
        let p = a.finish().unwrap();
        assert_eq!(p[0].to_bytes(), [0x2d, 0x34, 2, 0, 0, 0, 0, 0]);
        assert_eq!(p[1].to_bytes(), [0x55, 0x05, 0xfe, 0xff, 6, 0, 0, 0]);
        assert_eq!(p[2].to_bytes(), [0x05, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn unbound_label_is_an_error() {
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        assert_eq!(a.finish(), Err(AsmError::Unbound(l.0)));
    }

    #[test]
    fn program_shape() {
        let p = redirect_program(&ProgramSpec::new(5201), 9);
        assert!(p.len() < 80, "program is small: {}", p.len());
        assert_eq!(p.last().unwrap().code, BPF_JMP | BPF_EXIT);
        // The map fd is referenced exactly once, as a pseudo map fd.
        let maps: Vec<_> = p
            .iter()
            .filter(|i| i.code == BPF_LD | BPF_DW | BPF_IMM)
            .collect();
        assert_eq!(maps.len(), 1);
        assert_eq!((maps[0].src(), maps[0].imm), (BPF_PSEUDO_MAP_FD, 9));
        // Every jump lands inside the program.
        for (pc, i) in p.iter().enumerate() {
            if i.code & 0x07 == BPF_JMP && i.code != BPF_JMP | BPF_CALL && i.code != 0x95 {
                let t = pc as i64 + 1 + i.off as i64;
                assert!(t >= 0 && (t as usize) < p.len(), "jump at {pc}");
            }
        }
        // The port appears in network byte order as a 16-bit load sees it.
        assert!(p.iter().any(|i| i.imm == be16_as_loaded(5201)));
    }

    // ---- crafted frames run through the interpreter ----

    const PORT: u16 = 5201;

    fn eth(ethertype: u16, vlan: Option<u16>) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if let Some(tag) = vlan {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&tag.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4(proto: u8, ihl_words: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let hl = ihl_words as usize * 4;
        let mut h = vec![0u8; hl.max(20)];
        h[0] = 0x40 | ihl_words;
        let total = (hl + l4.len()) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&[10, 0, 0, 1]);
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        h.extend_from_slice(l4);
        h
    }

    fn ipv6(next: u8, l4: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        h[6] = next;
        h[7] = 64;
        h.extend_from_slice(l4);
        h
    }

    fn tcp(dport: u16) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x02; // SYN
        t
    }

    fn run(frame: &[u8], queue: u32) -> Verdict {
        let p = redirect_program(&ProgramSpec::new(PORT), 3);
        interpret(&p, frame, queue).unwrap()
    }

    fn cat(a: Vec<u8>, b: Vec<u8>) -> Vec<u8> {
        let mut a = a;
        a.extend(b);
        a
    }

    #[test]
    fn tcp_to_port_is_redirected_to_the_queue_slot() {
        let f = cat(eth(ETH_P_IP, None), ipv4(6, 5, 0x4000, &tcp(PORT)));
        assert_eq!(
            run(&f, 3),
            Verdict::Redirect {
                key: 3,
                fallback: XDP_PASS
            }
        );
        let f = cat(eth(ETH_P_IPV6, None), ipv6(6, &tcp(PORT)));
        assert_eq!(
            run(&f, 1),
            Verdict::Redirect {
                key: 1,
                fallback: XDP_PASS
            }
        );
        // One VLAN tag.
        let f = cat(eth(ETH_P_IP, Some(100)), ipv4(6, 5, 0, &tcp(PORT)));
        assert_eq!(
            run(&f, 0),
            Verdict::Redirect {
                key: 0,
                fallback: XDP_PASS
            }
        );
        let f = cat(eth(ETH_P_IPV6, Some(7)), ipv6(6, &tcp(PORT)));
        assert_eq!(
            run(&f, 2),
            Verdict::Redirect {
                key: 2,
                fallback: XDP_PASS
            }
        );
        // IPv4 options (IHL 8) shift the TCP header.
        let f = cat(eth(ETH_P_IP, None), ipv4(6, 8, 0, &tcp(PORT)));
        assert_eq!(
            run(&f, 0),
            Verdict::Redirect {
                key: 0,
                fallback: XDP_PASS
            }
        );
    }

    #[test]
    fn everything_else_passes() {
        let arp = cat(eth(0x0806, None), vec![0u8; 28]);
        assert_eq!(run(&arp, 0), Verdict::Pass);
        let other_port = cat(eth(ETH_P_IP, None), ipv4(6, 5, 0, &tcp(PORT + 1)));
        assert_eq!(run(&other_port, 0), Verdict::Pass);
        let mut udp = tcp(PORT);
        udp.truncate(8);
        let udp4 = cat(eth(ETH_P_IP, None), ipv4(17, 5, 0, &udp));
        assert_eq!(run(&udp4, 0), Verdict::Pass);
        let udp6 = cat(eth(ETH_P_IPV6, None), ipv6(17, &udp));
        assert_eq!(run(&udp6, 0), Verdict::Pass);
        // IPv6 with an extension header first (hop-by-hop) goes to the kernel.
        let ext6 = cat(eth(ETH_P_IPV6, None), ipv6(0, &tcp(PORT)));
        assert_eq!(run(&ext6, 0), Verdict::Pass);
        // Fragments: MF set, or a non-zero offset.
        let mf = cat(eth(ETH_P_IP, None), ipv4(6, 5, 0x2000, &tcp(PORT)));
        assert_eq!(run(&mf, 0), Verdict::Pass);
        let off = cat(eth(ETH_P_IP, None), ipv4(6, 5, 0x0010, &tcp(PORT)));
        assert_eq!(run(&off, 0), Verdict::Pass);
        // Bad IHL (< 5).
        let mut bad = cat(eth(ETH_P_IP, None), ipv4(6, 5, 0, &tcp(PORT)));
        bad[14] = 0x44;
        assert_eq!(run(&bad, 0), Verdict::Pass);
        // Two VLAN tags: only one is parsed, the inner ethertype is a VLAN -> pass.
        let qinq = cat(eth(ETH_P_8021Q, Some(5)), vec![0, 6, 8, 0]);
        assert_eq!(run(&qinq, 0), Verdict::Pass);
    }

    #[test]
    fn vlan_parsing_can_be_disabled() {
        let spec = ProgramSpec {
            vlan: false,
            ..ProgramSpec::new(PORT)
        };
        let p = redirect_program(&spec, 3);
        let f = cat(eth(ETH_P_IP, Some(100)), ipv4(6, 5, 0, &tcp(PORT)));
        assert_eq!(interpret(&p, &f, 0).unwrap(), Verdict::Pass);
        let f = cat(eth(ETH_P_IP, None), ipv4(6, 5, 0, &tcp(PORT)));
        assert!(matches!(
            interpret(&p, &f, 0).unwrap(),
            Verdict::Redirect { .. }
        ));
    }

    #[test]
    fn truncated_frames_never_read_out_of_bounds() {
        let full = [
            cat(eth(ETH_P_IP, None), ipv4(6, 8, 0, &tcp(PORT))),
            cat(eth(ETH_P_IPV6, Some(1)), ipv6(6, &tcp(PORT))),
            cat(eth(ETH_P_IP, Some(1)), ipv4(6, 15, 0, &tcp(PORT))),
        ];
        let p = redirect_program(&ProgramSpec::new(PORT), 3);
        for f in &full {
            for n in 0..f.len() {
                // Every prefix is classified without an out-of-bounds load.
                let v = interpret(&p, &f[..n], 0);
                assert!(v.is_ok(), "prefix {n}: {v:?}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn random_frames_are_classified_safely(frame in proptest::collection::vec(0u8..=255, 0..128)) {
            let p = redirect_program(&ProgramSpec::new(PORT), 3);
            let v = interpret(&p, &frame, 0);
            proptest::prop_assert!(v.is_ok());
        }
    }
}
