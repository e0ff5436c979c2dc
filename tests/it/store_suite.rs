//! The `Store` conformance suite, after quickwit's `metastore_test_suite`: what
//! every back end of the store must do, tested at the `Store` level (no gRPC, no
//! cache), each test run once on SQLite and once on MariaDB/MySQL.
//!
//! Size: the conformance suite is one list of behaviours every back end must have;
//! kept whole so a new back end is checked against all of it at once.

use std::collections::{HashMap, HashSet};

use keygate::{
    domain::hostnames::AllowedHostnames,
    domain::identities::{ExternalId, IdentityId, IdentityName, IdentityPatch, IdentityRecord},
    domain::key_policy::KeyPolicy,
    domain::keys::{KeyPrefix, Secret, SecretHash},
    domain::lifecycle::{self, Operation},
    domain::limits::{LimitsOwner, Quota, QuotaPeriod},
    domain::metadata::Metadata,
    domain::model::{
        EventAction, KeyEvent, KeyId, KeyName, KeyPatch, KeyRecord, KeyType, Micros,
        OrganizationId, Owner, UserId,
    },
    domain::networks::{AllowedNetworks, BoundPrincipals},
    domain::scopes::ScopeSet,
    store::{KeyFilter, PoolConfig, QuotaTake, Store, StoreError, UsageDelta},
};

use crate::support::*;

/// Keys per usage statement in `Store::add_usage`.
const USAGE_CHUNK: usize = 1000;

/// A migrated store on a database of the test's own.
async fn fresh_store(backend: Backend) -> (TestDb, Store) {
    let db = TestDb::create(backend).await;
    let store = Store::connect(&db.url, &PoolConfig::default())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    (db, store)
}

async fn finish(db: TestDb, store: Store) {
    store.close().await;
    db.drop_db().await;
}

fn org(s: &str) -> OrganizationId {
    OrganizationId::parse(s).expect("organization id")
}

fn user(s: &str) -> UserId {
    UserId::parse(s).expect("user id")
}

fn scopes(s: &[&str]) -> ScopeSet {
    ScopeSet::parse(s.iter().copied()).expect("scopes")
}

/// A new key as CreateKey builds it (see `services::keys`), created at `now`, with
/// a hostname, networks, a principal and an expiry so that every column
/// round-trips.
fn record(org_id: &str, owner: Owner, name: &str, now: Micros) -> KeyRecord {
    let secret = Secret::generate(&KeyPrefix::default());
    KeyRecord {
        owner,
        allowed_hostnames: AllowedHostnames::parse(["example.com"]).expect("hostnames"),
        allowed_networks: AllowedNetworks::parse(["10.0.0.0/8", "2001:db8::/32"])
            .expect("networks"),
        bound_principals: BoundPrincipals::parse(["spiffe://acme.test/sa/*"]).expect("principals"),
        metadata: Metadata::parse(
            "metadata",
            &[("plan".to_owned(), "pro ✓".to_owned())]
                .into_iter()
                .collect(),
        )
        .expect("metadata"),
        expire_time: Some(Micros(now.0 + 86_400_000_000)),
        ..bot_record(org_id, name, &secret, now)
    }
}

fn bot(org_id: &str, name: &str) -> KeyRecord {
    record(org_id, Owner::Bot, name, Micros::now())
}

fn user_key(org_id: &str, member: &str, name: &str) -> KeyRecord {
    record(org_id, Owner::User(user(member)), name, Micros::now())
}

