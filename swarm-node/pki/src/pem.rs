//! PEM decoding shared by the certificate, identity and TLS code.

use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

use crate::PkiError;

/// Every certificate in `pem`, in order. `what` names the text in errors.
pub(crate) fn certificates(
    pem: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::InvalidCertificate(format!("{what} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::InvalidCertificate(format!(
            "{what} holds no PEM certificate"
        )));
    }
    Ok(certs)
}

/// Exactly one certificate. A root CA or a pinned answer with extra certificates would
/// smuggle trust anchors past the digest check, so more than one is an error.
pub(crate) fn single_certificate(
    pem: &str,
    what: &str,
) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = certificates(pem, what)?;
    if certs.len() != 1 {
        return Err(PkiError::InvalidCertificate(format!(
            "{what} must hold exactly one certificate, found {}",
            certs.len()
        )));
    }
    Ok(certs.remove(0))
}

pub(crate) fn private_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| PkiError::InvalidKey(format!("{what} is not valid PEM: {e}")))?
        .ok_or_else(|| PkiError::InvalidKey(format!("{what} holds no PEM private key")))
}

pub(crate) fn csr(pem: &str) -> Result<CertificateSigningRequestDer<'static>, PkiError> {
    rustls_pemfile::csr(&mut pem.as_bytes())
        .map_err(|e| PkiError::InvalidCsr(format!("not valid PEM: {e}")))?
        .ok_or_else(|| PkiError::InvalidCsr("no PEM CERTIFICATE REQUEST block".into()))
}
