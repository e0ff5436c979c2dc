//! The monitoring shipped in `deploy/` against the real thing: Debian's
//! `prometheus` binary, run from `deploy/prometheus/prometheus.yml` and
//! `keygate-rules.yml`, scraping the real `keygate` binary.
//!
//! - `store_outage_fires_and_resolves_the_shipped_alert`: keygate on a private
//!   MariaDB; the target is up and every shipped rule evaluates cleanly; the
//!   MariaDB is killed and `KeygateStoreUnreachable` (and `KeygateNotServing`)
//!   must fire; it is restarted and they must resolve.
//! - `dashboard_queries_name_only_exported_metrics`: every PromQL expression of
//!   `deploy/grafana/keygate.json` parses and evaluates in Prometheus, and every
//!   metric it names is in a live scrape; the scrape passes `promtool check
//!   metrics` without a single lint.
//!
//! The test copy of the configuration is derived from the shipped files, not
//! written anew: intervals go from 15 s to 1 s, every `for:` becomes 3 s, and the
//! Kubernetes service discovery (everything from `kubernetes_sd_configs:` on, which
//! Debian's build of Prometheus lacks anyway) becomes a static target. Range
//! windows (`[5m]`) are kept: the store-outage alerts use none.
//!
//! These tests fail, never skip, when prometheus or promtool is missing:
//! `deploy/install-deps` installs them.
//!
//! Size: a private MariaDB, a real Prometheus and the dashboard check share their
//! setup here.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use keygate::{
    domain::keys::{KeyPrefix, Secret},
    proto::{RevokeKeyRequest, VerifyCode, key_admin_client::KeyAdminClient},
};
use serde_json::Value;

use crate::{private_db::PrivateMariaDb, support::*};

