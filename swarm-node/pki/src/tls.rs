//! rustls configurations for the control port, the HTTP clients nodes use, and the
//! pinned bootstrap before a node has a certificate.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::ca::der_digest;
use crate::identity::{PeerIdentity, Role};
use crate::token::tokens_match;
use crate::{pem, Identity, ParsedToken, PkiError};

/// Where a manager serves its root CA certificate (PEM) to anyone.
pub const CA_PATH: &str = "/swarmup/v1/ca";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Below the server's idle limit (hyper's 30 s header-read timeout), so a pooled
/// connection is never picked up just as the server closes it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
const FETCH_CA_TIMEOUT: Duration = Duration::from_secs(10);
/// A root CA certificate is well under a kilobyte; anything much larger is not one.
const MAX_CA_ANSWER: usize = 64 * 1024;

/// The ring provider, chosen explicitly for every configuration so nothing depends on a
/// process-wide default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The join-token digest of a PEM certificate (exactly one certificate).
pub fn ca_digest(ca_pem: &str) -> Result<String, PkiError> {
    let der = pem::single_certificate(ca_pem, "the root CA certificate")?;
    Ok(der_digest(&der))
}

fn root_store(ca_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let der = pem::single_certificate(ca_pem, "the root CA certificate")?;
    let mut roots = RootCertStore::empty();
    roots
        .add(der)
        .map_err(|e| PkiError::InvalidCertificate(format!("the root CA certificate: {e}")))?;
    Ok(Arc::new(roots))
}

fn chain_and_key(
    identity: &Identity,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    PkiError,
> {
    let chain = pem::certificates(&identity.cert_pem, "the node certificate")?;
    let key = pem::private_key(&identity.key_pem, "the node key")?;
    Ok((chain, key))
}

fn tls_error(e: impl std::fmt::Display) -> PkiError {
    PkiError::Tls(e.to_string())
}

/// The control port's server configuration: it presents the node certificate and checks
/// any client certificate against the root CA. A client without a certificate is let in
/// (a joining node has none yet); the application decides per path what it may do. A
/// client certificate that does not verify fails the handshake.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        root_store(&identity.ca_pem)?,
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(tls_error)?;
    let (chain, key) = chain_and_key(identity)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_error)?;
    // HTTP/1.1 first: rustls picks the server's first choice the client offers, so HTTP
    // clients keep HTTP/1.1 (upgrades for attach and exec need it), and only a client
    // offering nothing else, a gRPC client such as a Docker Engine running `docker swarm
    // join`, gets HTTP/2 and is told that this is not a Docker swarm it can join.
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn certified_key(identity: &Identity) -> Result<Arc<CertifiedKey>, PkiError> {
    let (chain, key) = chain_and_key(identity)?;
    let signing_key = crypto_provider()
        .key_provider
        .load_private_key(key)
        .map_err(tls_error)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// The node certificate a client presents, replaceable while clients built on it keep
/// their connection pools: each new handshake asks the resolver, so a renewal reaches
/// every client at once without rebuilding any of them.
#[derive(Debug)]
struct SwappableClientCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesClientCert for SwappableClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone(),
        )
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks the server's certificate against the root CA as usual, then requires the
/// manager role in it: only managers serve other nodes, so a worker certificate, valid
/// as it is, must never pass for a manager (for instance one naming a manager's address).
#[derive(Debug)]
struct ManagerOnlyVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ManagerOnlyVerifier {
    fn new(ca_pem: &str) -> Result<Arc<ManagerOnlyVerifier>, PkiError> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(root_store(ca_pem)?, crypto_provider())
                .build()
                .map_err(tls_error)?;
        Ok(Arc::new(ManagerOnlyVerifier { inner }))
    }
}

/// Whether a verified server certificate may serve node-to-node calls: only a manager's.
pub(crate) fn require_manager_certificate(der: &[u8]) -> Result<(), String> {
    match PeerIdentity::from_der(der) {
        Ok(peer) if peer.role == Role::Manager => Ok(()),
        Ok(peer) => Err(format!(
            "the server's certificate is for a {} ({}), not a manager",
            peer.role, peer.node_id
        )),
        Err(e) => Err(format!("the server's certificate names no role: {e}")),
    }
}

impl ServerCertVerifier for ManagerOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        require_manager_certificate(end_entity).map_err(rustls::Error::General)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A node's client identity, shared by every HTTP client built from it (worker agent,
/// manager peers, Raft transport): [`ClientIdentityHandle::replace`] after a renewal and
/// their next handshakes present the new certificate; open connections keep theirs.
#[derive(Clone)]
pub struct ClientIdentityHandle {
    resolver: Arc<SwappableClientCert>,
    verifier: Arc<ManagerOnlyVerifier>,
}

impl std::fmt::Debug for ClientIdentityHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentityHandle")
            .finish_non_exhaustive()
    }
}

impl ClientIdentityHandle {
    pub fn new(identity: &Identity) -> Result<ClientIdentityHandle, PkiError> {
        Ok(ClientIdentityHandle {
            resolver: Arc::new(SwappableClientCert {
                current: RwLock::new(certified_key(identity)?),
            }),
            verifier: ManagerOnlyVerifier::new(&identity.ca_pem)?,
        })
    }

    /// Presents `identity`'s certificate from now on; on error the old one stays. The
    /// root CA stays the one the handle was made with.
    pub fn replace(&self, identity: &Identity) -> Result<(), PkiError> {
        let key = certified_key(identity)?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = key;
        Ok(())
    }

