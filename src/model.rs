//! Model types shared by every layer: validated relative paths, node ids, file metadata.
//!
//! Everything here is pure data with validating constructors. A `RelPath` or `NodeId` that
//! exists has passed validation, so code that receives one (from the scanner or from the
//! network) never needs to re-check it. This module does no I/O.

use std::fmt;

/// Longest relative path we accept, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single path component, in bytes (Linux `NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Longest node id, group name or storage name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Prefix of every file the daemon itself creates inside a storage (temporary files of
/// transfers in progress). A `RelPath` can never name such a file, so a peer cannot ask us to
/// write over one, and the scanner never indexes one.
pub const INTERNAL_PREFIX: &str = ".iron-carrier.";

/// Why a string is not an acceptable relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    Empty,
    TooLong,
    Absolute,
    TrailingSlash,
    EmptyComponent,
    DotComponent,
    ComponentTooLong,
    Nul,
    Internal,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            PathError::Empty => "empty path",
            PathError::TooLong => "path longer than 4096 bytes",
            PathError::Absolute => "absolute path",
            PathError::TrailingSlash => "trailing '/'",
            PathError::EmptyComponent => "empty path component ('//')",
            PathError::DotComponent => "'.' or '..' component",
            PathError::ComponentTooLong => "path component longer than 255 bytes",
            PathError::Nul => "NUL byte in path",
            PathError::Internal => "names an internal file of iron-carrier",
        };
        f.write_str(s)
    }
}

impl std::error::Error for PathError {}

/// A path relative to a storage root: `/`-separated, canonical, never escaping the root.
///
/// Invariant: non-empty, at most [`MAX_PATH_LEN`] bytes, no leading or trailing `/`, no empty,
/// `.` or `..` components, no NUL, every component at most [`MAX_COMPONENT_LEN`] bytes, and no
/// component starting with [`INTERNAL_PREFIX`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    /// Validates `s` and wraps it.
    pub fn new(s: &str) -> Result<RelPath, PathError> {
        Self::validate(s)?;
        Ok(RelPath(s.to_owned()))
    }

    /// Like [`RelPath::new`] but takes ownership, avoiding a copy.
    pub fn from_string(s: String) -> Result<RelPath, PathError> {
        Self::validate(&s)?;
        Ok(RelPath(s))
    }

    fn validate(s: &str) -> Result<(), PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if s.as_bytes().contains(&0) {
            return Err(PathError::Nul);
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if s.ends_with('/') {
            return Err(PathError::TrailingSlash);
        }
        for comp in s.split('/') {
            validate_component(comp)?;
        }
        Ok(())
    }

    /// Appends one component (a directory entry name) to this path.
    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        if name.contains('/') {
            return Err(PathError::EmptyComponent);
        }
        validate_component(name)?;
        let mut s = String::with_capacity(self.0.len() + 1 + name.len());
        s.push_str(&self.0);
        s.push('/');
        s.push_str(name);
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        Ok(RelPath(s))
    }

    /// Appends a relative path of one or more components (`a/b` joined with `c/d`).
    pub fn join_path(&self, rest: &str) -> Result<RelPath, PathError> {
        RelPath::from_string(format!("{}/{rest}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, root first.
    pub fn components(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// The parent path, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rfind('/').map(|i| RelPath(self.0[..i].to_owned()))
    }

    /// Every proper ancestor, nearest to the root first (`a/b/c` gives `a`, `a/b`).
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(move |(i, _)| &self.0[..i])
    }

    /// Is this `other` or below it?
    pub fn is_within(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(other.0.as_str())
                && self.0.as_bytes()[other.0.len()] == b'/')
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }
}

