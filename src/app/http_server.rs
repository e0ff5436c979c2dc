//! The HTTP listener's connections (`--http-listen`), served by hyper with
//! settings that keep slow and idle clients from holding them:
//!
//! - at most `--http-max-connections` open at once; a connection accepted
//!   above that is closed at once (counted, and logged at most once a minute),
//!   so a flood of idle connections cannot use up the open files that the gRPC
//!   listener, the store and Redis need (see `files`);
//! - hyper's header-read timeout (`--http-header-timeout`): a client that has
//!   not sent a whole request head in that time is disconnected. hyper starts
//!   that clock as soon as a connection waits for a request, so it also closes
//!   a keep-alive connection that stays idle that long, and a client that
//!   drips one header line at a time;
//! - the request deadline and body limits are the router's (`api::http`).
//!
//! axum's own `serve` has none of these settings, hence this loop.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How often a refused-connection warning may be logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// After a failed accept (out of open files, most likely), how long to wait
/// before the next: a tight loop would only burn the CPU the others need.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
pub(super) struct HttpLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Occurrences since the last warning about them, and when that was.
#[derive(Debug, Default)]
struct EveryMinute {
    since_log: u64,
    logged: Option<Instant>,
}

impl EveryMinute {
    /// Counts one; returns how many to report when a warning is due.
    fn count(&mut self, now: Instant) -> Option<u64> {
        self.since_log += 1;
        let due = self
            .logged
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY);
        due.then(|| {
            self.logged = Some(now);
            std::mem::take(&mut self.since_log)
        })
    }
}

/// Connections the kernel may complete before keygate accepts them, as the
/// gRPC listeners have (std's default of 128 drops a burst of new connections
/// that a busy instance would have taken a moment later).
const BACKLOG: u32 = 1024;

/// Binds the HTTP listener.
pub(super) fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `router` on `listener` until `stop`, then lets every open
/// connection finish its request in progress.
pub(super) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    crate::metrics::listener_started("http");
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Mutex::new(EveryMinute::default());
    let mut accept_errors = EveryMinute::default();
    let connections = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                if let Some(failed) = accept_errors.count(Instant::now()) {
                    tracing::warn!(error = %e, failed, "the HTTP listener could not accept connections");
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Dropped here: closed before a byte is read.
            drop(stream);
            crate::metrics::connection_refused("http");
            let due = refusals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .count(Instant::now());
            if let Some(refused) = due {
                tracing::warn!(
                    refused,
                    max = limits.max_connections,
                    "the HTTP listener is full (--http-max-connections): new connections are closed at once"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = crate::metrics::connection_opened("http");
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let stop = stop.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    // Finish the request in progress, then close.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.as_mut().await;
                }
            }
            drop((slot, open));
        });
    }
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_come_at_most_once_a_minute_with_their_count() {
        let mut r = EveryMinute::default();
        let t0 = Instant::now();
        assert_eq!(r.count(t0), Some(1), "the first one at once");
        assert_eq!(r.count(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.count(t0 + Duration::from_secs(59)), None);
        assert_eq!(r.count(t0 + Duration::from_secs(60)), Some(3));
        assert_eq!(r.count(t0 + Duration::from_secs(61)), None);
    }
}
