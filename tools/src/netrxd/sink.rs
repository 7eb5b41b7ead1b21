//! Where a connection's bytes go: dropped (`discard`) or one file per connection (`dir:PATH`).
//!
//! A `dir:` file is written as `NAME.partial`, and only on a clean end of stream is it flushed,
//! `fsync`ed, renamed to `NAME` and the directory `fsync`ed: a file without the `.partial`
//! suffix is always complete. A connection that ends any other way (reset, error, daemon shut
//! down before the sender finished) keeps its data in `NAME.partial` (also `fsync`ed), so it is
//! neither lost nor mistaken for a complete transfer.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::config::SinkSpec;

/// Suffix of a file still being written (or cut short).
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Makes one writer per connection.
#[derive(Debug)]
pub struct SinkFactory {
    spec: SinkSpec,
    seq: AtomicU64,
}

impl SinkFactory {
    /// Checks the sink can work (creates the directory when missing).
    pub fn new(spec: SinkSpec) -> Result<SinkFactory> {
        if let SinkSpec::Dir(d) = &spec {
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create sink directory {}", d.display()))?;
            let probe = d.join(format!(".netrxd-probe-{}", std::process::id()));
            File::create(&probe).with_context(|| {
                format!(
                    "sink directory {} is not writable; fix its permissions or pick another \
                     dir:PATH",
                    d.display()
                )
            })?;
            let _ = std::fs::remove_file(&probe);
        }
        Ok(SinkFactory {
            spec,
            seq: AtomicU64::new(0),
        })
    }

    pub fn spec(&self) -> &SinkSpec {
        &self.spec
    }

    /// A writer for a new connection from `peer`.
    pub fn open(&self, peer: Option<SocketAddr>) -> io::Result<ConnSink> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        match &self.spec {
            SinkSpec::Discard => Ok(ConnSink::Discard),
            SinkSpec::Dir(dir) => {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                let who = match peer {
                    Some(p) => format!("{}_{}", p.ip(), p.port()).replace(':', "-"),
                    None => "unknown".into(),
                };
                let name = format!("conn-{ms}-{}-{seq:04}-{who}.bin", std::process::id());
                let final_path = dir.join(&name);
                let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&partial)?;
                Ok(ConnSink::File(FileSink {
                    w: BufWriter::with_capacity(1 << 20, f),
                    partial,
                    final_path,
                    bytes: 0,
                }))
            }
        }
    }
}

/// One connection's sink.
#[derive(Debug)]
pub enum ConnSink {
    Discard,
    File(FileSink),
}

/// How a connection ended, as far as its file is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Discarded data.
    Discarded,
    /// Complete file at this path.
    Complete(PathBuf),
    /// Cut short; what arrived is in this `.partial` file.
    Partial(PathBuf),
}

#[derive(Debug)]
pub struct FileSink {
    w: BufWriter<File>,
    partial: PathBuf,
    final_path: PathBuf,
    bytes: u64,
}

impl ConnSink {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            ConnSink::Discard => Ok(()),
            ConnSink::File(f) => {
                f.bytes += data.len() as u64;
                f.w.write_all(data)
            }
        }
    }

    /// Clean end of stream: flush, fsync, rename into place, fsync the directory.
    pub fn finish(self) -> io::Result<Outcome> {
        match self {
            ConnSink::Discard => Ok(Outcome::Discarded),
            ConnSink::File(f) => {
                let file = f.w.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                drop(file);
                std::fs::rename(&f.partial, &f.final_path)?;
                sync_dir(&f.final_path)?;
                Ok(Outcome::Complete(f.final_path))
            }
        }
    }

    /// Connection cut short: flush and fsync what arrived, keep it as `.partial`, and fsync
    /// the directory too (the `.partial`'s name must survive a crash as its data does). When
    /// the flush fails (a full disk), what reached the file is still synced and kept.
    pub fn abort(self) -> io::Result<Outcome> {
        match self {
            ConnSink::Discard => Ok(Outcome::Discarded),
            ConnSink::File(f) => {
                let (file, flushed) = match f.w.into_inner() {
                    Ok(file) => (file, Ok(())),
                    Err(e) => {
                        let (err, w) = e.into_parts();
                        (w.into_parts().0, Err(err))
                    }
                };
                file.sync_all()?;
                drop(file);
                sync_dir(&f.partial)?;
                if let Err(e) = flushed {
                    // Data after the failure point is lost; the file keeps what reached it
                    // (the caller reports the sink failure that led here).
                    tracing::warn!(file = %f.partial.display(), "flushing the .partial failed: {e}");
                }
                Ok(Outcome::Partial(f.partial))
            }
        }
    }
}

fn sync_dir(p: &Path) -> io::Result<()> {
    if let Some(d) = p.parent() {
        File::open(d)?.sync_all()?;
        #[cfg(test)]
        tests::DIR_SYNCS.with(|n| n.set(n.get() + 1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Directory fsyncs made by this test thread.
        pub(super) static DIR_SYNCS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// Regression: a `.partial` was fsynced but its directory was not, so the file's name
    /// could be lost in a crash while a complete file's could not.
    #[test]
    fn partial_and_complete_files_both_sync_their_directory() {
        let d = tmpdir("dirsync");
        let f = SinkFactory::new(SinkSpec::Dir(d.clone())).unwrap();
        let before = DIR_SYNCS.with(|n| n.get());
        let mut a = f.open(None).unwrap();
        a.write(b"cut short").unwrap();
        assert!(matches!(a.abort().unwrap(), Outcome::Partial(_)));
        assert_eq!(
            DIR_SYNCS.with(|n| n.get()),
            before + 1,
            "abort syncs the directory"
        );
        let mut b = f.open(None).unwrap();
        b.write(b"whole").unwrap();
        assert!(matches!(b.finish().unwrap(), Outcome::Complete(_)));
        assert_eq!(
            DIR_SYNCS.with(|n| n.get()),
            before + 2,
            "finish syncs the directory"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netrxd-sink-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn complete_and_partial() {
        let d = tmpdir("cp");
        let f = SinkFactory::new(SinkSpec::Dir(d.clone())).unwrap();
        let mut a = f.open(Some("10.0.0.1:4000".parse().unwrap())).unwrap();
        a.write(b"hello ").unwrap();
        a.write(b"world").unwrap();
        let Outcome::Complete(p) = a.finish().unwrap() else {
            panic!()
        };
        assert_eq!(std::fs::read(&p).unwrap(), b"hello world");
        assert!(!p.to_string_lossy().ends_with(PARTIAL_SUFFIX));
        let mut b = f.open(None).unwrap();
        b.write(b"half").unwrap();
        let Outcome::Partial(q) = b.abort().unwrap() else {
            panic!()
        };
        assert!(q.to_string_lossy().ends_with(PARTIAL_SUFFIX));
        assert_eq!(std::fs::read(&q).unwrap(), b"half");
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn discard() {
        let f = SinkFactory::new(SinkSpec::Discard).unwrap();
        let mut s = f.open(None).unwrap();
        s.write(b"x").unwrap();
        assert_eq!(s.finish().unwrap(), Outcome::Discarded);
    }
}
