//! Webhook delivery (`--webhook-url`, `--webhook-secret`): a
//! background task per instance that makes delivery rows for new events, leases
//! the due ones and POSTs each, signed per Standard Webhooks, retrying with
//! exponential backoff and jitter for up to 24 hours. All of its state is in the
//! store (`store::outbox`), so a restart, a crash or an outage of the store or
//! of an endpoint loses no event; several instances share the work through
//! leases. It runs beside the servers and never holds anything they wait for,
//! so a slow or dead endpoint slows neither admin calls nor verification.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use metrics::{Counter, Gauge, counter, gauge};
use rand::Rng as _;
use standardwebhooks::Webhook;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::json as payload;
use crate::{
    clock::SharedClock,
    domain::model::Micros,
    store::{Delivery, Store},
};

/// How often the outbox is looked at.
const TICK: Duration = Duration::from_millis(200);
/// Longest one POST may take, response included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leased delivery is this instance's: well past REQUEST_TIMEOUT, so
/// only a crashed instance loses its lease.
const LEASE: Micros = Micros(60_000_000);
/// Deliveries attempted at once per endpoint.
const BATCH: u32 = 16;
/// First retry after about a second, doubling, at most an hour apart.
const BACKOFF_BASE: Micros = Micros(1_000_000);
const BACKOFF_MAX: Micros = Micros(3_600_000_000);
/// After this long an event that no attempt delivered is given up (and counted).
const GIVE_UP_AFTER: Micros = Micros(24 * 3_600_000_000);

