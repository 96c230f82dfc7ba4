//! Preflight: what a sync would refuse that parsing the config cannot see: a storage's
//! `.ignore` file with a bad pattern, a storage root that cannot be read, a history database
//! (`log_path`) that cannot be created or written, a port that cannot be bound.
//! `check-config` runs it after [`crate::config::load`], so such a mistake shows when the
//! config is checked (by hand, or by an init script before it starts or reloads the daemon)
//! rather than at the first sync, or as a daemon that starts and dies.
//!
//! It only looks: it stats, opens `.ignore` files and the database for reading, asks the
//! kernel about permissions (`faccessat`, with the effective ids, so root and ACLs are
//! judged right), binds the port for a moment and asks whether the database is locked. It
//! never creates, writes or removes anything.
//!
//! Two things that look like problems are not:
//! - A storage root that does not exist: as for [`crate::config::load`], a disk not mounted
//!   yet is that storage's error when it is synchronized, not the node's, so the others keep
//!   synchronizing. It is logged as a warning.
//! - The port held by the running node of this very config (another process holds a lock on
//!   its database): that is what an init script's `reload` sees. It is logged as a note.

use std::ffi::CString;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::config::{Config, StorageConfig};
use crate::ignore::IgnoreMatcher;

/// Every problem a sync would refuse, one line each, naming the config key first
/// (`storages.NAME: ...`, `log_path: ...`, `port: ...`). Empty when there is none.
pub fn check(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    for storage in &config.storages {
        check_storage(storage, &mut problems);
    }
    check_log_path(&config.log_path, &mut problems);
    check_port(config, &mut problems);
    problems
}

/// The root must be a directory this process can list, and its `.ignore` must parse.
fn check_storage(storage: &StorageConfig, problems: &mut Vec<String>) {
    let key = format!("storages.{}", storage.name);
    let root = &storage.path;
    match std::fs::metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::warn!(
                "{key}: {} does not exist (a disk not mounted yet?): this storage is not \
                 synchronized until it does; the others are",
                root.display()
            );
            return;
        }
        Err(e) => {
            problems.push(format!("{key}: {}: {e}", root.display()));
            return;
        }
        Ok(meta) if !meta.is_dir() => {
            problems.push(format!("{key}: {} is not a directory", root.display()));
            return;
        }
        Ok(_) => {}
    }
    // What the scanner asks before listing the root.
    if let Err(e) = access(root, libc::R_OK | libc::X_OK) {
        problems.push(format!(
            "{key}: directory {} cannot be read: {e}",
            root.display()
        ));
        return;
    }
    if let Err(e) = IgnoreMatcher::load(root) {
        // The error names the file and, for a bad pattern, its line.
        problems.push(format!("{key}: {e}"));
    }
}

/// The history database: `Store::open` creates missing directories above it, then SQLite
/// creates the file and, next to it, its write-ahead log. So the nearest existing ancestor of
/// the database's directory must be a writable directory, and an existing database file must
/// be a writable regular file.
fn check_log_path(db: &Path, problems: &mut Vec<String>) {
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (existing, meta) = match nearest_existing(dir) {
        Ok(found) => found,
        Err((path, e)) => {
            problems.push(format!("log_path: {}: {e}", path.display()));
            return;
        }
    };
    let missing = existing != dir;
    if !meta.is_dir() {
        problems.push(if missing {
            format!(
                "log_path: directory {} cannot be created: {} is not a directory",
                dir.display(),
                existing.display()
            )
        } else {
            format!("log_path: {} is not a directory", dir.display())
        });
        return;
    }
    if let Err(e) = access(existing, libc::W_OK | libc::X_OK) {
        problems.push(if missing {
            format!(
                "log_path: directory {} does not exist and cannot be created: {} is not \
                 writable: {e}",
                dir.display(),
                existing.display()
            )
        } else {
            format!("log_path: directory {} is not writable: {e}", dir.display())
        });
        return;
    }
    if missing {
        return;
    }
    match std::fs::metadata(db) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("log_path: {}: {e}", db.display())),
        Ok(meta) if !meta.is_file() => {
            problems.push(format!("log_path: {} is not a regular file", db.display()))
        }
        Ok(_) => {
            if let Err(e) = access(db, libc::R_OK | libc::W_OK) {
                problems.push(format!("log_path: {} is not writable: {e}", db.display()));
            }
        }
    }
}

/// `path` or its nearest ancestor that exists, with its metadata (symlinks followed, as
/// `create_dir_all` follows them). A component that is a file answers ENOTDIR below it:
/// walking up reaches the file itself.
fn nearest_existing(path: &Path) -> Result<(&Path, std::fs::Metadata), (&Path, io::Error)> {
    let mut at = path;
    loop {
        match std::fs::metadata(at) {
            Ok(meta) => return Ok((at, meta)),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                match at.parent() {
                    Some(up) if !up.as_os_str().is_empty() => at = up,
                    _ => return Err((at, e)),
                }
            }
            Err(e) => return Err((at, e)),
        }
    }
}

