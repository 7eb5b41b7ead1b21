//! Conformance checks: the driver's functional test bodies, generic over the register access
//! so the same code runs against the device model (`driver/tests/`) and real hardware
//! (`tests/tests/hil.rs`, with `IOAT_HIL_BDF`). Test-only: compiled with the `testing` feature,
//! which the tests that use it enable.
//!
//! Every check returns `Err(Failure)` with a readable reason instead of panicking, so callers
//! can add context (which target, which seed). Data is verified byte by byte, against a
//! shadow copy of the destination that replays every operation in submission order.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::channel::{Channel, ChannelConfig, Completion};
use crate::device::Device;
use crate::dma::{DmaRegion, HugePages};
use crate::error::OpError;
use crate::regs::RegisterAccess;
use crate::ring::Token;

/// A failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

macro_rules! fail {
    ($($t:tt)*) => { return Err(Failure(format!($($t)*))) };
}

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, Failure> {
    r.map_err(|e| Failure(format!("{what}: {e}")))
}

/// A small deterministic PRNG (splitmix64), so checks need no extra dependency and replay
/// from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// One operation of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Copy `len` bytes from `src` offset to `dst` offset (offsets into the harness buffers).
    Copy { src: usize, dst: usize, len: usize },
    /// Fill `len` bytes at `dst` offset with the pattern.
    Fill {
        dst: usize,
        pattern: u64,
        len: usize,
    },
}

impl Op {
    /// Applies the operation to a host copy of the destination.
    pub fn apply(&self, src: &[u8], shadow: &mut [u8]) {
        match *self {
            Op::Copy { src: s, dst, len } => {
                shadow[dst..dst + len].copy_from_slice(&src[s..s + len])
            }
            Op::Fill { dst, pattern, len } => {
                let p = pattern.to_le_bytes();
                for (i, b) in shadow[dst..dst + len].iter_mut().enumerate() {
                    *b = p[i % 8];
                }
            }
        }
    }
    /// Whether the operation writes nothing (never true for a valid op).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the operation writes.
    pub fn len(&self) -> usize {
        match *self {
            Op::Copy { len, .. } | Op::Fill { len, .. } => len,
        }
    }
}

/// A channel plus a source and a destination buffer, with a shadow of the destination.
pub struct Harness<R: RegisterAccess> {
    pub channel: Channel<R>,
    pub src: DmaRegion,
    pub dst: DmaRegion,
    /// Host copy of `src` (what the device should read).
    src_copy: Vec<u8>,
    /// What `dst` must hold once every reported-successful operation is applied.
    shadow: Vec<u8>,
    pub rng: Rng,
    /// How long [`Harness::drain`] waits at most.
    pub drain_timeout: Duration,
}

/// Counts from [`Harness::drain`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub ok: u64,
    pub halted: u64,
    pub aborted: u64,
    pub timeout: u64,
    pub reset: u64,
}

impl<R: RegisterAccess> Harness<R> {
    /// Opens channel `chan` with `cfg` and two `buf_len`-byte buffers (source filled with
    /// random bytes from `seed`, destination zeroed).
    pub fn new(
        dev: &Device<R>,
        chan: u32,
        cfg: ChannelConfig,
        buf_len: usize,
        seed: u64,
    ) -> Result<Self, Failure> {
        let channel = ctx(dev.channel(chan, cfg), "opening the channel")?;
        let src = ctx(
            DmaRegion::alloc_with(dev.mapper(), buf_len, HugePages::Prefer),
            "allocating the source buffer",
        )?;
        let dst = ctx(
            DmaRegion::alloc_with(dev.mapper(), buf_len, HugePages::Prefer),
            "allocating the destination buffer",
        )?;
        let mut rng = Rng::new(seed);
        let mut src_copy = vec![0u8; src.len()];
        rng.fill(&mut src_copy);
        ctx(src.write(0, &src_copy), "writing the source")?;
        let shadow = vec![0u8; dst.len()];
        Ok(Harness {
            channel,
            src,
            dst,
            src_copy,
            shadow,
            rng,
            drain_timeout: Duration::from_secs(10),
        })
    }

    /// Length of the buffers.
    pub fn buf_len(&self) -> usize {
        self.src.len().min(self.dst.len())
    }

    /// Re-randomizes the source (only while nothing is in flight).
    pub fn reseed_source(&mut self) -> Result<(), Failure> {
        self.rng.fill(&mut self.src_copy);
        ctx(self.src.write(0, &self.src_copy), "writing the source")
    }