/// `KeyRecord` has no `PartialEq`; its Debug form shows every field.
#[track_caller]
fn assert_same(a: &KeyRecord, b: &KeyRecord) {
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

fn filter(org_id: &str) -> KeyFilter {
    KeyFilter {
        organization_id: org(org_id),
        key_type: None,
        user_id: None,
        include_revoked: true,
        after: None,
        limit: 1000,
    }
}

/// Every page of `f`, `limit` keys at a time, as ids; checks each page's size.
async fn page_through(store: &Store, mut f: KeyFilter, limit: u32) -> Vec<KeyId> {
    f.limit = limit;
    f.after = None;
    let mut ids = Vec::new();
    loop {
        let page = store.list_keys(&f).await.expect("list keys");
        assert!(page.len() <= limit as usize, "a page of {}", page.len());
        let Some(last) = page.last() else { break };
        f.after = Some(last.id.clone());
        let short = page.len() < limit as usize;
        ids.extend(page.into_iter().map(|k| k.id));
        if short {
            // A short page is the last: the next is empty.
            assert!(store.list_keys(&f).await.expect("list").is_empty());
            break;
        }
    }
    ids
}

async fn events(store: &Store, org_id: &str, key: Option<&KeyId>) -> Vec<KeyEvent> {
    store
        .list_events(&org(org_id), key, 0, 1000)
        .await
        .expect("list events")
}

/// `(id, action, key, actor)` of events, to compare in one assertion.
fn summary(events: &[KeyEvent]) -> Vec<(u64, EventAction, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.id,
                e.action,
                e.key_id.as_ref().map_or("", |k| k.as_str()).to_owned(),
                e.actor_id.as_str().to_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------

/// Create, get, update, revoke: each returns and stores what it says, each
/// change writes its one event, and a key of another organization is not there.
async fn a_key_round_trips_through_its_life_cycle(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let t0 = Micros::now();
    let key = record("acme", Owner::Bot, "deploy", t0);
    store.create_key(&key).await.expect("create");

    let got = store
        .get_key(&key.organization_id, &key.id)
        .await
        .expect("get")
        .expect("the created key");
    assert_same(&got, &key);
    assert!(
        store
            .get_key(&org("globex"), &key.id)
            .await
            .expect("get")
            .is_none(),
        "another organization's key is not there"
    );
    assert!(
        store
            .get_key(&key.organization_id, &KeyId::generate())
            .await
            .expect("get")
            .is_none()
    );

    // Update: name and scopes change, the rest stays.
    let t1 = Micros(t0.0 + 1_000);
    let patch = KeyPatch {
        name: Some(KeyName::parse("deploy v2").expect("name")),
        scopes: Some(scopes(&["links:read", "links:write"])),
        allowed_hostnames: None,
        expire_time: Some(None),
        ..KeyPatch::default()
    };
    let updater = user("admin-2");
    let updated = store
        .update_key(&key.organization_id, &key.id, &patch, &updater, t1, &|k| {
            lifecycle::check(k, Operation::Update, t1)
        })
        .await
        .expect("update");
    let mut want = key.clone();
    patch.apply(&mut want);
    want.update_time = t1;
    assert_same(&updated, &want);
    let got = store
        .get_key(&key.organization_id, &key.id)
        .await
        .expect("get")
        .expect("key");
    assert_same(&got, &want);
    let missing = store
        .update_key(
            &key.organization_id,
            &KeyId::generate(),
            &patch,
            &updater,
            t1,
            &|k| lifecycle::check(k, Operation::Update, t1),
        )
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");

    // Revoke, then revoke again: the second changes nothing and writes no event.
    let t2 = Micros(t1.0 + 1_000);
    let revoker = user("admin-3");
    let revoked = store
        .revoke_key(&key.organization_id, &key.id, &revoker, t2)
        .await
        .expect("revoke");
    want.revoke_time = Some(t2);
    want.update_time = t2;
    assert_same(&revoked, &want);
    let again = store
        .revoke_key(
            &key.organization_id,
            &key.id,
            &user("admin-4"),
            Micros(t2.0 + 1),
        )
        .await
        .expect("revoking a revoked key");
    assert_same(&again, &want);
    let refused = store
        .update_key(&key.organization_id, &key.id, &patch, &updater, t2, &|k| {
            lifecycle::check(k, Operation::Update, t2)
        })
        .await;
    assert!(
        matches!(refused, Err(StoreError::Precondition(_))),
        "{refused:?}"
    );
    let missing = store
        .revoke_key(&key.organization_id, &KeyId::generate(), &revoker, t2)
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");

    let trail = events(&store, "acme", Some(&key.id)).await;
    let id = key.id.as_str().to_owned();
    assert_eq!(
        summary(&trail),
        [
            (1, EventAction::Created, id.clone(), "admin-1".to_owned()),
            (2, EventAction::Updated, id.clone(), "admin-2".to_owned()),
            (3, EventAction::Revoked, id, "admin-3".to_owned()),
        ]
    );
    assert_eq!(
        trail.iter().map(|e| e.time).collect::<Vec<_>>(),
        [t0, t1, t2]
    );
    assert!(
        trail
            .iter()
            .all(|e| e.organization_id == key.organization_id)
    );
    finish(db, store).await;
}

/// RemoveMember deletes every user key of the member in that organization,
/// revoked ones included, each with a DELETED event, and returns their hashes;
/// nobody else's keys are touched.
async fn removing_a_member_deletes_their_user_keys_with_events(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let old = user_key("acme", "alice", "old");
    store.create_key(&old).await.expect("create");
    store
        .revoke_key(
            &old.organization_id,
            &old.id,
            &user("admin-1"),
            Micros::now(),
        )
        .await
        .expect("revoke");
    let live = user_key("acme", "alice", "live");
    let bobs = user_key("acme", "bob", "bob's");
    let robot = bot("acme", "robot");
    let elsewhere = user_key("globex", "alice", "alice at globex");
    for k in [&live, &bobs, &robot, &elsewhere] {
        store.create_key(k).await.expect("create");
    }
    let before = events(&store, "acme", None).await.len();
    assert_eq!(before, 5, "4 creations and a revocation");

    let now = Micros::now();
    let mut hashes = store
        .remove_member(&org("acme"), &user("alice"), &user("admin-9"), now)
        .await
        .expect("remove member");
    hashes.sort_unstable();
    let mut want = vec![old.secret_hash, live.secret_hash];
    want.sort_unstable();
    assert_eq!(hashes, want);

    for gone in [&old, &live] {
        assert!(
            store
                .get_key(&gone.organization_id, &gone.id)
                .await
                .expect("get")
                .is_none()
        );
    }
    for kept in [&bobs, &robot, &elsewhere] {
        assert!(
            store
                .get_key(&kept.organization_id, &kept.id)
                .await
                .expect("get")
                .is_some(),
            "{} was kept",
            kept.name.as_str()
        );
    }
    let trail = events(&store, "acme", None).await;
    let deleted: Vec<_> = trail[before..].to_vec();
    assert_eq!(deleted.len(), 2);
    assert_eq!(
        deleted.iter().map(|e| e.id).collect::<Vec<_>>(),
        [6, 7],
        "the organization's sequence goes on without a gap"
    );
    let deleted_keys: HashSet<&str> = deleted
        .iter()
        .filter_map(|e| e.key_id.as_ref().map(KeyId::as_str))
        .collect();
    assert_eq!(
        deleted_keys,
        HashSet::from([old.id.as_str(), live.id.as_str()])
    );
    for e in &deleted {
        assert_eq!(e.action, EventAction::Deleted);
        assert_eq!(e.actor_id.as_str(), "admin-9");
        assert_eq!(e.time, now);
    }

    // A member without keys: nothing deleted, no event.
    let none = store
        .remove_member(&org("acme"), &user("nobody"), &user("admin-9"), now)
        .await
        .expect("remove member");
    assert!(none.is_empty());
    assert_eq!(events(&store, "acme", None).await.len(), before + 2);
    finish(db, store).await;
}

/// The unique index on live user keys: one per member and organization, none
/// for bots, and a revoked key frees the slot. A refused create writes nothing.
async fn one_live_user_key_per_member_and_organization(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let first = user_key("acme", "alice", "first");
    store.create_key(&first).await.expect("create");
    let second = user_key("acme", "alice", "second");
    let refused = store.create_key(&second).await;
    assert!(
        matches!(refused, Err(StoreError::LiveUserKeyExists)),
        "{refused:?}"
    );
    assert!(
        store
            .get_key(&second.organization_id, &second.id)
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(events(&store, "acme", None).await.len(), 1, "no event");

    // Another member, another organization, and bots are not limited.
    for k in [
        user_key("acme", "bob", "bob's"),
        user_key("globex", "alice", "alice at globex"),
        bot("acme", "bot 1"),
        bot("acme", "bot 2"),
    ] {
        store.create_key(&k).await.expect("create");
    }

    store
        .revoke_key(
            &first.organization_id,
            &first.id,
            &user("alice"),
            Micros::now(),
        )
        .await
        .expect("revoke");
    let third = user_key("acme", "alice", "third");
    store
        .create_key(&third)
        .await
        .expect("a revoked key frees the slot");
    let again = store.create_key(&user_key("acme", "alice", "fourth")).await;
    assert!(
        matches!(again, Err(StoreError::LiveUserKeyExists)),
        "{again:?}"
    );
    // Removing the member frees it too.
    store
        .remove_member(
            &org("acme"),
            &user("alice"),
            &user("admin-1"),
            Micros::now(),
        )
        .await
        .expect("remove member");
    store
        .create_key(&user_key("acme", "alice", "fifth"))
        .await
        .expect("after RemoveMember");
    finish(db, store).await;
}

/// `list_keys` returns an organization's keys in id order, page by page after
/// the last id, with the type, user and revoked filters applied before paging.
async fn list_keys_pages_in_id_order_with_filters(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let mut all: Vec<KeyRecord> = Vec::new();
    for i in 0..7 {
        all.push(bot("acme", &format!("bot {i}")));
    }
    for m in ["alice", "bob", "carol", "dave"] {
        all.push(user_key("acme", m, m));
    }
    for k in &all {
        store.create_key(k).await.expect("create");
        // Another organization's keys interleaved: never listed here.
        store
            .create_key(&bot("globex", "noise"))
            .await
            .expect("create");
    }
    let revoked: HashSet<KeyId> = [all[1].id.clone(), all[4].id.clone(), all[8].id.clone()].into();
    for id in &revoked {
        store
            .revoke_key(&org("acme"), id, &user("admin-1"), Micros::now())
            .await
            .expect("revoke");
    }
    let ids = |keep: &dyn Fn(&KeyRecord) -> bool| {
        let mut v: Vec<KeyId> = all
            .iter()
            .filter(|k| keep(k))
            .map(|k| k.id.clone())
            .collect();
        v.sort();
        v
    };
    let every = ids(&|_| true);
    let live = ids(&|k| !revoked.contains(&k.id));
    let bots = ids(&|k| k.owner == Owner::Bot);
    let live_users = ids(&|k| k.owner != Owner::Bot && !revoked.contains(&k.id));
    let bob = ids(&|k| k.owner.user_id().is_some_and(|u| u.as_str() == "bob"));

    for limit in [1, 3, 4, 11, 1000] {
        assert_eq!(
            page_through(&store, filter("acme"), limit).await,
            every,
            "limit {limit}"
        );
        let f = KeyFilter {
            include_revoked: false,
            ..filter("acme")
        };
        assert_eq!(page_through(&store, f, limit).await, live, "limit {limit}");
    }
    let f = KeyFilter {
        key_type: Some(KeyType::Bot),
        ..filter("acme")
    };
    assert_eq!(page_through(&store, f, 2).await, bots);
    let f = KeyFilter {
        key_type: Some(KeyType::User),
        include_revoked: false,
        ..filter("acme")
    };
    assert_eq!(page_through(&store, f, 2).await, live_users);
    let f = KeyFilter {
        user_id: Some(user("bob")),
        ..filter("acme")
    };
    assert_eq!(page_through(&store, f, 2).await, bob);
    assert_eq!(bob.len(), 1);
    let f = KeyFilter {
        user_id: Some(user("bob")),
        key_type: Some(KeyType::Bot),
        ..filter("acme")
    };
    assert!(store.list_keys(&f).await.expect("list").is_empty());

    // `after` an id that is not a key of the list still pages from there.
    let f = KeyFilter {
        after: Some(every[5].clone()),
        limit: 3,
        ..filter("acme")
    };
    let page: Vec<KeyId> = store
        .list_keys(&f)
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(page, every[6..9]);
    assert!(
        store
            .list_keys(&filter("initech"))
            .await
            .expect("list")
            .is_empty()
    );
    finish(db, store).await;
}

/// Event ids count each organization's events on their own (1, 2, 3, … with
/// no gaps), however the writes of two organizations interleave; `list_events`
/// pages by them, for the organization or one key.
async fn event_ids_count_each_organization_on_its_own(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let mut acme = Vec::new();
    let mut globex = Vec::new();
    for round in 0..4 {
        let a = bot("acme", &format!("a{round}"));
        store.create_key(&a).await.expect("create");
        let g = bot("globex", &format!("g{round}"));
        store.create_key(&g).await.expect("create");
        let g2 = bot("globex", &format!("g{round}'"));
        store.create_key(&g2).await.expect("create");
        store
            .revoke_key(&g.organization_id, &g.id, &user("admin-1"), Micros::now())
            .await
            .expect("revoke");
        acme.push(a);
        globex.extend([g, g2]);
    }
    let acme_events = events(&store, "acme", None).await;
    let globex_events = events(&store, "globex", None).await;
    assert_eq!(
        acme_events.iter().map(|e| e.id).collect::<Vec<_>>(),
        (1..=4).collect::<Vec<u64>>()
    );
    assert_eq!(
        globex_events.iter().map(|e| e.id).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<u64>>()
    );
    assert!(
        acme_events
            .iter()
            .zip(&acme)
            .all(|(e, k)| e.key_id.as_ref() == Some(&k.id) && e.action == EventAction::Created)
    );
    assert!(
        globex_events
            .iter()
            .all(|e| e.organization_id == org("globex"))
    );

    // Pages of 5 after the last id seen.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .list_events(&org("globex"), None, after, 5)
            .await
            .expect("list events");
        assert!(page.len() <= 5);
        let Some(last) = page.last() else { break };
        after = last.id;
        seen.extend(page.iter().map(|e| e.id));
    }
    assert_eq!(seen, (1..=12).collect::<Vec<u64>>());

    // One key's events, with their organization's ids.
    let first = &globex[0];
    let trail = store
        .list_events(&org("globex"), Some(&first.id), 0, 10)
        .await
        .expect("list events");
    assert_eq!(
        trail.iter().map(|e| (e.id, e.action)).collect::<Vec<_>>(),
        [(1, EventAction::Created), (3, EventAction::Revoked)]
    );
    let later = store
        .list_events(&org("globex"), Some(&first.id), 1, 10)
        .await
        .expect("list events");
    assert_eq!(later.iter().map(|e| e.id).collect::<Vec<_>>(), [3]);
    assert!(
        store
            .list_events(&org("acme"), Some(&first.id), 0, 10)
            .await
            .expect("list events")
            .is_empty(),
        "another organization's key has no events here"
    );
    finish(db, store).await;
}

/// `events_after` is the invalidation poll's read: every organization's events
/// in global id order, after an id, at most `limit`, each with its key's hash
/// and time; `last_event_id` is the newest id (0 for none).
async fn events_after_reads_all_organizations_in_order(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    assert_eq!(store.last_event_id().await.expect("last id"), 0);
    assert!(store.events_after(0, 10).await.expect("read").is_empty());

    // (hash, time) of each event in the order written.
    let mut written: Vec<(SecretHash, Micros)> = Vec::new();
    for i in 0..5 {
        let org_id = if i % 2 == 0 { "acme" } else { "globex" };
        let k = bot(org_id, &format!("k{i}"));
        store.create_key(&k).await.expect("create");
        written.push((k.secret_hash, k.create_time));
        if i % 2 == 1 {
            let t = Micros::now();
            store
                .revoke_key(&k.organization_id, &k.id, &user("admin-1"), t)
                .await
                .expect("revoke");
            written.push((k.secret_hash, t));
        }
    }
    let all = store.events_after(0, 1000).await.expect("read");
    assert_eq!(all.len(), written.len());
    assert!(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "ascending ids: {:?}",
        all.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(
        all.iter().map(|e| (e.hash, e.time)).collect::<Vec<_>>(),
        written,
        "each event's hash and time, in the order written"
    );
    let last = all.last().expect("events").id;
    assert_eq!(store.last_event_id().await.expect("last id"), last);

    // Limits and `after`: pages of 2 read the same sequence.
    assert_eq!(store.events_after(0, 2).await.expect("read"), all[..2]);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after(after, 2).await.expect("read");
        assert!(page.len() <= 2);
        let Some(l) = page.last() else { break };
        after = l.id;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert_eq!(
        store.events_after(all[3].id, 1000).await.expect("read"),
        all[4..]
    );
    assert!(
        store
            .events_after(last, 1000)
            .await
            .expect("read")
            .is_empty()
    );
    finish(db, store).await;
}

/// Creates `n` bot keys of `org_id`, a few at a time.
async fn create_many(store: &Store, org_id: &str, n: usize) -> Vec<KeyRecord> {
    let keys: Vec<KeyRecord> = (0..n).map(|i| bot(org_id, &format!("k{i}"))).collect();
    for batch in keys.chunks(8) {
        let writes = batch.iter().map(|k| {
            let store = store.clone();
            let k = k.clone();
            tokio::spawn(async move { store.create_key(&k).await })
        });
        for w in writes.collect::<Vec<_>>() {
            w.await.expect("task").expect("create");
        }
    }
    keys
}

/// More deltas than one usage statement takes (the chunk size is 1000): every
/// one lands exactly, counts add up across calls, the last use only moves
/// forward, and a delta for a key deleted meanwhile is dropped without failing
/// the batch.
async fn usage_beyond_one_chunk_lands_exactly(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let n = USAGE_CHUNK + 150;
    let keys = create_many(&store, "acme", n).await;
    let gone = user_key("acme", "leaver", "deleted before the flush");
    store.create_key(&gone).await.expect("create");
    store
        .remove_member(
            &org("acme"),
            &user("leaver"),
            &user("admin-1"),
            Micros::now(),
        )
        .await
        .expect("remove member");

    let t0 = Micros::now().0;
    let hour = t0.div_euclid(3_600_000_000) * 3_600_000_000;
    let mut deltas: Vec<UsageDelta> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| UsageDelta {
            key_id: k.id.clone(),
            count: i as u64 + 1,
            last_used: Micros(t0 + i as i64),
            history: vec![(Micros(hour), 1, i as u64 + 1)],
        })
        .collect();
    // The deleted key's delta in the middle of the first chunk.
    deltas.insert(
        USAGE_CHUNK / 2,
        UsageDelta {
            key_id: gone.id.clone(),
            count: 7,
            last_used: Micros(t0),
            history: Vec::new(),
        },
    );
    assert!(deltas.len() > USAGE_CHUNK);
    store.add_usage(&deltas).await.expect("add usage");

    // A second flush: counts add, an older last use does not move it back.
    let second: Vec<UsageDelta> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| UsageDelta {
            key_id: k.id.clone(),
            count: 2,
            // One more in the same hour, one the next hour with another code.
            history: vec![(Micros(hour), 1, 1), (Micros(hour + 3_600_000_000), 5, 1)],
            last_used: if i % 2 == 0 {
                Micros(t0 - 1_000_000)
            } else {
                Micros(t0 + 1_000_000)
            },
        })
        .collect();
    store.add_usage(&second).await.expect("add usage");
    store.add_usage(&[]).await.expect("an empty flush");

    let stored: HashMap<KeyId, KeyRecord> = {
        let mut all = HashMap::new();
        let mut f = filter("acme");
        loop {
            let page = store.list_keys(&f).await.expect("list");
            let Some(last) = page.last() else { break };
            f.after = Some(last.id.clone());
            all.extend(page.into_iter().map(|k| (k.id.clone(), k)));
        }
        all
    };
    assert_eq!(stored.len(), n, "the deleted key stays deleted");
    let mut wrong = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let s = &stored[&k.id];
        let count = i as u64 + 1 + 2;
        let last = if i % 2 == 0 {
            t0 + i as i64
        } else {
            t0 + 1_000_000
        };
        if s.request_count != count || s.last_used_time != Some(Micros(last)) {
            wrong.push(format!(
                "key {i}: {} uses, last {:?}; want {count}, {last}",
                s.request_count, s.last_used_time
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {n} keys wrong:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
    // The history went with the counts, past the first chunk too, hours added
    // up into their day.
    let (from, to) = (Micros(hour - 86_400_000_000), Micros(hour + 86_400_000_000));
    for i in [0, USAGE_CHUNK + 5] {
        let hours = store
            .usage_history(&keys[i].id, false, from, to)
            .await
            .expect("hours");
        assert_eq!(
            hours,
            [
                (Micros(hour), 1, i as u64 + 2),
                (Micros(hour + 3_600_000_000), 5, 1)
            ]
        );
        let days = store
            .usage_history(&keys[i].id, true, from, to)
            .await
            .expect("days");
        let total: u64 = days.iter().map(|(_, _, n)| n).sum();
        assert_eq!(total, i as u64 + 1 + 2, "days add up to request_count");
    }
    finish(db, store).await;
}

/// The verify path's read: each stored key once however often its hash is
/// asked for, unknown hashes ignored, revoked keys returned as revoked and
/// deleted keys not at all.
async fn find_by_hashes_returns_each_stored_key_once(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let a = bot("acme", "a");
    let b = user_key("acme", "bob", "b");
    let c = bot("globex", "c");
    let revoked = bot("acme", "revoked");
    let deleted = user_key("acme", "leaver", "deleted");
    for k in [&a, &b, &c, &revoked, &deleted] {
        store.create_key(k).await.expect("create");
    }
    let t = Micros::now();
    store
        .revoke_key(&revoked.organization_id, &revoked.id, &user("admin-1"), t)
        .await
        .expect("revoke");
    store
        .remove_member(&org("acme"), &user("leaver"), &user("admin-1"), t)
        .await
        .expect("remove member");
    let unknown = || Secret::generate(&KeyPrefix::default()).hash();

    let asked = [
        a.secret_hash,
        a.secret_hash,
        unknown(),
        b.secret_hash,
        c.secret_hash,
        revoked.secret_hash,
        deleted.secret_hash,
        b.secret_hash,
        unknown(),
        a.secret_hash,
    ];
    let found = store.find_by_hashes(&asked).await.expect("read");
    let by_hash: HashMap<SecretHash, &KeyRecord> =
        found.iter().map(|k| (k.secret_hash, k)).collect();
    assert_eq!(found.len(), 4, "each stored key once");
    assert_eq!(by_hash.len(), 4);
    for k in [&a, &b, &c] {
        assert_same(by_hash[&k.secret_hash], k);
    }
    assert_eq!(by_hash[&revoked.secret_hash].revoke_time, Some(t));
    assert!(!by_hash.contains_key(&deleted.secret_hash));

    assert!(store.find_by_hashes(&[]).await.expect("read").is_empty());
    assert!(
        store
            .find_by_hashes(&[unknown(), unknown()])
            .await
            .expect("read")
            .is_empty()
    );
    let one = store
        .find_by_hashes(&[c.secret_hash; 3])
        .await
        .expect("read");
    assert_eq!(one.len(), 1);
    assert_same(&one[0], &c);
    finish(db, store).await;
}

/// A bulk import of more keys than one statement takes (a thousand rows):
/// every key reads back as written, a user key's owner and a rotation's
/// lineage included, no event is recorded, and an import that repeats a
/// key's hash writes nothing at all.
async fn an_import_writes_every_key_in_one_transaction(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let mut keys: Vec<KeyRecord> = (0..2_345).map(|i| bot("acme", &format!("k{i}"))).collect();
    keys.push(user_key("globex", "bob", "bob's"));
    let mut replacement = bot("acme", "replacement");
    replacement.lineage_id = keys[0].id.clone();
    replacement.rotated_from_id = Some(keys[0].id.clone());
    keys.push(replacement);
    store.import_keys(&keys).await.expect("import");
    assert_eq!(store.key_count().await.expect("count"), keys.len() as u64);
    let hashes: Vec<SecretHash> = keys.iter().map(|k| k.secret_hash).collect();
    let mut found = Vec::new();
    for chunk in hashes.chunks(100) {
        found.extend(store.find_by_hashes(chunk).await.expect("read"));
    }
    let by_hash: HashMap<SecretHash, &KeyRecord> =
        found.iter().map(|k| (k.secret_hash, k)).collect();
    assert_eq!(by_hash.len(), keys.len());
    for k in &keys {
        assert_same(by_hash[&k.secret_hash], k);
    }
    assert_eq!(
        by_hash[&keys[keys.len() - 1].secret_hash].lineage_id,
        keys[0].id
    );
    assert!(events(&store, "acme", None).await.is_empty());

    // The repeated hash is in the second statement: the first one's
    // thousand rows go too, since both are one transaction.
    let mut again: Vec<KeyRecord> = (0..1_200).map(|i| bot("acme", &format!("n{i}"))).collect();
    again.push(keys[5].clone());
    assert!(store.import_keys(&again).await.is_err());
    assert_eq!(store.key_count().await.expect("count"), keys.len() as u64);
    finish(db, store).await;
}

/// Quota credits: handed out only by the conditional write, never beyond the
/// limit whatever the caller read; a row of an ended period moves to the new
/// one; credits given back count again only within their period.
async fn quota_credits_are_handed_out_by_a_conditional_write(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let day = Micros(1_796_083_200_000_000); // 2026-12-01T00:00:00Z
    let next_day = Micros(day.0 + 86_400_000_000);
    let key = KeyRecord {
        quota: Some(Quota {
            limit: 10,
            period: QuotaPeriod::Day,
        }),
        quota_period_start: day,
        ..bot("quota", "metered")
    };
    store.create_key(&key).await.expect("create");
    let owner = LimitsOwner::Lineage(key.id.clone());
    let used = || async {
        let k = store
            .get_key(&key.organization_id, &key.id)
            .await
            .expect("read")
            .expect("key");
        (k.quota_used, k.quota_period_start)
    };

    assert!(
        store
            .try_take_quota(&owner, day, QuotaPeriod::Day, 8)
            .await
            .expect("take")
    );
    // A caller that read "10 left" before the 8 were taken asks for 3: refused.
    assert!(
        !store
            .try_take_quota(&owner, day, QuotaPeriod::Day, 3)
            .await
            .expect("take")
    );
    assert!(
        !store
            .try_take_quota(&owner, next_day, QuotaPeriod::Day, 1)
            .await
            .expect("take"),
        "other period"
    );
    assert_eq!(used().await, (8, day));
    assert_eq!(
        store
            .take_quota(&owner, day, QuotaPeriod::Day, 1, 5)
            .await
            .expect("take"),
        QuotaTake::Taken {
            credits: 2,
            used: 10,
            limit: 10
        },
        "as many as are left, at least what is needed"
    );
    assert_eq!(
        store
            .take_quota(&owner, day, QuotaPeriod::Day, 1, 1)
            .await
            .expect("take"),
        QuotaTake::Exhausted {
            used: 10,
            limit: 10
        }
    );
    store
        .return_quota(&owner, day, QuotaPeriod::Day, 4)
        .await
        .expect("return");
    assert_eq!(used().await, (6, day));
    assert_eq!(
        store
            .take_quota(&owner, day, QuotaPeriod::Day, 5, 5)
            .await
            .expect("take"),
        QuotaTake::Exhausted { used: 6, limit: 10 },
        "fewer left than needed: nothing taken"
    );
    assert_eq!(used().await, (6, day));

    // The next day: the row moves on, and the old day's credits are gone with it.
    assert_eq!(
        store
            .take_quota(&owner, next_day, QuotaPeriod::Day, 1, 3)
            .await
            .expect("take"),
        QuotaTake::Taken {
            credits: 3,
            used: 3,
            limit: 10
        }
    );
    store
        .return_quota(&owner, day, QuotaPeriod::Day, 2)
        .await
        .expect("return");
    assert_eq!(
        used().await,
        (3, next_day),
        "a return for an ended period changes nothing"
    );
    // A clock behind the row's period spends nothing.
    assert!(matches!(
        store
            .take_quota(&owner, day, QuotaPeriod::Day, 1, 1)
            .await
            .expect("take"),
        QuotaTake::Exhausted { .. }
    ));
    // A caller that takes the quota for another kind of period (its cache is
    // behind a change of the quota) gets nothing, moves nothing and returns
    // nothing: the row stays in its own period.
    let month = QuotaPeriod::Month.start(next_day);
    assert_eq!(
        store
            .take_quota(&owner, month, QuotaPeriod::Month, 1, 1)
            .await
            .expect("take"),
        QuotaTake::NoQuota
    );
    assert!(
        !store
            .try_take_quota(&owner, next_day, QuotaPeriod::Month, 1)
            .await
            .expect("take")
    );
    store
        .return_quota(&owner, next_day, QuotaPeriod::Month, 3)
        .await
        .expect("return");
    assert_eq!(used().await, (3, next_day), "untouched");

    let plain = bot("quota", "unmetered");
    store.create_key(&plain).await.expect("create");
    assert_eq!(
        store
            .take_quota(
                &LimitsOwner::Lineage(plain.id.clone()),
                day,
                QuotaPeriod::Day,
                1,
                1
            )
            .await
            .expect("take"),
        QuotaTake::NoQuota
    );
    assert!(
        !store
            .try_take_quota(
                &LimitsOwner::Lineage(plain.id.clone()),
                Micros(0),
                QuotaPeriod::Day,
                1
            )
            .await
            .expect("take")
    );
    finish(db, store).await;
}

/// A rotation's replacement joins its key's lineage, inherits its quota use,
/// and from then on quota credits are taken from and returned to the newest
/// row of the lineage; the store reads a lineage's newest key and the keys in
/// grace of a key's lineage; a write whose guard refuses the locked row
/// changes nothing.
async fn a_rotation_chain_is_one_lineage(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let t = Micros(1_796_083_200_000_000); // 2026-12-01T00:00:00Z
    let live = |k: &KeyRecord| lifecycle::check(k, Operation::Rotate, t);
    let first = KeyRecord {
        quota: Some(Quota {
            limit: 10,
            period: QuotaPeriod::Total,
        }),
        expire_time: None,
        ..bot("chain", "first")
    };
    store.create_key(&first).await.expect("create");
    assert_eq!(first.lineage_id, first.id);
    let lineage = first.lineage_id.clone();
    let owner = LimitsOwner::Lineage(lineage.clone());
    assert!(
        store
            .try_take_quota(&owner, Micros(0), QuotaPeriod::Total, 3)
            .await
            .expect("take")
    );

    let replacement = |name: &str| {
        let secret = Secret::generate(&KeyPrefix::default());
        let id = KeyId::generate();
        KeyRecord {
            // The store sets the lineage from the locked old row.
            lineage_id: id.clone(),
            id,
            secret_hash: secret.hash(),
            name: KeyName::parse(name).expect("name"),
            ..first.clone()
        }
    };
    let grace = Some(Micros(t.0 + 3_600_000_000));
    let (old, second) = store
        .rotate_key(&first.id, &replacement("second"), grace, t, &live)
        .await
        .expect("rotate");
    assert_eq!(second.lineage_id, lineage);
    assert_eq!(old.rotated_to_id.as_ref(), Some(&second.id));
    assert_eq!(second.quota_used, 3, "the use carries over");

    // Rotating the old key again: the guard refuses, nothing changes.
    let again = store
        .rotate_key(&first.id, &replacement("again"), grace, t, &live)
        .await;
    assert!(
        matches!(again, Err(StoreError::Precondition(_))),
        "{again:?}"
    );
    let (_, third) = store
        .rotate_key(&second.id, &replacement("third"), grace, t, &live)
        .await
        .expect("rotate the replacement");
    assert_eq!(third.lineage_id, lineage);

    // Takes and returns go to the newest row.
    assert!(
        store
            .try_take_quota(&owner, Micros(0), QuotaPeriod::Total, 7)
            .await
            .expect("take")
    );
    assert!(
        !store
            .try_take_quota(&owner, Micros(0), QuotaPeriod::Total, 1)
            .await
            .expect("take")
    );
    store
        .return_quota(&owner, Micros(0), QuotaPeriod::Total, 2)
        .await
        .expect("return");
    let read = |id: KeyId| {
        let store = store.clone();
        let org = first.organization_id.clone();
        async move { store.get_key(&org, &id).await.expect("read").expect("key") }
    };
    assert_eq!(read(third.id.clone()).await.quota_used, 8);
    assert_eq!(
        read(second.id.clone()).await.quota_used,
        3,
        "not the newest"
    );
    let newest = store
        .newest_links(std::slice::from_ref(&lineage))
        .await
        .expect("read");
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].id, third.id);
    let mut in_grace = store
        .grace_links(&[third.secret_hash], t)
        .await
        .expect("read");
    in_grace.sort_unstable();
    let mut want = vec![first.secret_hash, second.secret_hash];
    want.sort_unstable();
    assert_eq!(in_grace, want);
    let after_grace = Micros(t.0 + 3_600_000_001);
    assert!(
        store
            .grace_links(&[third.secret_hash], after_grace)
            .await
            .expect("read")
            .is_empty()
    );
    finish(db, store).await;
}

/// `--event-retention`: events older than the cut go, oldest first, a batch
/// at a time, with their webhook deliveries; newer events and their pending
/// deliveries stay.
async fn events_past_retention_go_in_batches_with_their_deliveries(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let store = store.with_webhook_endpoints(vec!["ep".into()]);
    let day = 86_400_000_000;
    let now = Micros::now();
    let old_time = Micros(now.0 - 500 * day);
    for i in 0..25 {
        let key = record("acme", Owner::Bot, &format!("old{i}"), old_time);
        store.create_key(&key).await.expect("create");
    }
    let new = create_many(&store, "acme", 3).await;
    let before = Micros(now.0 - 400 * day);
    let mut batches = Vec::new();
    loop {
        let n = store.prune_events(before, 10).await.expect("prune");
        batches.push(n);
        if n < 10 {
            break;
        }
    }
    assert_eq!(batches, [10, 10, 5]);
    assert_eq!(store.prune_events(before, 10).await.expect("prune"), 0);
    let left = events(&store, "acme", None).await;
    let left_keys: HashSet<&KeyId> = left.iter().filter_map(|e| e.key_id.as_ref()).collect();
    assert_eq!(
        left_keys,
        new.iter().map(|k| &k.id).collect(),
        "only the newer events"
    );
    let at = Micros::now();
    let claimed = store
        .webhook_claim("ep", "me", at, Micros(at.0 + 60_000_000), 100)
        .await
        .expect("claim");
    let claimed: HashSet<&KeyId> = claimed
        .iter()
        .filter_map(|d| d.event.key_id.as_ref())
        .collect();
    assert_eq!(
        claimed, left_keys,
        "the pruned events' deliveries went with them"
    );
    finish(db, store).await;
}

/// Webhook delivery takes turns between organizations: with 10 000 events
/// of one organization due, another's event is in the first batch claimed,
/// and each organization's events keep their order.
async fn webhook_delivery_takes_turns_between_organizations(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let store = store.with_webhook_endpoints(vec!["ep".into()]);
    // Written directly: 10 000 CreateKey transactions would take minutes.
    let mut raw = RawDb::connect(&db).await;
    for chunk in (1..=10_000_u32).collect::<Vec<_>>().chunks(1000) {
        let events: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "({i}, '00000000-0000-7000-8000-{i:012x}', 'busy', 1, 'admin-1', 1, X'{:064x}', {i}, NULL)",
                    i
                )
            })
            .collect();
        raw.execute(&format!(
            "INSERT INTO key_events (id, key_id, organization_id, action, actor_id, \
             event_time, secret_hash, org_seq, key_snapshot) VALUES {}",
            events.join(", ")
        ))
        .await;
        let deliveries: Vec<String> = chunk
            .iter()
            .map(|i| format!("('ep', {i}, 0, 0, 0, 0)"))
            .collect();
        raw.execute(&format!(
            "INSERT INTO webhook_deliveries (endpoint, event_id, state, attempts, \
             next_attempt_time, lease_until) VALUES {}",
            deliveries.join(", ")
        ))
        .await;
    }
    let quiet = bot("quiet", "revoked-soon");
    store.create_key(&quiet).await.expect("create");
    let now = Micros::now();
    let claimed = store
        .webhook_claim("ep", "me", now, Micros(now.0 + 60_000_000), 16)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 16);
    assert!(
        claimed
            .iter()
            .any(|d| d.event.key_id.as_ref() == Some(&quiet.id)),
        "the quiet organization's event is in the first round"
    );
    let busy: Vec<u64> = claimed
        .iter()
        .filter(|d| d.event.organization_id.as_str() == "busy")
        .map(|d| d.event_id)
        .collect();
    assert_eq!(
        busy,
        (1..=15).collect::<Vec<u64>>(),
        "oldest first, in order"
    );
    finish(db, store).await;
}

