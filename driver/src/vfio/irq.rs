//! Eventfds for VFIO interrupts (MSI-X, MSI, INTx).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An eventfd the kernel signals when a device interrupt fires.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd has no memory preconditions; we check the result.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd })
    }

    /// Reads and clears the counter: `Some(n)` interrupts since the last read, `None` if none.
    pub fn try_read(&self) -> io::Result<Option<u64>> {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a u64 we own, as eventfd requires.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
        if n == 8 {
            return Ok(Some(v));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        }
    }

    /// Waits up to `timeout` for an interrupt; returns how many arrived (`None` on timeout).
    pub fn wait(&self, timeout: Duration) -> io::Result<Option<u64>> {
        if let Some(n) = self.try_read()? {
            return Ok(Some(n));
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e);
        }
        self.try_read()
    }

    /// Signals the eventfd from user space (tests; waking a waiter).
    pub fn signal(&self) -> io::Result<()> {
        let v: u64 = 1;
        // SAFETY: writing 8 bytes from a u64 we own.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &v as *const u64 as *const libc::c_void,
                8,
            )
        };
        if n == 8 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_counts_and_times_out() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.try_read().unwrap(), None);
        assert_eq!(e.wait(Duration::from_millis(5)).unwrap(), None);
        e.signal().unwrap();
        e.signal().unwrap();
        assert_eq!(e.wait(Duration::from_millis(5)).unwrap(), Some(2));
        assert_eq!(e.try_read().unwrap(), None);
    }
}
