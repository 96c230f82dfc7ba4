//! The progress a one-shot run shows on stderr while its sessions run: one line per storage
//! with a session in progress ("photos: 12/40 files, 3.1 MiB of 10.0 MiB (31%), 2.0 MiB/s,
//! 4 s left"), read from the status [`Board`](crate::status::Board) that `sync` fills.
//!
//! On a terminal the lines are live: redrawn in place at most every 200 ms, cut to the
//! terminal's width so they never wrap, and erased around every log record (the logger
//! holds the block, see [`logger::set_live`]) and before the summary. Anywhere else (a pipe,
//! a file, a `TERM=dumb` terminal) they are plain lines with no control character at all: one
//! when a session's progress first appears, at most one every 10 s per storage after, and
//! one at its end. Either way every session that moves files is drawn at least once: when
//! its progress first appears, and at its end in its last known state (100% if it completed
//! cleanly); one too quick to be seen running between two looks at the board is drawn at its
//! end from what it moved.
//!
//! [`Painter`] decides what to draw from the board and the time passed in (pure, tested);
//! [`Display`] asks the terminal its size and writes. The main thread ticks it (`daemon`'s
//! wait); `-q` turns it off ([`enable`]), and a daemon never draws.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::logger;
use crate::status::{progress_line, Progress, StorageStatus};

/// A terminal's live lines are redrawn at most this often (first and final states are drawn
/// at once).
pub const LIVE_EVERY: Duration = Duration::from_millis(200);
/// Plain lines: at most one per storage this often while its session runs.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);
/// The terminal's size when it cannot be asked.
pub const DEFAULT_COLS: usize = 80;
pub const DEFAULT_ROWS: usize = 24;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the display of one-shot runs on (by default, from the command line) or off (`-q`).
/// Off until called, so a run started from elsewhere (tests) draws nothing.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether one-shot runs show their progress.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A terminal: lines redrawn in place.
    Live,
    /// Anything else: whole lines, no control characters.
    Plain,
}

/// What to write after a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Draw {
    /// Replace the live block with these lines (none: erase it).
    Live(Vec<String>),
    /// Print these lines.
    Lines(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its session runs: the board shows its progress.
    Running,
    /// Its session ended (the progress left the board); its final state is still to draw.
    Ended,
}

/// A storage whose session the painter has seen.
#[derive(Debug)]
struct Track {
    name: String,
    /// Its progress as last seen on the board.
    last: Progress,
    phase: Phase,
    /// Plain: the last line printed for it, and when.
    printed: String,
    printed_at: Instant,
}

impl Track {
    fn line(&self) -> String {
        // Names come from the config: one line stays one line, without control characters.
        format!(
            "{}: {}",
            logger::escape(&self.name),
            progress_line(&self.last)
        )
    }
}

/// What the painter remembers of a storage between two looks at the board.
#[derive(Debug)]
struct Seen {
    name: String,
    /// When its last completed session ended, as the board said.
    synced_at: Option<std::time::SystemTime>,
    /// A session was seen running on it since that one.
    ran: bool,
}

/// What to draw, given what was drawn, the board and the time: no I/O, no clock.
#[derive(Debug)]
pub struct Painter {
    style: Style,
    cols: usize,
    rows: usize,
    tracks: Vec<Track>,
    /// Every storage on the board, as last looked at.
    seen: Vec<Seen>,
    /// Live: the block on the terminal, and when it was drawn.
    shown: Vec<String>,
    drawn_at: Option<Instant>,
}

impl Painter {
    pub fn new(style: Style) -> Painter {
        Painter {
            style,
            cols: DEFAULT_COLS,
            rows: DEFAULT_ROWS,
            tracks: Vec::new(),
            seen: Vec::new(),
            shown: Vec::new(),
            drawn_at: None,
        }
    }

    /// The terminal's size (live style): lines are cut to fit, the block to its height.
    /// 0 stands for unknown.
    pub fn set_size(&mut self, cols: usize, rows: usize) {
        self.cols = if cols == 0 { DEFAULT_COLS } else { cols };
        self.rows = if rows == 0 { DEFAULT_ROWS } else { rows };
    }