/// A key policy reads back as set, per organization; setting one is an event
/// about no key, with the policy; the empty policy removes it.
async fn a_key_policy_round_trips_with_its_event(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let (acme, other) = (org("acme"), org("other"));
    assert_eq!(
        store.key_policy(&acme).await.expect("read"),
        KeyPolicy::default()
    );
    let policy = KeyPolicy {
        max_lifetime: Some(Micros(90 * 86_400_000_000)),
        require_networks_for_bot_keys: true,
        allowed_bot_scopes: Some(scopes(&["links:read", "reports:*"])),
        max_rotation_grace: Some(Micros(0)),
    };
    let now = Micros::now();
    store
        .set_key_policy(&acme, &policy, &user("alice"), now)
        .await
        .expect("set");
    assert_eq!(store.key_policy(&acme).await.expect("read"), policy);
    assert_eq!(
        store.key_policy(&other).await.expect("read"),
        KeyPolicy::default()
    );
    store
        .set_key_policy(&acme, &KeyPolicy::default(), &user("alice"), now)
        .await
        .expect("clear");
    assert_eq!(
        store.key_policy(&acme).await.expect("read"),
        KeyPolicy::default()
    );
    let events = events(&store, "acme", None).await;
    assert_eq!(events.len(), 2);
    for (e, want) in events.iter().zip([&policy, &KeyPolicy::default()]) {
        assert_eq!(
            (e.action, e.key_id.as_ref()),
            (EventAction::PolicyChanged, None)
        );
        assert_eq!(e.policy.as_ref(), Some(want));
    }
    finish(db, store).await;
}

