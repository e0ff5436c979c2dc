//! Listeners, TLS and the tower stack every gRPC listener shares.

use std::{net::SocketAddr, time::Duration};

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};

use super::AppError;
use crate::config::ServeArgs;

/// How long a client may take to complete the TLS handshake; tonic runs handshakes
/// off the accept loop, but without a bound a silent client would hold one forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// See [`crate::codec::caller_fault_status`].
pub(super) type StatusRewrite =
    fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>;

/// The transport limits every listener applies to each of its connections.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub per_connection: usize,
    pub request_timeout: Duration,
}

/// Binds `addr`; returns the listener and the address actually bound.
pub(super) fn bind(addr: SocketAddr) -> Result<(TcpIncoming, SocketAddr), AppError> {
    let listen_error = |source| AppError::Listen { addr, source };
    let incoming = TcpIncoming::bind(addr)
        .map_err(listen_error)?
        // Verify responses are small and latency-bound: never wait to coalesce them.
        .with_nodelay(Some(true));
    let bound = incoming.local_addr().map_err(listen_error)?;
    Ok((incoming, bound))
}

/// A server with keygate's transport settings; the main and the admin listener
/// are both built here, so they enforce the same TLS and limits.
pub(super) fn server_builder(
    tls: Option<&ServerTlsConfig>,
    limits: Limits,
) -> Result<
    Server<
        tower::layer::util::Stack<
            tower::util::MapResponseLayer<StatusRewrite>,
            tower::layer::util::Identity,
        >,
    >,
    AppError,
> {
    // tonic stacks these three per connection, in a fixed order that is the one
    // we want (tonic 0.14 `MakeSvc::call`): load shed -> concurrency limit ->
    // timeout -> our services.
    let builder = Server::builder()
        // Per connection rather than global: one client flooding its connection
        // cannot take the slots of the others. HTTP/2 multiplexes every call of
        // a tonic Channel onto one connection, so this bounds a client's calls.
        .concurrency_limit_per_connection(limits.per_connection)
        // Outside the limit: when every slot is taken a call is refused at once
        // instead of waiting in a queue that grows without bound. tonic maps
        // tower's `Overloaded` to RESOURCE_EXHAUSTED ("Too many active requests
        // for the connection"), so clients see the gRPC code for overload and
        // may retry with backoff. A refused call never reaches the timeout.
        .load_shed(true)
        // Inside the limit: the clock starts once a call holds a slot, so it
        // bounds how long a slot can be held (a stalled store, a client that
        // never finishes its request body). tonic answers CANCELLED ("Timeout
        // expired"); a shorter `grpc-timeout` sent by the client wins.
        .timeout(limits.request_timeout)
        // Around every service: a request refused before its handler ran (bad
        // bytes, too large) gets the code that says it was the caller's fault.
        .layer(tower::util::MapResponseLayer::new(
            crate::codec::caller_fault_status as StatusRewrite,
        ));
    match tls {
        None => Ok(builder),
        Some(tls) => builder
            .tls_config(tls.clone())
            .map_err(|e| AppError::Tls(error_chain(&e))),
    }
}

/// Reads the TLS flags: `None` for plaintext. Loads and checks the PEM files now,
/// so a bad certificate or key fails the start with its path and reason.
pub(super) fn load_tls(args: &ServeArgs) -> Result<Option<ServerTlsConfig>, AppError> {
    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (None, None) if args.tls_client_ca.is_some() => {
            return Err(AppError::Tls(
                "--tls-client-ca needs --tls-cert and --tls-key".into(),
            ));
        }
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(AppError::Tls(
                "--tls-cert and --tls-key must be given together".into(),
            ));
        }
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| AppError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &args.tls_client_ca {
        // Required, not merely accepted: rustls then ends every handshake
        // without a certificate chaining to this CA before any call is read.
        config = config
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(false);
    }
    // tonic parses the PEM only when the config is applied: do it once here to
    // report which files are wrong.
    Server::builder().tls_config(config.clone()).map_err(|e| {
        let mut files = format!("{} / {}", cert.display(), key.display());
        if let Some(ca) = &args.tls_client_ca {
            files = format!("{files} / {}", ca.display());
        }
        AppError::Tls(format!("cannot use {files}: {}", error_chain(&e)))
    })?;
    Ok(Some(config))
}

/// An error and its sources, as one line: tonic's own message is only "transport error".
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
