//! Certificates, identities on disk and join tokens, without sockets.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use swarm_pki::{
    ca_digest, certificate_validity, Identity, JoinToken, NodeKey, PeerIdentity, PkiError, Role,
    RootCa, SignRequest, NODE_CERT_VALIDITY,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const CLUSTER: &str = "cluster0abc";

fn request(node_id: &str, role: Role) -> SignRequest {
    SignRequest {
        node_id: node_id.into(),
        cluster_id: CLUSTER.into(),
        role,
        ip_sans: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))],
        dns_sans: vec!["node-a.example".into()],
    }
}

fn identity(ca: &RootCa, node_id: &str, role: Role) -> Identity {
    let key = NodeKey::generate().unwrap();
    let cert_pem = ca
        .sign_node(&key.csr_pem().unwrap(), &request(node_id, role))
        .unwrap();
    Identity {
        cert_pem,
        key_pem: key.key_pem,
        ca_pem: ca.cert_pem().to_owned(),
    }
}

fn der(pem_text: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem_text.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[test]
fn root_ca_is_a_p256_ca_named_swarm_ca() {
    let ca = RootCa::generate(CLUSTER).unwrap();
    let der = der(ca.cert_pem());
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "swarm-ca"
    );
    assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
    let years = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
        / (365 * 24 * 3600);
    assert_eq!(years, 20);
    assert!(ca.key_pem().contains("PRIVATE KEY"));
}

#[test]
fn digest_is_50_base36_chars_and_survives_reload() {
    let ca = RootCa::generate(CLUSTER).unwrap();
    let digest = ca.digest();
    assert_eq!(digest.len(), 50);
    assert!(digest
        .chars()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
    let reloaded = RootCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    assert_eq!(reloaded.digest(), digest);
    assert_eq!(ca_digest(ca.cert_pem()).unwrap(), digest);
    assert_ne!(RootCa::generate(CLUSTER).unwrap().digest(), digest);
    assert_eq!(
        JoinToken::parse(&JoinToken::generate(&ca)).unwrap().digest,
        digest
    );
}

#[test]
fn from_pem_rejects_a_key_of_another_ca() {
    let a = RootCa::generate(CLUSTER).unwrap();
    let b = RootCa::generate(CLUSTER).unwrap();
    let err = RootCa::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
    let leaf = identity(&a, "node1", Role::Worker);
    let err = RootCa::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
    assert!(err.to_string().contains("not a CA certificate"), "{err}");
}

#[test]
fn manager_certificate_parses_back_as_manager() {
    let ca = RootCa::generate(CLUSTER).unwrap();
    let id = identity(&ca, "k3hd8rb0zm1n5w2x7q4v9p6ty", Role::Manager);
    let peer = id.peer().unwrap();
    assert_eq!(
        peer,
        PeerIdentity {
            node_id: "k3hd8rb0zm1n5w2x7q4v9p6ty".into(),
            role: Role::Manager,
            cluster_id: CLUSTER.into(),
        }
    );
    id.verify().unwrap();

    let der = der(&id.cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let ou = cert.subject().iter_organizational_unit().next().unwrap();
    assert_eq!(ou.as_str().unwrap(), swarm_state::proto::OU_MANAGER);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    let has_ip = |ip: [u8; 4]| {
        san.general_names
            .iter()
            .any(|n| matches!(n, GeneralName::IPAddress(b) if *b == ip))
    };
    let has_dns = |name: &str| {
        san.general_names
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName(d) if *d == name))
    };
    assert!(has_ip([127, 0, 0, 1]));
    assert!(has_ip([10, 0, 0, 7]));
    assert!(has_dns("localhost"));
    assert!(has_dns("swarm-manager"));
    assert!(has_dns("node-a.example"));
}

#[test]
fn worker_certificate_is_valid_90_days_backdated_one_hour() {
    let ca = RootCa::generate(CLUSTER).unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .sign_node_at(&key.csr_pem().unwrap(), &request("w1", Role::Worker), now)
        .unwrap();
    let (not_before, not_after) = certificate_validity(&cert).unwrap();
    assert_eq!(not_before, now - Duration::from_secs(3600));
    assert_eq!(not_after, now + NODE_CERT_VALIDITY);
    assert_eq!(PeerIdentity::from_pem(&cert).unwrap().role, Role::Worker);
}

