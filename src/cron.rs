//! Cron schedules for `schedule_sync`: parse 5-field cron expressions and compute when they
//! fire next.
//!
//! The module has two layers. The core ([`CronSchedule::parse`], [`CronSchedule::next_after`],
//! [`weekday`], [`days_in_month`]) is pure: it works on wall-clock [`CivilTime`] values, does no
//! I/O and never reads the clock, so every rule can be tested with fixed dates. The shell
//! ([`CronSchedule::next_fire`]) is the only place that touches real time: it converts an
//! instant to local civil time and back with libc, because cron expressions are written in the
//! machine's local time and only libc knows the time zone rules.
//!
//! What this module must not do: sleep, spawn threads, read the clock on its own (callers pass
//! `now`), change the `TZ` environment variable (libc's time functions are not safe against a
//! concurrent `setenv`), or loop without bound: a schedule that never fires, such as
//! `0 0 31 2 *`, yields `None` after a bounded search.
//!
//! Semantics follow Vixie cron: day-of-week 0 and 7 are both Sunday, names (`jan`, `mon`) are
//! case-insensitive, and when both day fields are restricted a day matches if either does.

use std::fmt;
use std::str::FromStr;
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many years past the start `next_after` searches before deciding the schedule never
/// fires. Eight is the longest gap between two February 29ths (across a century year that is
/// not a leap year, e.g. 2096 to 2104), so every satisfiable schedule is found.
const SEARCH_YEARS: i32 = 8;

/// Human names of the five fields, for error messages; index 0 is field 1.
const FIELD_NAMES: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// What is wrong inside one field of a cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldProblem {
    /// A list has an empty item (`1,,2` or a trailing comma).
    EmptyItem,
    /// A range or step has no value where one is required (`-5`, `/2`).
    MissingValue,
    /// Neither a number nor a name valid for this field.
    BadValue(String),
    /// A number outside the field's range; kept as text so huge numbers print faithfully.
    OutOfRange { value: String, min: u32, max: u32 },
    /// A range `a-b` with `a > b`.
    ReversedRange { start: u32, end: u32 },
    /// A step `/0`.
    ZeroStep,
    /// A step that is not a number.
    BadStep(String),
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldProblem::EmptyItem => f.write_str("empty list item"),
            FieldProblem::MissingValue => f.write_str("missing value in range or step"),
            FieldProblem::BadValue(s) => write!(f, "invalid value {s:?}"),
            FieldProblem::OutOfRange { value, min, max } => {
                write!(f, "value {value} out of range {min}-{max}")
            }
            FieldProblem::ReversedRange { start, end } => {
                write!(f, "range {start}-{end} starts after it ends")
            }
            FieldProblem::ZeroStep => f.write_str("step must be at least 1"),
            FieldProblem::BadStep(s) => write!(f, "invalid step {s:?}"),
        }
    }
}

/// Why a string is not an acceptable cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronError {
    /// The expression is empty or only whitespace.
    Empty,
    /// Not exactly five fields; holds how many there were.
    FieldCount(usize),
    /// An `@name` that is not one of the supported macros.
    UnknownMacro(String),
    /// A problem in one field; `field` is 1-based (1 = minute, 5 = day-of-week).
    Field { field: u8, problem: FieldProblem },
}

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CronError::Empty => f.write_str("empty cron expression"),
            CronError::FieldCount(n) => write!(
                f,
                "expected 5 fields (minute hour day-of-month month day-of-week), found {n}"
            ),
            CronError::UnknownMacro(m) => write!(
                f,
                "unknown macro {m:?} (expected @yearly, @annually, @monthly, @weekly, @daily, \
                 @midnight or @hourly)"
            ),
            CronError::Field { field, problem } => {
                let name = FIELD_NAMES
                    .get(usize::from(*field).wrapping_sub(1))
                    .unwrap_or(&"?");
                write!(f, "field {field} ({name}): {problem}")
            }
        }
    }
}

impl std::error::Error for CronError {}

/// A wall-clock time at minute resolution, in whatever time zone the caller means (local time
/// for [`CronSchedule::next_fire`]). Field order makes the derived `Ord` chronological.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CivilTime {
    pub year: i32,
    /// 1..=12
    pub month: u8,
    /// 1..=31
    pub day: u8,
    /// 0..=23
    pub hour: u8,
    /// 0..=59
    pub minute: u8,
}

/// A parsed cron expression: one bitmask per field, bit `n` set when value `n` matches.
///
/// Invariant: only bits inside each field's range are set (minutes 0..=59, hours 0..=23,
/// days of month 1..=31, months 1..=12, days of week 0..=6 with Sunday folded onto 0), and
/// every mask has at least one bit set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronSchedule {
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    /// The day-of-month field started with `*`. Vixie cron decides the day rule on the text,
    /// not the mask, so `*/2` counts as unrestricted here.
    dom_star: bool,
    /// Same as `dom_star`, for day-of-week.
    dow_star: bool,
}

