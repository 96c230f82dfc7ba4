//! A small `log` backend: one line per record, on stderr (UTC time, level, thread, target)
//! or, for services, to the local syslog socket (`/dev/log`, facility daemon), so that
//! `logread` and the journal show it.
//!
//! Each record is formatted into one buffer and written with one call (`write_all` on a
//! locked stderr, or one datagram), so lines from different threads never interleave. It never
//! panics: a record that cannot be written is dropped; if syslog goes away, lines go to stderr
//! until it is back.
//!
//! While a one-shot run shows live progress lines at the bottom of a terminal (see
//! `progress`), the logger holds them ([`set_live`]): a record erases them, is written, and
//! draws them again, in the same single write, so log lines and progress never tangle.
//!
//! Every message is escaped on its way out: control characters (newlines above all) and
//! the invisible characters that reorder text become `\n`, `\u{202e}` and so on. Names in
//! messages come from peers and from the disk, and a file called "x\n... ERROR ..." must not
//! forge a log line.

use std::fmt;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stderr,
    Syslog,
}

struct Logger {
    level: LevelFilter,
    /// `Some` when logging to syslog: the socket, reconnected on failure.
    syslog: Option<Mutex<Option<UnixDatagram>>>,
}

const SYSLOG_SOCKET: &str = "/dev/log";
/// The `daemon` facility.
const FACILITY_DAEMON: u8 = 3;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // The mDNS crate logs at INFO every 5 s per interface ("Refreshing known services")
        // and at ERROR for every packet a network without a route refuses: none of it is
        // actionable, and the `mdns` thread says what matters. Its lines are debug lines.
        let level = if metadata.target().starts_with("simple_mdns") {
            metadata.level().max(Level::Debug)
        } else {
            metadata.level()
        };
        level <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Some(sock) = &self.syslog {
            let msg = format_syslog(record, std::process::id());
            if let Ok(mut guard) = sock.lock() {
                if send_syslog(&mut guard, msg.as_bytes()) {
                    return;
                }
            }
        }
        let line = format_line(record, SystemTime::now());
        // The live block (if any) is erased, the record written, the block drawn again: all
        // in one write, under the lock that `set_live` takes too.
        let live = lock_live();
        let out = live.around(&line);
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// The live block: lines a progress display keeps at the bottom of a terminal on stderr (see
/// `progress`), the cursor at the end of the last one. Empty unless stderr is a terminal.
struct Live {
    text: String,
    lines: usize,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    text: String::new(),
    lines: 0,
});

fn lock_live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// Erases the block: each of its lines cleared, bottom up (`\r`, `ESC[K`, `ESC[1A`),
    /// leaving the cursor at the start of its first line.
    fn erase(&self, out: &mut String) {
        if self.lines == 0 {
            return;
        }
        out.push_str("\r\x1b[K");
        for _ in 1..self.lines {
            out.push_str("\x1b[1A\x1b[K");
        }
    }

    /// `text` (whole lines) written above the block.
    fn around(&self, text: &str) -> String {
        if self.lines == 0 {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len() + self.text.len() + 16 * self.lines);
        self.erase(&mut out);
        out.push_str(text);
        out.push_str(&self.text);
        out
    }
}

/// Replaces the live block at the bottom of stderr with `lines` (none: erases it). Only for a
/// terminal: log records written meanwhile are put above the block. The lines must hold no
/// control characters and fit the terminal's width (a wrapped line would be erased only in
/// part).
pub fn set_live(lines: &[String]) {
    let mut live = lock_live();
    let mut out = String::new();
    live.erase(&mut out);
    live.text = lines.join("\n");
    live.lines = lines.len();
    out.push_str(&live.text);
    if !out.is_empty() {
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }
}