crate::store_tests!(
    an_identity_round_trips_with_its_events_and_keys,
    an_identity_quota_is_handed_out_by_the_same_conditional_write,
    a_key_policy_round_trips_with_its_event,
    events_past_retention_go_in_batches_with_their_deliveries,
    webhook_delivery_takes_turns_between_organizations,
    a_rotation_chain_is_one_lineage,
    quota_credits_are_handed_out_by_a_conditional_write,
    a_key_round_trips_through_its_life_cycle,
    removing_a_member_deletes_their_user_keys_with_events,
    one_live_user_key_per_member_and_organization,
    list_keys_pages_in_id_order_with_filters,
    event_ids_count_each_organization_on_its_own,
    events_after_reads_all_organizations_in_order,
    usage_beyond_one_chunk_lands_exactly,
    find_by_hashes_returns_each_stored_key_once,
    an_import_writes_every_key_in_one_transaction,
);

fn identity(org_id: &str, external: &str, now: Micros) -> IdentityRecord {
    IdentityRecord {
        id: IdentityId::generate(),
        organization_id: org(org_id),
        external_id: ExternalId::parse(external).expect("external id"),
        metadata: Metadata::parse(
            "metadata",
            &[("plan".to_owned(), "pro ✓".to_owned())]
                .into_iter()
                .collect(),
        )
        .expect("metadata"),
        rate_limits: keygate::domain::limits::RateLimits::decode("per_minute:100:60000")
            .expect("limits"),
        quota: Some(Quota {
            limit: 50,
            period: QuotaPeriod::Month,
        }),
        quota_used: 0,
        quota_period_start: QuotaPeriod::Month.start(now),
        create_time: now,
        update_time: now,
    }
}

