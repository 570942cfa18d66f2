//! The cluster root CA and the certificates it issues.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{Role, OU_ADMIN};
use crate::{pem, PkiError};

/// How long the root CA is valid: 20 years, as in SwarmKit.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 60 * 60);
/// How long a node certificate is valid: 90 days, SwarmKit's default `NodeCertExpiry`.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// How long an admin client certificate is valid.
pub const ADMIN_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Certificates start this long before they are issued, so that a peer whose clock is a
/// little behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// The common name of the root CA, as in SwarmKit.
const CA_COMMON_NAME: &str = "swarm-ca";

/// The cluster's root certificate authority: an ECDSA P-256 key and its self-signed
/// certificate. Built only through [`RootCa::generate`] or [`RootCa::from_pem`], so the
/// certificate always parses and matches the key.
#[derive(Clone)]
pub struct RootCa {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &self.digest())
            .finish_non_exhaustive()
    }
}

/// What the CA writes into a node certificate. The CSR contributes only its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignRequest {
    pub node_id: String,
    pub cluster_id: String,
    /// [`Role::Manager`] or [`Role::Worker`]; admin certificates come from
    /// [`RootCa::issue_client`].
    pub role: Role,
    /// Addresses other nodes and clients dial (the advertise address). 127.0.0.1 and ::1
    /// are always added.
    pub ip_sans: Vec<IpAddr>,
    /// Extra DNS names. "localhost", the role's OU and the node id are always added.
    pub dns_sans: Vec<String>,
}

impl RootCa {
    /// A fresh root CA for the cluster `cluster_id`, valid for [`CA_VALIDITY`] from now.
    pub fn generate(cluster_id: &str) -> Result<RootCa, PkiError> {
        RootCa::generate_at(cluster_id, SystemTime::now())
    }

    /// As [`RootCa::generate`], with the issue time given.
    pub fn generate_at(cluster_id: &str, now: SystemTime) -> Result<RootCa, PkiError> {
        check_name("cluster id", cluster_id)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, CA_COMMON_NAME);
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster_id);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, now, CA_VALIDITY);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(generate_error)?;
        Ok(RootCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        })
    }

    /// Loads a CA saved earlier. Fails unless the certificate is a CA certificate and the
    /// key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa, PkiError> {
        let cert_der = pem::single_certificate(cert_pem, "the root CA certificate")?;
        let (_, cert) = X509Certificate::from_der(&cert_der).map_err(|e| {
            PkiError::InvalidCertificate(format!("the root CA certificate does not parse: {e}"))
        })?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(PkiError::InvalidCertificate(
                "the root CA certificate is not a CA certificate (basic constraints CA:FALSE)"
                    .into(),
            ));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::InvalidKey(format!("the root CA key: {e}")))?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(PkiError::InvalidKey(
                "the root CA key does not belong to the root CA certificate".into(),
            ));
        }
        Ok(RootCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key in PKCS#8 PEM. Only managers hold it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The digest a join token pins: SHA-256 of the certificate's DER, in base 36,
    /// zero-padded to 50 characters.
    pub fn digest(&self) -> String {
        der_digest(&self.cert_der)
    }

    /// Signs a node certificate for the public key in `csr_pem`, valid for
    /// [`NODE_CERT_VALIDITY`] from now. The CSR's subject and extensions are ignored.
    pub fn sign_node(&self, csr_pem: &str, request: &SignRequest) -> Result<String, PkiError> {
        self.sign_node_at(csr_pem, request, SystemTime::now())
    }

    /// As [`RootCa::sign_node`], with the issue time given.
    pub fn sign_node_at(
        &self,
        csr_pem: &str,
        request: &SignRequest,
        now: SystemTime,
    ) -> Result<String, PkiError> {
        self.sign_node_for(csr_pem, request, now, NODE_CERT_VALIDITY)
    }

    /// As [`RootCa::sign_node_at`], valid for `validity` (the cluster's
    /// `CAConfig.NodeCertExpiry`).
    pub fn sign_node_for(
        &self,
        csr_pem: &str,
        request: &SignRequest,
        now: SystemTime,
        validity: Duration,
    ) -> Result<String, PkiError> {
        if validity.is_zero() {
            return Err(PkiError::InvalidRequest(
                "a node certificate must be valid for more than 0 s".into(),
            ));
        }
        check_name("node id", &request.node_id)?;
        check_name("cluster id", &request.cluster_id)?;
        if request.role == Role::Admin {
            return Err(PkiError::InvalidRequest(format!(
                "node {} cannot get an admin certificate from sign_node: use issue_client",
                request.node_id
            )));
        }
        let public_key = csr_public_key(csr_pem)?;

        let mut params = CertificateParams::default();
        params.distinguished_name =
            subject(&request.node_id, request.role.ou(), &request.cluster_id);
        params.subject_alt_names = node_sans(request)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, now, validity);

        let issuer = self.issuer()?;
        let cert = params
            .signed_by(&public_key, &issuer)
            .map_err(generate_error)?;
        Ok(cert.pem())
    }

    /// A client certificate and its new key (both PEM) for an administrator: OU
    /// [`OU_ADMIN`], client authentication only, valid for [`ADMIN_CERT_VALIDITY`]. The
    /// files suit the stock docker CLI (`DOCKER_CERT_PATH` with `ca.pem`, `cert.pem`,
    /// `key.pem`).
    pub fn issue_client(&self, name: &str, cluster_id: &str) -> Result<(String, String), PkiError> {
        self.issue_client_at(name, cluster_id, SystemTime::now())
    }

    /// As [`RootCa::issue_client`], with the issue time given.
    pub fn issue_client_at(
        &self,
        name: &str,
        cluster_id: &str,
        now: SystemTime,
    ) -> Result<(String, String), PkiError> {
        check_name("client name", name)?;
        check_name("cluster id", cluster_id)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(name, OU_ADMIN, cluster_id);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, now, ADMIN_CERT_VALIDITY);
        let issuer = self.issuer()?;
        let cert = params.signed_by(&key, &issuer).map_err(generate_error)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| PkiError::InvalidKey(format!("the root CA key: {e}")))?;
        Issuer::from_ca_cert_der(&self.cert_der, key)
            .map_err(|e| PkiError::InvalidCertificate(format!("the root CA certificate: {e}")))
    }
}