/// Sends one datagram, connecting (or reconnecting once) as needed. False if syslog is not
/// reachable.
fn send_syslog(sock: &mut Option<UnixDatagram>, msg: &[u8]) -> bool {
    for _ in 0..2 {
        if sock.is_none() {
            *sock = UnixDatagram::unbound()
                .and_then(|s| s.connect(SYSLOG_SOCKET).map(|()| s))
                .ok();
        }
        match sock {
            Some(s) if s.send(msg).is_ok() => return true,
            // The syslog daemon restarted, or was never there: try a fresh socket once.
            _ => *sock = None,
        }
    }
    false
}

/// `<PRI>iron-carrier[PID]: [thread] target: message`, the form local syslog daemons
/// (BusyBox syslogd, rsyslog, journald) accept; they add the time themselves.
fn format_syslog(record: &Record<'_>, pid: u32) -> String {
    let severity = match record.level() {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    let thread = std::thread::current();
    let target = record.target();
    let target = target.strip_prefix("iron_carrier::").unwrap_or(target);
    format!(
        "<{}>iron-carrier[{pid}]: [{}] {}: {}",
        FACILITY_DAEMON * 8 + severity,
        thread.name().unwrap_or("?"),
        target,
        Escaped(record.args())
    )
}

/// A message whose control and bidirectional-formatting characters are written escaped.
struct Escaped<'a>(&'a fmt::Arguments<'a>);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Out<'f, 'g>(&'f mut fmt::Formatter<'g>);
        impl fmt::Write for Out<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let mut rest = s;
                while let Some(i) = rest.find(needs_escape) {
                    self.0.write_str(&rest[..i])?;
                    let c = rest[i..].chars().next().unwrap_or_default();
                    match c {
                        '\n' => self.0.write_str("\\n")?,
                        '\r' => self.0.write_str("\\r")?,
                        '\t' => self.0.write_str("\\t")?,
                        c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                    }
                    rest = &rest[i + c.len_utf8()..];
                }
                self.0.write_str(rest)
            }
        }
        fmt::write(&mut Out(f), *self.0)
    }
}

/// `s` with the characters [`needs_escape`] names escaped: for other text that must stay
/// one line per line (a run's summary carries peers' reasons and file names).
pub fn escape(s: &str) -> String {
    Escaped(&format_args!("{s}")).to_string()
}

/// Characters a log line must not carry as they are: C0 and C1 controls, DEL, and the
/// marks and overrides that make a terminal show text in another order than it was written.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn format_line(record: &Record<'_>, now: SystemTime) -> String {
    let thread = std::thread::current();
    let thread_name = thread.name().unwrap_or("?");
    let target = record.target();
    let target = target.strip_prefix("iron_carrier::").unwrap_or(target);
    format!(
        "{} {:<5} [{}] {}: {}\n",
        utc_timestamp(now),
        record.level(),
        thread_name,
        target,
        Escaped(record.args())
    )
}