/// Every column of an identity round-trips; external ids are unique per
/// organization; a key can name only its own organization's identity; the
/// identity is not deleted while a live key uses it; each change has its
/// event, naming the identity, which the invalidation poll reads.
async fn an_identity_round_trips_with_its_events_and_keys(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let now = Micros::now();
    let actor = user("admin-1");
    let first = identity("acme", "cus_1", now);
    store.create_identity(&first, &actor).await.expect("create");
    let by_id = IdentityName::Id(first.id.clone());
    assert_eq!(
        store.get_identity(&org("acme"), &by_id).await.expect("get"),
        Some(first.clone())
    );
    assert_eq!(
        store
            .get_identity(
                &org("acme"),
                &IdentityName::External(ExternalId::parse("cus_1").expect("id"))
            )
            .await
            .expect("get"),
        Some(first.clone())
    );
    assert_eq!(
        store
            .get_identity(&org("other"), &by_id)
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store.identity_by_id(&first.id).await.expect("read"),
        Some(first.clone())
    );
    // Unique per organization, not across them.
    assert!(matches!(
        store
            .create_identity(&identity("acme", "cus_1", now), &actor)
            .await,
        Err(StoreError::ExternalIdTaken)
    ));
    let elsewhere = identity("other", "cus_1", now);
    store
        .create_identity(&elsewhere, &actor)
        .await
        .expect("another organization");
    let second = identity("acme", "cus_2", now);
    store
        .create_identity(&second, &actor)
        .await
        .expect("create");
    let page = store
        .list_identities(&org("acme"), None, 10)
        .await
        .expect("list");
    assert_eq!(page, [first.clone(), second.clone()]);
    assert_eq!(
        store
            .list_identities(&org("acme"), Some(&first.id), 10)
            .await
            .expect("list"),
        std::slice::from_ref(&second)
    );

    // Only the patched fields change; a new quota period starts from zero.
    let later = Micros(now.0 + 1);
    let patch = IdentityPatch {
        external_id: Some(ExternalId::parse("cus_1b").expect("id")),
        quota: Some(Some(Quota {
            limit: 5,
            period: QuotaPeriod::Total,
        })),
        ..Default::default()
    };
    let updated = store
        .update_identity(&org("acme"), &first.id, &patch, &actor, later)
        .await
        .expect("update");
    let mut expected = first.clone();
    patch.apply(&mut expected);
    expected.quota_period_start = Micros(0);
    expected.update_time = later;
    assert_eq!(updated, expected);
    assert!(matches!(
        store
            .update_identity(
                &org("acme"),
                &second.id,
                &IdentityPatch {
                    external_id: Some(ExternalId::parse("cus_1b").expect("id")),
                    ..Default::default()
                },
                &actor,
                later,
            )
            .await,
        Err(StoreError::ExternalIdTaken)
    ));

    // A key names an identity of its own organization only.
    let secret = Secret::generate(&KeyPrefix::default());
    let stranger = KeyRecord {
        identity_id: Some(elsewhere.id.clone()),
        ..bot_record("acme", "k", &secret, now)
    };
    assert!(matches!(
        store.create_key(&stranger).await,
        Err(StoreError::Precondition(_))
    ));
    let key = KeyRecord {
        identity_id: Some(first.id.clone()),
        ..bot_record("acme", "k", &secret, now)
    };
    store.create_key(&key).await.expect("create key");
    assert_eq!(
        store
            .get_key(&org("acme"), &key.id)
            .await
            .expect("get")
            .map(|k| k.identity_id),
        Some(Some(first.id.clone()))
    );
    assert!(matches!(
        store
            .delete_identity(&org("acme"), &first.id, &actor, later)
            .await,
        Err(StoreError::Precondition(_))
    ));
    store
        .revoke_key(&org("acme"), &key.id, &actor, later)
        .await
        .expect("revoke");
    let deleted = store
        .delete_identity(&org("acme"), &first.id, &actor, later)
        .await
        .expect("delete");
    assert_eq!(deleted.id, first.id);
    assert_eq!(store.identity_by_id(&first.id).await.expect("read"), None);
    assert_eq!(
        store
            .get_key(&org("acme"), &key.id)
            .await
            .expect("get")
            .map(|k| k.identity_id),
        Some(None),
        "a dead key names no deleted identity"
    );

    // The audit trail, and what the invalidation poll reads of it.
    let events = store
        .list_events(&org("acme"), None, 0, 100)
        .await
        .expect("events");
    let about_first: Vec<EventAction> = events
        .iter()
        .filter(|e| e.identity_id.as_ref() == Some(&first.id))
        .map(|e| e.action)
        .collect();
    assert_eq!(
        about_first,
        [
            EventAction::IdentityCreated,
            EventAction::IdentityUpdated,
            EventAction::IdentityDeleted
        ]
    );
    let changes = store.events_after(0, 1000).await.expect("changes");
    assert_eq!(
        changes
            .iter()
            .filter(|c| c.identity_id.as_ref() == Some(&first.id))
            .count(),
        3
    );
    finish(db, store).await;
}

