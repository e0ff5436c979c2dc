//! The listeners' TLS: one certificate (`--tls-cert`, `--tls-key`) and,
//! optionally, a CA every client must present a certificate of
//! (`--tls-client-ca`). Every listener serves with it, each offering only the
//! protocol it speaks (ALPN `h2` for gRPC, `http/1.1` for HTTP).

use std::{path::Path, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;

use super::AppError;
use crate::config::ServeArgs;

/// The loaded certificate, key and client CA, checked at start.
#[derive(Debug, Clone)]
pub(super) struct ServerTls(Arc<ServerConfig>);

impl ServerTls {
    /// An acceptor offering `protocol` (an ALPN id) and nothing else.
    pub(super) fn acceptor(&self, protocol: &[u8]) -> TlsAcceptor {
        let mut config = ServerConfig::clone(&self.0);
        config.alpn_protocols = vec![protocol.to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

/// Reads the TLS flags: `None` for plaintext. Loads and checks the PEM files now,
/// so a bad certificate or key fails the start with its path and reason.
pub(super) fn load(args: &ServeArgs) -> Result<Option<ServerTls>, AppError> {
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
    let chain = certificates(cert)?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| {
        AppError::Tls(format!(
            "cannot use {}: no private key in it ({e})",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| AppError::Tls(e.to_string()))?;
    let builder = match &args.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| {
                    AppError::Tls(format!("cannot use {} as a CA: {e}", ca.display()))
                })?;
            }
            // Required, not merely accepted: rustls then ends every handshake
            // without a certificate chaining to this CA before any call is read.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| AppError::Tls(format!("cannot use {} as a CA: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key_der).map_err(|e| {
        AppError::Tls(format!(
            "cannot use {} / {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Some(ServerTls(Arc::new(config))))
}

fn read(path: &Path) -> Result<Vec<u8>, AppError> {
    std::fs::read(path).map_err(|e| AppError::Tls(format!("cannot read {}: {e}", path.display())))
}

/// Every certificate in a PEM file; a file with none is an error.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, AppError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AppError::Tls(format!("cannot use {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(AppError::Tls(format!(
            "cannot use {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}