/// Installs the logger. Calling it twice keeps the first one (tests may race to install).
pub fn init(level: LevelFilter, sink: Sink) {
    let syslog = match sink {
        Sink::Stderr => None,
        Sink::Syslog => {
            let mut sock = None;
            if !send_syslog(&mut sock, b"<30>iron-carrier: logging to syslog") {
                eprintln!("iron-carrier: {SYSLOG_SOCKET} is not reachable; logging to stderr");
            }
            Some(Mutex::new(sock))
        }
    };
    let logger = Box::new(Logger { level, syslog });
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Maps the command line's verbosity (-1 for `-q`, 0 by default, 1 to 3 for `-v`, `-vv`,
/// `-vvv`) to a level. A one-shot run has a person watching: by default it shows warnings
/// and errors (its summary and progress say the rest), `-v` its events. Anything else (a
/// daemon, whose log is read later; check-config) shows its events (`Info`) by default.
/// `-q` is warnings and errors for both.
pub fn level_from_verbosity(verbosity: i32, one_shot: bool) -> LevelFilter {
    let steps = [
        LevelFilter::Warn,
        LevelFilter::Info,
        LevelFilter::Debug,
        LevelFilter::Trace,
    ];
    if verbosity < 0 {
        return LevelFilter::Warn;
    }
    let at = verbosity as usize + usize::from(!one_shot);
    steps[at.min(steps.len() - 1)]
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `t`, without a date library.
pub fn utc_timestamp(t: SystemTime) -> String {
    let (secs, millis) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_millis()),
        Err(e) => {
            // Before 1970: only possible with a badly set clock; still print something exact.
            let d = e.duration();
            let ms = d.as_millis() as i64;
            (-((ms + 999) / 1000), ((1000 - ms % 1000) % 1000) as u32)
        }
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso8601() {
        let cases = [
            (0u64, "1970-01-01T00:00:00.000Z"),
            (951_782_400_123, "2000-02-29T00:00:00.123Z"),
            (1_795_651_199_999, "2026-11-25T23:59:59.999Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
        ];
        for (ms, want) in cases {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(utc_timestamp(t), want);
        }
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(utc_timestamp(before), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn control_and_reordering_characters_are_escaped() {
        let name = "evil\n2026-01-01T00:00:00.000Z ERROR [sync] forged\r\t\u{1b}[31m\u{202e}txt.exe\u{7f}\u{85}";
        // The record lives only as long as its arguments: built within each statement.
        let build = |f: &dyn Fn(&Record<'_>) -> String| {
            f(&Record::builder()
                .level(Level::Info)
                .target("iron_carrier::sync")
                .args(format_args!("received {name} from é"))
                .build())
        };
        let line = build(&|r| format_line(r, UNIX_EPOCH));
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(
            line.ends_with(
                "sync: received evil\\n2026-01-01T00:00:00.000Z ERROR [sync] forged\\r\\t\\u{1b}[31m\\u{202e}txt.exe\\u{7f}\\u{85} from é\n"
            ),
            "{line}"
        );
        let line = build(&|r| format_syslog(r, 1));
        assert!(
            !line.contains('\n') && line.contains("evil\\n2026"),
            "{line}"
        );
    }

    #[test]
    fn syslog_lines_carry_priority_tag_and_pid() {
        let record = Record::builder()
            .level(Level::Warn)
            .target("iron_carrier::sync")
            .args(format_args!("disk full"))
            .build();
        let line = format_syslog(&record, 42);
        // daemon (3) * 8 + warning (4) = 28
        assert!(line.starts_with("<28>iron-carrier[42]: ["), "{line}");
        assert!(line.ends_with("] sync: disk full"), "{line}");
    }

    #[test]
    fn syslog_datagrams_reach_a_listening_socket() {
        // A stand-in syslog: a datagram socket we bind ourselves.
        let dir = std::env::temp_dir().join(format!("ic-syslog-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.connect(&path).unwrap();
        let mut sock = Some(client);
        assert!(send_syslog(&mut sock, b"<30>iron-carrier[1]: hello"));
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<30>iron-carrier[1]: hello");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn verbosity_levels() {
        use LevelFilter::*;
        // -q, default, -v, -vv, -vvv.
        let one_shot = [Warn, Warn, Info, Debug, Trace];
        let daemon = [Warn, Info, Debug, Trace, Trace];
        for (v, (o, d)) in (-1..=3).zip(one_shot.into_iter().zip(daemon)) {
            assert_eq!(level_from_verbosity(v, true), o, "one-shot {v}");
            assert_eq!(level_from_verbosity(v, false), d, "daemon {v}");
        }
    }

    #[test]
    fn records_go_above_the_live_block() {
        let none = Live {
            text: String::new(),
            lines: 0,
        };
        assert_eq!(none.around("a record\n"), "a record\n");
        let one = Live {
            text: "photos: 1/2 files".into(),
            lines: 1,
        };
        assert_eq!(
            one.around("a record\n"),
            "\r\x1b[Ka record\nphotos: 1/2 files"
        );
        let three = Live {
            text: "a\nb\nc".into(),
            lines: 3,
        };
        assert_eq!(
            three.around("r\n"),
            "\r\x1b[K\x1b[1A\x1b[K\x1b[1A\x1b[Kr\na\nb\nc"
        );
    }
}