#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    #[error("--webhook-secret must be whsec_ followed by base64 (at least 16 bytes)")]
    Secret,
    /// Named by position: a URL may hold a password, never echoed.
    #[error("--webhook-url: entry {0} is not an http:// or https:// URL")]
    Url(usize),
    #[error("--webhook-url needs --webhook-secret")]
    NoSecret,
    /// Two entries that differ only in credentials or query are one endpoint
    /// in the store; queuing every event for it twice would fail every write.
    #[error(
        "--webhook-url: entries {first} and {second} are the same endpoint ({shown}): \
         URLs that differ only in credentials or query share their deliveries; give each once"
    )]
    Repeated {
        first: usize,
        second: usize,
        shown: String,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

#[derive(Clone)]
struct Endpoint {
    url: String,
    /// The URL without credentials or query, for logs: a URL may carry a
    /// password or a token, and no secret goes into a log line.
    shown: String,
    /// SHA-256 of the URL: the endpoint's name in the store.
    id: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

#[derive(Debug)]
struct Metrics {
    delivered: Counter,
    failed: Counter,
    given_up: Counter,
    oldest: Gauge,
}

pub struct Webhooks {
    store: Store,
    endpoints: Vec<Endpoint>,
    signer: Webhook,
    client: reqwest::Client,
    /// This instance's name on the leases it takes.
    owner: String,
    clock: SharedClock,
    metrics: Metrics,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("endpoints", &self.endpoints)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The configured URLs, checked, each with its log form and store id.
fn endpoints(urls: &[String]) -> Result<Vec<Endpoint>, WebhookConfigError> {
    let mut endpoints = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let parsed = url::Url::parse(url).map_err(|_| WebhookConfigError::Url(i + 1))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(WebhookConfigError::Url(i + 1));
        }
        let shown = format!(
            "{}://{}{}{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default(),
            parsed.port().map(|p| format!(":{p}")).unwrap_or_default(),
            parsed.path()
        );
        let id = endpoint_id(&shown);
        if let Some(first) = endpoints.iter().position(|e: &Endpoint| e.id == id) {
            return Err(WebhookConfigError::Repeated {
                first: first + 1,
                second: i + 1,
                shown,
            });
        }
        endpoints.push(Endpoint {
            url: url.clone(),
            id,
            shown,
        });
    }
    Ok(endpoints)
}

/// The store ids of `urls`, for `Store::with_webhook_endpoints`: every event is
/// queued for these in its own transaction.
pub fn endpoint_ids(urls: &[String]) -> Result<Vec<String>, WebhookConfigError> {
    Ok(endpoints(urls)?.into_iter().map(|e| e.id).collect())
}

/// An endpoint's name in the store: the SHA-256 of its URL without credentials
/// or query, so that no credential reaches the database, and a changed
/// password does not orphan the deliveries still due.
fn endpoint_id(shown: &str) -> String {
    crate::domain::keys::SecretHash::of(shown).to_hex()
}

/// Why an attempt failed, as an operator needs it: the kind (connect,
/// timeout, …) and the cause's own words ("Connection refused", a TLS
/// error), without the URL, which may hold credentials. reqwest's own message
/// is only "error sending request".
fn failure_reason(e: reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_request() {
        "request failed"
    } else if e.is_body() {
        "body failed"
    } else {
        "failed"
    };
    let e = e.without_url();
    let mut out = kind.to_owned();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Checks a `whsec_<base64>` secret; the secret itself is never echoed.
pub fn signer(secret: &str) -> Result<Webhook, WebhookConfigError> {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or(WebhookConfigError::Secret)?;
    match STANDARD.decode(b64) {
        Ok(bytes) if bytes.len() >= 16 => {
            Webhook::new(secret).map_err(|_| WebhookConfigError::Secret)
        }
        _ => Err(WebhookConfigError::Secret),
    }
}

impl Webhooks {
    pub fn new(
        store: Store,
        urls: &[String],
        secret: Option<&str>,
        clock: SharedClock,
    ) -> Result<Self, WebhookConfigError> {
        let signer = signer(secret.ok_or(WebhookConfigError::NoSecret)?)?;
        let endpoints = endpoints(urls)?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            // An endpoint answers for itself; a redirect elsewhere is a failure.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WebhookConfigError::Client(e.to_string()))?;
        Ok(Self {
            store,
            endpoints,
            signer,
            client,
            owner: uuid::Uuid::now_v7().to_string(),
            clock,
            metrics: Metrics {
                delivered: counter!("keygate_webhook_deliveries_total", "result" => "delivered"),
                failed: counter!("keygate_webhook_deliveries_total", "result" => "failed_attempt"),
                given_up: counter!("keygate_webhook_deliveries_total", "result" => "given_up"),
                oldest: gauge!("keygate_webhook_oldest_undelivered_seconds"),
            },
        })
    }

    /// Delivers until `stop`; attempts in flight then finish (each bounded by
    /// the request timeout) and are recorded.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            for endpoint in &self.endpoints {
                // A store that stops answering must not hold up a shutdown:
                // after `stop`, a round gets two seconds to release its leases
                // (unreleased ones run out by themselves).
                let round = tokio::select! {
                    r = self.round(endpoint, &stop) => r,
                    () = async {
                        stop.cancelled().await;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    } => return,
                };
                if let Err(e) = round {
                    tracing::warn!(endpoint = %endpoint.shown, error = %e, "webhook round failed; will retry");
                }
            }
        }
    }

    /// One batch of due deliveries. On `stop`,
    /// attempts still in flight are abandoned and their leases released, so a
    /// hanging endpoint cannot hold up a shutdown and the next instance (or
    /// this one restarted) retries them at once.
    async fn round(
        &self,
        endpoint: &Endpoint,
        stop: &CancellationToken,
    ) -> Result<(), crate::store::StoreError> {
        let now = self.clock.now();
        let due = self
            .store
            .webhook_claim(
                &endpoint.id,
                &self.owner,
                now,
                Micros(now.0 + LEASE.0),
                BATCH,
            )
            .await?;
        let mut pending: Vec<u64> = due.iter().map(|d| d.event_id).collect();
        let mut attempts = JoinSet::new();
        for delivery in due {
            let request = self.request(endpoint, &delivery);
            attempts.spawn(async move { (delivery, request.await) });
        }
        loop {
            let done = tokio::select! {
                done = attempts.join_next() => done,
                () = stop.cancelled() => {
                    attempts.abort_all();
                    self.store.webhook_release(&endpoint.id, &pending, &self.owner).await?;
                    return Ok(());
                }
            };
            let Some(done) = done else { break };
            let Ok((delivery, result)) = done else {
                continue;
            };
            pending.retain(|id| *id != delivery.event_id);
            self.record(endpoint, &delivery, result).await?;
        }
        let oldest = self.store.webhook_oldest_pending(&endpoint.id).await?;
        let age = oldest.map_or(0.0, |t| (self.clock.now().0 - t.0).max(0) as f64 / 1e6);
        self.metrics.oldest.set(age);
        Ok(())
    }

    /// One signed POST; `Ok` on a 2xx answer.
    fn request(
        &self,
        endpoint: &Endpoint,
        d: &Delivery,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let snapshot = d
            .snapshot
            .as_deref()
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or(serde_json::Value::Null);
        let body = payload::body(&d.event, snapshot);
        // The organization's own event id: the same on every attempt, unique
        // across organizations, and telling nothing of other tenants' activity.
        let id = format!("{}-{}", d.event.organization_id.as_str(), d.event.id);
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |t| i64::try_from(t.as_secs()).unwrap_or(0));
        let signature = self.signer.sign(&id, timestamp, body.as_bytes());
        let request = self
            .client
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string());
        async move {
            let signature = signature.map_err(|e| format!("signing: {e}"))?;
            let response = request
                .header("webhook-signature", signature)
                .body(body)
                .send()
                .await
                .map_err(failure_reason)?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {}", status.as_u16()))
            }
        }
    }

    async fn record(
        &self,
        endpoint: &Endpoint,
        d: &Delivery,
        result: Result<(), String>,
    ) -> Result<(), crate::store::StoreError> {
        let now = self.clock.now();
        let outcome = match &result {
            Ok(()) => {
                self.metrics.delivered.increment(1);
                Ok(())
            }
            Err(e) if now.0 - d.event.time.0 > GIVE_UP_AFTER.0 => {
                self.metrics.given_up.increment(1);
                tracing::error!(endpoint = %endpoint.shown, endpoint_id = %endpoint.id, event_id = d.event_id, error = %e,
                    "webhook given up after 24 hours of failed attempts");
                Err((None, e.as_str()))
            }
            Err(e) => {
                self.metrics.failed.increment(1);
                let retry = Micros(now.0 + backoff(d.attempts + 1).0);
                tracing::warn!(endpoint = %endpoint.shown, endpoint_id = %endpoint.id, event_id = d.event_id, attempt = d.attempts + 1,
                    error = %e, "webhook attempt failed; will retry");
                Err((Some(retry), e.as_str()))
            }
        };
        self.store
            .webhook_attempted(&endpoint.id, d.event_id, &self.owner, now, outcome)
            .await
    }
}

