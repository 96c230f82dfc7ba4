//! Iron Carrier: a peer-to-peer file synchronization daemon for small Linux machines.
//!
//! The library holds everything; `main.rs` only turns the command line into a call of
//! [`cli::run`] and an exit code. See `ARCHITECTURE.md` for the code map, the threads and the
//! invariants.

pub mod cli;
pub mod config;
pub mod control;
pub mod cron;
pub mod daemon;
pub mod debounce;
pub mod delta;
pub mod fsops;
pub mod history;
pub mod identity;
pub mod ignore;
pub mod logger;
pub mod mdns;
pub mod mem;
pub mod model;
pub mod net;
pub mod preflight;
pub mod progress;
pub mod proto;
pub mod run;
pub mod scanner;
pub mod status;
pub mod store;
pub mod sync;
pub mod watch;
