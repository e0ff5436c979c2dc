//! What a gRPC call must pass before any service sees it, answered with a
//! precise status when it does not:
//!
//! - **Metadata** of at most [`MAX_METADATA_BYTES`]. HTTP/2 is set to take
//!   twice that (see `transport`), so a call between the two gets
//!   RESOURCE_EXHAUSTED naming the limit here, where HTTP/2 itself could only
//!   answer HTTP 431 (which gRPC clients report as UNKNOWN). Past 4 × the
//!   HTTP/2 limit the h2 library ends the whole connection (GOAWAY): it stops
//!   decoding such a block to protect itself, and the connection's header
//!   compression state cannot survive an undecoded block.
//! - **Load shedding** (`--max-in-flight`): past that many calls in progress
//!   on the instance, a new call is answered RESOURCE_EXHAUSTED at once
//!   instead of waiting. Queued calls would only answer later than their
//!   callers wait for, while holding memory and, for a cache miss, a place in
//!   the store's queue; a refusal costs nothing and tells the caller (and its
//!   retry policy) the truth.
//!
//! The count is the instance's, shared by every connection and both gRPC
//! listeners; the per-connection limit (`--max-concurrent-requests-per-connection`,
//! see `transport`) keeps one client from taking all of it. Health checks
//! are never shed: a load balancer that saw an overloaded instance fail its
//! health check would move its load onto the others and overload them too.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use metrics::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The health service's path prefix: its calls take no place and are never shed.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// Whether `req` is a health call, which no limit refuses: a load balancer
/// that saw an overloaded instance fail its health check would move its load
/// onto the others and overload them too.
pub(super) fn is_health<B>(req: &http::Request<B>) -> bool {
    req.uri().path().starts_with(HEALTH)
}

/// The most metadata bytes (names and values) a call may carry: HTTP/2's
/// usual 16 KiB header list, far above any real caller's.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Shares one count of calls in progress between the services it wraps.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    shed: Counter,
}

impl AdmissionLayer {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            shed: crate::metrics::requests_shed("grpc"),
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

type Response = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = AdmissionFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let metadata = crate::api::http::header_bytes(req.headers());
        if metadata > MAX_METADATA_BYTES {
            let status = tonic::Status::resource_exhausted(format!(
                "the call's metadata is {metadata} bytes; at most {MAX_METADATA_BYTES} are accepted"
            ));
            return AdmissionFuture::Refused {
                response: Some(status.into_http()),
            };
        }
        if is_health(&req) {
            return AdmissionFuture::Served {
                future: self.inner.call(req),
                permit: None,
            };
        }
        match Arc::clone(&self.layer.permits).try_acquire_owned() {
            Ok(permit) => AdmissionFuture::Served {
                future: self.inner.call(req),
                permit: Some(permit),
            },
            Err(_) => {
                self.layer.shed.increment(1);
                let status = tonic::Status::resource_exhausted(format!(
                    "keygate has {} calls in progress (--max-in-flight); retry with backoff",
                    self.layer.limit
                ));
                AdmissionFuture::Refused {
                    response: Some(status.into_http()),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A served call (holding its place until it answers) or a refusal.
    #[project = Projected]
    pub enum AdmissionFuture<F> {
        Served { #[pin] future: F, permit: Option<OwnedSemaphorePermit> },
        Refused { response: Option<Response> },
    }
}

impl<F, E> Future for AdmissionFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Served { future, permit } => {
                let answer = std::task::ready!(future.poll(cx));
                // The place is given back when the answer is ready, not when
                // its body has been sent: a unary answer is one small frame.
                drop(permit.take());
                Poll::Ready(answer)
            }
            Projected::Refused { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}
