//! See the list in security.rs.
//!
//! Joins that should not get in, or should not be tried forever: bad hostnames,
//! duplicate names, token guessing.

use std::time::Duration;

use swarm_state::proto::JoinRequest;

use crate::support::*;

struct Joiner {
    client: reqwest::Client,
    url: String,
    csr_pem: String,
}

impl Joiner {
    async fn new(manager: &str, token: &str) -> Joiner {
        let parsed = swarm_pki::JoinToken::parse(token).unwrap();
        let ca = swarm_pki::fetch_ca_pinned(manager, &parsed).await.unwrap();
        Joiner {
            client: swarm_pki::bootstrap_client(&ca).unwrap(),
            url: format!("https://{manager}/swarmup/v1/join"),
            csr_pem: swarm_pki::NodeKey::generate().unwrap().csr_pem().unwrap(),
        }
    }

    async fn join(&self, token: &str, hostname: &str) -> reqwest::Response {
        self.client
            .post(&self.url)
            .json(&JoinRequest {
                token: token.into(),
                csr_pem: self.csr_pem.clone(),
                hostname: hostname.into(),
                advertise_addr: "127.0.0.1:1".into(),
                description: Default::default(),
                availability: None,
                cert_sans: vec![],
            })
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap()
    }
}

/// Attack: joining with names that are no host names (empty, 300 characters, a path, a
/// wildcard) to break `docker node ls`, lookups by name or the certificate's DNS names.
/// They used to be accepted and written into the state and the certificate.
#[test]
fn joins_with_invalid_hostnames_are_refused() {
    if !e2e_enabled("joins_with_invalid_hostnames_are_refused") {
        return;
    }
    let mut sandbox = Sandbox::new(&["names-m1"]);
    sandbox.init("1s");
    let manager = sandbox.nodes[0].addr();
    let token = sandbox.token("worker");
    let long = "a".repeat(300);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let joiner = Joiner::new(&manager, &token).await;
        for bad in ["", long.as_str(), "../x", "*.x"] {
            let r = joiner.join(&token, bad).await;
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_eq!(status, 400, "hostname {bad:?}: {body}");
            assert!(body.contains("hostname"), "hostname {bad:?}: {body}");
        }
    });
    let nodes = sandbox.nodes[0].docker_ok(&["node", "ls", "-q"]);
    assert_eq!(nodes.lines().count(), 1, "no node was added: {nodes}");
    assert!(
        sandbox.nodes[0].log().contains("join refused"),
        "failed joins are logged"
    );
}

/// Attack: two nodes join under one name, so that `docker node update NAME` acts on an
/// arbitrary one (or, before, answered "not found"). As Docker: the joins are allowed,
/// and a lookup by that name is refused as ambiguous.
#[test]
fn duplicate_hostnames_make_lookups_by_name_ambiguous() {
    if !e2e_enabled("duplicate_hostnames_make_lookups_by_name_ambiguous") {
        return;
    }
    let mut sandbox = Sandbox::new(&["dups-m1"]);
    sandbox.init("1s");
    let manager = sandbox.nodes[0].addr();
    let token = sandbox.token("worker");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for _ in 0..2 {
            let joiner = Joiner::new(&manager, &token).await;
            let r = joiner.join(&token, "twin").await;
            assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
        }
    });
    let err = sandbox.nodes[0].docker_err(&["node", "update", "--label-add", "a=b", "twin"]);
    assert!(
        err.contains("node twin is ambiguous (2 matches found)"),
        "docker node update twin: {err}"
    );
}

/// Attack: guessing join tokens from one address as fast as possible. After a few
/// failures the manager answers 429 with a Retry-After, even to a valid token, and logs
/// the caller's address. Before, every guess got a prompt answer.
#[test]
fn repeated_bad_token_joins_from_one_address_are_throttled() {
    if !e2e_enabled("repeated_bad_token_joins_from_one_address_are_throttled") {
        return;
    }
    let mut sandbox = Sandbox::new(&["guess-m1"]);
    sandbox.init("1s");
    let manager = sandbox.nodes[0].addr();
    let token = sandbox.token("worker");
    // The right CA digest, a wrong secret.
    let mut guess = token.clone();
    let last = guess.pop().unwrap();
    guess.push(if last == 'a' { 'b' } else { 'a' });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let joiner = Joiner::new(&manager, &token).await;
        let mut statuses = Vec::new();
        let mut retry_after = None;
        for _ in 0..10 {
            let r = joiner.join(&guess, "guesser").await;
            statuses.push(r.status().as_u16());
            if r.status().as_u16() == 429 {
                retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                break;
            }
        }
        println!("answers to bad-token joins: {statuses:?}, Retry-After {retry_after:?}");
        assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
        assert!(statuses.len() <= 8, "throttled only after {statuses:?}");
        assert!(
            retry_after.is_some_and(|s| s >= 1),
            "Retry-After: {retry_after:?}"
        );
        let r = joiner.join(&token, "honest").await;
        assert_eq!(
            r.status().as_u16(),
            429,
            "a blocked address waits, whatever its token"
        );
    });
    let log = sandbox.nodes[0].log();
    assert!(
        log.contains("join refused") && log.contains("127.0.0.1"),
        "failed joins are logged with the caller's address"
    );
}