    /// Queues one operation (without flushing).
    pub fn submit(&mut self, op: Op) -> Result<Token, Failure> {
        let r = match op {
            Op::Copy { src, dst, len } => self
                .channel
                .copy_regions(&self.src, src, &self.dst, dst, len),
            Op::Fill { dst, pattern, len } => {
                self.channel.fill_region(&self.dst, dst, pattern, len)
            }
        };
        ctx(r, &format!("submitting {op:?}"))
    }

    /// Flushes and polls until nothing is in flight; returns the completions.
    pub fn drain(&mut self) -> Result<Vec<Completion>, Failure> {
        let mut out = Vec::new();
        ctx(
            self.channel.wait_idle(self.drain_timeout, &mut out),
            "waiting for completions",
        )?;
        Ok(out)
    }

    /// Checks that `dst` equals the shadow; names the first differing byte.
    pub fn verify(&self) -> Result<(), Failure> {
        let got = ctx(
            self.dst.to_vec(0, self.shadow.len()),
            "reading the destination",
        )?;
        if got != self.shadow {
            let i = got
                .iter()
                .zip(&self.shadow)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            let n = got.iter().zip(&self.shadow).filter(|(a, b)| a != b).count();
            fail!(
                "destination differs from the expected bytes at offset {i} (got {:#04x}, want \
                 {:#04x}; {n} byte(s) differ)",
                got[i],
                self.shadow[i]
            );
        }
        Ok(())
    }

    /// Runs `ops` as one batch (one flush), expects every one to succeed in order, and verifies
    /// the destination byte by byte (including that nothing outside the ranges changed).
    pub fn run_batch(&mut self, ops: &[Op]) -> Result<(), Failure> {
        let mut tokens = Vec::with_capacity(ops.len());
        for op in ops {
            tokens.push(self.submit(*op)?);
        }
        let done = self.drain()?;
        let got: Vec<Token> = done.iter().map(|c| c.token).collect();
        if got != tokens {
            fail!("completions {got:?} do not match the submitted tokens {tokens:?} in order");
        }
        for (c, op) in done.iter().zip(ops) {
            if let Err(e) = &c.result {
                fail!("{op:?} (token {}) failed: {e}", c.token);
            }
        }
        for op in ops {
            op.apply(&self.src_copy, &mut self.shadow);
        }
        self.verify()
    }

    /// One copy, verified.
    pub fn copy_case(&mut self, src_off: usize, dst_off: usize, len: usize) -> Result<(), Failure> {
        self.run_batch(&[Op::Copy {
            src: src_off,
            dst: dst_off,
            len,
        }])
    }

    /// One fill, verified.
    pub fn fill_case(&mut self, dst_off: usize, pattern: u64, len: usize) -> Result<(), Failure> {
        self.run_batch(&[Op::Fill {
            dst: dst_off,
            pattern,
            len,
        }])
    }

    /// A random operation of at most `max_len` bytes inside the buffers.
    pub fn random_op(&mut self, max_len: usize, fills: bool) -> Op {
        let n = self.buf_len();
        let len = self.rng.range(1, max_len.min(n) as u64) as usize;
        let dst = self.rng.range(0, (n - len) as u64) as usize;
        if fills && self.rng.next_u64() % 4 == 0 {
            Op::Fill {
                dst,
                pattern: self.rng.next_u64(),
                len,
            }
        } else {
            let src = self.rng.range(0, (n - len) as u64) as usize;
            Op::Copy { src, dst, len }
        }
    }

    /// Submits `ops` in one batch and checks that each token is reported exactly once, in
    /// order, and that the outcomes follow the only legal pattern after at most one fault:
    /// successes, then (if the channel halted) the failed op, then aborted ones. Successful
    /// operations are applied to the shadow and the destination verified. Returns the counts.
    pub fn run_faulty_batch(&mut self, ops: &[Op]) -> Result<Outcome, Failure> {
        let mut tokens = Vec::with_capacity(ops.len());
        for op in ops {
            tokens.push(self.submit(*op)?);
        }
        let done = self.drain()?;
        let mut seen = BTreeSet::new();
        for c in &done {
            if !seen.insert(c.token) {
                fail!("token {} reported twice", c.token);
            }
        }
        let got: Vec<Token> = done.iter().map(|c| c.token).collect();
        if got != tokens {
            fail!(
                "reported tokens {got:?} differ from submitted {tokens:?} (each op must be \
                 reported exactly once, in order)"
            );
        }
        let mut o = Outcome::default();
        let mut phase = 0; // 0: successes, 1: after a failure
        for (c, op) in done.iter().zip(ops) {
            match &c.result {
                Ok(()) => {
                    if phase != 0 {
                        fail!("token {} succeeded after an earlier op failed", c.token);
                    }
                    o.ok += 1;
                    op.apply(&self.src_copy, &mut self.shadow);
                }
                Err(e) => {
                    match e {
                        OpError::Halted { .. } if phase == 0 => o.halted += 1,
                        OpError::Aborted { .. } if phase == 1 => o.aborted += 1,
                        OpError::Timeout { .. } => o.timeout += 1,
                        OpError::Reset => o.reset += 1,
                        _ => fail!("token {}: unexpected {e} at this point", c.token),
                    }
                    if phase == 0 {
                        phase = 1;
                        // The failed op may have written part of its range: resync the shadow
                        // for it from the device (it is not checked).
                        self.resync(op)?;
                    } else {
                        self.resync(op)?;
                    }
                }
            }
        }
        self.verify()?;
        Ok(o)
    }

