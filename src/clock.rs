//! The time, as keygate's rules read it. Services are given a clock rather than
//! reading the system's, so a test moves time (past an expiry, across a quota
//! period) instead of sleeping through it.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use crate::model::Micros;

pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Micros;
}

/// What services share: cheap to clone, and a test's clock is the same type.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock: production's.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Micros {
        Micros::now()
    }
}

/// A clock that moves only when told to; starts at the system's time.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl Default for ManualClock {
    fn default() -> Self {
        Self(AtomicI64::new(Micros::now().0))
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.0.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Micros {
        Micros(self.0.load(Ordering::SeqCst))
    }
}
