//! [`LogLimit`]: warnings about single records, limited per class and time window. A flood
//! of bad records (a replay of events older than the state's retention, a producer writing
//! a broken schema) is logged as a few examples and a count, not line by line: a replay of
//! one million expired events wrote one million warnings (about 290 MB) before. Every
//! record is still counted in its metric and kept, with the reason in its headers, in the
//! dead-letter topic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to log for one record of a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` records of its class went unlogged in the window before.
    Log { suppressed: u64 },
    /// The first record past the window's quota: log that the rest of the window is not.
    StartSuppressing,
    /// Not logged.
    Suppress,
}

/// At most `per_window` records logged per class and `window`.
pub struct LogLimit {
    window: Duration,
    per_window: u32,
    classes: Mutex<HashMap<String, Window>>,
}

struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl Window {
    fn starting(start: Instant) -> Window {
        Window {
            start,
            logged: 0,
            suppressed: 0,
        }
    }
}

impl LogLimit {
    pub fn new(window: Duration, per_window: u32) -> LogLimit {
        LogLimit {
            window,
            per_window,
            classes: Mutex::new(HashMap::new()),
        }
    }

    /// The window in which records are counted.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether a record of `class` seen `now` is logged.
    pub fn admit(&self, class: &str, now: Instant) -> Verdict {
        let mut classes = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        let window = classes
            .entry(class.to_string())
            .or_insert_with(|| Window::starting(now));
        let mut suppressed = 0;
        if now.saturating_duration_since(window.start) >= self.window {
            suppressed = window.suppressed;
            *window = Window::starting(now);
        }
        if window.logged < self.per_window {
            window.logged += 1;
            return Verdict::Log { suppressed };
        }
        window.suppressed += 1;
        match window.suppressed {
            1 => Verdict::StartSuppressing,
            _ => Verdict::Suppress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_as_examples_and_a_count_per_class_and_window() {
        let limit = LogLimit::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let first: Vec<Verdict> = (0..6).map(|_| limit.admit("bad", at(0))).collect();
        assert_eq!(
            first,
            [
                Verdict::Log { suppressed: 0 },
                Verdict::Log { suppressed: 0 },
                Verdict::Log { suppressed: 0 },
                Verdict::StartSuppressing,
                Verdict::Suppress,
                Verdict::Suppress,
            ]
        );
        // Another class has a quota of its own.
        assert_eq!(limit.admit("other", at(5)), Verdict::Log { suppressed: 0 });
        // Within the window: still suppressed.
        assert_eq!(limit.admit("bad", at(9)), Verdict::Suppress);
        // A new window: logged again, with the count of the window before (4 unlogged).
        assert_eq!(limit.admit("bad", at(10)), Verdict::Log { suppressed: 4 });
        assert_eq!(limit.admit("bad", at(11)), Verdict::Log { suppressed: 0 });
        // A quiet window reports nothing left over.
        assert_eq!(limit.admit("bad", at(30)), Verdict::Log { suppressed: 0 });
    }
}
