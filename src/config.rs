//! Configuration: the TOML file turned into a validated, typed [`Config`].
//!
//! Every key of the specification is read here with its default filled in. Anything wrong —
//! an unknown key, a wrong type, an out-of-range number, a missing storage directory, a bad
//! cron expression — becomes a [`ConfigError`] that names the file, the line and the key, so
//! the program never starts half-configured. The parser keeps source spans (toml's `DeTable`)
//! instead of going through serde, which is what lets every error carry its line.
//!
//! Apart from reading the file, the hostname and stat-ing storage directories, this module does
//! no I/O; it never creates anything.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;
use zeroize::{Zeroize, Zeroizing};

use crate::cron::CronSchedule;
use crate::model::{validate_name, validate_storage_name, NodeId};

pub const DEFAULT_PORT: u16 = 25230;
pub const DEFAULT_DELAY_WATCHER_EVENTS: u64 = 4;
pub const DEFAULT_MAX_PARALLEL_TRANSFERS: u32 = 4;
/// Upper bound for `max_parallel_transfers`: each transfer holds a file and a buffer open,
/// and more than this buys nothing on the machines we target.
pub const MAX_PARALLEL_TRANSFERS_LIMIT: u32 = 64;
/// Upper bound for `delay_watcher_events` (one day), to catch unit mistakes (ms vs s).
pub const MAX_DELAY_WATCHER_EVENTS: u64 = 86_400;
/// How often a watched storage is scanned whatever its watcher saw (Syncthing's default
/// too: watchers miss changes).
pub const DEFAULT_RESCAN_INTERVAL: u64 = 3600;
/// Upper bound for `rescan_interval` (one week).
pub const MAX_RESCAN_INTERVAL: u64 = 7 * 86_400;

/// Shortest passphrase accepted, in characters: a recorded handshake lets anyone guess it
/// offline, at the KDF's cost per guess.
pub const MIN_PASSPHRASE: usize = 12;

/// Strings a user meant as `true` or `false` (`encryption = "false"` would otherwise be the
/// passphrase "false", and every connection would use it).
const SWITCH_WORDS: &[&str] = &[
    "true", "false", "yes", "no", "on", "off", "1", "0", "enabled", "disabled", "enable",
    "disable", "none",
];

fn looks_like_a_switch(s: &str) -> bool {
    let t = s.trim().to_ascii_lowercase();
    SWITCH_WORDS.contains(&t.as_str())
}

fn is_negative_switch(s: &str) -> bool {
    let t = s.trim().to_ascii_lowercase();
    ["false", "no", "off", "0", "disabled", "disable", "none"].contains(&t.as_str())
}

/// How connections are protected (the `encryption` key).
#[derive(Clone, PartialEq, Eq)]
pub enum Encryption {
    /// `false`: plain text.
    Off,
    /// `true`: keys from an ephemeral exchange; stops passive listeners, proves nothing.
    Ephemeral,
    /// A passphrase mixed into the key derivation: only nodes that know it can connect.
    /// Wiped from memory when dropped, and by [`Encryption::forget_passphrase`] once its
    /// key is derived.
    Passphrase(Zeroizing<String>),
}

impl Encryption {
    /// Wipes the passphrase's text: a running node needs only the key derived from it.
    pub fn forget_passphrase(&mut self) {
        if let Encryption::Passphrase(p) = self {
            p.zeroize();
        }
    }
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the passphrase, not even in debug output.
        match self {
            Encryption::Off => f.write_str("Off"),
            Encryption::Ephemeral => f.write_str("Ephemeral"),
            Encryption::Passphrase(_) => f.write_str("Passphrase(<hidden>)"),
        }
    }
}

/// One `[storages]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageConfig {
    pub name: String,
    /// Absolute, canonical path of the storage directory.
    pub path: PathBuf,
    /// Effective watcher switch for this storage (per-storage override or the global key).
    pub enable_watcher: bool,
    /// Effective debounce delay for this storage.
    pub delay_watcher_events: Duration,
}

/// A cron schedule together with the text it came from, for display.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub expr: String,
    pub schedule: CronSchedule,
}

