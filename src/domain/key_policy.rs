//! An organization's rules for its keys (`SetKeyPolicy`): how long a key may
//! live, whether a bot key must be tied to networks, which scopes a bot key may
//! hold, and how long a rotated key may keep working. Platform and security
//! teams set these once, so that no admin of the organization has to remember
//! them on every key.
//!
//! The rules apply to what a request would make: a new key (`CreateKey`), the
//! fields an `UpdateKey` changes, and the replacement a `RotateKey` creates.
//! Keys that exist are not changed by a new policy, and an update that leaves a
//! field alone is not refused because of it: a policy is not a migration. A
//! refusal names the rule (`key policy max_lifetime: …`), so the caller knows
//! which of the organization's rules to read, or to ask an admin about.

use super::error::Error;
use crate::domain::{
    model::{KeyPatch, KeyRecord, KeyType, Micros},
    networks::AllowedNetworks,
    scopes::{ScopeSet, parse_scope},
};

const SECOND: i64 = 1_000_000;
const DAY: i64 = 86_400 * SECOND;
/// `max_lifetime`'s bounds: a minute (anything shorter is a typo) to ten years.
pub const MIN_LIFETIME: Micros = Micros(60 * SECOND);
pub const MAX_LIFETIME: Micros = Micros(3650 * DAY);

/// The rules; each `None` (or `false`) is no rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Longest a key may live, from its creation.
    pub max_lifetime: Option<Micros>,
    pub require_networks_for_bot_keys: bool,
    /// Every scope of a bot key must be granted by this set.
    pub allowed_bot_scopes: Option<ScopeSet>,
    /// Longest grace period a rotation may give the old key; `Micros(0)`
    /// means a rotation must revoke it at once.
    pub max_rotation_grace: Option<Micros>,
}

/// A refusal that names the rule.
fn broken(rule: &str, why: impl std::fmt::Display) -> Error {
    Error::BreaksKeyPolicy(format!("key policy {rule}: {why}"))
}

/// `90d`, `36h`, `90s`: a duration as a person would write it in a message.
pub fn human(d: Micros) -> String {
    let s = d.0 / SECOND;
    match s {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 && s > 0 => format!("{}h", s / 3_600),
        s => format!("{s}s"),
    }
}

impl KeyPolicy {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The latest expiry a key created at `created` may have.
    fn latest_expiry(&self, created: Micros) -> Option<Micros> {
        self.max_lifetime
            .map(|l| Micros(created.0.saturating_add(l.0)))
    }

