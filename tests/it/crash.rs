//! SIGKILL in the middle of a burst of CreateKey: every key keygate
//! acknowledged survives with its CREATED event and the hash of the secret it
//! returned, nothing half-written is left behind (a key row without its event,
//! an event without its key), and a keygate restarted on the same database
//! verifies every acknowledged key.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use keygate::{
    domain::keys,
    domain::model::{EventAction, KeyId, OrganizationId},
    proto::{VerifyCode, key_admin_client::KeyAdminClient, key_verify_client::KeyVerifyClient},
    store::{KeyFilter, PoolConfig, Store},
};
use tokio::task::JoinSet;

use crate::support::*;

/// Concurrent CreateKey callers.
const TASKS: usize = 16;
/// Acknowledgements after which keygate is killed, one round each: the same
/// database goes through every kill.
const KILL_AFTER: [usize; 3] = [64, 17, 150];
/// Most calls one task makes: bounds the burst if the kill never comes.
const MAX_CALLS_PER_TASK: usize = 500;
/// Longest the burst may take to reach `KILL_AFTER`.
const BURST_LIMIT: Duration = Duration::from_secs(120);
const ORG: &str = "crash";

fn spawn_keygate(db: &TestDb) -> Served {
    spawn_process_on(db, &["--database-max-connections", "8"])
}

/// An acknowledged CreateKey: what the caller was told.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    secret: String,
    user: Option<String>,
}

/// Every key row and every event of the organization, read directly.
async fn read_all(
    store: &Store,
) -> (
    Vec<keygate::domain::model::KeyRecord>,
    Vec<keygate::domain::model::KeyEvent>,
) {
    let org = OrganizationId::parse(ORG).expect("org");
    let mut keys = Vec::new();
    let mut after: Option<KeyId> = None;
    for _ in 0..1000 {
        let page = store
            .list_keys(&KeyFilter {
                organization_id: org.clone(),
                key_type: None,
                user_id: None,
                include_revoked: true,
                after: after.clone(),
                limit: 1000,
            })
            .await
            .expect("list keys");
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        keys.extend(page);
    }
    let mut events = Vec::new();
    let mut after = 0;
    for _ in 0..1000 {
        let page = store
            .list_events(&org, None, after, 1000)
            .await
            .expect("list events");
        let Some(last) = page.last() else { break };
        after = last.id;
        events.extend(page);
    }
    (keys, events)
}

/// What one round of burst and SIGKILL left.
struct Round {
    acked_at_kill: usize,
    acked: usize,
    in_flight: usize,
    rows: usize,
    events: usize,
}

