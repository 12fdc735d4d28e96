//! TLS for the PostgreSQL store, with libpq's `sslmode`: the setting, its defaults, and the
//! rustls configuration that enforces it.
//!
//! tokio-postgres only negotiates (`disable`, `prefer`, `require`) and refuses every other TLS
//! parameter, so `sslmode` and `sslrootcert` are taken off the URL here, tokio-postgres is told
//! the matching negotiation, and what is checked of the server's certificate is decided by the
//! rustls verifier this module builds.

use crate::error::{Error, ErrorCode, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use secrecy::SecretString;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::{Host, SslNegotiation};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, from the least to the most checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, else plaintext. The certificate is not checked.
    Prefer,
    /// TLS or fail. The certificate is not checked, unless `sslrootcert` is given: then as
    /// [`SslMode::VerifyCa`] (as libpq does when it finds a root certificate file).
    Require,
    /// TLS, with a certificate chain to a trusted root. The host name is not checked.
    VerifyCa,
    /// TLS, with a certificate chain to a trusted root that names the host (or its IP address).
    VerifyFull,
}

impl SslMode {
    const ALL: [Self; 5] = [
        Self::Disable,
        Self::Prefer,
        Self::Require,
        Self::VerifyCa,
        Self::VerifyFull,
    ];

    /// The name libpq gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == value)
            .ok_or_else(|| {
                Error::invalid_argument(
                    "the store URL's sslmode must be disable, prefer, require, verify-ca or verify-full",
                )
            })
    }

    /// What tokio-postgres is told: it only decides whether to negotiate TLS; the verifier
    /// decides what a certificate must prove.
    fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Negotiation;
        match self {
            Self::Disable => Negotiation::Disable,
            Self::Prefer => Negotiation::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Negotiation::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The roots a server's certificate chain must lead to: libpq's `sslrootcert`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCertificates {
    /// The platform's trust store (`sslrootcert=system`, or no `sslrootcert` with `verify-ca` or
    /// `verify-full`), as rustls-native-certs finds it (`SSL_CERT_FILE` and `SSL_CERT_DIR` apply).
    System,
    /// The PEM certificates in a file (`sslrootcert=<path>`).
    File(PathBuf),
}

impl RootCertificates {
    fn parse(value: &str) -> Result<Self> {
        match value {
            "" => Err(Error::invalid_argument(
                "the store URL's sslrootcert must be the path of a PEM file, or \"system\"",
            )),
            "system" => Ok(Self::System),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }

    fn load(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match self {
            Self::System => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    return Err(Error::invalid_argument(format!(
                        "no system root certificate was found for TLS to PostgreSQL{why}"
                    )));
                }
            }
            Self::File(path) => {
                let unreadable = |e: rustls::pki_types::pem::Error| {
                    Error::invalid_argument(format!(
                        "cannot read the sslrootcert file {}: {e}",
                        path.display()
                    ))
                };
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(unreadable)?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(unreadable)?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(Error::invalid_argument(format!(
                        "the sslrootcert file {} holds no usable certificate",
                        path.display()
                    )));
                }
            }
        }
        Ok(roots)
    }
}

/// The TLS setting of a PostgreSQL store: the `sslmode` in force and the `sslrootcert` given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresTls {
    mode: SslMode,
    root_cert: Option<RootCertificates>,
}

