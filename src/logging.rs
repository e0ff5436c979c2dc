//! Log output. The level comes from `RUST_LOG` (default `info`); nothing keygate
//! logs at any level carries a secret, by construction: `Secret` has no `Display`
//! and its `Debug` is redacted.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: in a file or a log
    // pipeline they are noise around every field.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Lets a log line through at most once a second per reason, saying how many
/// of that reason were left out since: a flood of refused calls (an attacker
/// trying tokens, a scanner posting junk) must not flood the log exactly
/// when operators read it. The metrics count every one.
#[derive(Debug, Default)]
pub struct Throttle {
    reasons: std::sync::Mutex<std::collections::HashMap<String, Slot>>,
}

#[derive(Debug)]
struct Slot {
    logged: std::time::Instant,
    dropped: u64,
}

/// How often one reason may be logged.
const THROTTLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Reasons tracked apart; past this many, new ones share one slot, so no
/// caller can grow the map.
const THROTTLE_REASONS: usize = 64;

impl Throttle {
    /// `Some(dropped)` when a line for `reason` may be logged now (`dropped`:
    /// how many were left out since the last one); `None` to leave it out.
    pub fn allow(&self, reason: &str, now: std::time::Instant) -> Option<u64> {
        let mut reasons = self
            .reasons
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = if reasons.contains_key(reason) || reasons.len() < THROTTLE_REASONS {
            reason
        } else {
            "(other reasons)"
        };
        match reasons.get_mut(key) {
            Some(slot) if now.duration_since(slot.logged) < THROTTLE_EVERY => {
                slot.dropped += 1;
                None
            }
            Some(slot) => {
                slot.logged = now;
                Some(std::mem::take(&mut slot.dropped))
            }
            None => {
                reasons.insert(
                    key.to_owned(),
                    Slot {
                        logged: now,
                        dropped: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn once_a_second_per_reason_with_the_count_left_out() {
        let t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.allow("a", t0), Some(0));
        assert_eq!(t.allow("b", t0), Some(0), "reasons apart");
        for ms in [1, 500, 999] {
            assert_eq!(t.allow("a", t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(t.allow("a", t0 + Duration::from_secs(1)), Some(3));
        assert_eq!(t.allow("a", t0 + Duration::from_millis(1500)), None);
        // A flood of distinct reasons shares one slot past the cap.
        for i in 0..1000 {
            let _ = t.allow(&format!("r{i}"), t0 + Duration::from_secs(5));
        }
        assert!(t.reasons.lock().expect("lock").len() <= THROTTLE_REASONS + 1);
    }
}
