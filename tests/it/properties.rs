//! Property tests (proptest): the secret format under generation and single-character
//! corruption, hostname matching against a reference model, and pagination over random
//! key sets through the real API on both stores.
//!
//! The cases that talk to a running keygate share one app per test (each case works in
//! an organization of its own) and drive proptest's `TestRunner` by hand from inside
//! `block_in_place`, blocking on the test's own runtime for every gRPC call.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::*;
use keygate::{
    domain::hostnames::{AllowedHostnames, HostnamePattern, origin_host},
    domain::keys::{KeyPrefix, MAX_PREFIX_LEN, Secret, parse_token},
    proto::{self, VerifyCode},
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestCaseResult, TestRunner},
};

/// A runner for the cases that create state through gRPC. Failures cannot be persisted
/// to a source-side regressions file from a hand-driven runner, so they are not.
fn api_runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Runs `runner` over `strategy`, blocking on the current (multi-thread) runtime for the
/// async `test` of each case.
fn run_blocking<S, F, Fut>(mut runner: TestRunner, strategy: &S, test: F) -> Result<(), String>
where
    S: Strategy,
    F: Fn(S::Value) -> Fut,
    Fut: std::future::Future<Output = TestCaseResult>,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        runner
            .run(strategy, |value| handle.block_on(test(value)))
            .map_err(|e| e.to_string())
    })
}

// --- secrets -----------------------------------------------------------------

/// Prefixes in the grammar `[a-z][a-z0-9]*(_[a-z0-9]+)*`, at most 16 characters.
fn key_prefix() -> impl Strategy<Value = KeyPrefix> {
    "[a-z][a-z0-9]{0,7}(_[a-z0-9]{1,4}){0,3}"
        .prop_filter("at most 16 characters", |p| p.len() <= MAX_PREFIX_LEN)
        .prop_map(|p| {
            p.parse::<KeyPrefix>()
                .expect("the strategy follows the grammar")
        })
}

/// A replacement character: mostly ones a token may contain, so that the change has a
/// chance to keep the shape, sometimes anything at all.
fn replacement() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::sample::select(
            "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
                .chars()
                .collect::<Vec<_>>()
        ),
        1 => any::<char>(),
    ]
}

/// `secret` with the character at `index` (modulo its length) replaced by `c`, or `None`
/// when `c` is the character already there.
fn substitute(secret: &str, index: usize, c: char) -> Option<String> {
    let mut chars: Vec<char> = secret.chars().collect();
    let i = index % chars.len();
    if chars[i] == c {
        return None;
    }
    chars[i] = c;
    Some(chars.into_iter().collect())
}

proptest! {
    #![proptest_config(Config::with_cases(256))]

    /// Every issued secret parses, under any valid prefix, to its own hash.
    #[test]
    fn issued_secrets_parse(prefix in key_prefix()) {
        let secret = Secret::generate(&prefix);
        let expected_start = format!("{prefix}_");
        prop_assert!(secret.expose().starts_with(&expected_start));
        prop_assert_eq!(parse_token(secret.expose()), Ok(secret.hash()));
    }
}

proptest! {
    #![proptest_config(Config::with_cases(2048))]

    /// Any single-character substitution is MALFORMED or names another hash, never the
    /// same one; one in the body, the checksum or the separating `_` is always MALFORMED
    /// (CRC-32 catches every single-character change of the body).
    #[test]
    fn single_character_changes_never_keep_the_hash(
        prefix in key_prefix(),
        index in any::<usize>(),
        c in replacement(),
    ) {
        let secret = Secret::generate(&prefix);
        let Some(mutated) = substitute(secret.expose(), index, c) else {
            return Err(TestCaseError::reject("same character"));
        };
        let position = index % secret.expose().len();
        match parse_token(&mutated) {
            Err(_) => {}
            Ok(hash) => {
                prop_assert!(hash != secret.hash(), "{mutated:?} kept the hash");
                prop_assert!(
                    position < prefix.as_str().len(),
                    "a change at {position} outside the prefix still parses: {mutated:?}"
                );
            }
        }
    }
}