/// What a certificate must prove.
enum Verification<'a> {
    /// Nothing but possession of its key: the connection is encrypted, the server unknown.
    KeyOnly,
    Chain(&'a RootCertificates),
    ChainAndName(&'a RootCertificates),
}

/// Where a host is, for the default `sslmode`.
#[derive(PartialEq)]
enum Reach {
    UnixSocket,
    Loopback,
    Network,
}

/// tokio-postgres reports every TLS failure (the server refused TLS, the handshake or the
/// certificate check failed) as an error of this text, the reason in its source.
const TOKIO_POSTGRES_TLS_FAILED: &str = "error performing TLS handshake";

impl PostgresTls {
    /// Takes libpq's TLS parameters off a `postgres://` URL, since tokio-postgres would refuse
    /// them, and resolves the setting for the hosts the URL names. Returns the URL that is left
    /// (it may hold a password) and the setting.
    ///
    /// Without `sslmode`: `require`, except for loopback hosts (`prefer`, libpq's default) and
    /// Unix sockets (no TLS); with several hosts, loopback only if all are. With
    /// `sslrootcert=system`, only `verify-full` (the default then), as in libpq 16.
    pub fn split_url(url: &str) -> Result<(SecretString, Self)> {
        // Never echo the URL: it may carry a password.
        let invalid = || Error::invalid_argument("store is not a valid postgres:// URL");
        let mut url = url::Url::parse(url).map_err(|_| invalid())?;
        let (mut mode, mut root_cert, mut others) = (None, None, Vec::new());
        for (key, value) in url.query_pairs() {
            match &*key {
                "sslmode" => mode = Some(SslMode::parse(&value)?),
                "sslrootcert" => root_cert = Some(RootCertificates::parse(&value)?),
                "sslcert" | "sslkey" | "sslpassword" | "sslcertmode" => {
                    return Err(Error::invalid_argument(
                        "client certificates (sslcert, sslkey) are not supported yet for a PostgreSQL store",
                    ))
                }
                "sslcrl" | "sslcrldir" | "sslsni" | "sslcompression"
                | "ssl_min_protocol_version" | "ssl_max_protocol_version" => {
                    return Err(Error::invalid_argument(format!(
                        "the store URL's {key} is not supported"
                    )))
                }
                _ => others.push((key.into_owned(), value.into_owned())),
            }
        }
        if others.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(others);
        }
        let url = SecretString::from(String::from(url));
        let config: tokio_postgres::Config = {
            use secrecy::ExposeSecret;
            url.expose_secret().parse().map_err(|_| invalid())?
        };
        let tls = Self::resolve(mode, root_cert, &config)?;
        Ok((url, tls))
    }

    fn resolve(
        mode: Option<SslMode>,
        root_cert: Option<RootCertificates>,
        config: &tokio_postgres::Config,
    ) -> Result<Self> {
        let system_roots = root_cert == Some(RootCertificates::System);
        let reach = reach(config);
        let mode = match mode {
            // Any public CA's certificate for any name would pass a weaker check.
            Some(mode) if system_roots && mode != SslMode::VerifyFull => {
                return Err(Error::invalid_argument(format!(
                    "the store URL's sslrootcert=system needs sslmode=verify-full, not {mode}"
                )))
            }
            Some(mode) => mode,
            None if system_roots => SslMode::VerifyFull,
            None if reach.contains(&Reach::Network) => SslMode::Require,
            None => SslMode::Prefer,
        };
        // As libpq: sslmode does not apply to Unix sockets (PostgreSQL refuses TLS on them).
        let mode = if reach.iter().all(|r| *r == Reach::UnixSocket) {
            SslMode::Disable
        } else {
            mode
        };
        if config.get_ssl_negotiation() == SslNegotiation::Direct && mode < SslMode::Require {
            return Err(Error::invalid_argument(format!(
                "the store URL's sslnegotiation=direct needs sslmode=require, verify-ca or \
                 verify-full, not {mode}"
            )));
        }
        Ok(Self { mode, root_cert })
    }

    /// The `sslmode` in force.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Tells `config` whether to negotiate TLS.
    pub fn apply(&self, config: &mut tokio_postgres::Config) {
        config.ssl_mode(self.mode.negotiation());
    }

    fn verification(&self) -> Verification<'_> {
        const SYSTEM: &RootCertificates = &RootCertificates::System;
        match (self.mode, &self.root_cert) {
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
                Verification::KeyOnly
            }
            (SslMode::Require | SslMode::VerifyCa, roots) => {
                Verification::Chain(roots.as_ref().unwrap_or(SYSTEM))
            }
            (SslMode::VerifyFull, roots) => {
                Verification::ChainAndName(roots.as_ref().unwrap_or(SYSTEM))
            }
        }
    }

    /// The connector for this setting, for the pool and the change listener alike. Reads the
    /// trusted roots if the mode checks the certificate chain.
    pub fn connector(&self) -> Result<TlsConnector> {
        Ok(TlsConnector {
            inner: MakeRustlsConnect::new(self.client_config()?),
            mode: self.mode,
        })
    }

    fn client_config(&self) -> Result<ClientConfig> {
        // The provider is explicit, so nothing depends on a process-wide default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("TLS setup for PostgreSQL failed: {e}")))?;
        let builder = match self.verification() {
            Verification::KeyOnly => {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(KeyOnly {
                        algorithms: provider.signature_verification_algorithms,
                    }))
            }
            Verification::Chain(roots) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki(roots, &provider)?))),
            Verification::ChainAndName(roots) => {
                builder.with_webpki_verifier(webpki(roots, &provider)?)
            }
        };
        let mut config = builder.with_no_client_auth();
        // As libpq 17 does: PostgreSQL 17 requires it for sslnegotiation=direct; older servers
        // ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(config)
    }

    /// A failed connection in the store's terms: whether TLS is what failed, and under which
    /// sslmode. (tokio-postgres's connection errors name neither the URL nor the password.)
    pub(crate) fn connect_error(&self, e: &tokio_postgres::Error) -> Error {
        let mode = self.mode;
        if let Some(db) = e.as_db_error() {
            return Error::store(
                &format!("PostgreSQL: cannot connect (sslmode={mode})"),
                db.message(),
            );
        }
        // tokio-postgres's own text is its error's kind; what went wrong is in its sources.
        let mut cause = String::new();
        let mut source = std::error::Error::source(e);
        while let Some(e) = source {
            cause.push_str(": ");
            cause.push_str(&e.to_string());
            source = e.source();
        }
        let message = if e.to_string() == TOKIO_POSTGRES_TLS_FAILED {
            format!("PostgreSQL: TLS failed (sslmode={mode}){cause}")
        } else {
            format!("PostgreSQL: cannot connect (sslmode={mode}): {e}{cause}")
        };
        Error::new(ErrorCode::StoreError, message)
    }
}

