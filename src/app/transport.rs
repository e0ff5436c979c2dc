//! How the gRPC listeners speak: HTTP/2 settings, the services' shared
//! stack, and what each connection adds to every call (its share of calls in
//! progress and the call's deadline).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Request, Response};
use hyper::server::conn::http2;
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    service::TowerToHyperService,
};
use tonic::{body::Body, service::Routes};
use tower::{ServiceExt, util::Oneshot};

use super::{
    admission::{self, Admission, AdmissionLayer},
    connections::{Activity, InFlight, Protocol, TrackedBody},
};

/// See [`crate::api::grpc::codec::caller_fault_status`].
pub(super) type StatusRewrite = fn(Response<Body>) -> Response<Body>;

/// The services of one gRPC listener with the layers every call passes,
/// outermost first: a request refused before its handler ran (bad bytes, too
/// large) gets the code that says it was the caller's fault; inside it,
/// metadata size and the instance-wide count of calls in progress (see
/// `admission`).
pub(super) type Services = tower::util::MapResponse<Admission<Routes>, StatusRewrite>;

pub(super) fn services(routes: Routes, admission: &AdmissionLayer) -> Services {
    tower::ServiceBuilder::new()
        .layer(tower::util::MapResponseLayer::new(
            crate::api::grpc::codec::caller_fault_status as StatusRewrite,
        ))
        .layer(admission.clone())
        .service(routes.prepare())
}

/// HTTP/2 keep-alive: a ping after this long without a frame from the
/// client, and the connection closed when it is not answered within
/// [`KEEPALIVE_TIMEOUT`]. A peer that vanished (a killed pod, a dropped NAT
/// entry) then frees its connection in at most 80 s instead of never.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The most header bytes HTTP/2 takes for one call: twice what a call may
/// carry ([`admission::MAX_METADATA_BYTES`]), so that a call over that
/// limit but under this one reaches the admission layer and gets a precise
/// status (see there for what happens beyond).
const MAX_HEADER_LIST_BYTES: u32 = 2 * admission::MAX_METADATA_BYTES as u32;

/// A gRPC listener's way of serving a connection.
#[derive(Debug, Clone)]
pub(super) struct Grpc {
    services: Services,
    h2: Arc<http2::Builder<TokioExecutor>>,
    per_connection: usize,
    request_timeout: Duration,
}

impl Grpc {
    /// `per_connection`: calls one connection may have in progress; past it a
    /// new call is refused at once. Per connection rather than global: one
    /// client flooding its connection cannot take the slots of the others
    /// (HTTP/2 multiplexes every call of a client channel onto one connection).
    pub(super) fn new(
        services: Services,
        per_connection: usize,
        request_timeout: Duration,
    ) -> Self {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            // At most twice as many streams as the connection may have calls,
            // and at least 256, so calls over that limit still reach it and are
            // refused at once rather than wait in the client for a free stream.
            .max_concurrent_streams(
                u32::try_from(per_connection.saturating_mul(2).max(256)).unwrap_or(u32::MAX),
            )
            .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .max_header_list_size(MAX_HEADER_LIST_BYTES);
        Self {
            services,
            h2: Arc::new(h2),
            per_connection,
            request_timeout,
        }
    }
}

impl Protocol for Grpc {
    type Connection<I>
        = http2::Connection<I, TowerToHyperService<Calls>, TokioExecutor>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;

    fn serve<I>(&self, io: I, activity: Arc<Activity>) -> Self::Connection<I>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let calls = Calls {
            services: self.services.clone(),
            activity,
            per_connection: self.per_connection,
            request_timeout: self.request_timeout,
        };
        self.h2
            .serve_connection(io, TowerToHyperService::new(calls))
    }
}

/// One connection's calls: counted (for the per-connection limit and the
/// idle timeout) and bounded in time.
#[derive(Debug, Clone)]
pub(super) struct Calls {
    services: Services,
    activity: Arc<Activity>,
    per_connection: usize,
    request_timeout: Duration,
}

impl tower::Service<Request<hyper::body::Incoming>> for Calls {
    type Response = Response<TrackedBody<Body>>;
    type Error = Infallible;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> CallFuture {
        if self.activity.in_flight() >= self.per_connection && !admission::is_health(&req) {
            // A refusal costs nothing and tells the caller (and its retry
            // policy) the truth; a queue would only answer later than its
            // caller waits.
            let status = tonic::Status::resource_exhausted(format!(
                "this connection has {} calls in progress \
                 (--max-concurrent-requests-per-connection); retry with backoff",
                self.per_connection
            ));
            return CallFuture::Refused {
                response: Some(status.into_http()),
            };
        }
        let call = self.activity.begin();
        // The clock bounds how long a call can hold its place (a stalled
        // store, a client that never finishes its request body); a shorter
        // deadline from the client wins.
        let timeout = grpc_timeout(req.headers())
            .map_or(self.request_timeout, |t| t.min(self.request_timeout));
        CallFuture::Running {
            inner: self.services.clone().oneshot(req.map(Body::new)),
            deadline: tokio::time::sleep(timeout),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call running against its deadline, or a refusal.
    #[project = Projected]
    pub(super) enum CallFuture {
        Running {
            #[pin] inner: Oneshot<Services, Request<Body>>,
            #[pin] deadline: tokio::time::Sleep,
            call: Option<InFlight>,
        },
        Refused { response: Option<Response<Body>> },
    }
}

impl Future for CallFuture {
    type Output = Result<Response<TrackedBody<Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Running {
                inner,
                deadline,
                call,
            } => {
                if let Poll::Ready(answer) = inner.poll(cx) {
                    let Ok(response) = answer;
                    // Still counted while the answer's body is sent.
                    return Poll::Ready(Ok(response.map(|b| TrackedBody::new(b, call.take()))));
                }
                std::task::ready!(deadline.poll(cx));
                // The same status and message as tonic's own server gives,
                // which clients and tests already know.
                let status = tonic::Status::cancelled("Timeout expired");
                Poll::Ready(Ok(status
                    .into_http()
                    .map(|b| TrackedBody::new(b, call.take()))))
            }
            Projected::Refused { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r.map(|b| TrackedBody::new(b, None)))),
                None => Poll::Pending,
            },
        }
    }
}

/// The client's deadline from `grpc-timeout` (at most 8 digits and a unit,
/// as gRPC over HTTP/2 specifies); a value that is not one is ignored.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// An error and its sources, as one line: some libraries' own message is only
/// "transport error".
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_deadlines_are_read_as_grpc_writes_them() {
        let read = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().expect("header"));
            grpc_timeout(&h)
        };
        assert_eq!(read("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("5S"), Some(Duration::from_secs(5)));
        assert_eq!(read("250m"), Some(Duration::from_millis(250)));
        assert_eq!(read("7u"), Some(Duration::from_micros(7)));
        assert_eq!(read("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "+5S", "5s", "5", "1.5S", "-1S"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
