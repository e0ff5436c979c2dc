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

use crate::domain::model::Micros;

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

/// The system's time plus an offset that a test moves forward: time still
/// flows (usage timestamps, flush intervals), and a test jumps past an expiry
/// or a period boundary at once instead of sleeping until it.
#[derive(Debug, Default)]
pub struct ManualClock {
    offset_micros: AtomicI64,
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.offset_micros.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Micros {
        Micros(
            Micros::now()
                .0
                .saturating_add(self.offset_micros.load(Ordering::SeqCst)),
        )
    }
}