/// Static description of one field, driving the shared parser.
struct FieldSpec {
    /// 1-based position, for error messages.
    index: u8,
    min: u32,
    max: u32,
    /// Names accepted for `min`, `min + 1`, ... (empty when the field has no names).
    names: &'static [&'static str],
}

const FIELDS: [FieldSpec; 5] = [
    FieldSpec {
        index: 1,
        min: 0,
        max: 59,
        names: &[],
    },
    FieldSpec {
        index: 2,
        min: 0,
        max: 23,
        names: &[],
    },
    FieldSpec {
        index: 3,
        min: 1,
        max: 31,
        names: &[],
    },
    FieldSpec {
        index: 4,
        min: 1,
        max: 12,
        names: &MONTH_NAMES,
    },
    // 7 is accepted as a second Sunday and folded onto 0 after parsing.
    FieldSpec {
        index: 5,
        min: 0,
        max: 7,
        names: &DAY_NAMES,
    },
];

impl FieldSpec {
    fn err(&self, problem: FieldProblem) -> CronError {
        CronError::Field {
            field: self.index,
            problem,
        }
    }

    /// Parses a whole field (a comma list) into a mask over `min..=max`.
    fn parse(&self, text: &str) -> Result<u64, CronError> {
        let mut mask = 0u64;
        for item in text.split(',') {
            mask |= self.parse_item(item)?;
        }
        Ok(mask)
    }

    /// Parses one list item: `*`, `n`, `a-b`, each optionally followed by `/step`.
    fn parse_item(&self, item: &str) -> Result<u64, CronError> {
        if item.is_empty() {
            return Err(self.err(FieldProblem::EmptyItem));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(self.parse_step(step)?)),
            None => (item, None),
        };
        let (start, end) = if range == "*" {
            (self.min, self.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (self.parse_value(a)?, self.parse_value(b)?);
            if a > b {
                return Err(self.err(FieldProblem::ReversedRange { start: a, end: b }));
            }
            (a, b)
        } else {
            let a = self.parse_value(range)?;
            // `a/n` is shorthand for `a-max/n`; a bare `a` is just itself.
            (a, if step.is_some() { self.max } else { a })
        };
        let step = step.unwrap_or(1);
        let mut mask = 0u64;
        let mut v = start;
        while v <= end {
            mask |= 1 << v;
            v = match v.checked_add(step) {
                Some(next) => next,
                None => break,
            };
        }
        Ok(mask)
    }

    fn parse_step(&self, text: &str) -> Result<u32, CronError> {
        if text.is_empty() {
            return Err(self.err(FieldProblem::MissingValue));
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.err(FieldProblem::BadStep(text.to_owned())));
        }
        // All digits, so a parse failure can only be overflow: any such step is larger than
        // every field, which behaves like "start only" — clamp rather than reject.
        let step = text.parse::<u32>().unwrap_or(u32::MAX);
        if step == 0 {
            return Err(self.err(FieldProblem::ZeroStep));
        }
        Ok(step)
    }

    fn parse_value(&self, text: &str) -> Result<u32, CronError> {
        if text.is_empty() {
            return Err(self.err(FieldProblem::MissingValue));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            let out_of_range = || {
                self.err(FieldProblem::OutOfRange {
                    value: text.to_owned(),
                    min: self.min,
                    max: self.max,
                })
            };
            let v = text.parse::<u32>().map_err(|_| out_of_range())?;
            if v < self.min || v > self.max {
                return Err(out_of_range());
            }
            return Ok(v);
        }
        let position = self
            .names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(text));
        match position.and_then(|i| u32::try_from(i).ok()) {
            Some(i) => Ok(self.min + i),
            None => Err(self.err(FieldProblem::BadValue(text.to_owned()))),
        }
    }
}

