//! The daemon's connection workers: a fixed number of threads, each serving many connections
//! (not a thread per connection), so that ten thousand idle peers cost memory, not threads.
//!
//! Each worker owns a [`ReadyQueue`] and its connections. A connection starts *watched*
//! (a one-shot readiness request, like `EPOLLIN`: no buffer is tied to an idle connection).
//! When it becomes readable, the worker takes a registered buffer from the listener's pool if
//! one is free and *posts* a receive into it: the copy engine may then fill it early (DMA) and
//! it completes by the stream's rules (rcvlowat, PSH, a full buffer), announced on the queue;
//! the connection keeps that buffer and re-posts while it lives. Without a free registered
//! buffer the worker drains the connection with nonblocking receives into its own plain buffer
//! (CPU copies) and watches it again. Every received byte goes to the connection's sink.
//!
//! A sink that fails (ENOSPC, EIO) resets the connection: the sender sees an error for data
//! the receiver acknowledged and could not keep; what was stored stays as `.partial`.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netrx::service::{BufPool, ReadyQueue, ReadySender, RecvFlags, RegisteredBuf, Stream};

use super::rx::{log_report, settle};
use super::sink::ConnSink;
use super::stats::DaemonCounters;

/// Connection workers per daemon.
pub const WORKERS: usize = 4;

/// The token that tells a worker a new connection waits in its inbox.
const INBOX: u64 = u64::MAX;

/// An accepted connection and its sink, handed to a worker.
pub struct Accepted {
    pub stream: Stream,
    pub sink: ConnSink,
}

/// The running workers.
pub struct Workers {
    inboxes: Vec<(SyncSender<Accepted>, ReadySender)>,
    threads: Vec<JoinHandle<()>>,
    next: usize,
}

impl Workers {
    /// Starts `n` workers. `abort`: end every connection now (its data kept as `.partial`).
    pub fn start(
        n: usize,
        pool: BufPool,
        recv_size: usize,
        counters: Arc<DaemonCounters>,
        abort: Arc<AtomicBool>,
    ) -> Result<Workers> {
        let mut w = Workers {
            inboxes: Vec::new(),
            threads: Vec::new(),
            next: 0,
        };
        for i in 0..n.max(1) {
            let (tx, rx) = mpsc::sync_channel(1024);
            let q = ReadyQueue::new();
            w.inboxes.push((tx, q.sender()));
            let mut worker = Worker {
                q,
                inbox: rx,
                open: true,
                conns: HashMap::new(),
                next_token: 0,
                pool: pool.clone(),
                plain: Vec::new(),
                recv_size: recv_size.max(1),
                counters: counters.clone(),
            };
            let abort = abort.clone();
            let t = std::thread::Builder::new()
                .name(format!("netrxd-w{i}"))
                .spawn(move || worker.run(&abort))
                .context("cannot start a connection worker thread")?;
            w.threads.push(t);
        }
        Ok(w)
    }

    /// Hands a connection to the next worker (round robin).
    pub fn submit(&mut self, a: Accepted) {
        let (tx, wake) = &self.inboxes[self.next % self.inboxes.len()];
        self.next = self.next.wrapping_add(1);
        if tx.send(a).is_ok() {
            wake.send(INBOX);
        }
    }

    /// True once every worker ended (after [`Workers::close`] and its connections ended).
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// No more connections: each worker ends when its connections have ended (or at abort).
    pub fn close(&mut self) {
        for (_, wake) in self.inboxes.drain(..) {
            wake.send(INBOX);
        }
    }

