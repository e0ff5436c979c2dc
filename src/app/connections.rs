//! The one accept loop and per-connection life every listener shares (gRPC,
//! the admin listener, HTTP): the connection cap, the TLS handshake, and the
//! reasons a connection is closed by keygate rather than by its client.
//!
//! A connection is closed gracefully (HTTP/2 GOAWAY, or HTTP/1 closing after
//! the answer in progress) when:
//! - it has had no call in progress for the idle timeout. Idle means no
//!   *call*: HTTP/2 keep-alive pings and window updates do not count, so a
//!   client that only pings is still idle, and a long call (a health `Watch`)
//!   is not;
//! - it reaches its maximum age (gRPC), so that clients rebalance over
//!   instances added since they connected;
//! - the process stops.
//!
//! A connection that has not closed a grace period after that is dropped.
//! hyper has no idle timer of its own, so the loop below keeps one per
//! connection, re-armed at most once per idle period rather than per call; a
//! call only touches two atomics of its connection's [`Activity`].

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{net::TcpListener, sync::Semaphore, time::Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long a client may take to complete the TLS handshake; without a bound
/// a silent client would hold its connection (and an open file) forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a refused-connection warning may be logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// After a failed accept (out of open files, most likely), how long to wait
/// before the next: a tight loop would only burn the CPU the others need.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Connections the kernel may complete before keygate accepts them (std's
/// default of 128 drops a burst of new connections that a busy instance
/// would have taken a moment later).
const BACKLOG: u32 = 1024;

pin_project_lite::pin_project! {
    /// A connection's stream, telling hyper it has no vectored writes. With
    /// vectored writes, HTTP/2 (the h2 crate) sends every DATA frame over 256
    /// bytes from its own buffer and must flush it before it buffers the next
    /// frame: one write per answer for a `VerifyKey` answer carrying a few
    /// metadata entries, where answers of 256 bytes or less go out many to a
    /// write. Without them the bound is 1 KiB, which keygate's answers stay
    /// under; anything larger is still sent, by more writes.
    #[derive(Debug)]
    pub(super) struct Coalesced<I> {
        #[pin]
        inner: hyper_util::rt::TokioIo<I>,
    }
}

impl<I> Coalesced<I> {
    fn new(io: I) -> Self {
        Self {
            inner: hyper_util::rt::TokioIo::new(io),
        }
    }
}

impl<I: tokio::io::AsyncRead> hyper::rt::Read for Coalesced<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        hyper::rt::Read::poll_read(self.project().inner, cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite> hyper::rt::Write for Coalesced<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        hyper::rt::Write::poll_write(self.project().inner, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        hyper::rt::Write::poll_flush(self.project().inner, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        hyper::rt::Write::poll_shutdown(self.project().inner, cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Binds a listener with keygate's backlog.
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

/// When keygate closes a connection its client has not closed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lifetime {
    /// Closed after this long with no call in progress.
    pub idle: Duration,
    /// Closed at this age, idle or not.
    pub max_age: Option<Duration>,
    /// After a graceful close starts, how long calls in progress get before
    /// the connection is dropped.
    pub grace: Duration,
}

/// A listener and what applies to each of its connections.
pub(super) struct Listener {
    /// The `listener` label of the connection metrics.
    pub name: &'static str,
    pub tcp: TcpListener,
    pub tls: Option<TlsAcceptor>,
    /// Above this many open connections, new ones are closed at once.
    pub max_connections: Option<usize>,
    pub lifetime: Lifetime,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.is_some())
            .field("max_connections", &self.max_connections)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// One connection's calls in progress, and when it last had none.
#[derive(Debug)]
pub struct Activity {
    peer: Option<std::net::SocketAddr>,
    in_flight: AtomicUsize,
    /// Nanoseconds from `opened` to the end of the latest call.
    last_end: AtomicU64,
    opened: Instant,
}

impl Activity {
    fn new(peer: Option<std::net::SocketAddr>) -> Self {
        Self {
            peer,
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    /// The connection's peer: forward auth's presenter unless the peer is a
    /// trusted proxy.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.peer
    }

    /// Calls in progress on this connection.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts a call until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// How long the connection has had no call in progress; `None` while it has one.
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight() > 0 {
            return None;
        }
        let last_end = self.opened + Duration::from_nanos(self.last_end.load(Ordering::Acquire));
        Some(now.saturating_duration_since(last_end))
    }
}

/// A call in progress; dropped when its answer has been sent (or abandoned).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let since_open = Instant::now().saturating_duration_since(a.opened);
        // Before the count drops, so a check that sees no call in progress
        // also sees this call's end.
        a.last_end.fetch_max(
            u64::try_from(since_open.as_nanos()).unwrap_or(u64::MAX),
            Ordering::AcqRel,
        );
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call counted until it is sent.
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        call: Option<InFlight>,
    }
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, call: Option<InFlight>) -> Self {
        Self { inner, call }
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            this.call.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A hyper connection that can be asked to finish what it has and close.
pub(super) trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How a listener speaks on a connection once it is accepted (and TLS is done).
pub(super) trait Protocol: Clone + Send + Sync + 'static {
    type Connection<I>: Graceful + Send
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;

    fn serve<I>(&self, io: I, activity: Arc<Activity>) -> Self::Connection<I>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;
}

/// Serves `listener` until `stop`; then closes every connection gracefully
/// and returns once they are all closed.
pub(super) async fn serve<P: Protocol>(listener: Listener, protocol: P, stop: CancellationToken) {
    let Listener {
        name,
        tcp,
        tls,
        max_connections,
        lifetime,
    } = listener;
    crate::metrics::listener_started(name);
    let slots = max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let refusals = Mutex::new(EveryMinute::default());
    let mut accept_errors = EveryMinute::default();
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            () = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(failed) = accept_errors.count(Instant::now()) {
                    tracing::warn!(error = %e, failed, listener = name, "a listener could not accept connections");
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let slot = match &slots {
            None => None,
            Some(slots) => {
                if let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
                    Some(slot)
                } else {
                    // Dropped here: closed before a byte is read.
                    drop(stream);
                    crate::metrics::connection_refused(name);
                    let due = refusals
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .count(Instant::now());
                    if let Some(refused) = due {
                        tracing::warn!(
                            refused,
                            max = max_connections,
                            "the {} listener is full (--{name}-max-connections): \
                             new connections are closed at once",
                            name.to_uppercase(),
                        );
                    }
                    continue;
                }
            }
        };
        // Answers are small and latency-bound: never wait to coalesce them.
        let _ = stream.set_nodelay(true);
        let open = crate::metrics::connection_opened(name);
        let (protocol, tls, stop) = (protocol.clone(), tls.clone(), stop.clone());
        connections.spawn(async move {
            let activity = Arc::new(Activity::new(Some(peer)));
            match tls {
                None => {
                    let conn = protocol.serve(Coalesced::new(stream), Arc::clone(&activity));
                    drive(conn, &activity, lifetime, &stop).await;
                }
                Some(tls) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let conn =
                                protocol.serve(Coalesced::new(stream), Arc::clone(&activity));
                            drive(conn, &activity, lifetime, &stop).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, listener = name, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(listener = name, "TLS handshake timed out"),
                    }
                }
            }
            drop((slot, open));
        });
    }
    // Stop accepting at once: the kernel then refuses new connections
    // instead of completing them for a listener that will not answer.
    drop(tcp);
    connections.close();
    connections.wait().await;
}

