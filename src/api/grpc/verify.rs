//! `KeyVerify.VerifyKey` over gRPC: on the path of every request our users
//! serve. A denial is an answer, not an error; errors are kept for the caller's
//! own faults and for a store that cannot be reached.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    Request, Response, Status,
    codegen::BoxFuture,
    server::{NamedService, UnaryService},
};
use tower::Service;

use super::answer::Answer;
use crate::{
    api::grpc::codec::Codec, api::verify_code, domain::verify::Verification,
    metrics::VerifyMetrics, proto, services::Verifier,
};

#[derive(Debug, Clone)]
pub struct VerifyApi {
    verifier: Verifier,
    metrics: VerifyMetrics,
}

impl VerifyApi {
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            metrics: VerifyMetrics::new("grpc"),
        }
    }
}

/// `keygate.v1.KeyVerify` as a tower service, written out rather than
/// generated: the generated server answers with the generated
/// `VerifyKeyResponse`, and this one with [`Answer`], the same bytes encoded
/// without copying the key (see `answer`). Everything else is what tonic's
/// generator writes: tonic's own unary handling, keygate's codec, the same
/// decoding limit, and `UNIMPLEMENTED` for any other method.
#[derive(Debug, Clone)]
pub struct VerifyService {
    api: Arc<VerifyApi>,
    max_decoding_message_size: usize,
}

impl VerifyService {
    pub fn new(api: VerifyApi, max_decoding_message_size: usize) -> Self {
        Self {
            api: Arc::new(api),
            max_decoding_message_size,
        }
    }
}

impl NamedService for VerifyService {
    const NAME: &'static str = proto::key_verify_server::SERVICE_NAME;
}

const VERIFY_KEY: &str = "/keygate.v1.KeyVerify/VerifyKey";

impl<B> Service<http::Request<B>> for VerifyService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != VERIFY_KEY {
            return Box::pin(std::future::ready(
                Ok(Status::unimplemented("").into_http()),
            ));
        }
        let method = VerifyKey(Arc::clone(&self.api));
        let limit = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(Codec::<Answer, proto::VerifyKeyRequest>::default())
                    .apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}

struct VerifyKey(Arc<VerifyApi>);

impl UnaryService<proto::VerifyKeyRequest> for VerifyKey {
    type Response = Answer;
    type Future = BoxFuture<Response<Answer>, Status>;

    fn call(&mut self, request: Request<proto::VerifyKeyRequest>) -> Self::Future {
        let api = Arc::clone(&self.0);
        Box::pin(async move { api.verify_key(request).await })
    }
}

impl VerifyApi {
    pub async fn verify_key(
        &self,
        request: Request<proto::VerifyKeyRequest>,
    ) -> Result<Response<Answer>, Status> {
        let start = self.metrics.start();
        let req = request.into_inner();
        let result = match Verification::new(
            &req.key,
            &req.required_scopes,
            &req.origin,
            &req.referer,
            &req.organization_id,
            req.cost,
        )
        .and_then(|v| v.presented_by(&req.client_ip, &req.client_principal))
        {
            Ok(v) => self.verifier.verify(&v).await.map_err(Status::from),
            Err(violations) => Err(Status::from(violations)),
        };
        let code = result.as_ref().ok().map(|o| verify_code(o.code));
        self.metrics.observe(code, start);
        result.map(|o| Response::new(Answer::from(o)))
    }
}
