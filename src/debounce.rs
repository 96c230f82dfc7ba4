//! When a watched storage is due for a scan: the watcher's events debounced per storage, and
//! the periodic full rescan (pure: time is passed in, so tests and the simulator drive it
//! with a mock clock).
//!
//! A storage is due `delay` after its last event, so a burst of 10,000 changes makes one
//! scan, not 10,000. A storage that never goes quiet (a log written every second) is still
//! due [`max_wait`] after its first pending event, or its changes would never travel. Every
//! storage is also due `rescan` after its last scan, whatever the watcher said: inotify
//! misses changes (network file systems, a full queue, a watch limit), and a periodic scan
//! is the only thing that catches them.

use std::time::{Duration, Instant};

/// The longest a storage with a steady trickle of events waits: ten times its delay, but at
/// least a minute.
pub fn max_wait(delay: Duration) -> Duration {
    (delay * 10).max(Duration::from_secs(60))
}

/// Why a storage is due. A change-driven scan is a full scan too, so either resets the
/// periodic timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Events arrived and then the storage went quiet (or waited its longest).
    Changes { events: u64 },
    /// The periodic rescan, with no event pending.
    Periodic,
}

#[derive(Clone, Debug)]
struct Slot {
    delay: Duration,
    rescan: Option<Duration>,
    first: Option<Instant>,
    last: Option<Instant>,
    events: u64,
    next_rescan: Option<Instant>,
}

impl Slot {
    fn change_due(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.delay).min(first + max_wait(self.delay)))
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.change_due(), self.next_rescan) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The per-storage timers of one node.
#[derive(Clone, Debug, Default)]
pub struct Debouncer {
    slots: Vec<Slot>,
}

impl Debouncer {
    /// One slot per storage: its debounce delay and its periodic rescan interval (`None`:
    /// never), starting at `now`.
    pub fn new(settings: &[(Duration, Option<Duration>)], now: Instant) -> Debouncer {
        let slots = settings
            .iter()
            .map(|&(delay, rescan)| Slot {
                delay,
                rescan,
                first: None,
                last: None,
                events: 0,
                next_rescan: rescan.map(|r| now + r),
            })
            .collect();
        Debouncer { slots }
    }

    /// Something changed in `storage` at `now`.
    pub fn changed(&mut self, storage: usize, now: Instant) {
        let Some(s) = self.slots.get_mut(storage) else {
            return;
        };
        s.first.get_or_insert(now);
        s.last = Some(now);
        s.events += 1;
    }

    /// Sets how often `storage` is rescanned, from `now` on (shortened when the watcher can
    /// no longer see all of it).
    pub fn set_rescan(&mut self, storage: usize, every: Option<Duration>, now: Instant) {
        let Some(s) = self.slots.get_mut(storage) else {
            return;
        };
        s.rescan = every;
        let next = every.map(|r| now + r);
        s.next_rescan = match (s.next_rescan, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (_, b) => b,
        };
    }

    /// Is `storage` rescanned more often than `every` already?
    pub fn rescan_interval(&self, storage: usize) -> Option<Duration> {
        self.slots.get(storage).and_then(|s| s.rescan)
    }

    /// Are changes waiting for their delay in any storage?
    pub fn pending(&self) -> bool {
        self.slots.iter().any(|s| s.first.is_some())
    }