fn validate_component(comp: &str) -> Result<(), PathError> {
    if comp.is_empty() {
        return Err(PathError::EmptyComponent);
    }
    if comp == "." || comp == ".." {
        return Err(PathError::DotComponent);
    }
    if comp.len() > MAX_COMPONENT_LEN {
        return Err(PathError::ComponentTooLong);
    }
    if comp.as_bytes().contains(&0) {
        return Err(PathError::Nul);
    }
    if comp.starts_with(INTERNAL_PREFIX) {
        return Err(PathError::Internal);
    }
    Ok(())
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Why a string is not an acceptable node id, group or storage name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    NotPrintable,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("must not be empty"),
            NameError::TooLong => write!(f, "must be at most {MAX_NAME_LEN} bytes"),
            NameError::NotPrintable => f.write_str(
                "must contain only printable characters (no spaces or control characters)",
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks a node id or group name: non-empty, bounded, printable, no whitespace.
pub fn validate_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(NameError::NotPrintable);
    }
    Ok(())
}

/// Checks a storage name. Same rules as [`validate_name`] except that inner spaces are
/// allowed (`"my photos"`), since storage names are chosen by people, not machines.
pub fn validate_storage_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if s.chars()
        .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
        || s.starts_with(' ')
        || s.ends_with(' ')
    {
        return Err(NameError::NotPrintable);
    }
    Ok(())
}

/// The id of a node within its group. Validated by [`validate_name`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

impl NodeId {
    pub fn new(s: &str) -> Result<NodeId, NameError> {
        validate_name(s)?;
        Ok(NodeId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What kind of entry an index row describes. Only these two are ever synchronized;
/// symlinks, devices, sockets and FIFOs are skipped by the scanner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    File,
    Dir,
}

/// One row of a storage index: what the scanner saw for one path.
///
/// `mtime_ns` is signed nanoseconds since the Unix epoch, so files dated before 1970 are
/// represented exactly. `mode` holds only the permission bits (`0o777`); setuid, setgid and
/// sticky bits are never recorded or applied. For directories `size` and `mtime_ns` are 0:
/// a directory's mtime changes whenever its content does and means nothing to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    pub path: RelPath,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
}

/// The version of a file as a transfer sees it: its size and mtime. A plan names, for every
/// receiver, the version its path holds (`None`: nothing), and a commit goes ahead only if
/// the path still holds exactly that — this is how a local edit made during a sync is never
/// overwritten. The same type is the base a delta is computed against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    pub size: u64,
    pub mtime_ns: i64,
}

/// Permission bits we keep and apply; everything else of `st_mode` is dropped.
pub const MODE_MASK: u32 = 0o777;

impl FileMeta {
    pub fn file(path: RelPath, size: u64, mtime_ns: i64, mode: u32) -> FileMeta {
        FileMeta {
            path,
            kind: EntryKind::File,
            size,
            mtime_ns,
            mode: mode & MODE_MASK,
        }
    }

    pub fn dir(path: RelPath, mode: u32) -> FileMeta {
        FileMeta {
            path,
            kind: EntryKind::Dir,
            size: 0,
            mtime_ns: 0,
            mode: mode & MODE_MASK,
        }
    }

    /// The version of a file row; `None` for a directory.
    pub fn version(&self) -> Option<Version> {
        (self.kind == EntryKind::File).then_some(Version {
            size: self.size,
            mtime_ns: self.mtime_ns,
        })
    }

    /// True when two rows describe the same content as far as a shallow diff can tell:
    /// same kind and, for files, same size and mtime. Mode differences alone do not count.
    pub fn same_content(&self, other: &FileMeta) -> bool {
        self.kind == other.kind
            && (self.kind == EntryKind::Dir
                || (self.size == other.size && self.mtime_ns == other.mtime_ns))
    }
}

