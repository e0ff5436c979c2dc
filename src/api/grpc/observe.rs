//! One tower layer around `KeyAdmin`: every call counted by method and status,
//! and every refused one logged (a denied admin call is something an operator
//! wants to see). A layer rather than a wrapper per RPC, so a new RPC is
//! observed without anyone remembering to.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Code, Status, server::NamedService};
use tower::{Layer, Service};

/// The method names a metric label may take: bounded, whatever path is asked.
/// A unit test walks KeyAdmin's descriptor, so a new RPC missing here fails it
/// instead of being counted as "unknown".
const METHODS: [&str; 16] = [
    "CreateKey",
    "GetKey",
    "ListKeys",
    "UpdateKey",
    "RevokeKey",
    "RemoveMember",
    "ListKeyEvents",
    "RotateKey",
    "GetKeyUsage",
    "SetKeyPolicy",
    "GetKeyPolicy",
    "CreateIdentity",
    "GetIdentity",
    "UpdateIdentity",
    "ListIdentities",
    "DeleteIdentity",
];

fn method_of(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .into_iter()
        .find(|m| *m == name)
        .unwrap_or("unknown")
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveAdminLayer;

impl<S> Layer<S> for ObserveAdminLayer {
    type Service = ObserveAdmin<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveAdmin { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ObserveAdmin<S> {
    inner: S,
}

impl<S: NamedService> NamedService for ObserveAdmin<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for ObserveAdmin<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path());
        let call = self.inner.call(request);
        Box::pin(async move {
            // Counted as the caller sees it: after the rewrite of refusals the
            // transport made before any handler ran.
            let response = crate::api::grpc::codec::caller_fault_status(call.await?);
            // A refused unary call is answered trailers-only: its status is in
            // the headers. An answer without one is a success.
            let status = Status::from_header_map(response.headers());
            let code = status.as_ref().map_or(Code::Ok, Status::code);
            crate::metrics::admin_request(method, code);
            if let Some(status) = status
                .filter(|s| matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied))
            {
                // One line a second per reason at most, with `dropped`: how
                // many like it were not logged since (all are counted above).
                static DENIED: std::sync::LazyLock<crate::logging::Throttle> =
                    std::sync::LazyLock::new(Default::default);
                if let Some(dropped) = DENIED.allow(status.message(), std::time::Instant::now()) {
                    tracing::info!(
                        method,
                        code = ?status.code(),
                        reason = status.message(),
                        dropped,
                        "admin call denied"
                    );
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn every_key_admin_method_has_its_own_label() {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let methods: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| s.name() == "KeyAdmin")
            .flat_map(|s| &s.method)
            .map(|m| m.name().to_owned())
            .collect();
        assert!(methods.len() >= 9, "{methods:?}");
        for m in &methods {
            assert_eq!(method_of(&format!("/keygate.v1.KeyAdmin/{m}")), m.as_str());
        }
        assert_eq!(method_of("/keygate.v1.KeyAdmin/NoSuchThing"), "unknown");
    }
}