/// The same, end to end: mutated secrets of a real key are MALFORMED or NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_secrets_never_verify_through_the_api() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, secret) = app
        .create(admin(bot_key("acme", "target", &["links:read"])))
        .await;
    assert_eq!(
        app.verify_code(verify_req(&secret, &[])).await,
        VerifyCode::Valid
    );

    let strategy = (any::<usize>(), replacement());
    let result = run_blocking(api_runner(64), &strategy, |(index, c)| {
        let mutated = substitute(&secret, index, c);
        let app = &app;
        async move {
            let Some(mutated) = mutated else {
                return Err(TestCaseError::reject("same character"));
            };
            let code = app.verify_code(verify_req(&mutated, &[])).await;
            prop_assert!(
                matches!(code, VerifyCode::Malformed | VerifyCode::NotFound),
                "{mutated:?} verified as {code:?}"
            );
            Ok(())
        }
    });
    app.stop().await;
    if let Err(e) = result {
        panic!("{e}");
    }
}

// --- hostnames ----------------------------------------------------------------

/// A DNS label that starts with a letter (so no name ends in a number and reads as an
/// IPv4 address) and has no `--` (so no concatenation of labels spells an `xn--` label,
/// which would have to be valid punycode).
fn label() -> impl Strategy<Value = String> {
    "[a-z](-?[a-z0-9]){0,6}"
}

fn labels(range: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(label(), range)
}

/// The reference model: an exact pattern matches only its own name, a wildcard every
/// name ending in `.suffix` with a non-empty label before that dot.
fn reference_matches(pattern: &HostnamePattern, host: &str) -> bool {
    match pattern {
        HostnamePattern::Exact(name) => host == name,
        HostnamePattern::Wildcard { suffix } => {
            host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}"))
        }
    }
}

/// Hosts around `suffix`: itself, names below it, and near misses.
fn hosts_around(suffix: &str, sub: &[String], other: &[String]) -> Vec<String> {
    let under = sub.join(".");
    let first = &other[0];
    let mut hosts = vec![
        suffix.to_owned(),
        format!("{under}.{suffix}"),
        format!("{first}.{suffix}"),
        // badexample.com
        format!("{first}{suffix}"),
        format!("{under}{suffix}"),
        // example.com.evil.com
        format!("{suffix}.{}", other.join(".")),
        format!("{under}.{suffix}.{first}"),
        // a suffix of the suffix, and a name that is not related at all
        suffix
            .split_once('.')
            .map_or_else(|| suffix.to_owned(), |(_, rest)| rest.to_owned()),
        other.join("."),
        // one character of the suffix changed
        format!("{under}.x{}", &suffix[1..]),
    ];
    hosts.dedup();
    hosts
}

proptest! {
    #![proptest_config(Config::with_cases(512))]

    /// `HostnamePattern::matches`, and `allows` on an `origin`/`referer` built from the
    /// host, agree with the reference model on exact and wildcard patterns, written in
    /// any case and with or without a trailing dot.
    #[test]
    fn hostname_matching_agrees_with_a_reference_model(
        suffix_labels in labels(2..=4),
        sub in labels(1..=3),
        other in labels(1..=3),
        upper in proptest::collection::vec(any::<bool>(), 64),
        trailing_dot in any::<bool>(),
        port in proptest::option::of(1u16..),
    ) {
        let suffix = suffix_labels.join(".");
        // Patterns as a user might type them: mixed case, maybe a trailing dot.
        let typed: String = suffix
            .chars()
            .zip(upper.iter().cycle())
            .map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c })
            .collect();
        let dot = if trailing_dot { "." } else { "" };
        let exact: HostnamePattern = format!("{typed}{dot}").parse().map_err(|e| {
            TestCaseError::fail(format!("{typed:?} is a valid name: {e}"))
        })?;
        prop_assert_eq!(&exact, &HostnamePattern::Exact(suffix.clone()));
        let wildcard = match format!("*.{typed}{dot}").parse::<HostnamePattern>() {
            Ok(p) => p,
            // A generated suffix may happen to be on the public suffix list.
            Err(e) => return Err(TestCaseError::reject(format!("*.{suffix}: {e}"))),
        };
        prop_assert_eq!(&wildcard, &HostnamePattern::Wildcard { suffix: suffix.clone() });

        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        for host in hosts_around(&suffix, &sub, &other) {
            // What a browser would send, upper case and all; keygate normalises it.
            let origin = format!("https://{}{port}", host.to_ascii_uppercase());
            let referer = format!("http://{host}{port}/path?next=https://{suffix}/");
            let extracted = origin_host(&origin);
            prop_assert_eq!(extracted.as_deref(), Some(host.as_str()));
            for pattern in [&exact, &wildcard] {
                let expected = reference_matches(pattern, &host);
                prop_assert_eq!(pattern.matches(&host), expected, "{} vs {}", pattern, host);
                let list = AllowedHostnames::parse([pattern.to_string()])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(list.allows(&origin, ""), expected, "{} vs {}", pattern, origin);
                prop_assert_eq!(list.allows("", &referer), expected, "{} vs {}", pattern, referer);
            }
        }
        // The wildcard's defining cases, spelled out.
        let dot_suffix = format!(".{suffix}");
        let below = format!("{}.{suffix}", sub.join("."));
        prop_assert!(!wildcard.matches(&suffix));
        prop_assert!(!wildcard.matches(&dot_suffix));
        prop_assert!(wildcard.matches(&below));
    }
}