    /// Waits for every worker to end.
    pub fn join(mut self) {
        self.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

enum Mode {
    /// Waiting for readiness; no buffer tied up.
    Watched,
    /// A receive into a registered buffer is posted.
    Posted,
}

struct Conn {
    stream: Stream,
    sink: ConnSink,
    mode: Mode,
    bytes: u64,
    first: Option<Instant>,
}

/// What one step of a connection came to.
enum Step {
    Continue,
    End(Result<(), String>),
    SinkFailed(io::Error),
}

struct Worker {
    q: ReadyQueue,
    inbox: Receiver<Accepted>,
    open: bool,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    pool: BufPool,
    plain: Vec<u8>,
    recv_size: usize,
    counters: Arc<DaemonCounters>,
}

impl Worker {
    fn run(&mut self, abort: &AtomicBool) {
        loop {
            self.take_new();
            if abort.load(Ordering::Relaxed) {
                let tokens: Vec<u64> = self.conns.keys().copied().collect();
                for t in tokens {
                    self.end(
                        t,
                        Step::End(Err("daemon shutting down before the sender finished".into())),
                    );
                }
                return;
            }
            if !self.open && self.conns.is_empty() {
                return;
            }
            let Some(t) = self.q.wait(Duration::from_millis(100)) else {
                continue;
            };
            self.handle(t);
            while let Some(t) = self.q.try_next() {
                self.handle(t);
            }
        }
    }

    fn take_new(&mut self) {
        loop {
            match self.inbox.try_recv() {
                Ok(a) => {
                    let t = self.next_token;
                    self.next_token += 1;
                    let mut c = Conn {
                        stream: a.stream,
                        sink: a.sink,
                        mode: Mode::Watched,
                        bytes: 0,
                        first: None,
                    };
                    match c.stream.watch(&self.q, t) {
                        Ok(()) => {
                            self.conns.insert(t, c);
                        }
                        Err(e) => {
                            self.conns.insert(t, c);
                            self.end(t, Step::End(Err(e.to_string())));
                        }
                    }
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.open = false;
                    return;
                }
            }
        }
    }

    fn handle(&mut self, t: u64) {
        if t == INBOX {
            self.take_new();
            return;
        }
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        let step = match c.mode {
            Mode::Posted => match c.stream.poll_recv() {
                None => return,
                Some(r) => Self::completed(c, r, &self.q, t, &self.counters),
            },
            Mode::Watched => match self.pool.take() {
                Some(buf) => match c.stream.post_recv_registered(buf, &self.q, t) {
                    Ok(()) => {
                        c.mode = Mode::Posted;
                        Step::Continue
                    }
                    Err(e) => Step::End(Err(e.to_string())),
                },
                None => {
                    // Nonblocking drains loop, so a moderate buffer serves any recv_size.
                    let want = self.recv_size.min(2 << 20);
                    if self.plain.len() != want {
                        self.plain = vec![0u8; want];
                    }
                    Self::drain(c, &mut self.plain, &self.q, t, &self.counters)
                }
            },
        };
        if !matches!(step, Step::Continue) {
            self.end(t, step);
        }
    }

    /// A posted receive completed: store what it brought and post again.
    fn completed(
        c: &mut Conn,
        r: io::Result<(RegisteredBuf, usize)>,
        q: &ReadyQueue,
        t: u64,
        counters: &DaemonCounters,
    ) -> Step {
        match r {
            Ok((_, 0)) => Step::End(Ok(())),
            Ok((buf, n)) => {
                if let Err(e) = Self::store(c, &buf.as_slice()[..n], counters) {
                    return Step::SinkFailed(e);
                }
                match c.stream.post_recv_registered(buf, q, t) {
                    Ok(()) => Step::Continue,
                    Err(e) => Step::End(Err(e.to_string())),
                }
            }
            Err(e) => Step::End(Err(e.to_string())),
        }
    }

    /// Readable and no registered buffer free: nonblocking receives into the worker's plain
    /// buffer until the stream would block, then watch it again.
    fn drain(
        c: &mut Conn,
        plain: &mut [u8],
        q: &ReadyQueue,
        t: u64,
        counters: &DaemonCounters,
    ) -> Step {
        let flags = RecvFlags {
            dontwait: true,
            ..RecvFlags::default()
        };
        loop {
            match c.stream.recv_with(plain, flags) {
                Ok(0) => return Step::End(Ok(())),
                Ok(n) => {
                    if let Err(e) = Self::store(c, &plain[..n], counters) {
                        return Step::SinkFailed(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return match c.stream.watch(q, t) {
                        Ok(()) => Step::Continue,
                        Err(e) => Step::End(Err(e.to_string())),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Step::End(Err(e.to_string())),
            }
        }
    }

    fn store(c: &mut Conn, data: &[u8], counters: &DaemonCounters) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        c.first.get_or_insert_with(Instant::now);
        c.bytes += data.len() as u64;
        counters
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        c.sink.write(data)
    }

    /// The connection ends: its sink is finished (or kept as `.partial`), counted and logged;
    /// a failed sink resets the connection.
    fn end(&mut self, t: u64, step: Step) {
        let Some(c) = self.conns.remove(&t) else {
            return;
        };
        let peer = Some(c.stream.peer_addr());
        let (end, sink_err) = match step {
            Step::Continue => (Ok(()), None),
            Step::End(r) => (r, None),
            Step::SinkFailed(e) => (Ok(()), Some(e)),
        };
        let failed = sink_err.is_some();
        let report = settle(
            peer,
            c.bytes,
            c.first,
            c.sink,
            end,
            sink_err,
            &self.counters,
        );
        if failed {
            c.stream.abort();
        } else {
            drop(c.stream);
        }
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
        log_report(&report);
    }
}
