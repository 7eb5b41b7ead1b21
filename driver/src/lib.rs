//! Userspace driver for Intel I/OAT (Crystal Beach DMA, CB v3.0-3.4) channels.
//!
//! The driver touches registers only through [`regs::RegisterAccess`], which has two
//! implementations: the VFIO BAR0 mapping and the software device model ([`model`]). Driver
//! logic is generic over it and never knows which one it drives.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod channel;
#[cfg(feature = "testing")]
pub mod conformance;
pub mod desc;
pub mod device;
pub mod discover;
pub mod dma;
pub mod error;
pub mod ids;
pub mod model;
pub mod regs;
pub mod ring;
pub mod vfio;

pub use channel::{Channel, ChannelConfig, ChannelRegs, ChannelStats, Completion};
pub use device::{Device, DeviceInfo, DeviceOptions};
pub use dma::{DmaBuffer, DmaMapper, DmaRegion, HugePages, IovaAllocator, MapError, RegionPin};
pub use error::{Error, OpError, OsError, SubmitError};
pub use ring::Token;
