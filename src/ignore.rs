//! `.ignore` patterns: which paths of a storage are never indexed, sent or accepted.
//!
//! A storage may hold a file named `.ignore` at its root with one glob pattern per line.
//! This module parses that file and answers "is this path ignored?". It only reads the
//! `.ignore` file itself; it never walks the storage, never touches other files and never
//! decides what to do with an ignored path (the scanner skips it, the receiver refuses it).
//!
//! # Syntax and semantics (gitignore-like, a subset)
//!
//! - Surrounding whitespace of each line is trimmed; blank lines and lines starting with `#`
//!   are skipped.
//! - A pattern without a `/` (other than a trailing one) matches the entry's *name* at any
//!   depth: `*.tmp` ignores `a.tmp` and `x/y/a.tmp`; `node_modules` ignores every entry of
//!   that name.
//! - A pattern containing a `/` is anchored at the storage root and matches the whole
//!   relative path: `build/out` ignores `build/out` only, not `x/build/out`. A leading `/`
//!   only anchors and is stripped: `/cache` ignores `cache` but not `x/cache`.
//! - A trailing `/` makes the pattern match directories only: `tmp/` ignores the directory
//!   `tmp` but not a file named `tmp`.
//! - `*`, `?` and `[...]` never match a `/`; `**` does (`docs/**/*.pdf`, `**/target`).
//!   `\` escapes the next character.
//! - When a directory is ignored, everything below it is ignored too: [`IgnoreMatcher::is_ignored`]
//!   checks every ancestor, and the scanner does not descend into ignored directories.
//! - Negation (`!pattern`) is not supported; a line starting with `!` is rejected rather than
//!   silently read as a literal name, so nobody believes they re-included something. Write
//!   `\!name` for a name that really starts with `!`.
//! - The root `.ignore` file itself is never ignored, whatever the patterns say, so the rules
//!   always travel to peers along with the data.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::model::RelPath;

/// Name of the pattern file at the root of a storage.
pub const IGNORE_FILE: &str = ".ignore";

/// A `.ignore` file that cannot be read or contains an invalid pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreError {
    /// The `.ignore` file (or the name given to [`IgnoreMatcher::parse`]).
    pub file: PathBuf,
    /// 1-based line of the offending pattern; `None` when the file as a whole is the problem.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for IgnoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for IgnoreError {}

/// The compiled patterns of one storage's `.ignore` file.
///
/// Patterns are split into four sets by (name vs anchored path) x (any kind vs directories
/// only), so a query is at most four set lookups and never allocates.
#[derive(Debug, Clone, Default)]
pub struct IgnoreMatcher {
    names: GlobSet,
    dir_names: GlobSet,
    paths: GlobSet,
    dir_paths: GlobSet,
    count: usize,
}

impl IgnoreMatcher {
    /// A matcher that ignores nothing (no `.ignore` file).
    pub fn empty() -> IgnoreMatcher {
        IgnoreMatcher::default()
    }

    /// Parses the text of a `.ignore` file. `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<IgnoreMatcher, IgnoreError> {
        let mut names = GlobSetBuilder::new();
        let mut dir_names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let mut dir_paths = GlobSetBuilder::new();
        let mut count = 0;