impl CronSchedule {
    /// Parses a 5-field cron expression (`minute hour day-of-month month day-of-week`) or one
    /// of the macros `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
    /// `@hourly`.
    pub fn parse(expr: &str) -> Result<CronSchedule, CronError> {
        let expr = expr.trim();
        if expr.is_empty() {
            return Err(CronError::Empty);
        }
        if expr.starts_with('@') {
            let expanded = match expr.to_ascii_lowercase().as_str() {
                "@yearly" | "@annually" => "0 0 1 1 *",
                "@monthly" => "0 0 1 * *",
                "@weekly" => "0 0 * * 0",
                "@daily" | "@midnight" => "0 0 * * *",
                "@hourly" => "0 * * * *",
                _ => return Err(CronError::UnknownMacro(expr.to_owned())),
            };
            return Self::parse(expanded);
        }
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(CronError::FieldCount(fields.len()));
        };
        let [s_min, s_hour, s_dom, s_month, s_dow] = &FIELDS;
        let minutes = s_min.parse(minute)?;
        let hours = s_hour.parse(hour)?;
        let days_of_month = s_dom.parse(dom)?;
        let months = s_month.parse(month)?;
        let dow_mask = s_dow.parse(dow)?;
        // Fold the second Sunday (7) onto 0 so matching only has to look at bits 0..=6.
        let days_of_week = (dow_mask | (dow_mask >> 7)) & 0x7f;
        // The casts cannot truncate: each mask only has bits inside its field's range, which
        // the parser guarantees (values above `max` are rejected).
        Ok(CronSchedule {
            minutes,
            hours: hours as u32,
            days_of_month: days_of_month as u32,
            months: months as u16,
            days_of_week: days_of_week as u8,
            dom_star: dom.starts_with('*'),
            dow_star: dow.starts_with('*'),
        })
    }

    /// Whether the schedule fires at minute `t`.
    pub fn matches(&self, t: CivilTime) -> bool {
        bit(u64::from(self.months), t.month)
            && self.day_matches(t.year, t.month, t.day)
            && bit(u64::from(self.hours), t.hour)
            && bit(self.minutes, t.minute)
    }

    /// Vixie cron's day rule: if either day field starts with `*` both masks must match (an
    /// unrestricted `*` mask matches everything, so only the other field counts); if both are
    /// restricted, either one is enough — `30 4 1,15 * 5` fires on the 1st, the 15th and every
    /// Friday.
    fn day_matches(&self, year: i32, month: u8, day: u8) -> bool {
        if day == 0 || day > days_in_month(year, month) {
            return false;
        }
        let dom = bit(u64::from(self.days_of_month), day);
        let dow = bit(u64::from(self.days_of_week), weekday(year, month, day));
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first minute strictly after `t` at which the schedule fires, or `None` if it does
    /// not fire within the next eight years (which, for a valid schedule, means never: see
    /// `SEARCH_YEARS`).
    ///
    /// The search works from the largest unit down: a month that cannot match is skipped
    /// whole, then a day, then an hour, so a yearly schedule costs a few hundred steps rather
    /// than half a million minutes.
    pub fn next_after(&self, t: CivilTime) -> Option<CivilTime> {
        let limit = t.year.checked_add(SEARCH_YEARS)?;
        let (mut year, mut month, mut day) = (t.year, t.month, t.day);
        let (mut hour, mut minute) = (t.hour, t.minute.saturating_add(1));
        // Out-of-range values (minute 60, hour 24, day 32, month 13) are allowed to appear
        // below: each step finds nothing at that position and carries into the next unit.
        loop {
            if year > limit {
                return None;
            }
            match next_bit(u64::from(self.months), month) {
                None => {
                    year = year.checked_add(1)?;
                    (month, day, hour, minute) = (1, 1, 0, 0);
                    continue;
                }
                Some(m) if m != month => (month, day, hour, minute) = (m, 1, 0, 0),
                Some(_) => {}
            }
            let last_day = days_in_month(year, month);
            match (day..=last_day).find(|&d| self.day_matches(year, month, d)) {
                None => {
                    (month, day, hour, minute) = (month.saturating_add(1), 1, 0, 0);
                    continue;
                }
                Some(d) if d != day => (day, hour, minute) = (d, 0, 0),
                Some(_) => {}
            }
            match next_bit(u64::from(self.hours), hour) {
                None => {
                    (day, hour, minute) = (day.saturating_add(1), 0, 0);
                    continue;
                }
                Some(h) if h != hour => (hour, minute) = (h, 0),
                Some(_) => {}
            }
            match next_bit(self.minutes, minute) {
                None => (hour, minute) = (hour.saturating_add(1), 0),
                Some(m) => {
                    return Some(CivilTime {
                        year,
                        month,
                        day,
                        hour,
                        minute: m,
                    });
                }
            }
        }
    }

    /// The first instant strictly after `now` at which the schedule fires in the machine's
    /// local time zone, or `None` if it never fires (or the time cannot be represented).
    ///
    /// Around DST changes a civil minute may not exist (spring forward) or exist twice (fall
    /// back). A minute inside a gap fires at the instant `mktime` normalizes it to (with
    /// glibc, as far past the gap as it was into it: 02:30 becomes 03:30). A repeated minute
    /// fires at its first occurrence after `now`; since the search walks civil minutes
    /// forward, each civil minute fires once, so a minutely schedule running in the first
    /// pass of a repeated hour goes quiet for the second pass.
    pub fn next_fire(&self, now: SystemTime) -> Option<SystemTime> {
        let mut civil = local_civil(floor_secs(now)?)?;
        // A candidate is only passed over when none of its instants is after `now` (a gap
        // normalized backwards, or a time libc cannot represent); a day of minutes is a
        // generous bound for that which still guarantees the loop ends.
        for _ in 0..24 * 60 {
            let candidate = self.next_after(civil)?;
            if let Some(at) = instant_after(candidate, now) {
                return Some(at);
            }
            civil = candidate;
        }
        None
    }
}