/// A node's private key (ECDSA P-256, PKCS#8 PEM). It never leaves the node; the CA sees
/// only the CSR.
#[derive(Clone)]
pub struct NodeKey {
    pub key_pem: String,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey").finish_non_exhaustive()
    }
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        Ok(NodeKey {
            key_pem: key.serialize_pem(),
        })
    }

    /// Wraps an existing key, for instance the one in a saved identity, so that a renewal
    /// keeps the key and only the certificate changes on disk.
    pub fn from_pem(key_pem: &str) -> Result<NodeKey, PkiError> {
        KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::InvalidKey(format!("the node key: {e}")))?;
        Ok(NodeKey {
            key_pem: key_pem.to_owned(),
        })
    }

    /// A PKCS#10 request for this key. Its subject is a placeholder: the CA writes the
    /// real one.
    pub fn csr_pem(&self) -> Result<String, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| PkiError::InvalidKey(format!("the node key: {e}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "swarm-node");
        params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(generate_error)
    }
}

/// The join-token digest of a DER certificate.
pub(crate) fn der_digest(der: &[u8]) -> String {
    swarm_state::ids::base36(&Sha256::digest(der), 50)
}

/// The public key of a CSR, after checking the CSR's self-signature (proof that the
/// requester holds the private key).
fn csr_public_key(csr_pem: &str) -> Result<SubjectPublicKeyInfo, PkiError> {
    use x509_parser::certification_request::X509CertificationRequest;

    let der = pem::csr(csr_pem)?;
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| PkiError::InvalidCsr(format!("does not parse: {e}")))?;
    csr.verify_signature()
        .map_err(|e| PkiError::InvalidCsr(format!("bad self-signature: {e}")))?;
    SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| PkiError::InvalidCsr(format!("unsupported public key: {e}")))
}

fn subject(common_name: &str, ou: &str, cluster_id: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, cluster_id);
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn node_sans(request: &SignRequest) -> Result<Vec<SanType>, PkiError> {
    let mut ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    for ip in &request.ip_sans {
        if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    // The role and node id as DNS names follow SwarmKit, whose clients dial managers by
    // the name "swarm-manager".
    let mut names: Vec<String> = vec!["localhost".into(), request.role.ou().into()];
    let node_id_is_hostname = request
        .node_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if node_id_is_hostname {
        names.push(request.node_id.to_ascii_lowercase());
    }
    for name in &request.dns_sans {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        check_hostname(&name).map_err(PkiError::InvalidRequest)?;
        // A node named like a role must not carry the other role's name.
        if Role::from_ou(&name).is_some() {
            continue;
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut sans = Vec::with_capacity(ips.len() + names.len());
    for name in names {
        let ia5 = name.as_str().try_into().map_err(|_| {
            PkiError::InvalidRequest(format!(
                "DNS name {name:?} is not ascii: use its punycode form"
            ))
        })?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    Ok(sans)
}

/// Checks a host name as RFC 1123 has it: dot-separated labels of ASCII letters, digits
/// and hyphens, none starting or ending with a hyphen, at most 63 characters each and
/// 253 in all. No wildcard, no path, no empty name.
pub fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the hostname is empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "the hostname is {} characters long: at most 253 are allowed",
            name.len()
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "invalid hostname {name:?}: use labels of letters, digits and '-' (not at either end), at most 63 characters each, separated by dots (RFC 1123)"
            ));
        }
    }
    Ok(())
}

/// How far back a certificate starts: an hour, as in SwarmKit, but never more than a
/// tenth of its lifetime, so a short-lived certificate's renewal window (a share of
/// notBefore..notAfter) is not mostly in the past.
fn backdate(validity: Duration) -> Duration {
    BACKDATE.min(validity / 10)
}

fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
    let start = now.checked_sub(backdate(validity)).unwrap_or(now);
    params.not_before = OffsetDateTime::from(start);
    params.not_after = OffsetDateTime::from(now + validity);
}

/// 128 random bits with the top bit clear, so the DER integer stays positive.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01 << 6;
    SerialNumber::from_slice(&bytes)
}

/// Names end up in certificate subjects and DNS SANs, so they are kept to the id
/// alphabet Docker uses (letters, digits, '-', '_', '.').
fn check_name(what: &str, value: &str) -> Result<(), PkiError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidRequest(format!(
            "{what} {value:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn generate_error(e: rcgen::Error) -> PkiError {
    PkiError::Generate(e.to_string())
}