#[test]
fn admin_client_certificate_is_client_auth_only() {
    let ca = RootCa::generate(CLUSTER).unwrap();
    let (cert_pem, key_pem) = ca.issue_client("operator", CLUSTER).unwrap();
    let id = Identity {
        cert_pem,
        key_pem,
        ca_pem: ca.cert_pem().to_owned(),
    };
    id.verify().unwrap();
    let peer = id.peer().unwrap();
    assert_eq!(peer.role, Role::Admin);
    assert_eq!(peer.node_id, "operator");
    let der = der(&id.cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
}

#[test]
fn sign_node_refuses_bad_requests() {
    let ca = RootCa::generate(CLUSTER).unwrap();
    let csr = NodeKey::generate().unwrap().csr_pem().unwrap();

    let err = ca
        .sign_node("garbage", &request("n1", Role::Worker))
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");

    // Flip one byte inside the base64 body: the self-signature no longer matches.
    let mut lines: Vec<String> = csr.lines().map(str::to_owned).collect();
    let line = &mut lines[3];
    let replacement = if line.starts_with('A') { "B" } else { "A" };
    line.replace_range(0..1, replacement);
    let tampered = lines.join("\n");
    let err = ca
        .sign_node(&tampered, &request("n1", Role::Worker))
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");

    let err = ca.sign_node(&csr, &request("n1", Role::Admin)).unwrap_err();
    assert!(err.to_string().contains("use issue_client"), "{err}");

    let err = ca
        .sign_node(&csr, &request("bad id/x", Role::Worker))
        .unwrap_err();
    assert!(err.to_string().contains("node id \"bad id/x\""), "{err}");
}

#[test]
fn identity_from_another_ca_does_not_verify() {
    let a = RootCa::generate(CLUSTER).unwrap();
    let b = RootCa::generate(CLUSTER).unwrap();
    let mut id = identity(&a, "n1", Role::Worker);
    id.ca_pem = b.cert_pem().to_owned();
    let err = id.verify().unwrap_err();
    assert!(
        err.to_string().contains("not signed by the root CA"),
        "{err}"
    );

    let mut id = identity(&a, "n1", Role::Worker);
    id.key_pem = NodeKey::generate().unwrap().key_pem;
    let err = id.verify().unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[tokio::test]
async fn identity_round_trips_through_disk_with_a_private_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = RootCa::generate(CLUSTER).unwrap();
    let id = identity(&ca, "n1", Role::Worker);
    assert!(!Identity::exists(dir.path()).await);
    id.save(dir.path()).await.unwrap();
    assert!(Identity::exists(dir.path()).await);

    let certs = dir.path().join("certificates");
    let mode = |name: &str| {
        std::fs::metadata(certs.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("swarm-node.key"), 0o600);
    assert_eq!(mode("swarm-node.crt"), 0o600);
    assert_eq!(mode("swarm-root-ca.crt"), 0o600);
    assert_eq!(
        std::fs::metadata(&certs).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let loaded = Identity::load(dir.path()).await.unwrap();
    assert_eq!(loaded, id);

    // Saving again replaces the files and leaves no temporary files behind.
    let renewed = Identity {
        cert_pem: ca
            .sign_node(
                &NodeKey::from_pem(&id.key_pem).unwrap().csr_pem().unwrap(),
                &request("n1", Role::Manager),
            )
            .unwrap(),
        ..id.clone()
    };
    renewed.save(dir.path()).await.unwrap();
    let loaded = Identity::load(dir.path()).await.unwrap();
    assert_eq!(loaded.peer().unwrap().role, Role::Manager);
    let names: Vec<String> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(mode("swarm-node.key"), 0o600);
}

#[tokio::test]
async fn loading_a_missing_identity_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = Identity::load(dir.path()).await.unwrap_err().to_string();
    assert!(err.starts_with("cannot read "), "{err}");
    assert!(err.contains("certificates/swarm-node.crt"), "{err}");
}

#[test]
fn validity_of_a_fresh_certificate_contains_now() {
    let ca = RootCa::generate(CLUSTER).unwrap();
    let id = identity(&ca, "n1", Role::Worker);
    let (from, to) = id.validity().unwrap();
    let now = SystemTime::now();
    assert!(from < now && now < to);
}

#[tokio::test]
async fn loading_a_mismatched_identity_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let ca = RootCa::generate(CLUSTER).unwrap();
    let mut id = identity(&ca, "n1", Role::Worker);
    id.key_pem = NodeKey::generate().unwrap().key_pem;
    id.save(dir.path()).await.unwrap();
    let err = Identity::load(dir.path()).await.unwrap_err();
    assert!(matches!(err, PkiError::UnusableIdentity { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("certificates is unusable: "), "{text}");
    assert!(
        text.contains("the node key does not belong to the node certificate"),
        "{text}"
    );
}

#[test]
fn hostnames_follow_rfc_1123() {
    for good in ["node-1", "a.b.c", "x", &"a".repeat(63)] {
        assert!(swarm_pki::check_hostname(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "*.example.com",
        "../x",
        "-a",
        "a-",
        "a..b",
        "a_b",
        &"a".repeat(64),
        &"a.".repeat(130),
    ] {
        assert!(swarm_pki::check_hostname(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn short_certificates_start_only_a_tenth_of_their_life_early() {
    let ca = RootCa::generate(CLUSTER).unwrap();
    let key = NodeKey::generate().unwrap();
    let now = std::time::SystemTime::now();
    let pem = ca
        .sign_node_for(
            &key.csr_pem().unwrap(),
            &request("w1", Role::Worker),
            now,
            std::time::Duration::from_secs(30),
        )
        .unwrap();
    let (not_before, not_after) = swarm_pki::certificate_validity(&pem).unwrap();
    // Certificate times have whole seconds.
    assert!(now.duration_since(not_before).unwrap() < std::time::Duration::from_secs(4));
    assert!(not_after.duration_since(now).unwrap() <= std::time::Duration::from_secs(30));
}

#[test]
fn wildcards_and_role_names_never_become_dns_names() {
    let ca = RootCa::generate(CLUSTER).unwrap();
    let key = NodeKey::generate().unwrap();
    let mut req = request("w1", Role::Worker);
    req.dns_sans = vec!["*.example.com".into()];
    assert!(ca.sign_node(&key.csr_pem().unwrap(), &req).is_err());
    req.dns_sans = vec!["swarm-manager".into()];
    let pem = ca.sign_node(&key.csr_pem().unwrap(), &req).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::prelude::X509Certificate::from_der(&der).unwrap();
    let sans = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(!sans.contains("swarm-manager"), "{sans}");
}
