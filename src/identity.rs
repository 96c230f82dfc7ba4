//! The default node id, unique per device without configuration.
//!
//! With no `node_id` in the config, a node is called by its hostname, a dash and six hex
//! digits made at its first start and kept beside its database (`<log_path>.node-id`):
//! every Pi flashed from one image has the same hostname, and two nodes of one name refuse
//! each other. The file keeps the id across restarts, reloads and upgrades. A database made
//! before this file existed, when the default was the hostname alone, keeps that name: its
//! history and its peers know the node by it.
//!
//! Written once, like every file: to a temporary file, synced, renamed, the folder synced.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::model::{NodeId, MAX_NAME_LEN};

/// Hex digits of the suffix: 16.7 million per hostname.
const SUFFIX_LEN: usize = 6;

/// Where a node's default id is kept: beside its database.
pub fn id_file(log_path: &Path) -> PathBuf {
    let mut s = log_path.as_os_str().to_owned();
    s.push(".node-id");
    PathBuf::from(s)
}

/// The id kept for the database at `log_path`, if there is one (nothing is written).
pub fn kept(log_path: &Path) -> Option<NodeId> {
    read(&id_file(log_path)).ok().flatten()
}

/// The node's id when the config does not set it (`host` is the hostname): the id kept
/// beside the database at `log_path`, or one made now (and kept). Called once at start,
/// before anything uses the id.
pub fn resolve(host: &NodeId, log_path: &Path) -> Result<NodeId, String> {
    let file = id_file(log_path);
    let kept = read(&file).map_err(|e| format!("node id: cannot read {}: {e}", file.display()))?;
    if let Some(id) = kept {
        return Ok(id);
    }
    let id = if log_path.exists() {
        host.clone()
    } else {
        suffixed(host.as_str(), &random_hex())
            .map_err(|e| format!("node id: {e}; set node_id in the config"))?
    };
    write(&file, &id).map_err(|e| {
        format!(
            "node id: cannot keep the generated id in {} ({e}); set node_id in the config",
            file.display()
        )
    })?;
    log::info!(
        "node id {id}: made for this device (no node_id in the config), kept in {}",
        file.display()
    );
    Ok(id)
}

/// `host-SUFFIX`, the hostname cut (at a character boundary) so that it fits.
fn suffixed(host: &str, suffix: &str) -> Result<NodeId, String> {
    let room = MAX_NAME_LEN - 1 - suffix.len();
    let mut end = host.len().min(room);
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    let name = format!("{}-{suffix}", &host[..end]);
    NodeId::new(&name).map_err(|e| format!("{name:?} is not a valid node id ({e})"))
}

fn random_hex() -> String {
    let mut b = [0u8; SUFFIX_LEN / 2];
    let from_kernel = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if from_kernel.is_err() {
        // No /dev/urandom (a very bare system): the store's source, time and pid mixed in.
        let r = crate::store::random_id().to_le_bytes();
        b.copy_from_slice(&r[..SUFFIX_LEN / 2]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The id in `file`: `None` if there is no file.
fn read(file: &Path) -> io::Result<Option<NodeId>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    NodeId::new(text.trim())
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not a node id: {e}")))
}

fn write(file: &Path, id: &NodeId) -> io::Result<()> {
    let dir = match file.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_owned(),
        None => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{id}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    std::fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suffix_fits_a_long_hostname() {
        let host = "h".repeat(64);
        let id = suffixed(&host, "a1b2c3").unwrap();
        assert_eq!(id.as_str().len(), MAX_NAME_LEN);
        assert!(id.as_str().ends_with("-a1b2c3"));
        let id = suffixed("raspberrypi", "0f0f0f").unwrap();
        assert_eq!(id.as_str(), "raspberrypi-0f0f0f");
        // Cut at a character boundary.
        let id = suffixed(&"é".repeat(40), "abcdef").unwrap();
        assert!(id.as_str().len() <= MAX_NAME_LEN);
    }

    #[test]
    fn suffixes_are_hex_and_differ() {
        let a = random_hex();
        assert_eq!(a.len(), SUFFIX_LEN);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert!((0..8).any(|_| random_hex() != a));
    }

    #[test]
    fn an_id_is_kept_and_read_back() {
        let dir = std::env::temp_dir().join(format!("ic-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("sub/ic.db");
        assert_eq!(kept(&db), None);
        let id = NodeId::new("pi-123abc").unwrap();
        write(&id_file(&db), &id).unwrap();
        assert_eq!(kept(&db), Some(id));
        std::fs::write(id_file(&db), "not an id\n").unwrap();
        assert!(read(&id_file(&db)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