/// Starts keygate on `db`, fires [`TASKS`] concurrent CreateKey callers, kills
/// keygate with SIGKILL after `kill_after` acknowledgements, waits for the
/// callers, and checks the store against everything acknowledged so far.
async fn burst_and_kill(
    db: &TestDb,
    round: usize,
    kill_after: usize,
    all: &mut Vec<Acked>,
) -> Round {
    let Served {
        process: proc,
        addr,
        ..
    } = spawn_keygate(db);
    let channel = connect(addr).await;

    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    // Calls that failed after the kill: their outcome is unknown to the caller.
    let unknown = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let mut client = KeyAdminClient::new(channel.clone());
        let (acked, count, killed, unknown) = (
            Arc::clone(&acked),
            Arc::clone(&count),
            Arc::clone(&killed),
            Arc::clone(&unknown),
        );
        tasks.spawn(async move {
            for i in 0..MAX_CALLS_PER_TASK {
                // Half user keys (each for a member of its own, so the live-user
                // unique index is on the insert path), half bot keys.
                let (req, user) = if i.is_multiple_of(2) {
                    let user = format!("m{round}-{t}-{i}");
                    let req = member(&user, user_key(ORG, &format!("u{t}-{i}"), &["links:read"]));
                    (req, Some(user))
                } else {
                    (
                        admin(bot_key(ORG, &format!("b{t}-{i}"), &["links:read"])),
                        None,
                    )
                };
                match client.create_key(req).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        let key = resp.key.expect("key in response");
                        acked.lock().expect("lock").push(Acked {
                            id: key.id,
                            secret: resp.secret,
                            user,
                        });
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => {
                        assert!(
                            killed.load(Ordering::SeqCst),
                            "CreateKey failed before the kill: {status:?}"
                        );
                        unknown.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
    }

    let deadline = Instant::now() + BURST_LIMIT;
    while count.load(Ordering::SeqCst) < kill_after {
        assert!(
            Instant::now() < deadline,
            "the burst did not reach {kill_after} keys"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    killed.store(true, Ordering::SeqCst);
    let acked_at_kill = count.load(Ordering::SeqCst);
    // `Process`'s drop is SIGKILL and a wait: no shutdown, no flush, calls in flight.
    drop(proc);
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(60), tasks.join_next())
        .await
        .expect("the callers finish once keygate is gone")
    {
        joined.expect("caller task");
    }
    let acked = acked.lock().expect("lock").clone();
    let in_flight = unknown.load(Ordering::SeqCst);
    let before = all.len();
    all.extend(acked.iter().cloned());

    // The store, as keygate left it.
    let store = Store::connect(&db.url, &PoolConfig::default())
        .await
        .expect("open the store after the crash");
    let mut raw = RawDb::connect(db).await;
    for a in all.iter() {
        let hash = keys::parse_token(&a.secret).expect("a well-formed secret");
        let record = find_by_hash(&store, &mut raw, &hash)
            .await
            .unwrap_or_else(|| panic!("acknowledged key {} is gone", a.id));
        assert_eq!(record.id.as_str(), a.id);
        assert_eq!(record.secret_hash, hash);
        assert_eq!(record.organization_id.as_str(), ORG);
        assert_eq!(
            record.owner.user_id().map(|u| u.as_str().to_owned()),
            a.user
        );
        assert!(record.revoke_time.is_none());
    }
    raw.close().await;
    let (rows, events) = read_all(&store).await;
    store.close().await;
    let mut created: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        assert_eq!(
            e.action,
            EventAction::Created,
            "only creations happened: {e:?}"
        );
        *created
            .entry(e.key_id.as_ref().map_or("", |k| k.as_str()))
            .or_default() += 1;
    }
    let row_ids: HashSet<&str> = rows.iter().map(|k| k.id.as_str()).collect();
    for k in &rows {
        assert_eq!(
            created.get(k.id.as_str()),
            Some(&1),
            "key {} has not exactly one CREATED event",
            k.id
        );
    }
    for id in created.keys() {
        assert!(
            row_ids.contains(id),
            "CREATED event of {id} without its key"
        );
    }
    let acked_ids: HashSet<&str> = all.iter().map(|a| a.id.as_str()).collect();
    assert!(
        acked_ids.is_subset(&row_ids),
        "an acknowledged key is missing"
    );
    Round {
        acked_at_kill,
        acked: all.len() - before,
        in_flight,
        rows: rows.len(),
        events: events.len(),
    }
}

async fn acknowledged_keys_survive_a_sigkill_during_a_create_burst(backend: Backend) {
    let started = Instant::now();
    let db = TestDb::create(backend).await;
    let mut all = Vec::new();
    let mut in_flight_total = 0;
    for (round, kill_after) in KILL_AFTER.iter().enumerate() {
        let r = burst_and_kill(&db, round, *kill_after, &mut all).await;
        in_flight_total += r.in_flight;
        // Committed but never acknowledged: at most the calls in flight at a kill.
        let unacknowledged = r.rows - all.len();
        assert!(
            unacknowledged <= in_flight_total,
            "{unacknowledged} keys nobody was told about, but only {in_flight_total} calls \
             were in flight at the kills"
        );
        println!(
            "crash[{backend:?}] round {round}: SIGKILL after {} acks; {} acknowledged, {} in \
             flight at the kill; store now {} keys, {} CREATED events, {unacknowledged} \
             committed but never acknowledged (all rounds so far); 0 lost, 0 half-written",
            r.acked_at_kill, r.acked, r.in_flight, r.rows, r.events
        );
    }

    // A keygate restarted on the same database verifies every acknowledged key.
    let Served {
        process: mut proc,
        addr,
        ..
    } = spawn_keygate(&db);
    let mut verify = KeyVerifyClient::new(connect(addr).await);
    for a in &all {
        let code = verify
            .verify_key(verify_req(&a.secret, &["links:read"]))
            .await
            .expect("verify answers")
            .into_inner()
            .code();
        assert_eq!(code, VerifyCode::Valid, "key {}", a.id);
    }
    let status = proc.terminate();
    assert!(
        status.success(),
        "graceful exit after the restart: {status}"
    );
    db.drop_db().await;
    println!(
        "crash[{backend:?}]: {} kills, {TASKS} concurrent callers; {} keys acknowledged, all \
         present with one CREATED event and their hash, all VALID after a restart ({:.1}s)",
        KILL_AFTER.len(),
        all.len(),
        started.elapsed().as_secs_f64()
    );
}

// Minutes long: `.ci/run` runs both by name.
crate::store_tests!(
    #[ignore = "long: CI runs it with --include-ignored"]
    acknowledged_keys_survive_a_sigkill_during_a_create_burst
);
