//! Start-up and ordered shutdown: the one place that creates the channels, spawns the named
//! threads and joins them.
//!
//! Thread modules never import each other; they only know the message types. This module
//! wires them together, waits for a signal (daemon) or for the sync thread to finish
//! (one-shot), then stops them in order: `sync` first, so it can finish or abandon what it
//! is doing, then `net`, then the signal thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, select, unbounded, Receiver};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{Config, Encryption};
use crate::control;
use crate::mdns::{self, handle::MdnsOptions};
use crate::net::{
    self, handle::ControlOptions, handle::LinkConfig, handle::LinkMode, handle::LocalInfo,
    handle::NetCmd, handle::NetOptions,
};
use crate::run::{Mode, Outcome, StartError};
use crate::status::{Board, NodeInfo, StorageStatus};
use crate::sync::{self, SyncCtl};
use crate::watch::{
    self,
    handle::{WatchOptions, WatchedStorage},
};

/// How links are protected. The passphrase is stretched here, once per process (about 1 s
/// on a Pi Zero); its working memory is freed before any thread starts.
fn link_config(config: &Config) -> Result<LinkConfig, StartError> {
    let group = config.group.as_deref();
    let made = match &config.encryption {
        Encryption::Off => {
            log::warn!("encryption = false: connections are plain text, readable and alterable by anyone on the network");
            LinkConfig::new(LinkMode::Plain, group, None)
        }
        Encryption::Ephemeral => {
            log::info!(
                "encryption = true without a passphrase: traffic is encrypted against passive \
                 listeners, but any node can connect; set a passphrase to keep strangers out"
            );
            LinkConfig::new(LinkMode::Ephemeral, group, None)
        }
        Encryption::Passphrase(p) => LinkConfig::new(LinkMode::Passphrase, group, Some(p)),
    };
    made.map_err(|e| StartError(format!("cannot set up encryption: {e}")))
}

/// What the node says about itself in `status`.
fn node_info(config: &Config) -> NodeInfo {
    NodeInfo {
        id: config.node_id.clone(),
        group: config.group.clone(),
        version: env!("CARGO_PKG_VERSION"),
        protocol: crate::proto::PROTOCOL_VERSION,
        started: std::time::SystemTime::now(),
        listen: Some(SocketAddr::new(config.listen_address, config.port)),
        encryption: match config.encryption {
            Encryption::Off => "off",
            Encryption::Ephemeral => "ephemeral",
            Encryption::Passphrase(_) => "passphrase",
        },
        config: config.source.clone(),
    }
}

/// The control socket of a daemon, bound before any thread starts so that a second daemon
/// of the same config stops here with a clear message. A one-shot run serves none, but
/// refuses to run beside a daemon of its config: the daemon already synchronizes, and
/// `iron-carrier sync` asks it to do so now.
fn control_socket(
    config: &Config,
    mode: Mode,
    board: &Board,
) -> Result<Option<ControlOptions>, StartError> {
    let candidates = control::candidates(config);
    if mode == Mode::OneShot {
        if control::connect(&candidates).is_ok() {
            return Err(StartError(
                "a daemon is running with this configuration: ask it to synchronize now with \
                 `iron-carrier sync` (add --wait to wait for the result)"
                    .into(),
            ));
        }
        return Ok(None);
    }
    match control::bind(&candidates) {
        Ok((listener, path)) => {
            log::info!("control socket at {}", path.display());
            Ok(Some(ControlOptions {
                listener,
                path,
                board: board.clone(),
                info: node_info(config),
            }))
        }
        Err(e @ control::BindError::Running(_)) => Err(StartError(e.to_string())),
        // Status is a convenience: a daemon without it still synchronizes.
        Err(e) => {
            log::warn!("{e}; `iron-carrier status` and `sync` will not reach this daemon");
            Ok(None)
        }
    }
}

/// What `net` needs of the config (it never reads the config itself).
fn net_options(
    config: &Config,
    mode: Mode,
    control: Option<ControlOptions>,
) -> Result<NetOptions, StartError> {
    Ok(NetOptions {
        local: LocalInfo {
            node_id: config.node_id.clone(),
            group: config.group.clone(),
            listen_port: config.port,
            storages: config.storages.iter().map(|s| s.name.clone()).collect(),
        },
        listen: Some(SocketAddr::new(config.listen_address, config.port)),
        peers: config.peers.clone(),
        redial_forever: mode == Mode::Daemon,
        link: Arc::new(link_config(config)?),
        control,
    })
}

