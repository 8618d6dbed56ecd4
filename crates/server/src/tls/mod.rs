//! TLS for the line protocol (`--tls-listen`) and HTTP (`--https`): the core's
//! [`Acceptor`] and [`Session`] over rustls, used sans-IO (a `ServerConnection` over the
//! hub's own buffers). No backend has TLS code: the hub opens and seals each TLS
//! connection's bytes through these traits (see `ringcast_core::secure`).
//!
//! The crypto provider is `ring`, not rustls's default aws-lc-rs: aws-lc-sys builds C
//! with cmake, which a fresh machine lacks, and ring builds with a C compiler alone.
//! Both provide the same suites here (TLS 1.3 and 1.2, AES-GCM and ChaCha20-Poly1305,
//! X25519 and the NIST curves).
//!
//! The certificate and key are read at start and on SIGHUP ([`TlsAcceptor::reload`]):
//! new handshakes use the new ones, established sessions keep theirs, and a reload that
//! fails keeps the old ones.

mod session;

use ringcast_core::secure::{Acceptor, Session, SessionError};
use ringcast_core::Protocol;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// Why a certificate or key could not be used. Each names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: malformed PEM certificate: {problem}")]
    BadCertificate { path: PathBuf, problem: String },
    #[error("{path} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC)")]
    NoKey { path: PathBuf },
    #[error("{path}: unusable private key: {problem}")]
    BadKey { path: PathBuf, problem: String },
    #[error("the key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("setting up TLS with {cert}: {problem}")]
    Config { cert: PathBuf, problem: String },
}

/// The files a server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub(crate) cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub(crate) key: PathBuf,
}

/// The configurations new sessions are made with: one per listener kind (the HTTPS
/// listener offers ALPN `http/1.1`).
#[derive(Debug)]
struct Configs {
    line: Arc<ServerConfig>,
    https: Arc<ServerConfig>,
}

/// Makes every TLS connection's session, with the certificate loaded last.
#[derive(Debug)]
pub(crate) struct TlsAcceptor {
    files: TlsFiles,
    /// Swapped whole by a reload; each new session takes a reference to the current one.
    configs: RwLock<Configs>,
}

/// What a loaded certificate is, for the log: subject, expiry and serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    pub(crate) subject: String,
    pub(crate) not_after: String,
    pub(crate) serial: String,
}

impl std::fmt::Display for CertInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "subject \"{}\", expires {}, serial {}",
            self.subject, self.not_after, self.serial
        )
    }
}

impl TlsAcceptor {
    /// Loads the certificate and key (failing, naming the file and the problem, before
    /// anything listens).
    pub(crate) fn load(files: TlsFiles) -> Result<(TlsAcceptor, CertInfo), TlsError> {
        let (configs, info) = configs(&files)?;
        let acceptor = TlsAcceptor {
            files,
            configs: RwLock::new(configs),
        };
        Ok((acceptor, info))
    }

    /// Reads the files again; on success new handshakes use them, on failure the
    /// certificate in use stays.
    pub(crate) fn reload(&self) -> Result<CertInfo, TlsError> {
        let (configs, info) = configs(&self.files)?;
        *self.configs.write().unwrap_or_else(PoisonError::into_inner) = configs;
        Ok(info)
    }

    pub(crate) fn files(&self) -> &TlsFiles {
        &self.files
    }
}

impl Acceptor for TlsAcceptor {
    fn session(&self, protocol: Protocol) -> Result<Box<dyn Session>, SessionError> {
        let config = {
            let configs = self.configs.read().unwrap_or_else(PoisonError::into_inner);
            match protocol {
                Protocol::Line => configs.line.clone(),
                Protocol::Http => configs.https.clone(),
            }
        };
        session::RustlsSession::new(config).map(|session| Box::new(session) as Box<dyn Session>)
    }
}

/// The provider every configuration uses (see the module documentation).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Both listeners' configurations from the files, and what the certificate is.
fn configs(files: &TlsFiles) -> Result<(Configs, CertInfo), TlsError> {
    let chain = read_chain(&files.cert)?;
    let info = cert_info(&files.cert, &chain[0])?;
    let key = read_key(&files.key)?;
    let provider = provider();
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|err| TlsError::BadKey {
                path: files.key.clone(),
                problem: err.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        // The provider cannot tell (a key type without a public half to compare):
        // rustls itself accepts that.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(err) => {
            return Err(TlsError::BadCertificate {
                path: files.cert.clone(),
                problem: err.to_string(),
            })
        }
    }
    let resolver = Arc::new(SingleCertAndKey::from(certified));
    let config_error = |err: rustls::Error| TlsError::Config {
        cert: files.cert.clone(),
        problem: err.to_string(),
    };
    let line = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    let mut https = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    https.alpn_protocols = vec![b"http/1.1".to_vec()];
    let configs = Configs {
        line: Arc::new(line),
        https: Arc::new(https),
    };
    Ok((configs, info))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The certificate chain in a PEM file (at least one certificate).
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read("certificate", path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::BadCertificate {
            path: path.to_owned(),
            problem: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The first private key in a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        err => TlsError::BadKey {
            path: path.to_owned(),
            problem: err.to_string(),
        },
    })
}

/// The subject, expiry and serial of the server's certificate (a certificate that does
/// not parse as X.509 is refused here, not at the first handshake).
fn cert_info(path: &Path, cert: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|err| {
        TlsError::BadCertificate {
            path: path.to_owned(),
            problem: err.to_string(),
        }
    })?;
    let not_after = parsed.validity().not_after;
    if parsed.validity().time_to_expiration().is_none() {
        tracing::warn!(cert = %path.display(), "the TLS certificate has expired ({not_after})");
    }
    Ok(CertInfo {
        subject: parsed.subject().to_string(),
        not_after: not_after.to_string(),
        serial: parsed.raw_serial_as_string(),
    })
}

#[cfg(test)]
mod tests;
