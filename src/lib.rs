//! Iron Carrier: a peer-to-peer file synchronization daemon for small Linux machines.
//!
//! The library holds everything; `main.rs` only turns the command line into a call of
//! [`cli::run`] and an exit code. See `ARCHITECTURE.md` for the code map, the threads and the
//! invariants.

pub mod cron;
pub mod ignore;
pub mod model;
pub mod scanner;