impl FromStr for CronSchedule {
    type Err = CronError;

    fn from_str(s: &str) -> Result<CronSchedule, CronError> {
        CronSchedule::parse(s)
    }
}

/// Whether bit `n` of `mask` is set; false for `n` past the mask.
fn bit(mask: u64, n: u8) -> bool {
    n < 64 && mask & (1u64 << n) != 0
}

/// The smallest set bit of `mask` at position `from` or above.
fn next_bit(mask: u64, from: u8) -> Option<u8> {
    if from >= 64 {
        return None;
    }
    let rest = mask >> from;
    if rest == 0 {
        return None;
    }
    // trailing_zeros of a non-zero u64 is below 64, so it fits and the sum stays below 64.
    Some(from + rest.trailing_zeros() as u8)
}

fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Number of days in `month` (1..=12) of `year` in the proleptic Gregorian calendar; 0 for a
/// month outside 1..=12.
pub fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Day of the week of a Gregorian date, 0 = Sunday .. 6 = Saturday. The date is expected to
/// be valid; an invalid one gives a meaningless (but in-range) answer.
pub fn weekday(year: i32, month: u8, day: u8) -> u8 {
    // Days since 1970-01-01 (a Thursday), by Howard Hinnant's days_from_civil, in i64 so no
    // i32 year can overflow.
    let m = i64::from(month);
    let y = i64::from(year) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // rem_euclid(7) is in 0..7, so the cast is lossless.
    (days + 4).rem_euclid(7) as u8
}

/// A 64-bit `time_t` on every target, so a schedule keeps firing after 2038 on 32-bit ARM and
/// MIPS too.
type TimeT = i64;

/// `localtime_r` and `mktime` with a 64-bit `time_t`. On 32-bit Linux the `libc` crate binds
/// the old symbols, whose `time_t` is 32 bits (it marks that type deprecated on musl): a
/// schedule would stop in 2038. musl 1.2 and glibc 2.34 export 64-bit variants under other
/// names, which their own headers select; these are they. `struct tm` is the same in both.
#[cfg(all(
    target_os = "linux",
    target_pointer_width = "32",
    any(target_env = "musl", target_env = "gnu")
))]
mod time64 {
    unsafe extern "C" {
        #[link_name = "__localtime64_r"]
        pub fn localtime_r(t: *const i64, tm: *mut libc::tm) -> *mut libc::tm;
        #[link_name = "__mktime64"]
        pub fn mktime(tm: *mut libc::tm) -> i64;
    }
}

/// Where `time_t` is 64 bits already, the usual symbols are the 64-bit ones.
#[cfg(not(all(
    target_os = "linux",
    target_pointer_width = "32",
    any(target_env = "musl", target_env = "gnu")
)))]
mod time64 {
    pub use libc::{localtime_r, mktime};
}

/// Seconds since the epoch of `t`, rounded down (also before 1970), as a `time_t`.
fn floor_secs(t: SystemTime) -> Option<TimeT> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok()?,
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).ok()?;
            let partial = i64::from(d.subsec_nanos() > 0);
            whole.checked_add(partial)?.checked_neg()?
        }
    };
    Some(secs)
}

