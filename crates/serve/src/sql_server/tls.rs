//! TLS for the endpoint: the configured certificate and key, read before anything is served.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls;
use datafusion_postgres::pgwire::tokio::TlsAcceptor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, TlsConfig};

/// Why the certificate or key cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing of its kind.
    #[error("cannot read the {what} {path} (sql_endpoint.tls.{setting})")]
    Read {
        what: &'static str,
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The key does not go with the certificate, or either is of a kind rustls refuses.
    #[error("the certificate {certificate} and key {key} cannot serve TLS (sql_endpoint.tls)")]
    Refused {
        certificate: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The acceptor for the configured certificate and key.
pub fn acceptor(config: &Config, tls: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certificate = config.resolve(&tls.certificate);
    let key = config.resolve(&tls.key);
    let chain = CertificateDer::pem_file_iter(&certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .and_then(|certs| match certs.is_empty() {
            true => Err(rustls::pki_types::pem::Error::NoItemsFound),
            false => Ok(certs),
        })
        .map_err(|source| read_error("certificate", "certificate", &certificate, source))?;
    let private_key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|source| read_error("private key", "key", &key, source))?;
    let refused = |source| TlsError::Refused {
        certificate: certificate.clone(),
        key: key.clone(),
        source,
    };
    // Explicitly ring: the dependency graph enables two providers, and then rustls picks none.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(refused)?;
    // PostgreSQL 17's direct TLS negotiation (`sslnegotiation=direct`) requires this ALPN.
    server.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn read_error(
    what: &'static str,
    setting: &'static str,
    path: &Path,
    source: rustls::pki_types::pem::Error,
) -> TlsError {
    TlsError::Read {
        what,
        setting,
        path: path.to_path_buf(),
        source,
    }
}