        for (idx, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| IgnoreError {
                file: file.to_path_buf(),
                line: Some(idx + 1),
                message,
            };
            if line.starts_with('!') {
                return Err(err(format!(
                    "invalid pattern {line:?}: negation ('!') is not supported \
                     (write \\! for a name starting with '!')"
                )));
            }
            let body = line.trim_end_matches('/');
            let dir_only = body.len() != line.len();
            let anchored = body.contains('/');
            let body = body.trim_start_matches('/');
            if body.is_empty() {
                return Err(err(format!("invalid pattern {line:?}: matches nothing")));
            }
            let glob = GlobBuilder::new(body)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| err(format!("invalid pattern {line:?}: {}", e.kind())))?;
            let set = match (anchored, dir_only) {
                (false, false) => &mut names,
                (false, true) => &mut dir_names,
                (true, false) => &mut paths,
                (true, true) => &mut dir_paths,
            };
            set.add(glob);
            count += 1;
        }

        let build = |b: GlobSetBuilder| {
            b.build().map_err(|e| IgnoreError {
                file: file.to_path_buf(),
                line: None,
                message: format!("cannot compile patterns: {e}"),
            })
        };
        Ok(IgnoreMatcher {
            names: build(names)?,
            dir_names: build(dir_names)?,
            paths: build(paths)?,
            dir_paths: build(dir_paths)?,
            count,
        })
    }

    /// Reads and parses `<storage_root>/.ignore`. A missing file gives an empty matcher; a
    /// file that exists but cannot be read (permissions, not UTF-8, a symlink, a directory)
    /// is an error, because silently ignoring nothing could sync what the user meant to keep
    /// private.
    pub fn load(storage_root: &Path) -> Result<IgnoreMatcher, IgnoreError> {
        let file = storage_root.join(IGNORE_FILE);
        let fail = |message: String| IgnoreError {
            file: file.clone(),
            line: None,
            message,
        };
        // O_NOFOLLOW: the scanner never follows symlinks, so a symlinked `.ignore` is not
        // indexed nor sent to peers; honouring rules that do not travel would make peers
        // disagree about what is synchronized.
        let mut f = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&file)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IgnoreMatcher::empty()),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(fail("is a symlink; it must be a regular file".to_owned()))
            }
            Err(e) => return Err(fail(format!("cannot open: {e}"))),
        };
        let meta = f
            .metadata()
            .map_err(|e| fail(format!("cannot stat: {e}")))?;
        if !meta.is_file() {
            return Err(fail("is not a regular file".to_owned()));
        }
        let mut text = String::new();
        f.read_to_string(&mut text)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        IgnoreMatcher::parse(&text, &file)
    }

    /// Number of patterns (comments and blank lines excluded).
    pub fn patterns(&self) -> usize {
        self.count
    }

    /// True when `path` or any of its ancestor directories is ignored. `is_dir` tells
    /// whether `path` itself is a directory (ancestors always are). Checking ancestors lets
    /// a receiver ask about a deep path directly, without walking down to it.
    pub fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        if self.count == 0 {
            return false;
        }
        path.ancestors().any(|a| self.matches(a, true)) || self.matches_entry(path, is_dir)
    }

    /// Like [`IgnoreMatcher::is_ignored`] but checks only `path` itself, for a walker that
    /// never descends into ignored directories and so already knows the ancestors are fine.
    pub(crate) fn matches_entry(&self, path: &RelPath, is_dir: bool) -> bool {
        if self.count == 0 || (!is_dir && path.as_str() == IGNORE_FILE) {
            return false;
        }
        self.matches(path.as_str(), is_dir)
    }

    fn matches(&self, path: &str, is_dir: bool) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        let name_c = Candidate::new(name);
        let path_c = Candidate::new(path);
        self.names.is_match_candidate(&name_c)
            || self.paths.is_match_candidate(&path_c)
            || (is_dir
                && (self.dir_names.is_match_candidate(&name_c)
                    || self.dir_paths.is_match_candidate(&path_c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(text: &str) -> IgnoreMatcher {
        IgnoreMatcher::parse(text, Path::new("/srv/docs/.ignore")).unwrap()
    }

    #[test]
    fn rules_table() {
        // (patterns, path, is_dir, expected)
        let cases: &[(&str, &str, bool, bool)] = &[
            // Name patterns match at any depth, files and dirs alike.
            ("*.tmp", "a.tmp", false, true),
            ("*.tmp", "x/y/a.tmp", false, true),
            ("*.tmp", "x/y/a.tmp", true, true),
            ("*.tmp", "a.tmpx", false, false),
            ("node_modules", "node_modules", true, true),
            ("node_modules", "web/node_modules", true, true),
            (
                "node_modules",
                "web/node_modules/react/index.js",
                false,
                true,
            ),
            ("node_modules", "web/node_modules_old", true, false),
            ("?.log", "dir/a.log", false, true),
            ("?.log", "dir/ab.log", false, false),
            // Patterns with a '/' are anchored at the root.
            ("build/out", "build/out", false, true),
            ("build/out", "x/build/out", false, false),
            ("build/out", "build/out/deep/file", false, true),
            ("/cache", "cache", true, true),
            ("/cache", "cache/x", false, true),
            ("/cache", "sub/cache", true, false),
            // Trailing '/' matches directories only.
            ("tmp/", "tmp", true, true),
            ("tmp/", "tmp", false, false),
            ("tmp/", "a/tmp", true, true),
            ("tmp/", "a/tmp/file", false, true),
            ("/logs/", "logs", true, true),
            ("/logs/", "logs", false, false),
            ("/logs/", "a/logs", true, false),
            ("a/b/", "a/b", true, true),
            ("a/b/", "a/b", false, false),
            // '*' and '?' never cross '/', '**' does.
            ("docs/*.pdf", "docs/a.pdf", false, true),
            ("docs/*.pdf", "docs/sub/a.pdf", false, false),
            ("docs/?/x", "docs/a/x", false, true),
            ("a/b?c", "a/b/c", false, false),
            ("a/*/c", "a/x/y/c", false, false),
            ("docs/**/*.pdf", "docs/sub/deeper/a.pdf", false, true),
            ("docs/**/*.pdf", "docs/a.pdf", false, true),
            ("**/target", "target", true, true),
            ("**/target", "a/b/target", true, true),
            ("a/**", "a/x/y", false, true),
            ("a/**", "a", true, false),
            // Escapes.
            ("\\!important", "!important", false, true),
            ("\\*", "*", false, true),
            ("\\*", "x", false, false),
            // Comments, blank lines and whitespace.
            ("# *.txt\n\n   \n", "a.txt", false, false),
            ("  *.txt  \n", "a.txt", false, true),
            ("# comment\r\n*.txt\r\n", "a.txt", false, true),
            // The root .ignore is never ignored, a nested one is an ordinary file.
            (".*", ".ignore", false, false),
            ("*", ".ignore", false, false),
            (".*", "sub/.ignore", false, true),
            (".*", ".hidden", false, true),
            // Nothing is ignored without patterns.
            ("", "anything", false, false),
        ];
        for (patterns, path, is_dir, want) in cases {
            let m = matcher(patterns);
            let p = RelPath::new(path).unwrap();
            assert_eq!(
                m.is_ignored(&p, *is_dir),
                *want,
                "patterns {patterns:?} path {path:?} is_dir {is_dir}"
            );
        }
    }

    #[test]
    fn counts_patterns_not_comments() {
        let m = matcher("# header\n\n*.tmp\n  \nbuild/\n/cache\n# end\n");
        assert_eq!(m.patterns(), 3);
        assert_eq!(IgnoreMatcher::empty().patterns(), 0);
    }

    #[test]
    fn bad_pattern_reports_line() {
        let err =
            IgnoreMatcher::parse("# c\n*.tmp\n\na[\n", Path::new("/srv/docs/.ignore")).unwrap_err();
        assert_eq!(err.file, Path::new("/srv/docs/.ignore"));
        assert_eq!(err.line, Some(4));
        let shown = err.to_string();
        assert!(
            shown.starts_with("/srv/docs/.ignore:4: invalid pattern \"a[\": "),
            "{shown}"
        );
        assert!(shown.len() > "/srv/docs/.ignore:4: invalid pattern \"a[\": ".len());
    }

    #[test]
    fn negation_and_empty_patterns_are_rejected() {
        let err = IgnoreMatcher::parse("*.tmp\n!keep.tmp\n", Path::new(".ignore")).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("negation"), "{err}");
        let err = IgnoreMatcher::parse("a\nb\n /\n", Path::new(".ignore")).unwrap_err();
        assert_eq!(err.line, Some(3));
    }

    #[test]
    fn error_without_line_displays_file_only() {
        let err = IgnoreError {
            file: PathBuf::from("/x/.ignore"),
            line: None,
            message: "cannot read: boom".to_owned(),
        };
        assert_eq!(err.to_string(), "/x/.ignore: cannot read: boom");
    }
}