/// The `SystemTime` `secs` seconds after the epoch.
fn system_time(secs: TimeT) -> Option<SystemTime> {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

unsafe extern "C" {
    // Not exported by the libc crate on Unix.
    fn tzset();
}

/// POSIX does not require `localtime_r` to read `TZ` / `/etc/localtime` (unlike `localtime`),
/// so the zone must be loaded once before the first call.
fn init_time_zone() {
    static TZSET: Once = Once::new();
    TZSET.call_once(|| {
        // SAFETY: tzset has no arguments; it only races with a concurrent setenv("TZ"), which
        // this program never does.
        unsafe { tzset() }
    });
}

/// Local civil time (minute resolution) of the instant `secs`.
fn local_civil(secs: TimeT) -> Option<CivilTime> {
    init_time_zone();
    // SAFETY: tm is a C struct of integers plus (on glibc) a `*const c_char` zone name, for
    // which all-zero (null) is a valid value; localtime_r overwrites it anyway.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers refer to live, properly aligned locals for the whole call, and
    // localtime_r is the reentrant variant that writes only into `tm`.
    let result = unsafe { time64::localtime_r(&secs, &mut tm) };
    if result.is_null() {
        return None;
    }
    Some(CivilTime {
        year: tm.tm_year.checked_add(1900)?,
        month: u8::try_from(tm.tm_mon.checked_add(1)?).ok()?,
        day: u8::try_from(tm.tm_mday).ok()?,
        hour: u8::try_from(tm.tm_hour).ok()?,
        minute: u8::try_from(tm.tm_min).ok()?,
    })
}

/// The earliest instant after `now` whose local civil time is `t`, or, when `t` does not exist
/// (DST gap), the instant `mktime` normalizes it to if that is after `now`.
///
/// `tm_isdst = -1` alone is not enough: for a minute that exists twice, mktime picks one
/// occurrence (glibc: the first), which may already be past while the second is still ahead.
/// Asking for both DST interpretations finds both occurrences; forcing the wrong one
/// elsewhere yields an instant an hour off, which the round trip through `localtime_r`
/// rejects.
fn instant_after(t: CivilTime, now: SystemTime) -> Option<SystemTime> {
    let mut earliest_exact: Option<SystemTime> = None;
    let mut exists = false;
    for isdst in [-1, 0, 1] {
        let Some(secs) = local_instant(t, isdst) else {
            continue;
        };
        if local_civil(secs) != Some(t) {
            continue;
        }
        exists = true;
        if let Some(at) = system_time(secs).filter(|&at| at > now) {
            if earliest_exact.is_none_or(|e| at < e) {
                earliest_exact = Some(at);
            }
        }
    }
    if exists {
        return earliest_exact;
    }
    system_time(local_instant(t, -1)?).filter(|&at| at > now)
}

/// The instant of local civil time `t` per `mktime`, with `isdst` as the `tm_isdst` hint
/// (-1: let libc decide; 0 or 1: interpret as standard or daylight time).
fn local_instant(t: CivilTime, isdst: i32) -> Option<TimeT> {
    init_time_zone();
    // SAFETY: as in local_civil, all-zero is a valid `tm`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = t.year.checked_sub(1900)?;
    tm.tm_mon = i32::from(t.month) - 1;
    tm.tm_mday = i32::from(t.day);
    tm.tm_hour = i32::from(t.hour);
    tm.tm_min = i32::from(t.minute);
    tm.tm_sec = 0;
    tm.tm_isdst = isdst;
    // SAFETY: `tm` is a live, initialized local; mktime reads and normalizes it in place and
    // keeps no pointer to it.
    let secs = unsafe { time64::mktime(&mut tm) };
    // -1 is mktime's error value. It is also 1969-12-31 23:59:59 UTC, but we always pass
    // second 0 and real zones have whole-minute offsets, so a genuine result is never -1.
    if secs == -1 {
        return None;
    }
    Some(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(year: i32, month: u8, day: u8, hour: u8, minute: u8) -> CivilTime {
        CivilTime {
            year,
            month,
            day,
            hour,
            minute,
        }
    }

    fn sched(expr: &str) -> CronSchedule {
        match CronSchedule::parse(expr) {
            Ok(s) => s,
            Err(e) => panic!("{expr:?} should parse: {e}"),
        }
    }

    #[test]
    fn next_after_table() {
        #[rustfmt::skip]
        let rows: &[(&str, CivilTime, CivilTime)] = &[
            ("* * * * *", ct(2026, 3, 1, 10, 0), ct(2026, 3, 1, 10, 1)),
            ("* * * * *", ct(2026, 12, 31, 23, 59), ct(2027, 1, 1, 0, 0)),
            ("*/15 * * * *", ct(2026, 3, 1, 10, 7), ct(2026, 3, 1, 10, 15)),
            ("*/15 * * * *", ct(2026, 3, 1, 10, 45), ct(2026, 3, 1, 11, 0)),
            ("0 */2 * * *", ct(2026, 3, 1, 10, 0), ct(2026, 3, 1, 12, 0)),
            ("0 */2 * * *", ct(2026, 3, 1, 23, 30), ct(2026, 3, 2, 0, 0)),
            ("5,10,15 * * * *", ct(2026, 3, 1, 10, 5), ct(2026, 3, 1, 10, 10)),
            ("5,10,15 * * * *", ct(2026, 3, 1, 10, 15), ct(2026, 3, 1, 11, 5)),
            ("10-20/5 * * * *", ct(2026, 3, 1, 10, 16), ct(2026, 3, 1, 10, 20)),
            ("10-20/5 * * * *", ct(2026, 3, 1, 10, 20), ct(2026, 3, 1, 11, 10)),
            ("7/20 * * * *", ct(2026, 3, 1, 10, 30), ct(2026, 3, 1, 10, 47)),
            ("1,5-10/2,*/15 * * * *", ct(2026, 3, 1, 10, 7), ct(2026, 3, 1, 10, 9)),
            // Friday 17:00 -> Monday 09:00.
            ("0 9-17 * * mon-fri", ct(2026, 3, 6, 17, 0), ct(2026, 3, 9, 9, 0)),
            ("0 9-17 * * MON-FRI", ct(2026, 3, 9, 12, 30), ct(2026, 3, 9, 13, 0)),
            // Either-day rule: the 1st, the 15th, or any Friday (2026-03-06 is a Friday).
            ("30 4 1,15 * 5", ct(2026, 3, 1, 5, 0), ct(2026, 3, 6, 4, 30)),
            ("30 4 1,15 * 5", ct(2026, 3, 13, 5, 0), ct(2026, 3, 15, 4, 30)),
            // 7 and 0 are both Sunday; 2026-03-01 and 2026-03-08 are Sundays.
            ("0 0 * * 7", ct(2026, 3, 2, 0, 0), ct(2026, 3, 8, 0, 0)),
            ("0 0 * * 0", ct(2026, 3, 2, 0, 0), ct(2026, 3, 8, 0, 0)),
            ("0 0 * * sun", ct(2026, 2, 28, 12, 0), ct(2026, 3, 1, 0, 0)),
            ("0 0 1 1 *", ct(2026, 6, 15, 12, 0), ct(2027, 1, 1, 0, 0)),
            ("0 0 1 1 *", ct(2026, 12, 31, 23, 59), ct(2027, 1, 1, 0, 0)),
            // 2100 is not a leap year: the next 29 February after 2096 is in 2104.
            ("0 0 29 2 *", ct(2097, 1, 1, 0, 0), ct(2104, 2, 29, 0, 0)),
            ("0 0 29 2 *", ct(2096, 2, 29, 0, 0), ct(2104, 2, 29, 0, 0)),
            // 2000 is a leap year (divisible by 400).
            ("0 0 29 2 *", ct(1997, 5, 5, 5, 5), ct(2000, 2, 29, 0, 0)),
            // February, April and June have no 31st.
            ("0 12 31 * *", ct(2026, 1, 31, 12, 0), ct(2026, 3, 31, 12, 0)),
            ("0 12 31 * *", ct(2026, 3, 31, 13, 0), ct(2026, 5, 31, 12, 0)),
            ("0 0 1 jan,Jul *", ct(2026, 2, 1, 0, 0), ct(2026, 7, 1, 0, 0)),
            ("0 0 * feb-mar sat", ct(2026, 3, 28, 0, 0), ct(2027, 2, 6, 0, 0)),
            ("@daily", ct(2026, 2, 28, 0, 0), ct(2026, 3, 1, 0, 0)),
            ("@midnight", ct(2028, 2, 28, 23, 59), ct(2028, 2, 29, 0, 0)),
            ("@hourly", ct(2026, 1, 31, 23, 0), ct(2026, 2, 1, 0, 0)),
            // 2026-11-25 is a Wednesday.
            ("@weekly", ct(2026, 11, 25, 8, 0), ct(2026, 11, 29, 0, 0)),
            ("@monthly", ct(2026, 4, 30, 23, 59), ct(2026, 5, 1, 0, 0)),
            ("@yearly", ct(2026, 1, 1, 0, 0), ct(2027, 1, 1, 0, 0)),
            ("59 23 31 12 *", ct(2026, 12, 31, 23, 59), ct(2027, 12, 31, 23, 59)),
            ("0 0 * * 1", ct(2026, 12, 29, 0, 0), ct(2027, 1, 4, 0, 0)),
        ];
        for (expr, from, expected) in rows {
            let got = sched(expr).next_after(*from);
            assert_eq!(got, Some(*expected), "{expr:?} after {from:?}");
        }
    }

    #[test]
    fn impossible_date_never_fires() {
        assert_eq!(sched("0 0 31 2 *").next_after(ct(2026, 1, 1, 0, 0)), None);
        assert_eq!(sched("0 0 30 2 *").next_after(ct(2026, 1, 1, 0, 0)), None);
        assert_eq!(
            sched("0 0 31 4,6,9,11 *").next_after(ct(2026, 1, 1, 0, 0)),
            None
        );
    }

    #[test]
    fn year_overflow_gives_none() {
        assert_eq!(
            sched("* * * * *").next_after(ct(i32::MAX, 12, 31, 23, 59)),
            None
        );
    }

    #[test]
    fn rejected_expressions() {
        let rows: &[(&str, &str)] = &[
            ("60 * * * *", "field 1 (minute): value 60 out of range 0-59"),
            ("* 24 * * *", "field 2 (hour): value 24 out of range 0-23"),
            (
                "* * 0 * *",
                "field 3 (day-of-month): value 0 out of range 1-31",
            ),
            ("* * 32 * *", "value 32 out of range 1-31"),
            ("* * * 13 *", "field 4 (month): value 13 out of range 1-12"),
            (
                "* * * * 8",
                "field 5 (day-of-week): value 8 out of range 0-7",
            ),
            ("99999999999 * * * *", "value 99999999999 out of range 0-59"),
            (
                "5-1 * * * *",
                "field 1 (minute): range 5-1 starts after it ends",
            ),
            ("* * * * fri-mon", "range 5-1 starts after it ends"),
            ("*/0 * * * *", "field 1 (minute): step must be at least 1"),
            ("* 1-5/x * * *", "field 2 (hour): invalid step \"x\""),
            ("*/ * * * *", "missing value"),
            ("-5 * * * *", "missing value"),
            ("* * * *", "expected 5 fields"),
            ("* * * * * *", "found 6"),
            ("", "empty cron expression"),
            ("   ", "empty cron expression"),
            ("a * * * *", "field 1 (minute): invalid value \"a\""),
            ("* * * mon *", "field 4 (month): invalid value \"mon\""),
            (
                "* * * * jan",
                "field 5 (day-of-week): invalid value \"jan\"",
            ),
            ("* * * * monday", "invalid value \"monday\""),
            ("1,,2 * * * *", "field 1 (minute): empty list item"),
            ("1, * * * *", "empty list item"),
            ("@reboot", "unknown macro \"@reboot\""),
            ("@daily 5", "unknown macro"),
        ];
        for (expr, fragment) in rows {
            match CronSchedule::parse(expr) {
                Ok(s) => panic!("{expr:?} should be rejected, got {s:?}"),
                Err(e) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(fragment),
                        "{expr:?}: {text:?} lacks {fragment:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn equivalent_spellings_parse_equal() {
        assert_eq!(sched("@daily"), sched("0 0 * * *"));
        assert_eq!(sched("@annually"), sched("@yearly"));
        assert_eq!(sched("@WEEKLY"), sched("0 0 * * 7"));
        assert_eq!(sched("0 0 * * 0,7"), sched("0 0 * * sun"));
        assert_eq!(sched("0 0 * * mon-fri"), sched("0 0 * * 1-5"));
        assert_eq!(sched("0 0 1 Jan-MAR *"), sched("0 0 1 1-3 *"));
        assert_eq!(sched("*/20 * * * *"), sched("0,20,40 * * * *"));
        assert_eq!(sched("50/5 * * * *"), sched("50,55 * * * *"));
        assert_eq!(sched("  0\t0  * * *  "), sched("0 0 * * *"));
        assert_eq!("0 0 * * *".parse::<CronSchedule>(), Ok(sched("@daily")));
    }

    /// Tiny deterministic generator (Knuth's MMIX LCG) so the cross-check needs no crates.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u32) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) % u64::from(n)) as u32
        }
    }

    fn plus_one_minute(t: CivilTime) -> CivilTime {
        let mut t = t;
        t.minute += 1;
        if t.minute == 60 {
            t.minute = 0;
            t.hour += 1;
        }
        if t.hour == 24 {
            t.hour = 0;
            t.day += 1;
        }
        if t.day > days_in_month(t.year, t.month) {
            t.day = 1;
            t.month += 1;
        }
        if t.month == 13 {
            t.month = 1;
            t.year += 1;
        }
        t
    }

    #[test]
    fn next_after_agrees_with_minute_by_minute_search() {
        let exprs = [
            "*/7 3-5 * * *",
            "30 4 1,15 * 5",
            "0 0 * * 0",
            "15 10 * 2,6 mon",
            "0 12 31 * *",
            "5 0 13 * fri",
            "*/10 * */3 * *",
            "0 22 * * 1-5",
            "59 23 28-31 * *",
            "0 0 29 2 *",
        ];
        let two_years = 2 * 366 * 24 * 60;
        let mut rng = Lcg(0x0001_ceca_771e);
        for expr in exprs {
            let s = sched(expr);
            for _ in 0..40 {
                let year = 2090 + rng.below(20) as i32;
                let month = 1 + rng.below(12) as u8;
                let day = 1 + rng.below(u32::from(days_in_month(year, month))) as u8;
                let from = ct(year, month, day, rng.below(24) as u8, rng.below(60) as u8);
                let mut naive = None;
                let mut t = from;
                for _ in 0..two_years {
                    t = plus_one_minute(t);
                    if s.matches(t) {
                        naive = Some(t);
                        break;
                    }
                }
                let fast = s.next_after(from);
                match naive {
                    Some(n) => assert_eq!(fast, Some(n), "{expr:?} after {from:?}"),
                    // Nothing within two years: the fast search may only find a later one.
                    None => assert!(fast.is_none_or(|f| f > t), "{expr:?} after {from:?}"),
                }
            }
        }
    }

    #[test]
    fn weekday_known_dates() {
        assert_eq!(weekday(1970, 1, 1), 4);
        assert_eq!(weekday(2000, 2, 29), 2);
        assert_eq!(weekday(2026, 11, 25), 3);
        assert_eq!(weekday(1900, 1, 1), 1);
        assert_eq!(weekday(2100, 3, 1), 1);
        assert_eq!(weekday(1600, 1, 1), 6);
    }

    #[test]
    fn days_in_month_leap_rules() {
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2026, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2026, 4), 30);
        assert_eq!(days_in_month(2026, 12), 31);
        assert_eq!(days_in_month(2026, 13), 0);
    }

    fn local_minute(t: SystemTime) -> i32 {
        let secs = match floor_secs(t) {
            Some(s) => s,
            None => panic!("time out of range"),
        };
        // SAFETY: all-zero is a valid `tm`.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers refer to live locals for the duration of the call.
        let r = unsafe { time64::localtime_r(&secs, &mut tm) };
        assert!(!r.is_null());
        tm.tm_min
    }

    #[test]
    fn next_fire_with_real_clock() {
        let now = SystemTime::now();
        let next = sched("* * * * *").next_fire(now);
        let next = match next {
            Some(n) => n,
            None => panic!("minutely schedule must fire"),
        };
        assert!(next > now);
        assert!(next <= now + Duration::from_secs(60));

        let hourly = match sched("0 * * * *").next_fire(now) {
            Some(n) => n,
            None => panic!("hourly schedule must fire"),
        };
        assert!(hourly > now);
        assert!(hourly <= now + Duration::from_secs(3600));
        let since_epoch = hourly.duration_since(UNIX_EPOCH).ok().map(|d| d.as_nanos());
        assert_eq!(since_epoch.map(|n| n % 60_000_000_000), Some(0));
        assert_eq!(local_minute(hourly), 0);

        assert_eq!(sched("0 0 31 2 *").next_fire(now), None);
    }

    /// Set in the child process that runs the DST checks, so `--ignored` alone does not run
    /// them under the wrong time zone.
    const DST_CHILD_VAR: &str = "IRON_CARRIER_CRON_DST_CHILD";

    /// DST handling needs a known zone, but `TZ` cannot be changed safely inside this
    /// multi-threaded test binary, so the checks run in a child process of it.
    #[test]
    fn next_fire_across_dst_in_berlin() {
        if !std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin").exists() {
            eprintln!("skipped: no tzdata for Europe/Berlin");
            return;
        }
        let exe = std::env::current_exe().expect("test binary path");
        let out = std::process::Command::new(exe)
            .args(["--exact", "cron::tests::dst_berlin_child", "--ignored"])
            .env("TZ", "Europe/Berlin")
            .env(DST_CHILD_VAR, "1")
            .output()
            .expect("run child test");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    }

    #[test]
    #[ignore = "run by next_fire_across_dst_in_berlin with TZ=Europe/Berlin"]
    fn dst_berlin_child() {
        if std::env::var_os(DST_CHILD_VAR).is_none() {
            return;
        }
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        #[rustfmt::skip]
        let rows: &[(&str, u64, u64)] = &[
            // 2026-03-29 00:00 CET: 02:30 does not exist, it fires at 03:30 CEST.
            ("30 2 * * *", 1_774_738_800, 1_774_747_800),
            // 2026-10-25 02:30 CEST (first pass of the repeated hour).
            ("* * * * *", 1_792_888_200, 1_792_888_260),
            // 02:30 CET (second pass): the first 02:31 is past, the second is ahead.
            ("* * * * *", 1_792_891_800, 1_792_891_860),
            // 02:00 CET, second pass: 02:59 CEST is past, 02:59 CET is not.
            ("59 2 * * *", 1_792_890_000, 1_792_893_540),
            // 01:30 CEST: the first 02:00 comes first...
            ("0 2 * * *", 1_792_884_600, 1_792_886_400),
            // ...and the repeated 02:00 does not fire again; next is 02:00 CET on the 26th.
            ("0 2 * * *", 1_792_886_400, 1_792_976_400),
            // 00:00 CEST to 03:00 CET spans 4 real hours.
            ("0 3 * * *", 1_792_879_200, 1_792_893_600),
        ];
        for (expr, now, expected) in rows {
            assert_eq!(
                sched(expr).next_fire(at(*now)),
                Some(at(*expected)),
                "{expr:?} {now}"
            );
        }
    }

    /// On 32-bit ARM and MIPS the usual `localtime_r`/`mktime` take a 32-bit `time_t`, and a
    /// schedule went quiet after January 2038. This runs under qemu on those targets.
    #[test]
    fn next_fire_after_2038() {
        // 2040-06-01 12:00:30 UTC and 2100-01-01 00:00:30 UTC.
        for secs in [2_222_164_830u64, 4_102_444_830] {
            let now = UNIX_EPOCH + Duration::from_secs(secs);
            let next = sched("* * * * *").next_fire(now);
            assert_eq!(
                next,
                Some(now + Duration::from_secs(30)),
                "minutely after {secs}"
            );
            let hourly = match sched("0 * * * *").next_fire(now) {
                Some(n) => n,
                None => panic!("an hourly schedule must fire after {secs}"),
            };
            assert!(hourly > now && hourly <= now + Duration::from_secs(3600));
            assert_eq!(local_minute(hourly), 0);
        }
    }

    #[test]
    fn next_fire_before_epoch_rounds_down() {
        // Half a second before the epoch lies in the minute before it, so the next minutely
        // fire is the epoch itself; truncating towards zero instead would skip it. (Assumes
        // the local zone had a whole-minute UTC offset in 1970, as every common zone did.)
        let t = UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(sched("* * * * *").next_fire(t), Some(UNIX_EPOCH));
    }
}
