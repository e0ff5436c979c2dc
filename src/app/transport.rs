//! Listeners, TLS and the tower stack every gRPC listener shares.

use std::{
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{
    Certificate, Identity, Server, ServerTlsConfig,
    server::{Connected, TcpIncoming},
};

use super::{AppError, admission::AdmissionLayer};
use crate::{config::ServeArgs, metrics::OpenConnection};

/// How long a client may take to complete the TLS handshake; tonic runs handshakes
/// off the accept loop, but without a bound a silent client would hold one forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// See [`crate::codec::caller_fault_status`].
pub(super) type StatusRewrite =
    fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>;

/// HTTP/2 keep-alive: a ping after this long without a frame from the
/// client, and the connection closed when it is not answered within
/// [`KEEPALIVE_TIMEOUT`]. A peer that vanished (a killed pod, a dropped NAT
/// entry) then frees its connection in at most 80 s instead of never.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The most header bytes HTTP/2 takes for one call: twice what a call may
/// carry ([`super::admission::MAX_METADATA_BYTES`]), so that a call over that
/// limit but under this one reaches the admission layer and gets a precise
/// status (see there for what happens beyond).
const MAX_HEADER_LIST_BYTES: u32 = 2 * super::admission::MAX_METADATA_BYTES as u32;

/// The layers [`server_builder`] puts around every service, outermost first.
pub(super) type Layers = tower::layer::util::Stack<
    AdmissionLayer,
    tower::layer::util::Stack<
        tower::util::MapResponseLayer<StatusRewrite>,
        tower::layer::util::Identity,
    >,
>;

/// The transport limits every listener applies to each of its connections.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    pub per_connection: usize,
    pub request_timeout: Duration,
    /// Connections are closed gracefully at this age, idle or not.
    pub max_connection_age: Duration,
    /// The instance's calls in progress, shared by both gRPC listeners.
    pub admission: AdmissionLayer,
}

/// A bound gRPC listener whose connections are counted while open.
pub(super) type Incoming = std::pin::Pin<
    Box<dyn Stream<Item = Result<Counted<tokio::net::TcpStream>, std::io::Error>> + Send>,
>;

/// Binds `addr`; returns the listener and the address actually bound.
pub(super) fn bind(addr: SocketAddr) -> Result<(Incoming, SocketAddr), AppError> {
    let listen_error = |source| AppError::Listen { addr, source };
    let incoming = TcpIncoming::bind(addr)
        .map_err(listen_error)?
        // Verify responses are small and latency-bound: never wait to coalesce them.
        .with_nodelay(Some(true));
    let bound = incoming.local_addr().map_err(listen_error)?;
    let counted = incoming.map(|accepted| {
        accepted.map(|io| Counted {
            io,
            _open: crate::metrics::connection_opened("grpc"),
        })
    });
    Ok((Box::pin(counted), bound))
}

/// A connection counted in `keygate_connections_open` for as long as it is
/// open; everything else is the connection's own.
#[derive(Debug)]
pub(super) struct Counted<IO> {
    io: IO,
    _open: OpenConnection,
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A server with keygate's transport settings; the main and the admin listener
/// are both built here, so they enforce the same TLS and limits.
pub(super) fn server_builder(
    tls: Option<&ServerTlsConfig>,
    limits: &Limits,
) -> Result<Server<Layers>, AppError> {
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
        // HTTP/2 itself: at most twice as many streams as the connection may
        // have calls, and at least 256 (so calls over that limit still reach
        // it and are refused at once, rather than wait in the client for a
        // free stream, however small the limit), pings
        // to find peers that vanished, and every connection
        // recycled at its age limit (idle or not, gracefully: calls in
        // progress get the request timeout to finish), so idle connections do
        // not accumulate. tonic has no timer for idle connections as such;
        // one on the socket would count keep-alive pings as activity.
        .max_concurrent_streams(
            u32::try_from(limits.per_connection.saturating_mul(2).max(256)).unwrap_or(u32::MAX),
        )
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_connection_age(limits.max_connection_age)
        .max_connection_age_grace(limits.request_timeout + Duration::from_secs(1))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        // Around every service: a request refused before its handler ran (bad
        // bytes, too large) gets the code that says it was the caller's fault.
        .layer(tower::util::MapResponseLayer::new(
            crate::codec::caller_fault_status as StatusRewrite,
        ))
        // Inside it: metadata size and the instance-wide count of calls in
        // progress (see `admission`).
        .layer(limits.admission.clone());
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