    /// The lines on the terminal now (live style).
    pub fn shown(&self) -> &[String] {
        &self.shown
    }

    /// Takes in the board: sessions that started, progressed and ended. Returns whether a
    /// session started or ended.
    fn observe(&mut self, storages: &[StorageStatus], now: Instant) -> bool {
        let mut changed = false;
        for s in storages {
            // Totals still at nothing: the plan has not come yet, or there is nothing to
            // move (a storage in sync). Nothing to show yet.
            let current = s
                .progress
                .filter(|p| p.files_total > 0 || p.bytes_total > 0);
            let m = match self.seen.iter().position(|m| m.name == s.name) {
                Some(m) => m,
                None => {
                    self.seen.push(Seen {
                        name: s.name.clone(),
                        synced_at: None,
                        ran: false,
                    });
                    self.seen.len() - 1
                }
            };
            let seen = &mut self.seen[m];
            let synced_at = s.last_sync.as_ref().map(|l| l.at);
            // A session completed since the last look.
            let completed = synced_at.is_some() && synced_at != seen.synced_at;
            seen.synced_at = synced_at;
            let ran = seen.ran;
            if completed {
                seen.ran = false;
            }
            let track = self.tracks.iter_mut().find(|t| t.name == s.name);
            match (track, current) {
                (Some(t), Some(p)) if t.phase == Phase::Running => t.last = p,
                (Some(t), None) if t.phase == Phase::Running => {
                    t.phase = Phase::Ended;
                    if completed && s.last_sync.as_ref().is_some_and(|l| l.clean) {
                        // It got to the end, which the board may not have shown.
                        t.last.files_done = t.last.files_total;
                        t.last.bytes_done = t.last.bytes_total;
                        t.last.rate = 0;
                    }
                    changed = true;
                }
                // A new session on a storage whose last one was not drawn at its end yet:
                // that one's final state is lost, this one is drawn as a new one.
                (Some(t), Some(p)) => {
                    *t = Track::new(&s.name, p, now);
                    self.seen[m].ran = true;
                    changed = true;
                }
                (Some(_), None) => {}
                (None, Some(p)) => {
                    self.tracks.push(Track::new(&s.name, p, now));
                    self.seen[m].ran = true;
                    changed = true;
                }
                (None, None) => {
                    // A session that came and went between two looks (the board shows
                    // progress a few times a second, and a small session is quicker): it is
                    // drawn once, at its end, from what it moved.
                    let moved = s.last_sync.as_ref().map(|l| l.moved).unwrap_or_default();
                    let files = moved.files_received + moved.files_sent;
                    if completed && !ran && files > 0 {
                        let bytes = moved.bytes_received + moved.bytes_sent;
                        let p = Progress {
                            files_done: files,
                            files_total: files,
                            bytes_done: bytes,
                            bytes_total: bytes,
                            rate: 0,
                            elapsed: 0,
                        };
                        let mut t = Track::new(&s.name, p, now);
                        t.phase = Phase::Ended;
                        self.tracks.push(t);
                        changed = true;
                    }
                }
            }
        }
        // A storage gone from the board (the board lists every storage: not expected).
        for t in &mut self.tracks {
            if t.phase == Phase::Running && !storages.iter().any(|s| s.name == t.name) {
                t.phase = Phase::Ended;
                changed = true;
            }
        }
        changed
    }

