//! netrxd: the receive daemon (`run`), its stats client (`stats`) and the seed's experiment in
//! one command (`demo`). See `docs/netrxd.md`.

pub mod config;
pub mod cputime;
pub mod daemon;
pub mod demo;
pub mod faults;
pub mod rx;
pub mod rx_netrx;
pub mod sender;
pub mod signals;
pub mod sink;
pub mod stats;
pub mod workers;