/// The validated configuration, every default filled in.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file this was loaded from.
    pub source: PathBuf,
    /// Set in the config, or (`node_id_set` false) the hostname, which
    /// `identity::resolve` completes at start with this device's suffix.
    pub node_id: NodeId,
    pub node_id_set: bool,
    pub group: Option<String>,
    pub port: u16,
    /// Address the listener binds (`listen_address`, an extension of the spec's keys).
    pub listen_address: std::net::IpAddr,
    pub peers: Vec<String>,
    pub enable_file_watcher: bool,
    pub delay_watcher_events: Duration,
    /// The periodic full rescan of watched storages; `None` (`rescan_interval = 0`): never.
    pub rescan_interval: Option<Duration>,
    pub schedule_sync: Option<Schedule>,
    pub enable_service_discovery: bool,
    /// Network interfaces discovery announces and listens on; empty: every non-loopback
    /// interface with multicast and an IPv4 address.
    pub discovery_interfaces: Vec<String>,
    pub log_path: PathBuf,
    /// Where the daemon's control socket lives (`status`, `sync`); `None`: the default
    /// (see `control::candidates`).
    pub control_socket: Option<PathBuf>,
    pub encryption: Encryption,
    pub max_parallel_transfers: u32,
    /// Sorted by name.
    pub storages: Vec<StorageConfig>,
}

