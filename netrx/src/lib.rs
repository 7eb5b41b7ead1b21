//! netrx: AF_XDP TCP receive with an I/OAT copy engine.
pub mod copy;
pub mod rxcore;
pub mod service;
pub mod xsk;

pub mod netns;
pub mod tcp;
pub mod wire;

pub use rxcore::UmemAddr;