/// Runs one connection to its end, closing it when it is idle, old, or the
/// process stops.
pub(super) async fn drive<C: Graceful>(
    conn: C,
    activity: &Activity,
    lifetime: Lifetime,
    stop: &CancellationToken,
) {
    let mut conn = std::pin::pin!(conn);
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    let idle_check = tokio::time::sleep(lifetime.idle);
    let age = tokio::time::sleep(lifetime.max_age.unwrap_or(far));
    let mut idle_check = std::pin::pin!(idle_check);
    let mut age = std::pin::pin!(age);
    // Set once a graceful close has started: the connection is dropped then.
    let mut closing = false;
    let deadline = tokio::time::sleep(far);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        let close = tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut deadline, if closing => {
                tracing::debug!("connection dropped: calls still in progress after the grace period");
                return;
            }
            () = stop.cancelled(), if !closing => true,
            () = &mut age, if !closing => true,
            () = &mut idle_check, if !closing => {
                let now = Instant::now();
                match activity.idle_for(now) {
                    Some(idle) if idle >= lifetime.idle => true,
                    Some(idle) => {
                        idle_check.as_mut().reset(now + (lifetime.idle - idle));
                        false
                    }
                    None => {
                        idle_check.as_mut().reset(now + lifetime.idle);
                        false
                    }
                }
            }
        };
        if close {
            closing = true;
            conn.as_mut().close_gracefully();
            deadline.as_mut().reset(Instant::now() + lifetime.grace);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn warnings_come_at_most_once_a_minute_with_their_count() {
        let mut r = EveryMinute::default();
        let t0 = Instant::now();
        assert_eq!(r.count(t0), Some(1), "the first one at once");
        assert_eq!(r.count(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.count(t0 + Duration::from_secs(59)), None);
        assert_eq!(r.count(t0 + Duration::from_secs(60)), Some(3));
        assert_eq!(r.count(t0 + Duration::from_secs(61)), None);
    }

    /// A connection that records when it was asked to close, and ends when
    /// told to (as a client closing after GOAWAY would).
    struct Fake {
        asked: Arc<Mutex<Option<Instant>>>,
        ends: Arc<tokio::sync::Notify>,
        ended: Pin<Box<dyn Future<Output = ()> + Send>>,
    }

    impl Fake {
        fn new() -> (Self, Arc<Mutex<Option<Instant>>>, Arc<tokio::sync::Notify>) {
            let asked = Arc::new(Mutex::new(None));
            let ends = Arc::new(tokio::sync::Notify::new());
            let waiter = Arc::clone(&ends);
            let fake = Self {
                asked: Arc::clone(&asked),
                ends: Arc::clone(&ends),
                ended: Box::pin(async move { waiter.notified().await }),
            };
            (fake, asked, ends)
        }
    }

    impl Future for Fake {
        type Output = Result<(), hyper::Error>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.ended.as_mut().poll(cx).map(Ok)
        }
    }

    impl Graceful for Fake {
        fn close_gracefully(self: Pin<&mut Self>) {
            let _ = &self.ends;
            self.asked
                .lock()
                .expect("lock")
                .get_or_insert(Instant::now());
        }
    }

    const LIFE: Lifetime = Lifetime {
        idle: Duration::from_secs(60),
        max_age: None,
        grace: Duration::from_secs(5),
    };

    fn asked_after(asked: &Mutex<Option<Instant>>, t0: Instant) -> Option<Duration> {
        asked.lock().expect("lock").map(|t| t - t0)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let (fake, asked, _) = Fake::new();
        let activity = Arc::new(Activity::new(None));
        let stop = CancellationToken::new();
        let t0 = Instant::now();
        let a = Arc::clone(&activity);
        let task = tokio::spawn(async move { drive(fake, &a, LIFE, &stop).await });
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(asked_after(&asked, t0), None);
        // Never ends on its own: dropped after the grace period.
        task.await.expect("driven");
        assert_eq!(asked_after(&asked, t0), Some(Duration::from_secs(60)));
        assert_eq!(Instant::now() - t0, Duration::from_secs(65));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_in_progress_keeps_it_open_and_idle_counts_from_its_end() {
        let (fake, asked, ends) = Fake::new();
        let activity = Arc::new(Activity::new(None));
        let stop = CancellationToken::new();
        let t0 = Instant::now();
        let a = Arc::clone(&activity);
        let task = tokio::spawn(async move { drive(fake, &a, LIFE, &stop).await });
        tokio::time::sleep(Duration::from_secs(30)).await;
        let call = activity.begin();
        // A call of 100 s: far past the idle timeout, and the connection stays.
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(asked_after(&asked, t0), None, "closed under a call");
        drop(call);
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(
            asked_after(&asked, t0),
            None,
            "idle counts from the call's end"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(asked_after(&asked, t0), Some(Duration::from_secs(190)));
        ends.notify_one();
        task.await.expect("driven");
        assert_eq!(
            Instant::now() - t0,
            Duration::from_secs(191),
            "ended when the client closed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn age_and_stop_close_gracefully_then_drop_after_the_grace() {
        let (fake, asked, _) = Fake::new();
        let activity = Arc::new(Activity::new(None));
        let _call = activity.begin();
        let stop = CancellationToken::new();
        let t0 = Instant::now();
        let life = Lifetime {
            max_age: Some(Duration::from_secs(10)),
            ..LIFE
        };
        let a = Arc::clone(&activity);
        let s = stop.clone();
        tokio::spawn(async move { drive(fake, &a, life, &s).await })
            .await
            .expect("driven");
        assert_eq!(asked_after(&asked, t0), Some(Duration::from_secs(10)));
        assert_eq!(Instant::now() - t0, Duration::from_secs(15));

        let (fake, asked, _) = Fake::new();
        let t0 = Instant::now();
        let a = Arc::clone(&activity);
        let s = stop.clone();
        let task = tokio::spawn(async move { drive(fake, &a, LIFE, &s).await });
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
        task.await.expect("driven");
        assert_eq!(asked_after(&asked, t0), Some(Duration::from_secs(3)));
    }
}
