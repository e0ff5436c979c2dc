//! Binds every listener and starts serving it: KeyVerify, Envoy's
//! authorization, health and reflection on `--listen`; KeyAdmin there too or
//! alone on `--admin-listen`; the HTTP routes on `--http-listen`.

use std::{net::SocketAddr, sync::Arc};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::pb::health_server::{Health, HealthServer};

use super::{
    AppError, admission,
    connections::{self, Lifetime, Listener},
    http_server::Http,
    parts::Services,
    tls::ServerTls,
    transport::{self, Grpc},
};
use crate::{
    api::{
        envoy::EnvoyApi,
        grpc::{AdminApi, AdminTokens, VerifyApi, VerifyService, observe::ObserveAdminLayer},
        http::{
            HttpConfig,
            authorize::{AuthorizeRoute, TrustedProxies},
            leaks::{LeakRoute, PublicReportRoute},
        },
    },
    config::ServeArgs,
    domain::leaks::LeakKeys,
    proto::{self, key_admin_server::KeyAdminServer},
};

/// The largest request keygate decodes; a legitimate one is a few KiB at most.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The largest Envoy check request keygate decodes: it carries the client's
/// headers (Envoy allows 60 KiB of them by default) and the request's attributes.
pub const ENVOY_MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// The servers running, and where.
pub(super) struct Serving {
    pub(super) addr: SocketAddr,
    pub(super) admin_addr: Option<SocketAddr>,
    pub(super) http_addr: Option<SocketAddr>,
    pub(super) servers: Vec<JoinHandle<Result<(), AppError>>>,
}

/// Binds the listeners and starts serving them: KeyVerify, Envoy's
/// authorization, health and reflection on `--listen`, KeyAdmin there too or
/// alone on `--admin-listen`, and the HTTP routes on `--http-listen`.
pub(super) fn serve(
    args: &ServeArgs,
    tls: Option<&ServerTls>,
    services: Services,
    tokens: AdminTokens,
    health_service: HealthServer<impl Health>,
    stop: &CancellationToken,
) -> Result<Serving, AppError> {
    let http_keys = services.keys.clone();
    let verify = VerifyService::new(VerifyApi::new(services.verifier), MAX_MESSAGE_BYTES);
    let envoy =
        crate::api::envoy::AuthorizationServer::new(EnvoyApi::new(services.authorizer.clone()))
            .max_decoding_message_size(ENVOY_MAX_MESSAGE_BYTES);
    // Counting and logging wrap the whole service, so no RPC is left out.
    let admin = tower::ServiceBuilder::new()
        .layer(ObserveAdminLayer)
        .service(
            KeyAdminServer::new(AdminApi::new(services.keys, tokens))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        );
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Lets grpcurl decode the google.rpc.BadRequest details of our errors.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(proto::ENVOY_AUTHZ_DESCRIPTOR_SET)
    };
    let base_routes = || -> Result<Routes, AppError> {
        Ok(Routes::new(health_service.clone())
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?))
    };
    // The instance's calls in progress, shared by both gRPC listeners.
    let admission = admission::AdmissionLayer::new(args.max_in_flight);
    let request_timeout: std::time::Duration = args.request_timeout.into();
    let grpc_lifetime = Lifetime {
        idle: args.grpc_idle_timeout.into(),
        max_age: Some(args.grpc_max_connection_age.into()),
        grace: request_timeout + std::time::Duration::from_secs(1),
    };
    let grpc = |routes: Routes| {
        Grpc::new(
            transport::services(routes, &admission),
            args.max_concurrent_requests_per_connection,
            request_timeout,
        )
    };
    let grpc_tls = tls.map(|t| t.acceptor(b"h2"));
    let listen_error = |addr| move |source| AppError::Listen { addr, source };

    // Every listener is bound before any server starts, so a busy port fails
    // the start without leaving another listener serving.
    let main_tcp = connections::bind(args.listen).map_err(listen_error(args.listen))?;
    let addr = main_tcp.local_addr().map_err(listen_error(args.listen))?;
    let admin_tcp = match args.admin_listen {
        None => None,
        Some(a) => Some(connections::bind(a).map_err(listen_error(a))?),
    };
    let admin_addr = match &admin_tcp {
        None => None,
        Some(l) => Some(l.local_addr().map_err(listen_error(addr))?),
    };
    let http = match args.http_listen {
        None => None,
        Some(http_listen) => {
            let leaks = args
                .leak_report_keys
                .as_deref()
                .map(LeakKeys::load)
                .transpose()?
                .map(|keys| Arc::new(LeakRoute::new(keys, http_keys.clone())));
            let trusted = TrustedProxies::parse(&args.trusted_proxies)?;
            let config = HttpConfig {
                authorize: AuthorizeRoute::new(services.authorizer.clone(), trusted.clone()),
                public_reports: PublicReportRoute::new(http_keys, trusted),
                leaks,
                request_timeout,
            };
            let tcp = connections::bind(http_listen).map_err(listen_error(http_listen))?;
            Some((tcp, config))
        }
    };

    let mut servers = Vec::new();
    // With an admin listener of its own, KeyAdmin is not routed on the main
    // one at all (calls there get UNIMPLEMENTED), so a network policy on the
    // admin port is the whole story.
    let mut main_routes = base_routes()?.add_service(verify).add_service(envoy);
    match admin_tcp {
        None => main_routes = main_routes.add_service(admin),
        Some(tcp) => {
            let listener = Listener {
                name: "grpc",
                tcp,
                tls: grpc_tls.clone(),
                max_connections: None,
                lifetime: grpc_lifetime,
            };
            let protocol = grpc(base_routes()?.add_service(admin));
            let stop = stop.clone();
            servers.push(tokio::spawn(async move {
                connections::serve(listener, protocol, stop).await;
                Ok(())
            }));
        }
    }
    let mut http_addr = None;
    if let Some((tcp, config)) = http {
        http_addr = tcp.local_addr().ok();
        let header_timeout: std::time::Duration = args.http_header_timeout.into();
        let listener = Listener {
            name: "http",
            tcp,
            tls: tls.map(|t| t.acceptor(b"http/1.1")),
            max_connections: Some(args.http_max_connections),
            // On HTTP/1 hyper's header clock closes an idle connection first;
            // this is the same bound for a connection hyper has not started.
            lifetime: Lifetime {
                idle: header_timeout,
                max_age: None,
                grace: request_timeout + std::time::Duration::from_secs(1),
            },
        };
        let protocol = Http::new(crate::api::http::router(config), header_timeout);
        let stop = stop.clone();
        servers.push(tokio::spawn(async move {
            connections::serve(listener, protocol, stop).await;
            Ok(())
        }));
    }
    let listener = Listener {
        name: "grpc",
        tcp: main_tcp,
        tls: grpc_tls,
        max_connections: None,
        lifetime: grpc_lifetime,
    };
    let protocol = grpc(main_routes);
    let stop = stop.clone();
    servers.push(tokio::spawn(async move {
        connections::serve(listener, protocol, stop).await;
        Ok(())
    }));
    Ok(Serving {
        addr,
        admin_addr,
        http_addr,
        servers,
    })
}