/// A configuration problem, located as precisely as the source allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted key path, e.g. `storages.photos.path`, when the problem belongs to a key.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        match &self.key {
            Some(key) => write!(f, ": key `{key}`: {}", self.message),
            None => write!(f, ": {}", self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The default config location, `$HOME/.config/iron-carrier/config.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    home_dir().map(|h| h.join(".config/iron-carrier/config.toml"))
}

fn default_log_path() -> Option<PathBuf> {
    home_dir().map(|h| h.join(".config/iron-carrier/iron-carrier.db"))
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The machine's hostname, used as the default `node_id`.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname NUL-terminates on
    // success when the name fits, and we search for the NUL ourselves anyway.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    // Relative paths inside the file are resolved against its folder, so anchor it first.
    let path = &std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    // The text may hold a passphrase: wiped when dropped, like the parsed one.
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: None,
        key: None,
        message: format!("cannot read config file: {e}"),
    })?);
    parse(&text, path)
}

/// Validates config `text` as if read from `file`. Relative paths in it are taken relative
/// to the directory holding `file`.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let p = Parser { text, file };
    let doc = DeTable::parse(text).map_err(|e| p.syntax_error(&e))?;
    p.config(doc.get_ref())
}

/// Error construction with line lookup; holds the source text and its file name.
struct Parser<'a> {
    text: &'a str,
    file: &'a Path,
}

type Item<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &[
    "node_id",
    "group",
    "port",
    "listen_address",
    "peers",
    "enable_file_watcher",
    "delay_watcher_events",
    "rescan_interval",
    "schedule_sync",
    "enable_service_discovery",
    "discovery_interfaces",
    "log_path",
    "control_socket",
    "encryption",
    "max_parallel_transfers",
    "storages",
];

const STORAGE_KEYS: &[&str] = &["path", "enable_watcher", "delay_watcher_events"];

impl<'a> Parser<'a> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err_at(&self, span: Option<Range<usize>>, key: Option<&str>, msg: &str) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: span.map(|s| self.line_of(s.start)),
            key: key.map(str::to_owned),
            message: msg.to_owned(),
        }
    }

    /// A TOML-level error. A duplicate key (two storages of the same name, say) is the one
    /// whose span covers the key itself, so that key is named.
    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let msg = e.message().trim();
        let key = match e.span() {
            Some(span) if msg.contains("duplicate key") => self
                .text
                .get(span)
                .map(|k| k.trim().trim_matches('"').to_owned()),
            _ => None,
        };
        if key.is_some() {
            return self.err_at(
                e.span(),
                key.as_deref(),
                "duplicate key (each key, and each storage name, may appear only once)",
            );
        }
        self.err_at(e.span(), None, &format!("invalid TOML: {msg}"))
    }

    fn err(&self, item: &Item<'_>, key: &str, msg: impl Into<String>) -> ConfigError {
        self.err_at(Some(item.span()), Some(key), &msg.into())
    }

    fn check_known(
        &self,
        table: &DeTable<'_>,
        known: &[&str],
        prefix: &str,
    ) -> Result<(), ConfigError> {
        for (k, _) in table.iter() {
            let name: &str = k.get_ref();
            if !known.contains(&name) {
                let full = format!("{prefix}{name}");
                return Err(self.err_at(
                    Some(k.span()),
                    Some(&full),
                    &format!("unknown key (known keys: {})", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn get<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t Item<'i>> {
        table.get(key)
    }

    fn bool(&self, item: &Item<'_>, key: &str) -> Result<bool, ConfigError> {
        item.get_ref()
            .as_bool()
            .ok_or_else(|| self.type_err(item, key, "a boolean (true or false)"))
    }

    fn string<'t>(&self, item: &'t Item<'_>, key: &str) -> Result<&'t str, ConfigError> {
        item.get_ref()
            .as_str()
            .ok_or_else(|| self.type_err(item, key, "a string"))
    }

    /// An integer within `min..=max`.
    fn int(&self, item: &Item<'_>, key: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
        let Some(i) = item.get_ref().as_integer() else {
            return Err(self.type_err(item, key, "an integer"));
        };
        let value = i64::from_str_radix(i.as_str(), i.radix()).ok();
        match value {
            Some(v) if v >= 0 && (v as u64) >= min && (v as u64) <= max => Ok(v as u64),
            _ => Err(self.err(
                item,
                key,
                format!("must be between {min} and {max}, got {i}"),
            )),
        }
    }

    fn type_err(&self, item: &Item<'_>, key: &str, want: &str) -> ConfigError {
        self.err(
            item,
            key,
            format!("expected {want}, found {}", item.get_ref().type_str()),
        )
    }

    fn config(&self, doc: &DeTable<'_>) -> Result<Config, ConfigError> {
        self.check_known(doc, TOP_KEYS, "")?;

        let node_id_set = Self::get(doc, "node_id").is_some();
        let node_id = match Self::get(doc, "node_id") {
            Some(item) => {
                let s = self.string(item, "node_id")?;
                NodeId::new(s).map_err(|e| self.err(item, "node_id", e.to_string()))?
            }
            None => {
                let host = hostname().ok_or_else(|| {
                    self.err_at(
                        None,
                        Some("node_id"),
                        "not set and the hostname cannot be read; set node_id",
                    )
                })?;
                NodeId::new(&host).map_err(|e| {
                    self.err_at(
                        None,
                        Some("node_id"),
                        &format!("not set, and the hostname {host:?} is not a valid node id ({e}); set node_id"),
                    )
                })?
            }
        };

        let group = match Self::get(doc, "group") {
            Some(item) => {
                let s = self.string(item, "group")?;
                validate_name(s).map_err(|e| self.err(item, "group", e.to_string()))?;
                Some(s.to_owned())
            }
            None => None,
        };

        let port = match Self::get(doc, "port") {
            Some(item) => self.int(item, "port", 1, 65535)? as u16,
            None => DEFAULT_PORT,
        };

        let listen_address = match Self::get(doc, "listen_address") {
            Some(item) => {
                let s = self.string(item, "listen_address")?;
                s.parse().map_err(|_| {
                    self.err(
                        item,
                        "listen_address",
                        format!("{s:?} is not an IP address"),
                    )
                })?
            }
            None => std::net::IpAddr::from([0, 0, 0, 0]),
        };

        let peers = match Self::get(doc, "peers") {
            Some(item) => self.peers(item)?,
            None => Vec::new(),
        };

        let enable_file_watcher = match Self::get(doc, "enable_file_watcher") {
            Some(item) => self.bool(item, "enable_file_watcher")?,
            None => true,
        };

        let delay_watcher_events = match Self::get(doc, "delay_watcher_events") {
            Some(item) => self.int(item, "delay_watcher_events", 0, MAX_DELAY_WATCHER_EVENTS)?,
            None => DEFAULT_DELAY_WATCHER_EVENTS,
        };
        let delay_watcher_events = Duration::from_secs(delay_watcher_events);

        let rescan_interval = match Self::get(doc, "rescan_interval") {
            Some(item) => self.int(item, "rescan_interval", 0, MAX_RESCAN_INTERVAL)?,
            None => DEFAULT_RESCAN_INTERVAL,
        };
        let rescan_interval = (rescan_interval > 0).then(|| Duration::from_secs(rescan_interval));

        let schedule_sync = match Self::get(doc, "schedule_sync") {
            Some(item) => {
                let expr = self.string(item, "schedule_sync")?;
                let schedule = expr.parse::<CronSchedule>().map_err(|e| {
                    self.err(
                        item,
                        "schedule_sync",
                        format!("invalid cron expression: {e}"),
                    )
                })?;
                Some(Schedule {
                    expr: expr.to_owned(),
                    schedule,
                })
            }
            None => None,
        };

        let enable_service_discovery = match Self::get(doc, "enable_service_discovery") {
            Some(item) => self.bool(item, "enable_service_discovery")?,
            None => true,
        };

        let discovery_interfaces = match Self::get(doc, "discovery_interfaces") {
            Some(item) => self.interfaces(item)?,
            None => Vec::new(),
        };

        let log_path = match Self::get(doc, "log_path") {
            Some(item) => {
                let s = self.string(item, "log_path")?;
                let p = self.path_value(item, "log_path", s)?;
                if p.is_dir() {
                    return Err(self.err(
                        item,
                        "log_path",
                        format!(
                            "{} is a directory; give the database file's path",
                            p.display()
                        ),
                    ));
                }
                p
            }
            None => default_log_path().ok_or_else(|| {
                self.err_at(
                    None,
                    Some("log_path"),
                    "not set and $HOME is not set; set log_path",
                )
            })?,
        };

        let control_socket = match Self::get(doc, "control_socket") {
            Some(item) => {
                let s = self.string(item, "control_socket")?;
                let p = self.path_value(item, "control_socket", s)?;
                // sun_path holds 108 bytes with its NUL.
                if p.as_os_str().len() > 107 {
                    return Err(self.err(
                        item,
                        "control_socket",
                        "longer than the 107 bytes a Unix socket path may have".to_owned(),
                    ));
                }
                if p.is_dir() {
                    return Err(self.err(
                        item,
                        "control_socket",
                        format!("{} is a directory; give the socket's path", p.display()),
                    ));
                }
                Some(p)
            }
            None => None,
        };

        let encryption = match Self::get(doc, "encryption") {
            Some(item) => match item.get_ref() {
                DeValue::Boolean(true) => Encryption::Ephemeral,
                DeValue::Boolean(false) => Encryption::Off,
                DeValue::String(s) if s.is_empty() => {
                    return Err(self.err(item, "encryption", "the passphrase must not be empty"))
                }
                DeValue::String(s) if looks_like_a_switch(s) => {
                    let unquoted = if is_negative_switch(s) {
                        "false"
                    } else {
                        "true"
                    };
                    return Err(self.err(
                        item,
                        "encryption",
                        format!(
                            "{s:?} is a string, not a switch: write encryption = {unquoted} \
                             without quotes (a passphrase cannot look like one)"
                        ),
                    ));
                }
                DeValue::String(s) if s.chars().count() < MIN_PASSPHRASE => {
                    return Err(self.err(
                        item,
                        "encryption",
                        format!(
                            "the passphrase is {} characters long, at least {MIN_PASSPHRASE} \
                             are needed (anyone who records a handshake can guess it offline)",
                            s.chars().count()
                        ),
                    ))
                }
                DeValue::String(s) => Encryption::Passphrase(Zeroizing::new(s.to_string())),
                _ => {
                    return Err(self.type_err(
                        item,
                        "encryption",
                        "true, false or a passphrase string",
                    ))
                }
            },
            None => Encryption::Ephemeral,
        };

        let max_parallel_transfers = match Self::get(doc, "max_parallel_transfers") {
            Some(item) => self.int(
                item,
                "max_parallel_transfers",
                1,
                u64::from(MAX_PARALLEL_TRANSFERS_LIMIT),
            )? as u32,
            None => DEFAULT_MAX_PARALLEL_TRANSFERS,
        };

        let storages = match Self::get(doc, "storages") {
            Some(item) => self.storages(item, enable_file_watcher, delay_watcher_events)?,
            None => {
                return Err(self.err_at(
                    None,
                    Some("storages"),
                    "missing: a [storages] table naming at least one directory is required",
                ))
            }
        };

        Ok(Config {
            source: self.file.to_owned(),
            node_id,
            node_id_set,
            group,
            port,
            listen_address,
            peers,
            enable_file_watcher,
            delay_watcher_events,
            rescan_interval,
            schedule_sync,
            enable_service_discovery,
            discovery_interfaces,
            log_path,
            control_socket,
            encryption,
            max_parallel_transfers,
            storages,
        })
    }

    fn peers(&self, item: &Item<'_>) -> Result<Vec<String>, ConfigError> {
        self.unique_strings(
            item,
            "peers",
            "an array of \"host:port\" strings",
            check_peer_addr,
        )
    }

    fn interfaces(&self, item: &Item<'_>) -> Result<Vec<String>, ConfigError> {
        let key = "discovery_interfaces";
        let out = self.unique_strings(
            item,
            key,
            "an array of interface names (\"eth0\")",
            check_interface_name,
        )?;
        if out.is_empty() {
            return Err(self.err(
                item,
                key,
                "empty: leave the key out to use every interface, or set \
                 enable_service_discovery = false",
            ));
        }
        Ok(out)
    }

    /// An array of strings under `key`, each passing `check`, none listed twice.
    fn unique_strings(
        &self,
        item: &Item<'_>,
        key: &str,
        expected: &str,
        check: fn(&str) -> Result<(), &'static str>,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(arr) = item.get_ref().as_array() else {
            return Err(self.type_err(item, key, expected));
        };
        let mut out: Vec<String> = Vec::new();
        for (i, el) in arr.iter().enumerate() {
            let key = format!("{key}[{i}]");
            let s = self.string(el, &key)?;
            check(s).map_err(|m| self.err(el, &key, format!("{s:?}: {m}")))?;
            if out.iter().any(|p| p == s) {
                return Err(self.err(el, &key, format!("{s:?} is listed twice")));
            }
            out.push(s.to_owned());
        }
        Ok(out)
    }

    fn storages(
        &self,
        item: &Item<'_>,
        watcher_default: bool,
        delay_default: Duration,
    ) -> Result<Vec<StorageConfig>, ConfigError> {
        let Some(table) = item.get_ref().as_table() else {
            return Err(self.type_err(item, "storages", "a table"));
        };
        if table.is_empty() {
            return Err(self.err(item, "storages", "at least one storage is required"));
        }
        let mut out: Vec<(StorageConfig, Range<usize>)> = Vec::new();
        for (k, v) in table.iter() {
            let name: &str = k.get_ref();
            let key = format!("storages.{name}");
            validate_storage_name(name).map_err(|e| {
                self.err_at(
                    Some(k.span()),
                    Some(&key),
                    &format!("invalid storage name: {e}"),
                )
            })?;
            let (path_item, path_str, enable_watcher, delay) = match v.get_ref() {
                DeValue::String(s) => (v, s.as_ref(), watcher_default, delay_default),
                DeValue::Table(t) => {
                    self.check_known(t, STORAGE_KEYS, &format!("{key}."))?;
                    let path_item = Self::get(t, "path").ok_or_else(|| {
                        self.err(
                            v,
                            &format!("{key}.path"),
                            "missing: every storage needs a path",
                        )
                    })?;
                    let path_str = self.string(path_item, &format!("{key}.path"))?;
                    let watcher = match Self::get(t, "enable_watcher") {
                        Some(w) => self.bool(w, &format!("{key}.enable_watcher"))?,
                        None => watcher_default,
                    };
                    let delay = match Self::get(t, "delay_watcher_events") {
                        Some(d) => Duration::from_secs(self.int(
                            d,
                            &format!("{key}.delay_watcher_events"),
                            0,
                            MAX_DELAY_WATCHER_EVENTS,
                        )?),
                        None => delay_default,
                    };
                    (path_item, path_str, watcher, delay)
                }
                _ => {
                    return Err(self.type_err(
                        v,
                        &key,
                        "a path string or a table { path = \"...\", enable_watcher = ... }",
                    ))
                }
            };
            let path_key = if path_item.span() == v.span() {
                key.clone()
            } else {
                format!("{key}.path")
            };
            let raw = self.path_value(path_item, &path_key, path_str)?;
            // A root that does not exist (yet) is that storage's error when it is
            // synchronized — a disk not mounted at boot must not stop the other storages —
            // but a path that exists and is no directory is a mistake in the config.
            let path = match std::fs::metadata(&raw) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => raw.clone(),
                Err(e) => {
                    return Err(self.err(
                        path_item,
                        &path_key,
                        format!("{}: {}", raw.display(), describe_io(&e)),
                    ))
                }
                Ok(meta) if !meta.is_dir() => {
                    return Err(self.err(
                        path_item,
                        &path_key,
                        format!("{} is not a directory", raw.display()),
                    ));
                }
                Ok(_) => std::fs::canonicalize(&raw).map_err(|e| {
                    self.err(
                        path_item,
                        &path_key,
                        format!("{}: {}", raw.display(), describe_io(&e)),
                    )
                })?,
            };
            for (other, _) in &out {
                if path.starts_with(&other.path) || other.path.starts_with(&path) {
                    return Err(self.err(
                        path_item,
                        &path_key,
                        format!(
                            "{} overlaps storage `{}` at {}; storages must not contain each other",
                            path.display(),
                            other.name,
                            other.path.display()
                        ),
                    ));
                }
            }
            out.push((
                StorageConfig {
                    name: name.to_owned(),
                    path,
                    enable_watcher,
                    delay_watcher_events: delay,
                },
                path_item.span(),
            ));
        }
        let mut storages: Vec<StorageConfig> = out.into_iter().map(|(s, _)| s).collect();
        storages.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(storages)
    }

    /// Expands `~` and `$HOME`, and resolves a relative path against the config file's folder.
    fn path_value(&self, item: &Item<'_>, key: &str, s: &str) -> Result<PathBuf, ConfigError> {
        if s.is_empty() {
            return Err(self.err(item, key, "must not be empty"));
        }
        let expanded: Cow<'_, str> = if s == "~" || s.starts_with("~/") || s.starts_with("$HOME") {
            let Some(home) = home_dir() else {
                return Err(self.err(item, key, "uses ~ or $HOME but $HOME is not set"));
            };
            let home = home.to_string_lossy().into_owned();
            if let Some(rest) = s.strip_prefix('~') {
                Cow::Owned(format!("{home}{rest}"))
            } else if let Some(rest) = s.strip_prefix("${HOME}") {
                Cow::Owned(format!("{home}{rest}"))
            } else {
                let rest = &s["$HOME".len()..];
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return Err(self.err(item, key, format!("cannot expand {s:?}")));
                }
                Cow::Owned(format!("{home}{rest}"))
            }
        } else {
            Cow::Borrowed(s)
        };
        let p = PathBuf::from(expanded.as_ref());
        if p.is_absolute() {
            return Ok(p);
        }
        let base = self.file.parent().unwrap_or_else(|| Path::new("."));
        Ok(base.join(p))
    }
}

/// Checks the shape of a `"host:port"` (or `"[v6]:port"`) peer address without resolving it.
pub fn check_peer_addr(s: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((h, p)) = rest.split_once("]:") else {
            return Err("expected \"[ipv6]:port\"");
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 address");
        }
        (h, p)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p),
            _ => return Err("expected \"host:port\""),
        }
    };
    if host.is_empty() {
        return Err("empty host");
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("host contains whitespace");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("port must be between 1 and 65535"),
    }
}

/// A Linux interface name: at most 15 bytes (IFNAMSIZ less its NUL), no `/`, no spaces.
pub fn check_interface_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty interface name");
    }
    if s.len() > 15 {
        return Err("interface names are at most 15 bytes");
    }
    if s == "." || s == ".." || s.contains('/') || s.contains(':') {
        return Err("not an interface name");
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("interface name contains whitespace");
    }
    Ok(())
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

impl Config {
    /// The effective settings as TOML, every default filled in (`check-config` prints this).
    /// A passphrase is never printed.
    /// `kept_id`: the id made for this device and where it is kept, when `node_id` is not
    /// set and one was made (see `identity`).
    pub fn render(&self, kept_id: Option<(NodeId, PathBuf)>) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let q = |v: &str| toml_quote(v);
        let _ = writeln!(
            s,
            "# effective configuration from {}",
            self.source.display()
        );
        match (self.node_id_set, kept_id) {
            (true, _) => {
                let _ = writeln!(s, "node_id = {}", q(self.node_id.as_str()));
            }
            (false, Some((id, file))) => {
                let _ = writeln!(
                    s,
                    "node_id = {}  # not set: this device's, kept in {}",
                    q(id.as_str()),
                    file.display()
                );
            }
            (false, None) => {
                let _ = writeln!(
                    s,
                    "# node_id: not set: {}-XXXXXX (6 hex digits) made at the first start and \
                     kept beside the database ({}.node-id)",
                    self.node_id,
                    self.log_path.display()
                );
            }
        }
        match &self.group {
            Some(g) => {
                let _ = writeln!(s, "group = {}", q(g));
            }
            None => {
                let _ = writeln!(s, "# group: not set (the default group)");
            }
        }
        let _ = writeln!(s, "port = {}", self.port);
        let _ = writeln!(
            s,
            "listen_address = {}",
            q(&self.listen_address.to_string())
        );
        let peers: Vec<String> = self.peers.iter().map(|p| q(p)).collect();
        let _ = writeln!(s, "peers = [{}]", peers.join(", "));
        let _ = writeln!(s, "enable_file_watcher = {}", self.enable_file_watcher);
        let _ = writeln!(
            s,
            "delay_watcher_events = {}",
            self.delay_watcher_events.as_secs()
        );
        let _ = writeln!(
            s,
            "rescan_interval = {}",
            self.rescan_interval.map_or(0, |d| d.as_secs())
        );
        match &self.schedule_sync {
            Some(c) => {
                let _ = writeln!(s, "schedule_sync = {}", q(&c.expr));
            }
            None => {
                let _ = writeln!(s, "# schedule_sync: not set (no periodic sync)");
            }
        }
        let _ = writeln!(
            s,
            "enable_service_discovery = {}",
            self.enable_service_discovery
        );
        if self.discovery_interfaces.is_empty() {
            let _ = writeln!(
                s,
                "# discovery_interfaces: not set (every multicast interface)"
            );
        } else {
            let names: Vec<String> = self.discovery_interfaces.iter().map(|p| q(p)).collect();
            let _ = writeln!(s, "discovery_interfaces = [{}]", names.join(", "));
        }
        let _ = writeln!(s, "log_path = {}", q(&self.log_path.to_string_lossy()));
        match &self.control_socket {
            Some(p) => {
                let _ = writeln!(s, "control_socket = {}", q(&p.to_string_lossy()));
            }
            None => {
                let _ = writeln!(
                    s,
                    "# control_socket: not set (the default place, see --help)"
                );
            }
        }
        let enc = match &self.encryption {
            Encryption::Off => "false".to_owned(),
            Encryption::Ephemeral => "true".to_owned(),
            Encryption::Passphrase(_) => "\"<passphrase hidden>\"".to_owned(),
        };
        let _ = writeln!(s, "encryption = {enc}");
        let _ = writeln!(
            s,
            "max_parallel_transfers = {}",
            self.max_parallel_transfers
        );
        let _ = writeln!(s, "\n[storages]");
        for st in &self.storages {
            let _ = writeln!(
                s,
                "{} = {{ path = {}, enable_watcher = {}, delay_watcher_events = {} }}",
                q(&st.name),
                q(&st.path.to_string_lossy()),
                st.enable_watcher,
                st.delay_watcher_events.as_secs()
            );
        }
        s
    }

    pub fn storage(&self, name: &str) -> Option<&StorageConfig> {
        self.storages.iter().find(|s| s.name == name)
    }
}

/// Quotes a string as a TOML basic string.
fn toml_quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses() {
        for ok in ["127.0.0.1:25230", "pi.local:1", "[::1]:25230", "host:65535"] {
            assert_eq!(check_peer_addr(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "host",
            ":25230",
            "host:0",
            "host:65536",
            "::1:5",
            "[::1]",
            "a b:1",
            "[zz]:1",
        ] {
            assert!(check_peer_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quoting_round_trips_through_toml() {
        for v in [
            "plain",
            "with \"quotes\"",
            "back\\slash",
            "new\nline",
            "ünï",
        ] {
            let doc = format!("k = {}", toml_quote(v));
            let t = DeTable::parse(&doc).unwrap();
            assert_eq!(t.get_ref().get("k").unwrap().get_ref().as_str(), Some(v));
        }
    }
}