    /// What to draw now, if anything.
    pub fn tick(&mut self, storages: &[StorageStatus], now: Instant) -> Option<Draw> {
        let changed = self.observe(storages, now);
        match self.style {
            Style::Live => {
                let lines = self.block();
                let due = self
                    .drawn_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= LIVE_EVERY);
                // A session started or ended: at once; else only what changed, and not
                // too often.
                let redraw = changed || (due && lines != self.shown);
                if !redraw {
                    return None;
                }
                // The ended ones are drawn at their final state this once.
                self.tracks.retain(|t| t.phase == Phase::Running);
                self.drawn_at = Some(now);
                self.shown = lines.clone();
                Some(Draw::Live(lines))
            }
            Style::Plain => {
                let mut out = Vec::new();
                for t in &mut self.tracks {
                    let line = t.line();
                    let print = match t.phase {
                        // New tracks carry an empty `printed`: their first line is due.
                        Phase::Running => {
                            t.printed.is_empty()
                                || now.saturating_duration_since(t.printed_at) >= PLAIN_EVERY
                        }
                        Phase::Ended => line != t.printed,
                    };
                    if print {
                        t.printed = line.clone();
                        t.printed_at = now;
                        out.push(line);
                    }
                }
                self.tracks.retain(|t| t.phase == Phase::Running);
                (!out.is_empty()).then_some(Draw::Lines(out))
            }
        }
    }

    /// The run is over: every session still shown ends here, at its last state (drawn if it
    /// was not), and the live block is erased.
    pub fn finish(&mut self, storages: &[StorageStatus], now: Instant) -> Vec<Draw> {
        self.observe(storages, now);
        for t in &mut self.tracks {
            t.phase = Phase::Ended;
        }
        let mut draws = Vec::new();
        match self.style {
            Style::Live => {
                let lines = self.block();
                if !lines.is_empty() && lines != self.shown {
                    draws.push(Draw::Live(lines));
                }
                if !draws.is_empty() || !self.shown.is_empty() {
                    draws.push(Draw::Live(Vec::new()));
                }
                self.shown.clear();
                self.drawn_at = Some(now);
            }
            Style::Plain => {
                let lines: Vec<String> = self
                    .tracks
                    .iter()
                    .filter_map(|t| Some(t.line()).filter(|line| *line != t.printed))
                    .collect();
                if !lines.is_empty() {
                    draws.push(Draw::Lines(lines));
                }
            }
        }
        self.tracks.clear();
        draws
    }

    /// The live block: a line per storage with a session shown, in the order they appeared,
    /// cut to the width, and no taller than the terminal (the cursor cannot go back above
    /// its top).
    fn block(&self) -> Vec<String> {
        let width = self.cols.saturating_sub(1).max(1);
        let mut lines: Vec<String> = self.tracks.iter().map(|t| fit(&t.line(), width)).collect();
        let max = self.rows.saturating_sub(1).max(1);
        if lines.len() > max {
            let keep = max - 1;
            let more = lines.len() - keep;
            lines.truncate(keep);
            lines.push(fit(&format!("… and {more} more"), width));
        }
        lines
    }
}

impl Track {
    fn new(name: &str, p: Progress, now: Instant) -> Track {
        Track {
            name: name.to_owned(),
            last: p,
            phase: Phase::Running,
            printed: String::new(),
            printed_at: now,
        }
    }
}

/// `s` cut to at most `width` characters, an ellipsis marking the cut. (Characters, not
/// columns: a wide character can still take two.)
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The progress display on this process's stderr.
pub struct Display {
    painter: Painter,
}

impl Display {
    /// Live if stderr is a terminal that understands cursor movement, plain otherwise.
    pub fn stderr() -> Display {
        let live = is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
        let mut painter = Painter::new(if live { Style::Live } else { Style::Plain });
        if live {
            let (cols, rows) = terminal_size();
            painter.set_size(cols, rows);
        }
        Display { painter }
    }

    pub fn tick(&mut self, storages: &[StorageStatus], now: Instant) {
        if self.painter.style == Style::Live {
            // The terminal may have been resized.
            let (cols, rows) = terminal_size();
            self.painter.set_size(cols, rows);
        }
        if let Some(d) = self.painter.tick(storages, now) {
            write(d);
        }
    }