    /// After a failed op, its destination range is unspecified: copy the device's bytes into
    /// the shadow for that range.
    fn resync(&mut self, op: &Op) -> Result<(), Failure> {
        let (dst, len) = match *op {
            Op::Copy { dst, len, .. } | Op::Fill { dst, len, .. } => (dst, len),
        };
        let v = ctx(self.dst.to_vec(dst, len), "reading the destination")?;
        self.shadow[dst..dst + len].copy_from_slice(&v);
        Ok(())
    }
}

/// Random copies and fills one at a time (sizes 1..=`max_len`, random offsets, so every
/// alignment occurs), each verified byte by byte.
pub fn random_single_ops<R: RegisterAccess>(
    dev: &Device<R>,
    chan: u32,
    seed: u64,
    count: u32,
    max_len: usize,
) -> Result<(), Failure> {
    let mut h = Harness::new(
        dev,
        chan,
        ChannelConfig::default().ring_order(6),
        1 << 20,
        seed,
    )?;
    let fills = dev.info().has_fill();
    for i in 0..count {
        let op = h.random_op(max_len, fills);
        h.run_batch(&[op])
            .map_err(|e| Failure(format!("op {i} {op:?} (seed {seed}): {e}")))?;
    }
    Ok(())
}

/// What [`stress`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StressReport {
    pub ops: u64,
    pub descriptors: u64,
    pub doorbells: u64,
    pub bytes: u64,
    /// Times the ring wrapped.
    pub ring_wraps: u64,
    /// Times the 16-bit DMACOUNT wrapped.
    pub dmacount_wraps: u64,
    pub elapsed: Duration,
}

/// At least `total_ops` small operations through a ring of `1 << ring_order` slots, batches of
/// random size (one doorbell each), polled while later batches are queued. Checks every token
/// is reported exactly once in order and successful, and compares the destination with the
/// shadow every `verify_every` operations and at the end.
pub fn stress<R: RegisterAccess>(
    dev: &Device<R>,
    chan: u32,
    ring_order: u32,
    total_ops: u64,
    seed: u64,
) -> Result<StressReport, Failure> {
    let cfg = ChannelConfig::default().ring_order(ring_order);
    let mut h = Harness::new(dev, chan, cfg, 64 << 10, seed)?;
    let fills = dev.info().has_fill();
    let t0 = Instant::now();
    let start = h.channel.stats();
    let mut next_expected = h.channel.next_token();
    let mut submitted = 0u64;
    let mut out = Vec::new();
    let mut pending_ops: std::collections::VecDeque<Op> = Default::default();
    let verify_every = 4096;
    let mut since_verify = 0u64;
    let max_batch = (1u64 << ring_order) / 2;
    while submitted < total_ops || h.channel.in_flight() > 0 {
        if submitted < total_ops {
            let batch = h.rng.range(1, max_batch).min(total_ops - submitted);
            for _ in 0..batch {
                if h.channel.free_slots() == 0 {
                    break;
                }
                let op = h.random_op(512, fills);
                h.submit(op)?;
                pending_ops.push_back(op);
                submitted += 1;
            }
            h.channel.flush();
        }
        // Poll a little (not necessarily to idle: keep the ring busy).
        let t = Instant::now();
        loop {
            out.clear();
            h.channel.poll(&mut out);
            for c in &out {
                if c.token != next_expected {
                    fail!(
                        "expected token {next_expected}, got {} (each op exactly once, in order)",
                        c.token
                    );
                }
                if let Err(e) = &c.result {
                    fail!("token {} failed: {e}", c.token);
                }
                next_expected = Token(next_expected.0 + 1);
                let op = pending_ops
                    .pop_front()
                    .ok_or(Failure("completion without op".into()))?;
                op.apply(&h.src_copy, &mut h.shadow);
                since_verify += 1;
            }
            let room = h.channel.free_slots() as u64 >= max_batch;
            if (room && submitted < total_ops && since_verify < verify_every)
                || h.channel.in_flight() == 0
            {
                break;
            }
            if t.elapsed() > h.drain_timeout {
                fail!(
                    "no room after {:?}: {} in flight ({})",
                    h.drain_timeout,
                    h.channel.in_flight(),
                    h.channel.regs_snapshot()
                );
            }
            std::hint::spin_loop();
        }
        if since_verify >= verify_every && h.channel.in_flight() == 0 {
            h.verify()?;
            since_verify = 0;
        }
    }
    h.verify()?;
    let s = h.channel.stats();
    let descriptors = s.descriptors - start.descriptors;
    let size = 1u64 << ring_order;
    Ok(StressReport {
        ops: s.ops - start.ops,
        descriptors,
        doorbells: s.doorbells - start.doorbells,
        bytes: s.bytes - start.bytes,
        ring_wraps: descriptors / size,
        dmacount_wraps: descriptors / 65536,
        elapsed: t0.elapsed(),
    })
}

