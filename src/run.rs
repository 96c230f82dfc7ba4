//! What a run is and what it achieved: the types that the command line, the wiring in
//! `daemon.rs` and the threads share. It sits below every thread module and imports none,
//! so nothing imports upwards.

use std::fmt;

/// How the process was invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sync every storage once with the reachable peers, then exit.
    OneShot,
    /// Keep running until SIGINT or SIGTERM.
    Daemon,
}

/// What a run achieved, turned into the exit code by the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Everything asked for was done.
    pub ok: bool,
    /// One line per storage for the user (one-shot runs).
    pub summary: Vec<String>,
    /// Stopped for a reload (SIGHUP with a valid config): the caller restarts in place.
    pub reload: bool,
}

/// A failure to start (as opposed to a sync that did not complete).
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}