impl fmt::Display for PostgresTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sslmode={}", self.mode)
    }
}

/// Where each host the URL names is reached (its `hostaddr` if given, else its `host`).
fn reach(config: &tokio_postgres::Config) -> Vec<Reach> {
    let of_ip = |ip: IpAddr| {
        if ip.to_canonical().is_loopback() {
            Reach::Loopback
        } else {
            Reach::Network
        }
    };
    if !config.get_hostaddrs().is_empty() {
        return config.get_hostaddrs().iter().map(|ip| of_ip(*ip)).collect();
    }
    config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) if name.eq_ignore_ascii_case("localhost") => Reach::Loopback,
            Host::Tcp(name) => name.parse().map_or(Reach::Network, of_ip),
            #[cfg(unix)]
            Host::Unix(_) => Reach::UnixSocket,
        })
        .collect()
}

fn webpki(
    roots: &RootCertificates,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots.load()?), provider.clone())
        .build()
        .map_err(|e| Error::invalid_argument(format!("the trusted roots for PostgreSQL: {e}")))
}

/// rustls configured for one [`PostgresTls`].
#[derive(Clone)]
pub struct TlsConnector {
    inner: MakeRustlsConnect,
    mode: SslMode,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("sslmode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<S> MakeTlsConnect<S> for TlsConnector
where
    MakeRustlsConnect: MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(
        &mut self,
        domain: &str,
    ) -> std::result::Result<Self::TlsConnect, Self::Error> {
        self.inner.make_tls_connect(domain)
    }
}

/// `prefer` and `require` (as libpq): any certificate, but the server must prove it holds the
/// certificate's key, so the session key is shared with that key's holder and no one else.
#[derive(Debug)]
struct KeyOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for KeyOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: webpki's checks, less the name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // webpki checks the name last, after the chain: a wrong name means a good chain.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
