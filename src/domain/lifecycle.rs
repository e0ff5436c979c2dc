//! A key's life as one state machine. Every rule about what may happen to a key
//! in which state is [`allows`]; the store asks it inside the transaction that
//! makes the change (against the locked row), so no handler, and no race
//! between two admin calls, can apply a change the table below refuses.
//!
//! | state \ operation | update | rotate | revoke | verify |
//! |---|---|---|---|---|
//! | live | yes | yes | yes (ends it) | checks, limits |
//! | in grace | no | no | yes (ends the grace) | checks, the chain's limits |
//! | ended: revoked | no | no | yes (changes nothing) | `REVOKED` |
//! | ended: expired or past its grace | no | no | yes (marks it revoked) | `EXPIRED` |
//!
//! Why only a live key can change: a key in grace is on its way out. Were it
//! changeable, clearing its expiry would undo the rotation (and leave its owner
//! two live user keys), and an admin could push it out years. Its replacement
//! is the key to change.

use crate::domain::model::{KeyRecord, Micros};

/// Where a key is in its life at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Verifies, and may be changed, rotated and revoked.
    Live,
    /// Rotated with a grace period that has not ended: still verifies (spending
    /// its chain's limits) until then, and may only be revoked.
    InGrace,
    /// Revoked, expired, or past its grace: never verifies again.
    Ended(Ended),
}

/// Why a key has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Revoked,
    Expired,
    /// Rotated, and its grace period (its expiry) is over.
    GraceOver,
}

/// What an admin call does to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Update,
    Rotate,
    Revoke,
}

impl KeyState {
    /// The state of `key` at `now`. Expiry is a moment, not a write: a key
    /// ends at its `expire_time` whether or not anything touched its row.
    pub fn of(key: &KeyRecord, now: Micros) -> Self {
        let expired = key.expire_time.is_some_and(|t| t <= now);
        match (key.revoke_time, key.rotated_to_id.is_some(), expired) {
            (Some(_), _, _) => Self::Ended(Ended::Revoked),
            (None, true, true) => Self::Ended(Ended::GraceOver),
            (None, false, true) => Self::Ended(Ended::Expired),
            (None, true, false) => Self::InGrace,
            (None, false, false) => Self::Live,
        }
    }
}

/// Whether `operation` may be applied to a key in `state`; the refusal is the
/// reason the caller gets (as `FAILED_PRECONDITION`).
pub fn allows(state: KeyState, operation: Operation) -> Result<(), &'static str> {
    use Operation::{Revoke, Rotate, Update};
    match (state, operation) {
        (_, Revoke) | (KeyState::Live, Update | Rotate) => Ok(()),
        (KeyState::InGrace, Update) => Err(
            "the key was rotated and is in its grace period: only revoking it is allowed; change its replacement instead",
        ),
        (KeyState::InGrace, Rotate) => {
            Err("the key was already rotated; rotate its replacement instead")
        }
        (KeyState::Ended(Ended::Revoked), Update) => {
            Err("the key is revoked and cannot be updated")
        }
        (KeyState::Ended(Ended::Revoked), Rotate) => {
            Err("the key is revoked and cannot be rotated")
        }
        (KeyState::Ended(Ended::Expired), Update) => {
            Err("the key has expired and cannot be updated")
        }
        (KeyState::Ended(Ended::Expired), Rotate) => {
            Err("the key has expired and cannot be rotated")
        }
        (KeyState::Ended(Ended::GraceOver), Update | Rotate) => {
            Err("the key was rotated and its grace period is over: change its replacement instead")
        }
    }
}

/// [`allows`] for `key` as it is at `now`: what the store checks against the
/// row it has locked.
pub fn check(key: &KeyRecord, operation: Operation, now: Micros) -> Result<(), &'static str> {
    allows(KeyState::of(key, now), operation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::keys::{KeyPrefix, Secret},
        domain::model::KeyId,
    };

    const NOW: Micros = Micros(1_800_000_000_000_000);

    fn key() -> KeyRecord {
        let secret = Secret::generate(&KeyPrefix::default());
        KeyRecord::test_bot(KeyId::generate(), &secret, "k")
    }

    #[test]
    fn every_state_is_read_from_the_row_and_the_time() {
        let mut k = key();
        assert_eq!(KeyState::of(&k, NOW), KeyState::Live);
        k.expire_time = Some(Micros(NOW.0 + 1));
        assert_eq!(KeyState::of(&k, NOW), KeyState::Live);
        assert_eq!(
            KeyState::of(&k, Micros(NOW.0 + 1)),
            KeyState::Ended(Ended::Expired),
            "a key ends at its expiry, not after it"
        );
        k.rotated_to_id = Some(KeyId::generate());
        assert_eq!(KeyState::of(&k, NOW), KeyState::InGrace);
        assert_eq!(
            KeyState::of(&k, Micros(NOW.0 + 1)),
            KeyState::Ended(Ended::GraceOver)
        );
        k.revoke_time = Some(NOW);
        assert_eq!(KeyState::of(&k, NOW), KeyState::Ended(Ended::Revoked));
    }

    #[test]
    fn only_a_live_key_changes_and_every_key_can_be_revoked() {
        let states = [
            KeyState::Live,
            KeyState::InGrace,
            KeyState::Ended(Ended::Revoked),
            KeyState::Ended(Ended::Expired),
            KeyState::Ended(Ended::GraceOver),
        ];
        for state in states {
            let live = state == KeyState::Live;
            assert_eq!(allows(state, Operation::Update).is_ok(), live, "{state:?}");
            assert_eq!(allows(state, Operation::Rotate).is_ok(), live, "{state:?}");
            assert!(allows(state, Operation::Revoke).is_ok(), "{state:?}");
        }
    }
}