/// The listener a sync binds, bound for a moment and dropped.
fn check_port(config: &Config, problems: &mut Vec<String>) {
    let addr = SocketAddr::new(config.listen_address, config.port);
    match TcpListener::bind(addr) {
        Ok(listener) => drop(listener),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => match database_holder(&config.log_path) {
            Some(pid) => log::info!(
                "port {} on {} is in use by the running node of this config (process {pid} \
                 holds its database {}): a reload keeps it",
                config.port,
                config.listen_address,
                config.log_path.display()
            ),
            None => problems.push(format!(
                "port: port {} on {} is in use (is a daemon already running with this \
                 config? `iron-carrier status` tells)",
                config.port, config.listen_address
            )),
        },
        Err(e) => problems.push(format!("port: cannot listen on {addr}: {e}")),
    }
}

/// The process that holds a lock on the SQLite database `db`, if one does. A running node
/// keeps its database locked for its whole life (`locking_mode = EXCLUSIVE`); SQLite's unix
/// locks are POSIX record locks on the bytes from `PENDING_BYTE` (1 GiB) on: the pending byte,
/// the reserved byte and 510 shared bytes. `F_GETLK` only asks; it takes no lock, and this
/// process holds none that closing the file could drop.
fn database_holder(db: &Path) -> Option<libc::pid_t> {
    const PENDING_BYTE: libc::off_t = 0x4000_0000;
    const LOCK_BYTES: libc::off_t = 512;
    // Not a FIFO or a device: opening one could block or act.
    if !std::fs::metadata(db).ok()?.is_file() {
        return None;
    }
    let file = std::fs::File::open(db).ok()?;
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = PENDING_BYTE;
    lock.l_len = LOCK_BYTES;
    // SAFETY: the descriptor is open for the whole call and `lock` is a valid, writable
    // `flock` that F_GETLK fills in.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    (rc == 0 && lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_pid)
}

/// Whether this process may access `path` with `mode`, by its effective ids. Mode bits alone
/// cannot tell (root, ACLs, a read-only mount), so ask the kernel.
fn access(path: &Path, mode: libc::c_int) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    crate::scanner::access(&c, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("ic-preflight-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(p.join("docs")).unwrap();
            Scratch(p)
        }

        /// Writes a config with the storage `docs` and loads it.
        fn config(&self, port: u16, log_path: &str) -> Config {
            let file = self.0.join("c.toml");
            std::fs::write(
                &file,
                format!(
                    "node_id = \"pre\"\nport = {port}\nlisten_address = \"127.0.0.1\"\n\
                     enable_service_discovery = false\nlog_path = \"{log_path}\"\n\
                     [storages]\ndocs = \"docs\"\n"
                ),
            )
            .unwrap();
            crate::config::load(&file).unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A port that was free a moment ago.
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_good_config_has_no_problem_and_nothing_is_created() {
        let s = Scratch::new("good");
        let config = s.config(free_port(), "state/deeper/ic.db");
        assert_eq!(check(&config), Vec::<String>::new());
        // The missing directories are creatable, but a check creates nothing.
        assert!(!s.0.join("state").exists());
    }

    #[test]
    fn a_bad_ignore_names_the_storage_the_file_and_the_line() {
        let s = Scratch::new("ignore");
        std::fs::write(s.0.join("docs/.ignore"), "# keep out\n*.tmp\n!keep.txt\n").unwrap();
        let config = s.config(free_port(), "ic.db");
        let problems = check(&config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let want = format!(
            "storages.docs: {}:3: ",
            config.storages[0].path.join(".ignore").display()
        );
        assert!(problems[0].starts_with(&want), "{problems:?}");
        assert!(problems[0].contains("negation"), "{problems:?}");
    }

    #[test]
    fn a_missing_storage_root_is_not_a_problem() {
        let s = Scratch::new("noroot");
        let config = s.config(free_port(), "ic.db");
        std::fs::remove_dir(s.0.join("docs")).unwrap();
        assert_eq!(check(&config), Vec::<String>::new());
    }

    #[test]
    fn log_path_below_a_file_cannot_be_created() {
        let s = Scratch::new("logfile");
        std::fs::write(s.0.join("plain"), "x").unwrap();
        let config = s.config(free_port(), "plain/sub/ic.db");
        let problems = check(&config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("log_path: directory ")
                && problems[0].ends_with("plain is not a directory"),
            "{problems:?}"
        );
    }

    #[test]
    fn log_path_that_is_no_regular_file() {
        let s = Scratch::new("fifo");
        let fifo = s.0.join("ic.db");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let config = s.config(free_port(), "ic.db");
        let problems = check(&config);
        assert_eq!(
            problems,
            vec![format!(
                "log_path: {} is not a regular file",
                config.log_path.display()
            )]
        );
    }

    #[test]
    fn a_port_in_use_is_named() {
        let s = Scratch::new("port");
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let config = s.config(port, "ic.db");
        let problems = check(&config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(&format!("port: port {port} on 127.0.0.1 is in use")),
            "{problems:?}"
        );
    }

    #[test]
    fn nearest_existing_walks_up_through_files_and_missing_dirs() {
        let s = Scratch::new("walk");
        std::fs::write(s.0.join("f"), "x").unwrap();
        let deep = s.0.join("docs/a/b");
        assert_eq!(nearest_existing(&deep).unwrap().0, s.0.join("docs"));
        let below_file = s.0.join("f/x/y");
        let (at, meta) = nearest_existing(&below_file).unwrap();
        assert_eq!(at, s.0.join("f"));
        assert!(meta.is_file());
    }
}