const INSTALL_HINT: &str = "run deploy/install-deps (installs Debian's `prometheus` package, which ships prometheus and promtool)";
/// The shipped `for:` durations (1–15 minutes) become this.
const TEST_FOR: &str = "3s";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The absolute path of `program` on PATH; panics (the test fails) without it.
fn require(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{program}` is not on PATH: {INSTALL_HINT}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// One plain HTTP/1.0 GET (no chunked encoding, the server closes): status and body.
fn http_get(addr: SocketAddr, path_and_query: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let raw = String::from_utf8(raw).map_err(|e| format!("non-UTF-8 answer: {e}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {raw:.200}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:.200}"))?;
    Ok((status, body.to_owned()))
}

/// Percent-encodes a query-string value (everything but unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `check` every 250 ms until it returns `Ok`, for at most `timeout`; the
/// panic names what was awaited and the last reason it was not there yet.
async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Replaces `from` by `to` in `text`, insisting that `from` is there: a change to
/// the shipped file must be noticed here, not silently ignored.
fn replace_all(text: &str, from: &str, to: &str, file: &str) -> String {
    assert!(
        text.contains(from),
        "{file} no longer contains `{from}`; update tests/it/prometheus.rs"
    );
    text.replace(from, to)
}

/// The test copy of `deploy/prometheus/prometheus.yml`: 1 s intervals, and a
/// static target instead of Kubernetes service discovery.
fn test_config(target: SocketAddr) -> String {
    let file = "deploy/prometheus/prometheus.yml";
    let shipped = std::fs::read_to_string(repo().join(file)).expect("read prometheus.yml");
    let mut config = shipped.clone();
    for (from, to) in [
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
        ("scrape_timeout: 10s", "scrape_timeout: 1s"),
    ] {
        config = replace_all(&config, from, to, file);
    }
    let sd = config
        .find("\n    kubernetes_sd_configs:")
        .unwrap_or_else(|| panic!("{file}: the keygate job must end with kubernetes_sd_configs"));
    config.truncate(sd + 1);
    assert!(
        config.contains("job_name: keygate"),
        "{file}: no keygate job"
    );
    config.push_str(&format!(
        "    static_configs:\n      - targets: [\"{target}\"]\n"
    ));
    config
}

/// The test copy of `deploy/prometheus/keygate-rules.yml`: every `for:` shortened.
fn test_rules() -> String {
    let shipped = std::fs::read_to_string(repo().join("deploy/prometheus/keygate-rules.yml"))
        .expect("read keygate-rules.yml");
    let mut rewritten = 0;
    let lines: Vec<String> = shipped
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("for: ") {
                rewritten += 1;
                format!("{}for: {TEST_FOR}", &line[..line.len() - trimmed.len()])
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert!(
        rewritten >= 9,
        "expected a `for:` per alert, found {rewritten}"
    );
    lines.join("\n") + "\n"
}

/// A Prometheus server of the test's own, on a free port and a data directory
/// removed afterwards.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Self {
        let binary = require("prometheus");
        let dir = std::env::temp_dir().join(format!(
            "keygate-prometheus-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create prometheus dir");
        std::fs::write(dir.join("prometheus.yml"), test_config(target)).expect("write config");
        // The config names its rule file relative to itself, as shipped.
        std::fs::write(dir.join("keygate-rules.yml"), test_rules()).expect("write rules");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Self { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) at start:\n{}",
                    prometheus.log()
                );
            }
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 30 s:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `data` of a successful API answer, or why there is none.
    fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let (status, body) = http_get(self.addr, path_and_query)?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("{path_and_query}: HTTP {status}, not JSON ({e}): {body:.300}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{path_and_query}: HTTP {status}: {body:.500}"));
        }
        Ok(v["data"].clone())
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// State (`pending`/`firing`) of the active alert named `name`, if any.
    fn alert_state(&self, name: &str) -> Result<Option<String>, String> {
        let data = self.api("/api/v1/alerts")?;
        Ok(data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["labels"]["alertname"] == name)
            .and_then(|a| a["state"].as_str().map(str::to_owned)))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the keygate binary on `database_url`; returns it with its gRPC and
/// metrics addresses (from the JSON "keygate serving" line).
fn spawn_keygate(database_url: &str, extra: &[&str]) -> (Process, SocketAddr, SocketAddr) {
    let served = spawn_process(database_url, extra);
    (served.process, served.addr, served.metrics_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_fires_and_resolves_the_shipped_alert() {
    require("prometheus");
    let mut db = PrivateMariaDb::start().await;
    let test_db = TestDb::create_mysql_on(&db.url(), "prometheus").await;
    let (mut keygate, _, metrics) = spawn_keygate(
        &test_db.url,
        // A dead store is noticed by the 1 s health ping whatever these are; short
        // timeouts only keep keygate's own calls from waiting long.
        &["--database-timeout", "500ms"],
    );
    let prometheus = Prometheus::start(metrics).await;

    let up = wait_for(
        Duration::from_secs(30),
        "the keygate target to be up",
        || {
            let result = prometheus.query("up{job=\"keygate\"}")?;
            match result.first().and_then(|s| s["value"][1].as_str()) {
                Some("1") => Ok(result),
                other => Err(format!("up = {other:?}")),
            }
        },
    )
    .await;
    assert_eq!(up.len(), 1, "exactly one keygate target: {up:?}");

    // Every shipped rule (9 of them) is evaluated against the real metrics without
    // an error: a typo in an expression or a label mismatch shows up here.
    wait_for(
        Duration::from_secs(30),
        "every rule evaluated cleanly",
        || {
            let data = prometheus.api("/api/v1/rules")?;
            let rules: Vec<&Value> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            if rules.len() < 9 {
                return Err(format!("{} rules loaded", rules.len()));
            }
            match rules.iter().find(|r| r["health"] != "ok") {
                None => Ok(()),
                Some(r) => Err(format!(
                    "rule {} has health {} ({})",
                    r["name"], r["health"], r["lastError"]
                )),
            }
        },
    )
    .await;
    assert_eq!(
        prometheus
            .alert_state("KeygateStoreUnreachable")
            .expect("alerts"),
        None,
        "store-unreachable alert active while the store runs"
    );

    db.kill();
    let started = Instant::now();
    for alert in ["KeygateStoreUnreachable", "KeygateNotServing"] {
        wait_for(
            Duration::from_secs(60),
            &format!("{alert} to fire after the store was killed"),
            || match prometheus.alert_state(alert)?.as_deref() {
                Some("firing") => Ok(()),
                other => Err(format!(
                    "state {other:?}; prometheus log:\n{}",
                    prometheus.log()
                )),
            },
        )
        .await;
    }
    eprintln!(
        "store-outage alerts firing {:?} after the kill",
        started.elapsed()
    );

    db.restart().await;
    let restarted = Instant::now();
    for alert in ["KeygateStoreUnreachable", "KeygateNotServing"] {
        wait_for(
            Duration::from_secs(60),
            &format!("{alert} to resolve after the store came back"),
            || match prometheus.alert_state(alert)? {
                None => Ok(()),
                Some(state) => Err(format!("still {state}")),
            },
        )
        .await;
    }
    eprintln!("resolved {:?} after the restart", restarted.elapsed());
    let store_up = prometheus.query("keygate_store_up").expect("query");
    assert_eq!(
        store_up.first().and_then(|s| s["value"][1].as_str()),
        Some("1"),
        "keygate_store_up back to 1: {store_up:?}"
    );

    let status = keygate.terminate();
    assert!(
        status.success(),
        "keygate exits cleanly on SIGTERM: {status}"
    );
}

/// The metric names a PromQL expression selects: identifiers outside strings,
/// label matchers (`{…}`), range and subquery brackets (`[…]`) and grouping
/// clauses (`by (…)`, `on (…)`, …), that are neither functions, aggregations
/// (followed by `(`), keywords, numbers nor Grafana variables (`$…`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Operators, and aggregations, which may come before their `by (…)` rather
    // than right before their `(`.
    const KEYWORDS: [&str; 18] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let (mut braces, mut brackets) = (0_i32, 0_i32);
    let mut skip_next_word = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' && c != '`' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => (braces, i) = (braces + 1, i + 1),
            '}' => (braces, i) = (braces - 1, i + 1),
            '[' => (brackets, i) = (brackets + 1, i + 1),
            ']' => (brackets, i) = (brackets - 1, i + 1),
            '$' => {
                i += 1;
                while i < chars.len() && (ident(chars[i]) || chars[i] == '{' || chars[i] == '}') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers, and durations such as `5m` after `offset`.
                skip_next_word = false;
                while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if ident(c) => {
                let start = i;
                while i < chars.len() && ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let called = chars.get(next) == Some(&'(');
                if braces > 0 || brackets > 0 {
                    // a label name or a duration
                } else if GROUPING.contains(&word.as_str()) {
                    if called {
                        // Skip the label list.
                        while i < chars.len() && chars[i] != ')' {
                            i += 1;
                        }
                        i += 1;
                    }
                } else if word == "offset" {
                    skip_next_word = true;
                } else if KEYWORDS.contains(&word.as_str()) || called {
                    // an operator, a function or an aggregation
                } else if std::mem::take(&mut skip_next_word) {
                    // the duration after offset
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_extracted_from_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, instance) (rate(a_bucket{job=~"$job", x="y{z}"}[$__rate_interval])))
           / ignoring (state) b_max offset 5m + on(job) group_left(version) c{d!="e"} and sum without(f) (g:rule) > bool 1e3
           or count by (x) (h) or topk by (y) (3, sum(i))"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_bucket", "b_max", "c", "g:rule", "h", "i"]
    );
}

/// Sample names in Prometheus text (a histogram contributes `_bucket`, `_sum`
/// and `_count`).
fn exposed_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_name_only_exported_metrics() {
    let promtool = require("promtool");
    require("prometheus");
    let db = TestDb::create(Backend::Sqlite).await;
    let (mut keygate, addr, metrics) = spawn_keygate(
        &db.url,
        &[
            "--usage-flush-interval",
            "100ms",
            "--invalidation-interval",
            "50ms",
            // The HTTP listener's series are on the dashboard too.
            "--http-listen",
            "127.0.0.1:0",
        ],
    );

    // Traffic that makes every series of the dashboard exist: verifications of
    // several outcomes, cache hits and misses, store reads, admin calls, a usage
    // flush and an invalidation (the revocation's event, seen by the poller).
    let channel = connect(addr).await;
    let mut admin_client = KeyAdminClient::new(channel.clone());
    let mut verify = keygate::proto::key_verify_client::KeyVerifyClient::new(channel);
    let org = "dashorg";
    let created = admin_client
        .create_key(admin(bot_key(org, "dashboard", &["links:read"])))
        .await
        .expect("create key")
        .into_inner();
    let key = created.key.expect("key");
    let code = |r: keygate::proto::VerifyKeyResponse| r.code();
    for (secret, scopes, expected) in [
        (
            created.secret.as_str(),
            &["links:read"][..],
            VerifyCode::Valid,
        ),
        (
            created.secret.as_str(),
            &["links:read"][..],
            VerifyCode::Valid,
        ),
        (
            created.secret.as_str(),
            &["stats:read"][..],
            VerifyCode::InsufficientScope,
        ),
        ("junk", &[][..], VerifyCode::Malformed),
        (
            Secret::generate(&KeyPrefix::default()).expose(),
            &[][..],
            VerifyCode::NotFound,
        ),
    ] {
        let answer = verify
            .verify_key(verify_req(secret, scopes))
            .await
            .expect("verify");
        assert_eq!(code(answer.into_inner()), expected);
    }
    admin_client
        .revoke_key(admin(RevokeKeyRequest {
            organization_id: org.into(),
            id: key.id.clone(),
        }))
        .await
        .expect("revoke");
    let answer = verify
        .verify_key(verify_req(&created.secret, &[]))
        .await
        .expect("verify revoked");
    assert_eq!(code(answer.into_inner()), VerifyCode::Revoked);

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/keygate.json"))
            .expect("read deploy/grafana/keygate.json"),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            exprs.push((
                panel["title"].as_str().unwrap_or("?").to_owned(),
                expr.to_owned(),
            ));
        }
    }
    assert!(
        exprs.len() >= 10,
        "the dashboard has {} queries",
        exprs.len()
    );
    let mut wanted = BTreeSet::new();
    for (title, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "panel {title:?}: no metric in {expr}");
        for name in &names {
            assert!(
                name.starts_with("keygate_"),
                "panel {title:?} uses {name}, which keygate does not export"
            );
        }
        wanted.extend(names);
    }

    // Usage flushes and invalidations happen in the background: wait (bounded)
    // for their series.
    let scrape = wait_for(
        Duration::from_secs(15),
        "every dashboard metric in /metrics",
        || {
            let (status, body) = http_get(metrics, "/metrics")?;
            if status != 200 {
                return Err(format!("/metrics answered {status}"));
            }
            let exposed = exposed_names(&body);
            let missing: Vec<&String> = wanted.difference(&exposed).collect();
            if missing.is_empty() {
                Ok(body)
            } else {
                Err(format!("not exported: {missing:?}"))
            }
        },
    )
    .await;

    // promtool's linter on the real scrape: HELP on every metric, counter names,
    // units. It prints nothing when all is well.
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("feed promtool");
    let out = check.wait_with_output().expect("promtool output");
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && lint.trim().is_empty(),
        "promtool check metrics on a live scrape ({}):\n{lint}",
        out.status
    );

    // Every expression parses and evaluates in a real Prometheus scraping this
    // keygate, with Grafana's variables given values.
    let prometheus = Prometheus::start(metrics).await;
    wait_for(
        Duration::from_secs(30),
        "a few scrapes",
        || match prometheus
            .query("count_over_time(up{job=\"keygate\"}[1m])")?
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        {
            Some(n) if n >= 3.0 => Ok(()),
            n => Err(format!("{n:?} scrapes")),
        },
    )
    .await;
    for (title, expr) in &exprs {
        let concrete = expr
            .replace("$__rate_interval", "1m")
            .replace("$job", "keygate")
            .replace("$instance", ".*");
        assert!(
            !concrete.contains('$'),
            "panel {title:?}: unknown variable in {expr}"
        );
        prometheus
            .query(&concrete)
            .unwrap_or_else(|e| panic!("panel {title:?}: {expr} does not evaluate: {e}"));
    }
    // A query that is plainly about this keygate's traffic returns data.
    let verifications = prometheus
        .query("sum(keygate_verify_total{job=\"keygate\"})")
        .expect("query");
    assert_eq!(
        verifications.first().and_then(|s| s["value"][1].as_str()),
        Some("6"),
        "Prometheus sees the 6 verifications: {verifications:?}"
    );

    let status = keygate.terminate();
    assert!(
        status.success(),
        "keygate exits cleanly on SIGTERM: {status}"
    );
    db.drop_db().await;
}
