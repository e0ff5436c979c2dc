//! How the HTTP listener (`--http-listen`) speaks: HTTP/1.1, served by hyper
//! with settings that keep slow and idle clients from holding connections.
//! The accept loop, the connection cap (`--http-max-connections`) and the
//! idle timeout are the shared ones (`connections`); here:
//!
//! - hyper's header-read timeout (`--http-header-timeout`): a client that has
//!   not sent a whole request head in that time is disconnected, which stops
//!   a client that drips one header line at a time. hyper starts that clock
//!   as soon as a connection waits for a request, so on HTTP/1 it also
//!   bounds how long a keep-alive connection may stay idle; hyper has one
//!   timer for both;
//! - the request deadline and body limits are the router's (`api::http`).
//!
//! axum's own `serve` has none of these settings, hence this protocol.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use hyper::server::conn::http1;
use hyper_util::{rt::TokioTimer, service::TowerToHyperService};
use tower::{ServiceExt, util::Oneshot};

use super::connections::{Activity, InFlight, Protocol, TrackedBody};
use crate::api::http::Peer;

/// The HTTP listener's way of serving a connection.
#[derive(Debug, Clone)]
pub(super) struct Http {
    router: axum::Router,
    h1: Arc<http1::Builder>,
}

impl Http {
    pub(super) fn new(router: axum::Router, header_timeout: Duration) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        Self {
            router,
            h1: Arc::new(h1),
        }
    }
}

impl Protocol for Http {
    type Connection<I>
        = http1::Connection<I, TowerToHyperService<Tracked>>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;

    fn serve<I>(&self, io: I, activity: Arc<Activity>) -> Self::Connection<I>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let tracked = Tracked {
            router: self.router.clone(),
            activity,
        };
        self.h1
            .serve_connection(io, TowerToHyperService::new(tracked))
    }
}

/// The router, with each request counted as its connection's activity.
#[derive(Debug, Clone)]
pub(super) struct Tracked {
    router: axum::Router,
    activity: Arc<Activity>,
}

impl tower::Service<Request<hyper::body::Incoming>> for Tracked {
    type Response = Response<TrackedBody<axum::body::Body>>;
    type Error = Infallible;
    type Future = TrackedFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<hyper::body::Incoming>) -> TrackedFuture {
        if let Some(peer) = self.activity.peer() {
            req.extensions_mut().insert(Peer(peer));
        }
        TrackedFuture {
            inner: self.router.clone().oneshot(req.map(axum::body::Body::new)),
            call: Some(self.activity.begin()),
        }
    }
}

pin_project_lite::pin_project! {
    #[derive(Debug)]
    pub(super) struct TrackedFuture {
        #[pin]
        inner: Oneshot<axum::Router, Request<axum::body::Body>>,
        call: Option<InFlight>,
    }
}

impl std::future::Future for TrackedFuture {
    type Output = Result<Response<TrackedBody<axum::body::Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(Ok(response.map(|b| TrackedBody::new(b, this.call.take()))))
    }
}