    /// The client configuration: the root CA as the only trust anchor, managers only as
    /// servers, and the current node certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, PkiError> {
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier.clone())
            .with_client_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// As [`http_client`], following this handle's certificate.
    pub fn http_client(&self) -> Result<reqwest::Client, PkiError> {
        client_builder((*self.client_config()?).clone())
            .build()
            .map_err(|e| PkiError::HttpClient(e.to_string()))
    }

    /// A client for the one call a manager makes to a node that may be a worker (a
    /// task's log on the node that runs it): the server's certificate must come from the
    /// root CA and name the address dialled, but may carry either role. What the manager
    /// asks for is checked by the worker, which serves it only to known managers.
    pub fn any_node_http_client(&self) -> Result<reqwest::Client, PkiError> {
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier.inner.clone())
            .with_client_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        client_builder(config)
            .build()
            .map_err(|e| PkiError::HttpClient(e.to_string()))
    }
}

/// A client configuration that trusts only the root CA, accepts only managers as
/// servers and presents the node certificate.
pub fn client_config(identity: &Identity) -> Result<Arc<ClientConfig>, PkiError> {
    ClientIdentityHandle::new(identity)?.client_config()
}

fn client_builder(tls: ClientConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .http1_only()
        .no_proxy()
}

/// The HTTP client a node uses to call other nodes: mutual TLS with the node
/// certificate, the root CA as the only trust anchor, managers only as servers, 3 s
/// connect timeout, no proxy. It has no overall request timeout, so long polls work; set
/// one per request. To follow renewals, build clients from a [`ClientIdentityHandle`].
pub fn http_client(identity: &Identity) -> Result<reqwest::Client, PkiError> {
    ClientIdentityHandle::new(identity)?.http_client()
}

/// The HTTP client a joining node uses once it trusts the CA from
/// [`fetch_ca_pinned`]: verified against that CA and required to be a manager's
/// certificate, no client certificate.
pub fn bootstrap_client(ca_pem: &str) -> Result<reqwest::Client, PkiError> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(ManagerOnlyVerifier::new(ca_pem)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    client_builder(config)
        .build()
        .map_err(|e| PkiError::HttpClient(e.to_string()))
}

/// Downloads the root CA from the manager at `addr` (`IP:PORT` or `HOST:PORT`) and
/// returns it only if its digest is the one in `token`.
///
/// The TLS connection does not verify the server: the node has no trust anchor yet. The
/// digest check is what makes the answer trustworthy, as in SwarmKit's `DownloadRootCA`.
pub async fn fetch_ca_pinned(addr: &str, token: &ParsedToken) -> Result<String, PkiError> {
    let fetch_error = |reason: String| PkiError::FetchCa {
        addr: addr.to_owned(),
        reason,
    };
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert {
            provider: crypto_provider(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = client_builder(config)
        .timeout(FETCH_CA_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| PkiError::HttpClient(e.to_string()))?;

    let url = format!("https://{addr}{CA_PATH}");
    let mut response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| fetch_error(error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(fetch_error(format!(
            "GET {CA_PATH} answered {}: is it a swarm manager?",
            response.status()
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| fetch_error(error_chain(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_CA_ANSWER {
            return Err(fetch_error(format!(
                "the answer to GET {CA_PATH} exceeds {MAX_CA_ANSWER} bytes: is it a swarm manager?"
            )));
        }
    }
    let ca_pem = String::from_utf8(body)
        .map_err(|_| fetch_error(format!("the answer to GET {CA_PATH} is not text")))?;
    let digest = ca_digest(&ca_pem).map_err(|e| fetch_error(e.to_string()))?;
    if !tokens_match(&digest, &token.digest) {
        return Err(PkiError::CaDigestMismatch {
            addr: addr.to_owned(),
        });
    }
    Ok(ca_pem)
}

/// reqwest hides the cause (refused, timed out, TLS alert) in its source chain.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Accepts any server certificate but still checks the handshake signatures, so the
/// server must hold the key of the certificate it shows. Used only by
/// [`fetch_ca_pinned`], whose answer is checked against the join token.
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server configuration a listener uses, replaceable while it runs: after a
/// certificate renewal (for instance on a role change) call [`TlsAcceptorHandle::replace`]
/// and new connections get the new certificate; open connections keep theirs.
#[derive(Clone)]
pub struct TlsAcceptorHandle {
    config: Arc<RwLock<Arc<ServerConfig>>>,
}

impl std::fmt::Debug for TlsAcceptorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptorHandle").finish_non_exhaustive()
    }
}

impl TlsAcceptorHandle {
    pub fn new(config: Arc<ServerConfig>) -> TlsAcceptorHandle {
        TlsAcceptorHandle {
            config: Arc::new(RwLock::new(config)),
        }
    }

    /// A handle serving [`server_config`] of `identity`.
    pub fn from_identity(identity: &Identity) -> Result<TlsAcceptorHandle, PkiError> {
        Ok(TlsAcceptorHandle::new(server_config(identity)?))
    }

    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self
            .config
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = config;
    }

    /// Switches to [`server_config`] of `identity`; on error the old one stays.
    pub fn replace_identity(&self, identity: &Identity) -> Result<(), PkiError> {
        self.replace(server_config(identity)?);
        Ok(())
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }
}