    fn lifetime(&self, created: Micros, expire: Option<Micros>) -> Result<(), Error> {
        let (Some(latest), Some(max)) = (self.latest_expiry(created), self.max_lifetime) else {
            return Ok(());
        };
        match expire {
            None => Err(broken(
                "max_lifetime",
                format!(
                    "keys live at most {}; a key must have an expiry",
                    human(max)
                ),
            )),
            Some(e) if e > latest => Err(broken(
                "max_lifetime",
                format!(
                    "keys live at most {} from their creation; expire_time may be at most {}",
                    human(max),
                    crate::domain::json::rfc3339(latest)
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    fn bot_scopes(&self, key_type: KeyType, scopes: &ScopeSet) -> Result<(), Error> {
        let (KeyType::Bot, Some(allowed)) = (key_type, &self.allowed_bot_scopes) else {
            return Ok(());
        };
        match scopes
            .iter()
            .find(|s| !parse_scope(s).is_ok_and(|r| allowed.grants(r)))
        {
            Some(s) => Err(broken(
                "allowed_bot_scopes",
                format!(
                    "bot keys may hold only {}; {s:?} is not among them",
                    allowed.to_vec().join(" ")
                ),
            )),
            None => Ok(()),
        }
    }

    fn bot_networks(&self, key_type: KeyType, networks: &AllowedNetworks) -> Result<(), Error> {
        if key_type == KeyType::Bot && self.require_networks_for_bot_keys && networks.is_empty() {
            return Err(broken(
                "require_networks_for_bot_keys",
                "a bot key must have at least one network in allowed_networks",
            ));
        }
        Ok(())
    }

    /// A new key's expiry under the policy (`now + max_lifetime` when it asked
    /// for none), or the rule it breaks.
    pub fn admit_new(
        &self,
        key_type: KeyType,
        scopes: &ScopeSet,
        networks: &AllowedNetworks,
        expire_time: Option<Micros>,
        now: Micros,
    ) -> Result<Option<Micros>, Error> {
        self.bot_scopes(key_type, scopes)?;
        self.bot_networks(key_type, networks)?;
        let expire_time = expire_time.or(self.latest_expiry(now));
        self.lifetime(now, expire_time)?;
        Ok(expire_time)
    }

    /// The fields `patch` changes, as they would be on `key`. A key's lifetime
    /// counts from its creation, so an update cannot extend it past the
    /// policy's maximum: that takes a rotation, which makes a new key.
    pub fn admit_update(&self, key: &KeyRecord, patch: &KeyPatch) -> Result<(), Error> {
        let key_type = key.owner.key_type();
        if let Some(scopes) = &patch.scopes {
            self.bot_scopes(key_type, scopes)?;
        }
        if let Some(networks) = &patch.allowed_networks {
            self.bot_networks(key_type, networks)?;
        }
        if let Some(expire) = patch.expire_time {
            self.lifetime(key.create_time, expire)?;
        }
        Ok(())
    }

    /// A rotation of `old` with `grace`: the replacement copies the old key's
    /// settings, so it must meet the scope and network rules itself; its expiry
    /// is the old key's, brought within `now + max_lifetime` (a rotation is how
    /// a key older than the policy comes under it, so it is not refused).
    pub fn admit_rotation(
        &self,
        old: &KeyRecord,
        grace: Option<Micros>,
        now: Micros,
    ) -> Result<Option<Micros>, Error> {
        if let Some(max) = self.max_rotation_grace {
            let asked = grace.unwrap_or(Micros(0));
            if asked > max {
                return Err(broken(
                    "max_rotation_grace",
                    if max.0 == 0 {
                        "a rotation must revoke the old key at once (grace_period 0)".to_owned()
                    } else {
                        format!("grace_period may be at most {}", human(max))
                    },
                ));
            }
        }
        let key_type = old.owner.key_type();
        self.bot_scopes(key_type, &old.scopes)?;
        self.bot_networks(key_type, &old.allowed_networks)?;
        Ok(match (old.expire_time, self.latest_expiry(now)) {
            (Some(e), Some(latest)) => Some(e.min(latest)),
            (e, latest) => e.or(latest),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        keys::{KeyPrefix, Secret},
        model::KeyId,
    };

    const NOW: Micros = Micros(1_800_000_000 * SECOND);

    fn scopes(list: &[&str]) -> ScopeSet {
        ScopeSet::parse(list).expect("scopes")
    }

    fn bot() -> KeyRecord {
        let secret = Secret::generate(&KeyPrefix::default());
        let mut k = KeyRecord::test_bot(KeyId::generate(), &secret, "bot");
        k.create_time = NOW;
        k
    }

    fn rule_of(e: Error) -> String {
        match e {
            Error::BreaksKeyPolicy(m) => m,
            other => panic!("not a policy refusal: {other:?}"),
        }
    }

    #[test]
    fn an_empty_policy_admits_everything() {
        let p = KeyPolicy::default();
        let none = AllowedNetworks::default();
        assert_eq!(
            p.admit_new(KeyType::Bot, &scopes(&["a:b"]), &none, None, NOW)
                .expect("ok"),
            None
        );
        assert_eq!(
            p.admit_rotation(&bot(), Some(Micros(DAY)), NOW)
                .expect("ok"),
            None
        );
    }

    #[test]
    fn max_lifetime_gives_an_expiry_and_refuses_a_later_one() {
        let p = KeyPolicy {
            max_lifetime: Some(Micros(90 * DAY)),
            ..KeyPolicy::default()
        };
        let none = AllowedNetworks::default();
        let s = scopes(&["a:b"]);
        let latest = Micros(NOW.0 + 90 * DAY);
        assert_eq!(
            p.admit_new(KeyType::User, &s, &none, None, NOW)
                .expect("ok"),
            Some(latest)
        );
        assert_eq!(
            p.admit_new(KeyType::User, &s, &none, Some(latest), NOW)
                .expect("ok"),
            Some(latest)
        );
        let e = p
            .admit_new(KeyType::User, &s, &none, Some(Micros(latest.0 + 1)), NOW)
            .expect_err("too late");
        assert!(rule_of(e).starts_with("key policy max_lifetime: keys live at most 90d"));
        // An update counts from the key's creation, and may not remove the expiry.
        let mut key = bot();
        key.create_time = Micros(NOW.0 - 80 * DAY);
        let patch = |e| KeyPatch {
            expire_time: Some(e),
            ..KeyPatch::default()
        };
        assert!(
            p.admit_update(&key, &patch(Some(Micros(NOW.0 + 10 * DAY))))
                .is_ok()
        );
        assert!(
            p.admit_update(&key, &patch(Some(Micros(NOW.0 + 11 * DAY))))
                .is_err()
        );
        assert!(
            rule_of(p.admit_update(&key, &patch(None)).expect_err("never"))
                .contains("must have an expiry")
        );
        // A name change of a key older than the policy is not refused.
        let rename = KeyPatch::default();
        assert!(p.admit_update(&key, &rename).is_ok());
        // A rotation brings the replacement within the policy.
        key.expire_time = None;
        assert_eq!(p.admit_rotation(&key, None, NOW).expect("ok"), Some(latest));
        key.expire_time = Some(Micros(NOW.0 + DAY));
        assert_eq!(
            p.admit_rotation(&key, None, NOW).expect("ok"),
            Some(Micros(NOW.0 + DAY))
        );
    }

    #[test]
    fn bot_rules_apply_to_bot_keys_only() {
        let p = KeyPolicy {
            require_networks_for_bot_keys: true,
            allowed_bot_scopes: Some(scopes(&["links:read", "reports:*"])),
            ..KeyPolicy::default()
        };
        let none = AllowedNetworks::default();
        let nets = AllowedNetworks::parse(["10.0.0.0/8"]).expect("nets");
        let ok = scopes(&["links:read", "reports:export"]);
        assert!(
            p.admit_new(KeyType::User, &scopes(&["admin:*"]), &none, None, NOW)
                .is_ok()
        );
        assert!(p.admit_new(KeyType::Bot, &ok, &nets, None, NOW).is_ok());
        let e = rule_of(
            p.admit_new(KeyType::Bot, &ok, &none, None, NOW)
                .expect_err("no nets"),
        );
        assert!(
            e.starts_with("key policy require_networks_for_bot_keys:"),
            "{e}"
        );
        let e = rule_of(
            p.admit_new(
                KeyType::Bot,
                &scopes(&["links:read", "links:write"]),
                &nets,
                None,
                NOW,
            )
            .expect_err("scope"),
        );
        assert!(
            e.starts_with("key policy allowed_bot_scopes:") && e.contains("\"links:write\""),
            "{e}"
        );
        // A wildcard scope needs the wildcard itself in the policy.
        assert!(
            p.admit_new(KeyType::Bot, &scopes(&["links:*"]), &nets, None, NOW)
                .is_err()
        );
        // Updates: only the fields changed are checked.
        let key = bot();
        let clear_nets = KeyPatch {
            allowed_networks: Some(AllowedNetworks::default()),
            ..KeyPatch::default()
        };
        assert!(p.admit_update(&key, &clear_nets).is_err());
        assert!(p.admit_update(&key, &KeyPatch::default()).is_ok());
        // A rotation makes a new key with the old settings, so they must comply.
        assert!(p.admit_rotation(&key, None, NOW).is_err());
    }

    #[test]
    fn max_rotation_grace_bounds_the_grace_period() {
        let p = KeyPolicy {
            max_rotation_grace: Some(Micros(3_600 * SECOND)),
            ..KeyPolicy::default()
        };
        let key = bot();
        assert!(p.admit_rotation(&key, None, NOW).is_ok());
        assert!(
            p.admit_rotation(&key, Some(Micros(3_600 * SECOND)), NOW)
                .is_ok()
        );
        let e = rule_of(
            p.admit_rotation(&key, Some(Micros(3_601 * SECOND)), NOW)
                .expect_err("long"),
        );
        assert_eq!(
            e,
            "key policy max_rotation_grace: grace_period may be at most 1h"
        );
        let at_once = KeyPolicy {
            max_rotation_grace: Some(Micros(0)),
            ..KeyPolicy::default()
        };
        assert!(at_once.admit_rotation(&key, None, NOW).is_ok());
        assert!(
            at_once
                .admit_rotation(&key, Some(Micros(SECOND)), NOW)
                .is_err()
        );
    }
}
