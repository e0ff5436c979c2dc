//! Who may do what with keys: the contract's member/admin rules, in one place.
//! Every rule answers with the reason a refused caller gets.

use super::error::Error;
use crate::model::{Actor, KeyRecord, KeyType, Owner, Role, UserId};

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

/// Operations on the whole organization (`RemoveMember`, the audit trail).
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
