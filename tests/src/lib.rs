//! netrx-tests: harness for end-to-end and hardware-in-loop tests.
//!
//! - [`flood`]: the hostile peers of `netrx-flood` (spoofed SYN, out-of-order and idle floods)
//!   as a sans-IO state machine.
//! - [`hashq`]: an inline reader (hashing every stream on the poller thread) over the same
//!   receive core and AF_XDP shell as the service.
//! - [`netns`]: private network namespaces, veth pairs, two- and three-host topologies, and the
//!   root/CI guard every privileged test starts with.
//! - [`relay`]: the impairment relay (a netem stand-in): loss, duplication, reordering,
//!   corruption, delay/jitter and rate limiting of Ethernet frames between two interfaces.
//! - [`stream`]: the seeded kernel TCP sender (SHA-256 of what it sent) and the iperf 2 client.
//!
//! See `docs/testing.md` for the test tiers and how to use both.

pub mod flood;
pub mod hashq;
pub mod netns;
pub mod relay;
pub mod stream;