/// Converts seconds + nanoseconds (as `stat` reports them) to signed nanoseconds since the
/// epoch, saturating outside the ±292-year range an `i64` can hold.
pub fn mtime_ns_from_parts(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// Splits signed nanoseconds into `timespec` parts (nanoseconds always in `0..1e9`).
pub fn mtime_ns_to_parts(ns: i64) -> (i64, i64) {
    (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_within_is_by_components() {
        let r = |s| RelPath::new(s).unwrap();
        assert!(r("d").is_within(&r("d")));
        assert!(r("d/e/f").is_within(&r("d")));
        assert!(r("d/e/f").is_within(&r("d/e")));
        assert!(!r("dx").is_within(&r("d")));
        assert!(!r("d-e/f").is_within(&r("d")));
        assert!(!r("d").is_within(&r("d/e")));
    }

    #[test]
    fn relpath_accepts_and_rejects_table() {
        let long_comp = "a".repeat(256);
        let ok_comp = "a".repeat(255);
        let too_long: String = std::iter::repeat_n("abcdefg", 600)
            .collect::<Vec<_>>()
            .join("/");
        let cases: &[(&str, Result<(), PathError>)] = &[
            ("a", Ok(())),
            ("a/b/c.txt", Ok(())),
            ("dir with space/file name", Ok(())),
            ("ünïcödé/日本語.txt", Ok(())),
            (".hidden", Ok(())),
            ("..hidden", Ok(())),
            ("a/...", Ok(())),
            ("a\\b", Ok(())),
            (&ok_comp, Ok(())),
            ("", Err(PathError::Empty)),
            ("/etc", Err(PathError::Absolute)),
            ("/etc/passwd", Err(PathError::Absolute)),
            ("..", Err(PathError::DotComponent)),
            ("../x", Err(PathError::DotComponent)),
            ("a/../b", Err(PathError::DotComponent)),
            ("a/..", Err(PathError::DotComponent)),
            (".", Err(PathError::DotComponent)),
            ("./a", Err(PathError::DotComponent)),
            ("a/./b", Err(PathError::DotComponent)),
            ("a//b", Err(PathError::EmptyComponent)),
            ("a/", Err(PathError::TrailingSlash)),
            ("a\0b", Err(PathError::Nul)),
            (&long_comp, Err(PathError::ComponentTooLong)),
            (&too_long, Err(PathError::TooLong)),
            (".iron-carrier.tmp.1", Err(PathError::Internal)),
            ("a/.iron-carrier.tmp.1", Err(PathError::Internal)),
        ];
        for (input, want) in cases {
            let got = RelPath::new(input).map(|_| ());
            assert_eq!(&got, want, "input {input:?}");
        }
    }

    #[test]
    fn relpath_helpers() {
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.file_name(), "c");
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.ancestors().collect::<Vec<_>>(), vec!["a", "a/b"]);
        assert_eq!(p.depth(), 3);
        assert!(RelPath::new("a").unwrap().parent().is_none());
        assert_eq!(p.join("d").unwrap().as_str(), "a/b/c/d");
        assert!(p.join("..").is_err());
        assert!(p.join("x/y").is_err());
    }

    #[test]
    fn names_are_validated() {
        assert!(NodeId::new("pi-zero.local").is_ok());
        assert_eq!(NodeId::new("").unwrap_err(), NameError::Empty);
        assert_eq!(NodeId::new("a b").unwrap_err(), NameError::NotPrintable);
        assert_eq!(NodeId::new("a\nb").unwrap_err(), NameError::NotPrintable);
        assert_eq!(
            NodeId::new(&"x".repeat(65)).unwrap_err(),
            NameError::TooLong
        );
        assert!(validate_storage_name("my photos").is_ok());
        assert!(validate_storage_name(" lead").is_err());
        assert!(validate_storage_name("tab\there").is_err());
    }

    #[test]
    fn mtime_parts_round_trip_including_before_1970() {
        for ns in [0i64, 1, -1, 1_500_000_000_123_456_789, -86_400_000_000_001] {
            let (s, n) = mtime_ns_to_parts(ns);
            assert!((0..1_000_000_000).contains(&n));
            assert_eq!(mtime_ns_from_parts(s, n), ns);
        }
        assert_eq!(mtime_ns_from_parts(i64::MAX, 0), i64::MAX);
    }
}