    /// The storages due at `now`, each once; their timers restart.
    pub fn due(&mut self, now: Instant) -> Vec<(usize, Due)> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            let changes = s.change_due().is_some_and(|at| at <= now);
            let periodic = s.next_rescan.is_some_and(|at| at <= now);
            if !changes && !periodic {
                continue;
            }
            out.push((
                i,
                if changes {
                    Due::Changes { events: s.events }
                } else {
                    Due::Periodic
                },
            ));
            s.first = None;
            s.last = None;
            s.events = 0;
            s.next_rescan = s.rescan.map(|r| now + r);
        }
        out
    }

    /// When [`Debouncer::due`] next has something to say; `None` when nothing is pending and
    /// no storage is rescanned periodically, so an idle node sets no timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().filter_map(Slot::deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_burst_is_one_scan_delay_after_its_last_event() {
        let t = t0();
        let mut d = Debouncer::new(&[(S, None)], t);
        assert_eq!(d.next_deadline(), None, "idle: no timer");
        for i in 0..10_000u32 {
            d.changed(0, t + Duration::from_micros(u64::from(i) * 50));
        }
        let last = t + Duration::from_micros(9_999 * 50);
        assert_eq!(d.next_deadline(), Some(last + S));
        assert!(d.due(last + S - Duration::from_millis(1)).is_empty());
        assert_eq!(d.due(last + S), vec![(0, Due::Changes { events: 10_000 })]);
        assert!(d.due(last + 10 * S).is_empty(), "fired once");
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn a_steady_trickle_is_scanned_after_the_longest_wait() {
        let t = t0();
        let mut d = Debouncer::new(&[(S, None)], t);
        let mut fired = Vec::new();
        // An event every half second for five minutes: never a quiet second.
        for i in 0..600u64 {
            let now = t + Duration::from_millis(i * 500);
            d.changed(0, now);
            if !d.due(now).is_empty() {
                fired.push(now - t);
            }
        }
        // At 60 s, then 60 s after the first event that followed each scan.
        let ms = |m| Duration::from_millis(m);
        assert_eq!(
            fired,
            vec![ms(60_000), ms(120_500), ms(181_000), ms(241_500)]
        );
        assert_eq!(max_wait(S), Duration::from_secs(60));
        assert_eq!(max_wait(Duration::from_secs(30)), Duration::from_secs(300));
    }

    #[test]
    fn storages_are_debounced_apart_with_their_own_delays() {
        let t = t0();
        let mut d = Debouncer::new(&[(S, None), (5 * S, None), (Duration::ZERO, None)], t);
        d.changed(0, t);
        d.changed(1, t);
        d.changed(2, t);
        assert_eq!(d.due(t), vec![(2, Due::Changes { events: 1 })]);
        assert_eq!(d.next_deadline(), Some(t + S));
        d.changed(1, t + 3 * S);
        assert_eq!(d.due(t + S), vec![(0, Due::Changes { events: 1 })]);
        assert!(d.due(t + 7 * S).is_empty());
        assert_eq!(d.due(t + 8 * S), vec![(1, Due::Changes { events: 2 })]);
        d.changed(7, t); // an unknown storage is nobody's business
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn the_periodic_rescan_fires_on_its_interval_and_a_change_scan_restarts_it() {
        let t = t0();
        let hour = Duration::from_secs(3600);
        let mut d = Debouncer::new(&[(S, Some(hour)), (S, None)], t);
        assert_eq!(d.next_deadline(), Some(t + hour));
        assert!(d.due(t + hour - S).is_empty());
        assert_eq!(d.due(t + hour), vec![(0, Due::Periodic)]);
        assert_eq!(d.next_deadline(), Some(t + 2 * hour));
        // A change half-way: its scan is a full scan, so the hour starts again from it.
        d.changed(0, t + hour + hour / 2);
        let scanned = t + hour + hour / 2 + S;
        assert_eq!(d.due(scanned), vec![(0, Due::Changes { events: 1 })]);
        assert_eq!(d.next_deadline(), Some(scanned + hour));
        assert!(d.due(t + 2 * hour).is_empty());
        assert_eq!(d.due(scanned + hour), vec![(0, Due::Periodic)]);
    }

    #[test]
    fn a_shorter_rescan_takes_effect_at_once_and_never_postpones() {
        let t = t0();
        let hour = Duration::from_secs(3600);
        let minute = Duration::from_secs(60);
        let mut d = Debouncer::new(&[(S, Some(hour)), (S, None)], t);
        d.set_rescan(0, Some(minute), t + 10 * S);
        assert_eq!(d.next_deadline(), Some(t + 10 * S + minute));
        assert_eq!(d.rescan_interval(0), Some(minute));
        d.set_rescan(1, Some(minute), t);
        assert_eq!(d.due(t + minute), vec![(1, Due::Periodic)]);
        assert_eq!(d.due(t + 10 * S + minute), vec![(0, Due::Periodic)]);
        assert_eq!(d.next_deadline(), Some(t + 2 * minute));
    }

    #[test]
    fn a_late_wake_up_fires_once_with_everything_pending() {
        let t = t0();
        let mut d = Debouncer::new(&[(S, Some(10 * S))], t);
        d.changed(0, t + S);
        // The thread slept through both deadlines (a stopped process, a slow machine).
        assert_eq!(d.due(t + 100 * S), vec![(0, Due::Changes { events: 1 })]);
        assert_eq!(d.next_deadline(), Some(t + 110 * S));
    }
}
