//! Who may do what with keys: the contract's member/admin rules, in one place.
//! Every rule answers with the reason a refused caller gets.

use super::error::Error;
use crate::domain::model::{Actor, KeyRecord, KeyType, Owner, Role, UserId};

/// The owner a new key of `key_type` gets when `actor` creates it: members
/// create only user keys, for themselves; only admins create bot keys.
pub fn owner_of_new_key(actor: &Actor, key_type: KeyType) -> Result<Owner, Error> {
    match key_type {
        KeyType::User => Ok(Owner::User(actor.id.clone())),
        KeyType::Bot => {
            require_admin(actor, "only admins create bot keys")?;
            Ok(Owner::Bot)
        }
    }
}

/// Admins may act on any key of their organization, members only on their own
/// user keys. (A key of another organization never reaches this: for the
/// caller it does not exist.)
pub fn may_act_on(actor: &Actor, key: &KeyRecord) -> Result<(), Error> {
    if actor.role == Role::Admin || key.owner.user_id() == Some(&actor.id) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(
            "members may only act on their own user keys",
        ))
    }
}

/// Limits are the admins': an admin's limit on a member's key would restrict
/// nothing if the member could lift it. So a member may not set `rate_limits`
/// or `quota` on a new key, nor name either in an update (even to the value
/// it has); admins may, on any key.
pub fn may_set_limits(actor: &Actor, rate_limits: bool, quota: bool) -> Result<(), Error> {
    match actor.role {
        Role::Admin => Ok(()),
        Role::Member if rate_limits => Err(Error::PermissionDenied(
            "members may not set or change rate_limits; ask an admin",
        )),
        Role::Member if quota => Err(Error::PermissionDenied(
            "members may not set or change quota; ask an admin",
        )),
        Role::Member => Ok(()),
    }
}

/// A key joins or leaves an identity: admins only, since the key then
/// spends the identity's limits, which other keys share.
pub fn may_set_identity(actor: &Actor, setting: bool) -> Result<(), Error> {
    match actor.role {
        Role::Member if setting => Err(Error::PermissionDenied(
            "members may not set or change a key's identity_id; ask an admin",
        )),
        _ => Ok(()),
    }
}

/// Operations on the whole organization (`RemoveMember`, the audit trail,
/// identities).
pub fn require_admin(actor: &Actor, what: &'static str) -> Result<(), Error> {
    match actor.role {
        Role::Admin => Ok(()),
        Role::Member => Err(Error::PermissionDenied(what)),
    }
}

/// Whose keys a `ListKeys` returns: an admin's filter as asked, a member's own
/// keys only (asking for another user's is refused, not silently narrowed).
pub fn list_owner(actor: &Actor, asked: Option<UserId>) -> Result<Option<UserId>, Error> {
    match actor.role {
        Role::Admin => Ok(asked),
        Role::Member => match asked {
            Some(u) if u != actor.id => Err(Error::PermissionDenied(
                "members may only list their own keys",
            )),
            _ => Ok(Some(actor.id.clone())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::keys::{KeyPrefix, Secret},
        domain::model::KeyId,
    };

    fn actor(id: &str, role: Role) -> Actor {
        Actor {
            id: UserId::parse(id).expect("user"),
            role,
        }
    }

    fn user_key_of(owner: &str) -> KeyRecord {
        let secret = Secret::generate(&KeyPrefix::default());
        KeyRecord {
            owner: Owner::User(UserId::parse(owner).expect("user")),
            ..KeyRecord::test_bot(KeyId::generate(), &secret, "k")
        }
    }

    #[test]
    fn members_create_user_keys_for_themselves_and_only_admins_bot_keys() {
        let alice = actor("alice", Role::Member);
        assert_eq!(
            owner_of_new_key(&alice, KeyType::User).expect("allowed"),
            Owner::User(alice.id.clone())
        );
        assert!(matches!(
            owner_of_new_key(&alice, KeyType::Bot),
            Err(Error::PermissionDenied(_))
        ));
        let admin = actor("root", Role::Admin);
        assert_eq!(
            owner_of_new_key(&admin, KeyType::Bot).expect("allowed"),
            Owner::Bot
        );
    }

    #[test]
    fn members_act_only_on_their_own_user_keys() {
        let alice = actor("alice", Role::Member);
        assert!(may_act_on(&alice, &user_key_of("alice")).is_ok());
        assert!(may_act_on(&alice, &user_key_of("bob")).is_err());
        let secret = Secret::generate(&KeyPrefix::default());
        let bot = KeyRecord::test_bot(KeyId::generate(), &secret, "bot");
        assert!(may_act_on(&alice, &bot).is_err());
        let admin = actor("root", Role::Admin);
        assert!(may_act_on(&admin, &user_key_of("bob")).is_ok());
        assert!(may_act_on(&admin, &bot).is_ok());
    }

    #[test]
    fn a_member_lists_their_own_keys_and_asking_for_others_is_refused() {
        let alice = actor("alice", Role::Member);
        assert_eq!(
            list_owner(&alice, None).expect("own"),
            Some(alice.id.clone())
        );
        assert_eq!(
            list_owner(&alice, Some(alice.id.clone())).expect("own"),
            Some(alice.id.clone())
        );
        assert!(list_owner(&alice, Some(UserId::parse("bob").expect("user"))).is_err());
        let admin = actor("root", Role::Admin);
        assert_eq!(list_owner(&admin, None).expect("all"), None);
    }

    #[test]
    fn limits_are_the_admins() {
        let alice = actor("alice", Role::Member);
        assert!(may_set_limits(&alice, false, false).is_ok());
        for (rate, quota, field) in [
            (true, false, "rate_limits"),
            (false, true, "quota"),
            (true, true, "rate_limits"),
        ] {
            match may_set_limits(&alice, rate, quota) {
                Err(Error::PermissionDenied(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(may_set_limits(&actor("root", Role::Admin), true, true).is_ok());
        assert!(require_admin(&alice, "x").is_err());
    }
}