/// What `watch` needs of the config: the storages it watches (daemons only, each storage's
/// `enable_watcher`), or `None` if there are none.
fn watch_options(config: &Config, mode: Mode) -> Option<WatchOptions> {
    if mode != Mode::Daemon {
        return None;
    }
    let storages: Vec<WatchedStorage> = config
        .storages
        .iter()
        .enumerate()
        .filter(|(_, s)| s.enable_watcher)
        .map(|(index, s)| WatchedStorage {
            index,
            name: s.name.clone(),
            root: s.path.clone(),
            delay: s.delay_watcher_events,
        })
        .collect();
    if storages.is_empty() {
        return None;
    }
    Some(WatchOptions {
        storages,
        total_storages: config.storages.len(),
        rescan: config.rescan_interval,
        exclude: sync::db_paths(&config.log_path),
    })
}

/// What `mdns` needs of the config, or `None` with discovery off.
fn mdns_options(config: &Config) -> Option<MdnsOptions> {
    if !config.enable_service_discovery {
        return None;
    }
    if config.listen_address.is_loopback() {
        log::warn!(
            "enable_service_discovery: listen_address {} is loopback, where no peer can dial \
             this node; discovery is off",
            config.listen_address
        );
        return None;
    }
    Some(MdnsOptions {
        node_id: config.node_id.clone(),
        group_tag: net::link::group_tag(config.group.as_deref()),
        port: config.port,
        listen: config.listen_address,
        interfaces: config.discovery_interfaces.clone(),
    })
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, StartError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|e| StartError(format!("cannot spawn thread {name}: {e}")))
}

/// Runs the node until it is done (one-shot) or signalled (daemon).
pub fn run(mut config: Config, mode: Mode) -> Result<Outcome, StartError> {
    if !config.node_id_set {
        config.node_id =
            crate::identity::resolve(&config.node_id, &config.log_path).map_err(StartError)?;
    }
    // Signals first: a SIGTERM that arrives while we start must still stop us cleanly.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
    let signal_handle = signals.handle();
    let (signal_tx, signal_rx) = bounded::<i32>(4);
    let signal_thread = spawn("signals", move || {
        for sig in signals.forever() {
            if signal_tx.send(sig).is_err() {
                break;
            }
        }
    })?;

    let board = Board::new(
        config
            .storages
            .iter()
            .map(|s| StorageStatus::new(s.name.clone(), s.path.clone()))
            .collect(),
    );
    let control = control_socket(&config, mode, &board)?;
    let net_opts = net_options(&config, mode, control)?;
    // The key is derived: nothing needs the passphrase's text any more (a reload reads the
    // file again), so it is not kept in memory for the life of the process.
    config.encryption.forget_passphrase();
    let (net_event_tx, net_event_rx) = unbounded();
    let (net_thread, net_handle) = net::spawn(net_opts, net_event_tx)?;

    // The watcher starts before `sync` so that no change between the two is missed; its
    // hints wait in their flags until `sync` reads them.
    let (watch_thread, watch_handle, hints) = match watch_options(&config, mode) {
        Some(opts) => {
            let (tx, rx) = watch::handle::hints(opts.total_storages);
            match watch::spawn(opts, tx) {
                Ok((t, h)) => (Some(t), Some(h), Some(rx)),
                Err(e) => {
                    net_handle.shutdown();
                    let _ = net_thread.join();
                    signal_handle.close();
                    let _ = signal_thread.join();
                    return Err(e);
                }
            }
        }
        None => (None, None, None),
    };
    // Discovery hands what it hears straight to `net`; it starts after `net` so that a peer
    // announced at once has somewhere to go, and never fails the start.
    let (mdns_thread, mdns_handle) = match mdns_options(&config) {
        Some(opts) => match mdns::spawn(opts, net_handle.clone()) {
            Ok((t, h)) => (Some(t), Some(h)),
            Err(e) => {
                log::warn!("discovery is off: {e}");
                (None, None)
            }
        },
        None => (None, None),
    };
    let stop_mdns = move || {
        if let Some(h) = &mdns_handle {
            h.shutdown();
        }
        if let Some(t) = mdns_thread {
            let _ = t.join();
        }
    };

    let stop_watch = move || {
        if let Some(h) = &watch_handle {
            h.shutdown();
        }
        if let Some(t) = watch_thread {
            let _ = t.join();
        }
    };

    let (ctl_tx, ctl_rx) = unbounded();
    let (done_tx, done_rx) = bounded::<Outcome>(1);
    let (ready_tx, ready_rx) = bounded::<Result<(), String>>(1);
    let sync_net = net_handle.clone();
    let sync_config = config.clone();
    let sync_board = board.clone();
    let sync_thread = spawn("sync", move || {
        sync::run(
            sync_config,
            mode,
            sync_net,
            sync::Inputs {
                net_events: net_event_rx,
                ctl: ctl_rx,
                hints,
                board: sync_board,
            },
            ready_tx,
            done_tx,
        )
    })?;
    // The history database and the storages open on the sync thread (only it touches
    // them); a failure there is a failure to start.
    let started = ready_rx
        .recv()
        .unwrap_or_else(|_| Err("the sync thread stopped while starting".into()));
    if let Err(e) = started {
        stop_mdns();
        stop_watch();
        let _ = ctl_tx.send(SyncCtl::Shutdown);
        let _ = sync_thread.join();
        net_handle.shutdown();
        let _ = net_thread.join();
        signal_handle.close();
        let _ = signal_thread.join();
        return Err(StartError(e));
    }
    // Only now: a crowd connecting while the database opened could take every descriptor
    // and make the start fail (it did, under CI's load, in tests/limits.rs).
    net_handle.send(NetCmd::Accept);

    log::info!(
        "node {} started ({}), {} storage(s)",
        config.node_id,
        match mode {
            Mode::OneShot => "one-shot",
            Mode::Daemon => "daemon",
        },
        config.storages.len()
    );

    let stop = wait(&signal_rx, &done_rx, &config, mode, &board);

    // Ordered shutdown: discovery (its goodbyes go out while we still answer), the watcher
    // (it only produces hints), then sync (it may still be talking through net), then net.
    stop_mdns();
    stop_watch();
    let _ = ctl_tx.send(SyncCtl::Shutdown);
    let sync_outcome = sync_thread.join();
    net_handle.shutdown();
    let net_result = net_thread.join();
    signal_handle.close();
    let _ = signal_thread.join();

    if sync_outcome.is_err() || net_result.is_err() {
        return Err(StartError("a worker thread panicked".into()));
    }
    let outcome = match stop {
        Stop::Done(o) => o,
        // Stopped by a signal: a daemon stopping on request has done its job; a one-shot
        // run interrupted before the end has not.
        Stop::Signal if mode == Mode::Daemon => Outcome::Stopped,
        Stop::Signal => Outcome::Interrupted,
        Stop::Reload => Outcome::Reload,
    };
    log::info!("stopped");
    Ok(outcome)
}

