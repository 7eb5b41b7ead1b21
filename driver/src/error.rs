//! Error types of the driver. Every message says what went wrong and what to do about it.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::dma::MapError;
use crate::regs::{CbVersion, ChanErr, ChanState};

/// An operating-system error kept whole (kind, errno, message) inside a driver error instead
/// of being flattened into a string. Shared, so the driver's error enums stay `Clone`; two are
/// equal when kind, errno and message are. Displays as the I/O error itself; the I/O error is
/// reachable with [`OsError::io`].
#[derive(Debug, Clone)]
pub struct OsError(Arc<std::io::Error>);

impl OsError {
    /// The I/O error.
    pub fn io(&self) -> &std::io::Error {
        &self.0
    }
    /// Its errno, if it came from the OS.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.0.raw_os_error()
    }
    /// Its kind.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.0.kind()
    }
}

impl From<std::io::Error> for OsError {
    fn from(e: std::io::Error) -> Self {
        OsError(Arc::new(e))
    }
}

impl PartialEq for OsError {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind()
            && self.raw_os_error() == other.raw_os_error()
            && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for OsError {}

impl std::fmt::Display for OsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for OsError {
    // Transparent, like `#[error(transparent)]`: the I/O error's own source, if any.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Errors from opening a device, setting up, resetting or restarting a channel.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("CBVER reads {0} (raw {raw:#04x}); this driver needs Crystal Beach 3.0 or newer \
             (check that the BDF is an I/OAT/CBDMA function bound to vfio-pci)", raw = .0.0)]
    UnsupportedVersion(CbVersion),
    #[error(
        "CHANCNT reads 0: the device exposes no DMA channel (is it an I/OAT function, and \
             is BAR0 mapped at the right offset?)"
    )]
    NoChannels,
    #[error(
        "XFERCAP reads {0}: the spec requires at least 12 (4 KiB per descriptor); the \
             device is misreporting or BAR0 is not an I/OAT register file"
    )]
    BadXferCap(u8),
    #[error("channel {n} does not exist: the device has {count} channel(s) (use 0..{count})")]
    NoSuchChannel { n: u32, count: u32 },
    #[error("channel {0} is already open in this process; drop the other Channel first")]
    ChannelInUse(u32),
    #[error("invalid channel configuration: {0}")]
    BadConfig(String),
    #[error(
        "channel {chan}: CHANCMD.RESET did not clear within {waited:?}; the channel is \
             wedged: reset the PCI function (echo 1 > /sys/bus/pci/devices/<bdf>/reset) and retry"
    )]
    ResetTimeout { chan: u32, waited: Duration },
    #[error(
        "channel {chan}: CHANSTS is {state} after reset, expected HALTED; reset the PCI \
             function and retry"
    )]
    NotHaltedAfterReset { chan: u32, state: ChanState },
    #[error(
        "channel {chan}: CHANERR still reads {chanerr} after a reset; the error is not \
             clearable from the channel (check DMAUNCERRSTS / reset the PCI function)"
    )]
    ErrorAfterReset { chan: u32, chanerr: ChanErr },
    #[error(
        "channel {chan}: the start (null) descriptor did not complete within {waited:?} \
             (CHANSTS {state}, CHANERR {chanerr}); check that bus mastering is enabled and the \
             ring memory is mapped for the device"
    )]
    StartFailed {
        chan: u32,
        state: ChanState,
        chanerr: ChanErr,
        waited: Duration,
    },
    #[error(
        "channel {chan} is out of service after a failed recovery ({reason}); call \
             Channel::restart() or reopen the device"
    )]
    ChannelDown {
        chan: u32,
        reason: String,
        /// The error that took the channel down.
        #[source]
        cause: Box<Error>,
    },
    #[error(
        "{in_flight} operation(s) still in flight after {waited:?}; poll longer or raise \
             the timeout"
    )]
    WaitTimeout { in_flight: u32, waited: Duration },
    #[error("DMA memory: {0}")]
    Map(#[from] MapError),
}

impl Error {
    /// True when this error leaves a channel that may still be running: a reset that did not
    /// complete (RESET never cleared) or did not reach HALTED. Buffers of the operations that
    /// were in flight must then be treated as still owned by the device.
    pub fn device_may_be_running(&self) -> bool {
        matches!(
            self,
            Error::ResetTimeout { .. } | Error::NotHaltedAfterReset { .. }
        )
    }
}

/// Why an operation could not be queued. Nothing was written to the ring.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SubmitError {
    #[error(
        "ring full: the operation needs {needed} descriptor slot(s) but {free} are free; \
             flush() and poll() to reap completions, or open the channel with a larger ring_order"
    )]
    RingFull { needed: u32, free: u32 },
    #[error("zero-length operation: the hardware rejects size 0; skip empty copies")]
    ZeroLength,
    #[error(
        "operation of {len} bytes needs {pieces} descriptors, more than the ring's {max}; \
             split it or use a larger ring_order"
    )]
    TooLong { len: u64, pieces: u64, max: u32 },
    #[error(
        "the device has no block-fill engine (DMACAPABILITY bit FILL_BLOCK 0x40 is clear); \
             fill with the CPU instead"
    )]
    FillUnsupported,
    #[error(
        "address {addr:#x}+{len} does not fit the {bits}-bit DMA address width of CB {version}; \
             map the buffer at a lower IOVA"
    )]
    AddressTooWide {
        addr: u64,
        len: u64,
        bits: u32,
        version: CbVersion,
    },
    #[error("range {off}+{len} lies outside the {region_len}-byte region; check the offsets")]
    OutOfRegion {
        off: usize,
        len: usize,
        region_len: usize,
    },
    #[error("channel {chan} is out of service ({reason}); call Channel::restart()")]
    ChannelDown {
        chan: u32,
        reason: String,
        /// The error that took the channel down.
        #[source]
        cause: Error,
    },
}

/// Why a submitted operation failed. Each operation is reported exactly once.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OpError {
    #[error(
        "the channel halted on this operation (CHANERR {chanerr}, descriptor at IOVA \
             {desc_iova:#x}); check that source and destination are mapped and sizes are valid"
    )]
    Halted { chanerr: ChanErr, desc_iova: u64 },
    #[error("aborted: an earlier operation halted the channel (CHANERR {chanerr}); resubmit it")]
    Aborted { chanerr: ChanErr },
    #[error(
        "no completion progress for {waited:?} (CHANSTS {state}): the channel hung and was \
             reset; resubmit, and raise completion_timeout if the device is just slow"
    )]
    Timeout { waited: Duration, state: ChanState },
    #[error(
        "the channel was reset before this operation completed (dropped, restarted or \
             recovering); resubmit it"
    )]
    Reset,
}