/// An identity's credits come from its own row by the conditional write a
/// key's do, whichever key asks, never beyond the limit.
async fn an_identity_quota_is_handed_out_by_the_same_conditional_write(backend: Backend) {
    let (db, store) = fresh_store(backend).await;
    let now = Micros::now();
    let i = identity("acme", "cus_1", now);
    store
        .create_identity(&i, &user("admin-1"))
        .await
        .expect("create");
    let owner = LimitsOwner::Identity(i.id.clone());
    let period = QuotaPeriod::Month.start(now);
    assert!(
        store
            .try_take_quota(&owner, period, QuotaPeriod::Month, 45)
            .await
            .expect("take")
    );
    assert!(
        !store
            .try_take_quota(&owner, period, QuotaPeriod::Month, 6)
            .await
            .expect("take")
    );
    assert_eq!(
        store
            .take_quota(&owner, period, QuotaPeriod::Month, 1, 100)
            .await
            .expect("take"),
        QuotaTake::Taken {
            credits: 5,
            used: 50,
            limit: 50
        }
    );
    assert_eq!(
        store
            .take_quota(&owner, period, QuotaPeriod::Month, 1, 1)
            .await
            .expect("take"),
        QuotaTake::Exhausted {
            used: 50,
            limit: 50
        }
    );
    store
        .return_quota(&owner, period, QuotaPeriod::Month, 2)
        .await
        .expect("give back");
    let read = store
        .identity_by_id(&i.id)
        .await
        .expect("read")
        .expect("identity");
    assert_eq!(read.quota_used, 48);
    // A kind of period the row does not have is no quota of it.
    assert_eq!(
        store
            .take_quota(&owner, Micros(0), QuotaPeriod::Total, 1, 1)
            .await
            .expect("take"),
        QuotaTake::NoQuota
    );
    finish(db, store).await;
}