    /// Final states drawn, the live lines erased: the summary can follow.
    pub fn finish(&mut self, storages: &[StorageStatus], now: Instant) {
        for d in self.painter.finish(storages, now) {
            write(d);
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        if !self.painter.shown().is_empty() {
            logger::set_live(&[]);
        }
    }
}

fn write(d: Draw) {
    match d {
        // The logger holds the block: it erases and redraws it around its records.
        Draw::Live(lines) => logger::set_live(&lines),
        Draw::Lines(lines) => {
            let mut text = lines.join("\n");
            text.push('\n');
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
    }
}

fn is_terminal() -> bool {
    // SAFETY: isatty only looks at the descriptor number.
    unsafe { libc::isatty(libc::STDERR_FILENO) == 1 }
}

/// Columns and rows of the terminal on stderr; 0 where unknown.
fn terminal_size() -> (usize, usize) {
    // SAFETY: TIOCGWINSZ fills the winsize struct we pass, which lives for the call.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 {
            (usize::from(ws.ws_col), usize::from(ws.ws_row))
        } else {
            (0, 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn progress(files_done: u64, bytes_done: u64) -> Progress {
        Progress {
            files_done,
            files_total: 40,
            bytes_done,
            bytes_total: 40 << 20,
            rate: 2 << 20,
            elapsed: 1,
        }
    }

    fn board(entries: &[(&str, Option<Progress>)]) -> Vec<StorageStatus> {
        entries
            .iter()
            .map(|(name, p)| {
                let mut s = StorageStatus::new((*name).into(), PathBuf::from("/x"));
                s.progress = *p;
                s
            })
            .collect()
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn live_lines(d: Option<Draw>) -> Vec<String> {
        match d {
            Some(Draw::Live(l)) => l,
            other => panic!("expected a live draw, got {other:?}"),
        }
    }

    #[test]
    fn live_redraws_at_most_every_200_ms() {
        let t0 = Instant::now();
        let mut p = Painter::new(Style::Live);
        // Nothing on the board: nothing to draw.
        assert_eq!(p.tick(&board(&[("photos", None)]), t0), None);
        // A session appears: drawn at once.
        let l = live_lines(p.tick(&board(&[("photos", Some(progress(0, 0)))]), ms(t0, 10)));
        assert_eq!(
            l,
            vec!["photos: 0/40 files, 0 B of 40.0 MiB (0%), 2.0 MiB/s, 20 s left"]
        );
        // Progress within 200 ms of the last draw: not drawn.
        for k in 1..=9 {
            let b = board(&[("photos", Some(progress(k, k << 20)))]);
            assert_eq!(p.tick(&b, ms(t0, 10 + k * 20)), None, "tick {k}");
        }
        // 200 ms after it: drawn, with the latest state.
        let b = board(&[("photos", Some(progress(10, 10 << 20)))]);
        let l = live_lines(p.tick(&b, ms(t0, 210)));
        assert!(
            l[0].starts_with("photos: 10/40 files, 10.0 MiB of 40.0 MiB (25%)"),
            "{l:?}"
        );
        // Nothing changed: nothing drawn, however long after.
        assert_eq!(p.tick(&b, ms(t0, 5000)), None);
    }

    #[test]
    fn a_session_is_drawn_when_it_appears_and_at_its_end_however_short() {
        let t0 = Instant::now();
        for style in [Style::Live, Style::Plain] {
            let mut p = Painter::new(style);
            let d = p.tick(&board(&[("a", Some(progress(1, 1 << 20)))]), t0);
            let lines = match d {
                Some(Draw::Live(l) | Draw::Lines(l)) => l,
                None => panic!("{style:?}: first state not drawn"),
            };
            assert!(lines[0].starts_with("a: 1/40 files"), "{style:?} {lines:?}");
            // 30 ms later: rate-limited...
            let _ = p.tick(&board(&[("a", Some(progress(39, 39 << 20)))]), ms(t0, 30));
            // ...and 30 ms after that it is gone: its last seen state is drawn at once.
            let d = p.tick(&board(&[("a", None)]), ms(t0, 60));
            let lines = match d {
                Some(Draw::Live(l) | Draw::Lines(l)) => l,
                None => panic!("{style:?}: final state not drawn"),
            };
            assert_eq!(lines.len(), 1, "{style:?} {lines:?}");
            assert!(
                lines[0].starts_with("a: 39/40 files"),
                "{style:?} {lines:?}"
            );
            if style == Style::Live {
                // Dropped from the block at the next redraw.
                assert_eq!(
                    live_lines(p.tick(&board(&[("a", None)]), ms(t0, 260))),
                    Vec::<String>::new()
                );
            } else {
                assert_eq!(p.tick(&board(&[("a", None)]), ms(t0, 60_000)), None);
            }
            assert_eq!(
                p.finish(&board(&[("a", None)]), ms(t0, 300)),
                Vec::new(),
                "{style:?}"
            );
        }
    }

    #[test]
    fn finish_draws_running_sessions_at_their_last_state_then_erases() {
        let t0 = Instant::now();
        let mut p = Painter::new(Style::Live);
        let _ = p.tick(
            &board(&[("a", Some(progress(1, 0))), ("b", Some(progress(2, 0)))]),
            t0,
        );
        // The run ends with b still on the board, further along.
        let b = board(&[
            ("a", Some(progress(1, 0))),
            ("b", Some(progress(40, 40 << 20))),
        ]);
        let draws = p.finish(&b, ms(t0, 50));
        assert_eq!(draws.len(), 2, "{draws:?}");
        let Draw::Live(last) = &draws[0] else {
            panic!("{draws:?}")
        };
        assert!(last[1].starts_with("b: 40/40 files"), "{last:?}");
        assert_eq!(draws[1], Draw::Live(Vec::new()));
        assert!(p.shown().is_empty());

        // Plain: only what was not printed yet.
        let mut p = Painter::new(Style::Plain);
        let _ = p.tick(
            &board(&[("a", Some(progress(1, 0))), ("b", Some(progress(2, 0)))]),
            t0,
        );
        let draws = p.finish(&b, ms(t0, 50));
        let Draw::Lines(lines) = &draws[0] else {
            panic!("{draws:?}")
        };
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("b: 40/40 files"), "{lines:?}");

        // Nothing ever shown: nothing written at all.
        assert_eq!(
            Painter::new(Style::Live).finish(&board(&[("a", None)]), t0),
            Vec::new()
        );
    }

    fn synced(s: &mut StorageStatus, secs: u64, files: u64, clean: bool) {
        s.last_sync = Some(crate::status::LastSync {
            at: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            with: Vec::new(),
            moved: crate::run::Moved {
                files_received: files,
                bytes_received: files << 20,
                ..Default::default()
            },
            clean,
        });
    }

    #[test]
    fn a_completed_session_is_drawn_at_its_end_even_unseen() {
        let t0 = Instant::now();
        for style in [Style::Live, Style::Plain] {
            let mut p = Painter::new(style);
            let mut b = board(&[("a", None)]);
            assert_eq!(p.tick(&b, t0), None);
            // A whole session between two looks: drawn once, from what it moved.
            synced(&mut b[0], 1, 3, true);
            let lines = match p.tick(&b, ms(t0, 100)) {
                Some(Draw::Live(l) | Draw::Lines(l)) => l,
                None => panic!("{style:?}: an unseen session not drawn"),
            };
            assert_eq!(
                lines,
                vec!["a: 3/3 files, 3.0 MiB of 3.0 MiB (100%)"],
                "{style:?}"
            );
            // Once.
            if style == Style::Live {
                assert_eq!(live_lines(p.tick(&b, ms(t0, 400))), Vec::<String>::new());
            }
            assert_eq!(p.tick(&b, ms(t0, 20_000)), None, "{style:?}");
            // A session seen running that completes cleanly ends at 100%, drawn once.
            b[0].progress = Some(progress(10, 10 << 20));
            assert!(p.tick(&b, ms(t0, 20_100)).is_some(), "{style:?}");
            b[0].progress = None;
            synced(&mut b[0], 2, 40, true);
            let lines = match p.tick(&b, ms(t0, 20_200)) {
                Some(Draw::Live(l) | Draw::Lines(l)) => l,
                None => panic!("{style:?}: the end not drawn"),
            };
            assert_eq!(
                lines,
                vec!["a: 40/40 files, 40.0 MiB of 40.0 MiB (100%)"],
                "{style:?}"
            );
            // One that did not: at its last seen state.
            b[0].progress = Some(progress(10, 10 << 20));
            let _ = p.tick(&b, ms(t0, 30_000));
            b[0].progress = Some(progress(12, 12 << 20));
            assert_eq!(p.tick(&b, ms(t0, 30_050)), None, "{style:?}");
            b[0].progress = None;
            synced(&mut b[0], 3, 40, false);
            let lines = match p.tick(&b, ms(t0, 30_100)) {
                Some(Draw::Live(l) | Draw::Lines(l)) => l,
                None => panic!("{style:?}: the end not drawn"),
            };
            assert!(
                lines[0].starts_with("a: 12/40 files"),
                "{style:?} {lines:?}"
            );
            // A session with nothing to move shows nothing.
            b[0].progress = Some(Progress::default());
            assert_eq!(
                p.tick(&b, ms(t0, 40_000))
                    .filter(|d| *d != Draw::Live(Vec::new())),
                None
            );
            b[0].progress = None;
            synced(&mut b[0], 4, 0, true);
            assert_eq!(p.tick(&b, ms(t0, 40_100)), None, "{style:?}");
        }
    }

    #[test]
    fn plain_lines_at_most_every_10_s_per_storage() {
        let t0 = Instant::now();
        let mut p = Painter::new(Style::Plain);
        let mut printed = Vec::new();
        // Ticks every 100 ms for 25 s; "a" runs throughout, "b" starts at 5 s.
        for k in 0..250u64 {
            let b_on = k >= 50;
            let b = board(&[
                ("a", Some(progress(k / 10, k << 16))),
                ("b", b_on.then(|| progress(k / 20, k << 15))),
            ]);
            if let Some(Draw::Lines(l)) = p.tick(&b, ms(t0, k * 100)) {
                printed.extend(l.into_iter().map(|l| (k, l)));
            }
        }
        let at = |name: &str| -> Vec<u64> {
            printed
                .iter()
                .filter(|(_, l)| l.starts_with(&format!("{name}: ")))
                .map(|(k, _)| *k)
                .collect()
        };
        assert_eq!(at("a"), vec![0, 100, 200], "{printed:?}");
        assert_eq!(at("b"), vec![50, 150], "{printed:?}");
    }

    #[test]
    fn plain_lines_carry_no_control_characters() {
        let t0 = Instant::now();
        let mut p = Painter::new(Style::Plain);
        let mut all = Vec::new();
        let name = "evil\r\x1b[2Jname\n";
        // Printed at 0, 20 and 40 s; the state at 45 s is printed at the end, at 50 s.
        for (k, at) in [(0, 0), (1, 20_000), (2, 40_000), (3, 45_000)] {
            let b = board(&[(name, Some(progress(k, 0)))]);
            if let Some(Draw::Lines(l)) = p.tick(&b, ms(t0, at)) {
                all.extend(l);
            }
        }
        if let Some(Draw::Lines(l)) = p.tick(&board(&[(name, None)]), ms(t0, 50_000)) {
            all.extend(l);
        }
        assert_eq!(all.len(), 4, "{all:?}");
        assert!(
            all[3].starts_with("evil\\r\\u{1b}[2Jname\\n: 3/40 files"),
            "{all:?}"
        );
        for l in &all {
            assert!(!l.chars().any(char::is_control), "{l:?}");
            assert!(l.contains("files") && l.contains('%'), "{l:?}");
        }
    }

    #[test]
    fn live_lines_fit_the_terminal() {
        let t0 = Instant::now();
        let mut p = Painter::new(Style::Live);
        p.set_size(30, 4);
        let names = [
            "photos",
            "music",
            "a-very-long-storage-name-indeed",
            "d",
            "e",
        ];
        let b: Vec<_> = board(&names.map(|n| (n, Some(progress(1, 1 << 20)))));
        let l = live_lines(p.tick(&b, t0));
        // Three rows of a four-row terminal: two storages and how many more.
        assert_eq!(l.len(), 3, "{l:?}");
        assert!(
            l[0].starts_with("photos: 1/40 files") && l[0].ends_with('…'),
            "{l:?}"
        );
        assert_eq!(l[0].chars().count(), 29, "{l:?}");
        assert_eq!(l[2], "… and 3 more");
        for line in &l {
            assert!(line.chars().count() <= 29, "{line:?}");
        }
        // Unknown size: 80 columns.
        p.set_size(0, 0);
        let l = live_lines(p.tick(&b, ms(t0, 1000)));
        assert_eq!(l.len(), 5);
        assert!(l.iter().all(|x| x.chars().count() <= 79), "{l:?}");
        assert_eq!(fit("héllo", 5), "héllo");
        assert_eq!(fit("héllo!", 5), "héll…");
    }
}