/// Runs `rounds` batches; before each, `arm(nth)` arranges for the `nth` descriptor executed
/// from then on to fail (on the model: `Fault::ChanErrOnNth`). Each batch must show the
/// pattern ok* halted aborted*, with each op reported exactly once and the halted op at
/// index `nth - 1` (batches use single-descriptor ops), and the channel must work afterwards.
pub fn fault_rounds<R: RegisterAccess>(
    h: &mut Harness<R>,
    rounds: u32,
    mut arm: impl FnMut(u32, u64),
) -> Result<Outcome, Failure> {
    let mut total = Outcome::default();
    let piece = h.channel.info().piece_size() as usize;
    let fills = h.channel.info().has_fill();
    for round in 0..rounds {
        let n = h.rng.range(1, 24) as usize;
        let nth = h.rng.range(1, n as u64);
        let ops: Vec<Op> = (0..n)
            .map(|_| h.random_op(piece.min(2048), fills))
            .collect();
        arm(round, nth);
        let o = h.run_faulty_batch(&ops).map_err(|e| {
            Failure(format!(
                "round {round} (fault on descriptor {nth} of {n}): {e}"
            ))
        })?;
        if o.halted != 1 || o.ok != nth - 1 || o.aborted != n as u64 - nth {
            fail!(
                "round {round}: fault on descriptor {nth} of {n} gave {o:?}; expected {} ok, 1 \
                 halted, {} aborted",
                nth - 1,
                n as u64 - nth
            );
        }
        total.ok += o.ok;
        total.halted += o.halted;
        total.aborted += o.aborted;
        // The channel works again.
        let op = h.random_op(4096, false);
        h.run_batch(&[op])
            .map_err(|e| Failure(format!("round {round}: after recovery: {e}")))?;
        total.ok += 1;
    }
    Ok(total)
}

/// `arm_hang(k)` must make the channel stop silently after `k` more descriptors (on the model:
/// `Fault::Hang{after: k}`). Submits `n` single-descriptor ops and checks that the first `k`
/// succeed, the rest fail with [`OpError::Timeout`] no earlier than the channel's
/// `completion_timeout`, and that the channel works afterwards. Returns how long detection took.
pub fn hang_detected<R: RegisterAccess>(
    h: &mut Harness<R>,
    n: usize,
    k: usize,
    arm_hang: impl FnOnce(u64),
) -> Result<Duration, Failure> {
    let timeout = h.channel.config().completion_timeout;
    let ops: Vec<Op> = (0..n).map(|_| h.random_op(1024, false)).collect();
    arm_hang(k as u64);
    let t0 = Instant::now();
    let o = h.run_faulty_batch(&ops)?;
    let took = t0.elapsed();
    if o.ok != k as u64 || o.timeout != (n - k) as u64 {
        fail!(
            "hang after {k} of {n}: got {o:?}, expected {k} ok and {} timeouts",
            n - k
        );
    }
    if took < timeout {
        fail!("hang reported after {took:?}, before completion_timeout {timeout:?}");
    }
    let op = h.random_op(4096, false);
    h.run_batch(&[op])
        .map_err(|e| Failure(format!("after hang recovery: {e}")))?;
    Ok(took)
}

