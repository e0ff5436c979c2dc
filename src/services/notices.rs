//! Notices before trouble (`domain::notices` says which are due): every
//! instance scans the store every `--notice-interval` and claims what it finds
//! due; the claim, written with the notice's event, is what makes each notice
//! go out once however many instances found it. The event then travels as
//! every event does: the audit trail, and a webhook through the outbox.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    clock::SharedClock,
    domain::model::{Micros, UserId},
    domain::notices::{self, Occurrence},
    store::{Noticed, Store, StoreError},
};

/// Candidates read per reason and scan: a backlog (a million keys turning
/// dormant at once) drains over several scans instead of one huge read.
const PAGE: u32 = 500;

/// Who the notices' events name as their actor.
pub const ACTOR: &str = "keygate";

#[derive(Debug, Clone)]
pub struct Notices {
    store: Store,
    clock: SharedClock,
    dormant_after: Micros,
    actor: UserId,
}

/// Every notice a row is due at `now`, for the scan and for the claim's
/// re-check inside its transaction.
fn due(about: &Noticed, now: Micros, dormant_after: Micros) -> Vec<Occurrence> {
    match about {
        Noticed::Key(k) => [
            notices::expiry(k, now),
            notices::dormancy(k, now, dormant_after),
            notices::key_quota(k, now),
        ]
        .into_iter()
        .flatten()
        .collect(),
        Noticed::Identity(i) => notices::identity_quota(i, now).into_iter().collect(),
    }
}

impl Notices {
    pub fn new(store: Store, clock: SharedClock, dormant_after: Duration) -> Self {
        Self {
            store,
            clock,
            dormant_after: Micros(i64::try_from(dormant_after.as_micros()).unwrap_or(i64::MAX)),
            actor: UserId::parse(ACTOR).expect("a valid actor id"),
        }
    }

    /// One scan: claims every notice found due; returns how many this
    /// instance sent (the others were claimed elsewhere, or before).
    pub async fn scan_once(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let (keys, identities) = self
            .store
            .notice_candidates(now, self.dormant_after, PAGE)
            .await?;
        let mut sent = 0;
        let rows = keys
            .into_iter()
            .map(Noticed::Key)
            .chain(identities.into_iter().map(Noticed::Identity));
        for about in rows {
            for occurrence in due(&about, now, self.dormant_after) {
                let still_due = |current: &Noticed| {
                    due(current, now, self.dormant_after)
                        .into_iter()
                        .find(|o| o.kind == occurrence.kind)
                };
                if self
                    .store
                    .claim_notice(&about, occurrence, &still_due, &self.actor, now)
                    .await?
                {
                    sent += 1;
                    crate::metrics::notice_sent(crate::domain::json::event_type(
                        occurrence.kind.action(),
                    ));
                }
            }
        }
        Ok(sent)
    }

    /// Scans every `interval` until `shutdown`; a failed scan is logged once
    /// per outage and tried again at the next tick.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match self.scan_once().await {
                Ok(_) => failing = false,
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "notice scan failed; notices wait for the store");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }
}