enum Stop {
    Signal,
    Reload,
    Done(Outcome),
}

/// Blocks until SIGINT/SIGTERM, a reload (SIGHUP with a valid config, daemons only), or the
/// sync thread's outcome. A SIGHUP with an invalid config is reported and changes nothing.
///
/// Meanwhile a one-shot run shows its progress (unless `-q`: `progress::enabled`), read
/// from `board` every 100 ms; before returning, the display is finished (final states drawn,
/// live lines erased), so the shutdown's log lines and the summary come after it. A daemon
/// never draws.
fn wait(
    signal_rx: &Receiver<i32>,
    done_rx: &Receiver<Outcome>,
    config: &Config,
    mode: Mode,
    board: &Board,
) -> Stop {
    let mut display = (mode == Mode::OneShot && crate::progress::enabled())
        .then(crate::progress::Display::stderr);
    let ticks = match display {
        Some(_) => crossbeam_channel::tick(std::time::Duration::from_millis(100)),
        None => crossbeam_channel::never(),
    };
    let stop = 'wait: loop {
        select! {
            recv(signal_rx) -> sig => match sig {
                Ok(SIGHUP) if mode == Mode::Daemon => {
                    match crate::config::load(&config.source) {
                        Ok(_) => {
                            log::info!("SIGHUP: the configuration is valid; reloading");
                            break 'wait Stop::Reload;
                        }
                        Err(e) => log::error!("SIGHUP: not reloading, keeping the running configuration: {e}"),
                    }
                }
                Ok(SIGHUP) => log::info!("SIGHUP ignored: a one-shot run has nothing to reload"),
                Ok(sig) => {
                    log::info!("signal {sig} received, shutting down");
                    break 'wait Stop::Signal;
                }
                Err(_) => break 'wait Stop::Signal,
            },
            recv(done_rx) -> outcome => break 'wait match outcome {
                Ok(o) => Stop::Done(o),
                Err(_) => Stop::Signal,
            },
            recv(ticks) -> _ => {
                if let Some(d) = display.as_mut() {
                    d.tick(&board.snapshot(), std::time::Instant::now());
                }
            }
        }
    };
    if let Some(d) = display.as_mut() {
        d.finish(&board.snapshot(), std::time::Instant::now());
    }
    stop
}
