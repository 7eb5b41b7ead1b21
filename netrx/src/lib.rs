//! netrx: AF_XDP TCP receive with an I/OAT copy engine.
pub mod xsk;