/// Delay before attempt `n + 1` after `n` failures: 1 s, 2 s, 4 s, … at most an
/// hour, each drawn from its upper half so that retries of many events spread.
pub fn backoff(failures: u32) -> Micros {
    let exp = BACKOFF_BASE
        .0
        .saturating_mul(1_i64 << failures.saturating_sub(1).min(32))
        .min(BACKOFF_MAX.0);
    Micros(rand::rng().random_range(exp / 2..=exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_an_hour() {
        for (n, lo, hi) in [
            (1, 500_000, 1_000_000),
            (2, 1_000_000, 2_000_000),
            (4, 4_000_000, 8_000_000),
        ] {
            for _ in 0..100 {
                let d = backoff(n).0;
                assert!((lo..=hi).contains(&d), "{n}: {d}");
            }
        }
        assert!(backoff(40).0 <= BACKOFF_MAX.0 && backoff(40).0 >= BACKOFF_MAX.0 / 2);
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_16_bytes_or_more() {
        assert!(signer("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        for bad in [
            "",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
        ] {
            assert!(signer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_endpoint_given_twice_is_refused_without_echoing_credentials() {
        let urls = [
            "https://hooks.example.com/keygate".to_owned(),
            "https://other.example.com/keygate".to_owned(),
            "https://user:hunter2@hooks.example.com/keygate?token=s3cret".to_owned(),
        ];
        let err = endpoint_ids(&urls).expect_err("refused").to_string();
        assert!(err.contains("entries 1 and 3"), "{err}");
        assert!(err.contains("https://hooks.example.com/keygate"), "{err}");
        assert!(!err.contains("hunter2") && !err.contains("s3cret"), "{err}");
        assert_eq!(endpoint_ids(&urls[..2]).expect("distinct").len(), 2);
    }

    /// A failed attempt says why, not only reqwest's "error sending request",
    /// and never the URL (it may carry credentials).
    #[tokio::test]
    async fn a_failed_attempt_says_why_without_the_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let e = reqwest::Client::new()
            .post(format!("http://user:hunter2@127.0.0.1:{port}/hook"))
            .send()
            .await
            .expect_err("nothing listens there");
        let reason = failure_reason(e);
        assert!(reason.starts_with("cannot connect"), "{reason}");
        assert!(reason.to_lowercase().contains("refused"), "{reason}");
        assert!(
            !reason.contains("hunter2") && !reason.contains("/hook"),
            "{reason}"
        );
    }
}