// --- pagination ------------------------------------------------------------------

/// One key of a random set: whether it is a user key (else a bot key), and whether it
/// gets revoked.
#[derive(Debug, Clone, Copy)]
struct KeyPlan {
    user: bool,
    revoke: bool,
}

fn key_plans() -> impl Strategy<Value = (Vec<KeyPlan>, i32)> {
    let plan = (any::<bool>(), proptest::bool::weighted(0.3))
        .prop_map(|(user, revoke)| KeyPlan { user, revoke });
    (proptest::collection::vec(plan, 0..40), 1..10i32)
}

/// Every page of ListKeys, following `next_page_token` to the end.
async fn list_all(
    app: &TestApp,
    org: &str,
    page_size: i32,
    include_revoked: bool,
    max_pages: usize,
) -> Result<Vec<proto::ApiKey>, TestCaseError> {
    let mut keys = Vec::new();
    let mut page_token = String::new();
    for _ in 0..max_pages {
        let page = app
            .admin
            .clone()
            .list_keys(admin(proto::ListKeysRequest {
                organization_id: org.into(),
                page_size,
                page_token: page_token.clone(),
                include_revoked,
                ..Default::default()
            }))
            .await
            .map_err(|s| TestCaseError::fail(format!("ListKeys: {s:?}")))?
            .into_inner();
        prop_assert!(
            page.keys.len() <= usize::try_from(page_size).unwrap_or(0),
            "a page of {} keys for page_size {page_size}",
            page.keys.len()
        );
        keys.extend(page.keys);
        if page.next_page_token.is_empty() {
            return Ok(keys);
        }
        page_token = page.next_page_token;
    }
    Err(TestCaseError::fail(format!(
        "no last page after {max_pages} pages"
    )))
}

/// Random sets of 0–39 keys (user and bot), some revoked, listed in random page sizes:
/// with `include_revoked` every key comes back exactly once in creation order, without
/// it exactly the live ones.
async fn pagination_returns_every_key_exactly_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let case = AtomicUsize::new(0);
    let result = run_blocking(api_runner(8), &key_plans(), |(plans, page_size)| {
        let org = format!("paging-{}", case.fetch_add(1, Ordering::Relaxed));
        let app = &app;
        async move {
            let mut created = Vec::with_capacity(plans.len());
            for (i, plan) in plans.iter().enumerate() {
                let name = format!("key-{i}");
                let req = if plan.user {
                    member(&format!("user-{i}"), user_key(&org, &name, &["links:read"]))
                } else {
                    admin(bot_key(&org, &name, &["links:read"]))
                };
                let (key, _) = app.create(req).await;
                created.push(key.id);
            }
            for (id, plan) in created.iter().zip(&plans) {
                if plan.revoke {
                    app.revoke(&org, id).await;
                }
            }
            let live: Vec<&String> = created
                .iter()
                .zip(&plans)
                .filter(|(_, p)| !p.revoke)
                .map(|(id, _)| id)
                .collect();
            let max_pages = plans.len() + 2;

            let all = list_all(app, &org, page_size, true, max_pages).await?;
            let ids: Vec<&String> = all.iter().map(|k| &k.id).collect();
            prop_assert_eq!(ids, created.iter().collect::<Vec<_>>());
            for (key, plan) in all.iter().zip(&plans) {
                prop_assert_eq!(key.revoked, plan.revoke, "{}", key.id);
            }

            let listed = list_all(app, &org, page_size, false, max_pages).await?;
            let ids: Vec<&String> = listed.iter().map(|k| &k.id).collect();
            prop_assert_eq!(ids, live);
            prop_assert!(listed.iter().all(|k| !k.revoked));
            Ok(())
        }
    });
    app.stop().await;
    if let Err(e) = result {
        panic!("{e}");
    }
}

crate::store_tests!(pagination_returns_every_key_exactly_once);