/// A copy from an IOVA nobody mapped (the end of the destination region plus a gap). The
/// model halts with SRC_ADDR; real devices may or may not detect it (rule E10), so both a
/// halt and a success are accepted, but the op must be reported exactly once and the channel
/// must work afterwards. Run it only behind an IOMMU: in no-IOMMU mode IOVAs are physical
/// addresses and the "unmapped" source would be whatever memory lies there.
pub fn unmapped_source<R: RegisterAccess>(h: &mut Harness<R>) -> Result<Option<OpError>, Failure> {
    let bogus = h.dst.iova() + h.dst.len() as u64 + (1 << 30);
    let t = ctx(h.channel.copy(bogus, h.dst.iova(), 64), "submitting")?;
    let done = h.drain()?;
    if done.len() != 1 || done[0].token != t {
        fail!("expected exactly one completion for {t}, got {done:?}");
    }
    let r = done[0].result.clone().err();
    // The destination's first 64 bytes are unspecified now.
    h.resync(&Op::Copy {
        src: 0,
        dst: 0,
        len: 64,
    })?;
    let op = h.random_op(4096, false);
    h.run_batch(&[op])
        .map_err(|e| Failure(format!("after the unmapped copy: {e}")))?;
    Ok(r)
}

/// Checks the driver's own invariants that need no data: an op of `len` bytes takes
/// `ceil(len / piece)` descriptors, one doorbell per flush, zero-length ops are refused.
pub fn submission_rules<R: RegisterAccess>(h: &mut Harness<R>) -> Result<(), Failure> {
    let piece = h.channel.info().piece_size() as usize;
    let s0 = h.channel.stats();
    let len = (piece * 2 + 100).min(h.buf_len());
    let expect_desc = len.div_ceil(piece) as u64;
    h.run_batch(&[Op::Copy {
        src: 0,
        dst: 0,
        len,
    }])?;
    let s1 = h.channel.stats();
    if s1.descriptors - s0.descriptors != expect_desc {
        fail!(
            "a {len}-byte copy used {} descriptors, expected {expect_desc} (piece {piece})",
            s1.descriptors - s0.descriptors
        );
    }
    if s1.doorbells - s0.doorbells != 1 {
        fail!("one flush rang {} doorbells", s1.doorbells - s0.doorbells);
    }
    match h.channel.copy(h.src.iova(), h.dst.iova(), 0) {
        Err(crate::error::SubmitError::ZeroLength) => {}
        other => fail!("a zero-length copy gave {other:?}"),
    }
    if h.channel.flush() {
        fail!("flush with nothing queued rang the doorbell");
    }
    let ops: Vec<Op> = (0..10).map(|_| h.random_op(256, false)).collect();
    let before = h.channel.stats().doorbells;
    h.run_batch(&ops)?;
    if h.channel.stats().doorbells - before != 1 {
        fail!(
            "a batch of 10 ops rang {} doorbells",
            h.channel.stats().doorbells - before
        );
    }
    Ok(())
}

/// What [`hardware_suite`] ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SuiteReport {
    pub single_ops: u32,
    pub batches: u32,
    pub stress: StressReport,
}

/// Everything that needs no fault injection, sized for a real device (and run on the model by
/// the driver's own tests): submission rules, `single_ops` random single copies/fills,
/// `batches` random mixed batches, and a stress run of `stress_ops` operations through a
/// 64-slot ring (more than 65,536 descriptors make DMACOUNT wrap).
pub fn hardware_suite<R: RegisterAccess>(
    dev: &Device<R>,
    chan: u32,
    seed: u64,
    single_ops: u32,
    batches: u32,
    stress_ops: u64,
) -> Result<SuiteReport, Failure> {
    {
        let mut h = Harness::new(dev, chan, ChannelConfig::default(), 1 << 20, seed)?;
        submission_rules(&mut h).map_err(|e| Failure(format!("submission rules: {e}")))?;
        let fills = dev.info().has_fill();
        for i in 0..batches {
            let n = h.rng.range(1, 40) as usize;
            let ops: Vec<Op> = (0..n).map(|_| h.random_op(64 << 10, fills)).collect();
            h.run_batch(&ops)
                .map_err(|e| Failure(format!("batch {i} (seed {seed}): {e}")))?;
        }
    }
    random_single_ops(dev, chan, seed ^ 0x5eed, single_ops, 20_000)?;
    let stress = stress(dev, chan, 6, stress_ops, seed ^ 0xabcd)?;
    Ok(SuiteReport {
        single_ops,
        batches,
        stress,
    })
}
