//! The TLS server and clients over real sockets on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use swarm_pki::{
    bootstrap_client, client_config, fetch_ca_pinned, http_client, serve_tls_with, serve_unix,
    Identity, JoinToken, NodeKey, Peer, PeerIdentity, Role, RootCa, ServeOptions, SignRequest,
    TlsAcceptorHandle, CA_PATH,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const CLUSTER: &str = "clusterxyz";

fn identity(ca: &RootCa, node_id: &str, role: Role) -> Identity {
    let key = NodeKey::generate().unwrap();
    let request = SignRequest {
        node_id: node_id.into(),
        cluster_id: CLUSTER.into(),
        role,
        ip_sans: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        dns_sans: vec![],
    };
    Identity {
        cert_pem: ca.sign_node(&key.csr_pem().unwrap(), &request).unwrap(),
        key_pem: key.key_pem,
        ca_pem: ca.cert_pem().to_owned(),
    }
}

async fn whoami(peer: Peer) -> String {
    match peer.identity {
        Some(p) => format!("{} {} {}", p.role, p.node_id, p.cluster_id),
        None => "anonymous".into(),
    }
}

fn app(ca_pem: String) -> Router {
    Router::new()
        .route("/whoami", get(whoami))
        .route(
            "/extension",
            get(|axum::Extension(peer): axum::Extension<Peer>| async move {
                format!("{:?}", peer.identity.map(|p| p.role))
            }),
        )
        .route(CA_PATH, get(move || async move { ca_pem }))
        .route(
            "/slow/{ms}",
            get(
                |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    "done"
                },
            ),
        )
}

struct Server {
    addr: SocketAddr,
    tls: TlsAcceptorHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(ca: &RootCa, identity: &Identity, options: ServeOptions) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = TlsAcceptorHandle::from_identity(identity).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_tls_with(
            listener,
            tls.clone(),
            app(ca.cert_pem().to_owned()),
            async move {
                let _ = stopped.await;
            },
            options,
        ));
        Server {
            addr,
            tls,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

async fn get_text(client: &reqwest::Client, url: &str) -> Result<String, reqwest::Error> {
    client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

fn fixture() -> (RootCa, Identity) {
    let ca = RootCa::generate(CLUSTER).unwrap();
    let server = identity(&ca, "manager1", Role::Manager);
    (ca, server)
}

#[tokio::test]
async fn worker_client_is_seen_with_its_role_and_node_id() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, ServeOptions::default()).await;
    let worker = identity(&ca, "worker7", Role::Worker);
    let client = http_client(&worker).unwrap();
    let text = get_text(&client, &server.url("/whoami")).await.unwrap();
    assert_eq!(text, format!("worker worker7 {CLUSTER}"));
    // Keep-alive: a second request on the pooled connection.
    let text = get_text(&client, &server.url("/extension")).await.unwrap();
    assert_eq!(text, "Some(Worker)");
    server.stop().await;
}

#[tokio::test]
async fn client_without_certificate_is_served_as_anonymous() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, ServeOptions::default()).await;
    let client = bootstrap_client(ca.cert_pem()).unwrap();
    assert_eq!(
        get_text(&client, &server.url("/whoami")).await.unwrap(),
        "anonymous"
    );
    assert_eq!(
        get_text(&client, &server.url("/extension")).await.unwrap(),
        "None"
    );
    server.stop().await;
}

#[tokio::test]
async fn certificate_of_another_ca_is_rejected_at_handshake() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, ServeOptions::default()).await;
    let other = RootCa::generate(CLUSTER).unwrap();
    let foreign = identity(&other, "intruder", Role::Manager);
    let other_cluster = RootCa::generate("othercluster").unwrap();
    let stranger = identity(&other_cluster, "stranger", Role::Worker);
    // Trusts the server's CA, so only the server's check of the client can fail.
    let client = http_client(&Identity {
        ca_pem: ca.cert_pem().to_owned(),
        ..foreign
    })
    .unwrap();
    let mut errors = vec![get_text(&client, &server.url("/whoami")).await.unwrap_err()];
    let client = http_client(&Identity {
        ca_pem: ca.cert_pem().to_owned(),
        ..stranger
    })
    .unwrap();
    errors.push(get_text(&client, &server.url("/whoami")).await.unwrap_err());
    // The server sends a TLS alert: same-named CA with a bad signature (DecryptError) or
    // an unknown issuer (UnknownCA).
    for err in errors {
        let chain = format!("{err:?}");
        assert!(chain.contains("AlertReceived"), "{chain}");
    }

    // The server is unaffected.
    let worker = http_client(&identity(&ca, "w1", Role::Worker)).unwrap();
    assert!(get_text(&worker, &server.url("/whoami")).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn client_refuses_a_server_of_another_ca() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, ServeOptions::default()).await;
    let other = RootCa::generate(CLUSTER).unwrap();
    let client = http_client(&identity(&other, "w1", Role::Worker)).unwrap();
    assert!(get_text(&client, &server.url("/whoami")).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn admin_client_certificate_is_accepted_as_admin() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, ServeOptions::default()).await;
    let (cert_pem, key_pem) = ca.issue_client("operator", CLUSTER).unwrap();
    let client = http_client(&Identity {
        cert_pem,
        key_pem,
        ca_pem: ca.cert_pem().to_owned(),
    })
    .unwrap();
    let text = get_text(&client, &server.url("/whoami")).await.unwrap();
    assert_eq!(text, format!("admin operator {CLUSTER}"));
    server.stop().await;
}

/// What the docker CLI does: dial the IP and check the server certificate for it.
async fn server_cert_seen_by_raw_client(addr: SocketAddr, client: &Identity) -> PeerIdentity {
    let connector = tokio_rustls::TlsConnector::from(client_config(client).unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let tls = connector.connect(name, tcp).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    PeerIdentity::from_der(&der).unwrap()
}

#[tokio::test]
async fn server_certificate_verifies_for_127_0_0_1_and_can_be_swapped() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, ServeOptions::default()).await;
    let worker = identity(&ca, "w1", Role::Worker);
    let seen = server_cert_seen_by_raw_client(server.addr, &worker).await;
    assert_eq!(
        (seen.node_id.as_str(), seen.role),
        ("manager1", Role::Manager)
    );

    // A renewed certificate (here: demoted to worker) is served without a restart.
    server
        .tls
        .replace_identity(&identity(&ca, "manager1", Role::Worker))
        .unwrap();
    let seen = server_cert_seen_by_raw_client(server.addr, &worker).await;
    assert_eq!(
        (seen.node_id.as_str(), seen.role),
        ("manager1", Role::Worker)
    );
    server.stop().await;
}

#[tokio::test]
async fn fetch_ca_pinned_checks_the_token_digest() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, ServeOptions::default()).await;
    let addr = server.addr.to_string();

    let token = JoinToken::parse(&JoinToken::generate(&ca)).unwrap();
    let ca_pem = fetch_ca_pinned(&addr, &token).await.unwrap();
    assert_eq!(ca_pem, ca.cert_pem());
    // The pinned CA then verifies the server for the join call.
    let client = bootstrap_client(&ca_pem).unwrap();
    assert_eq!(
        get_text(&client, &server.url("/whoami")).await.unwrap(),
        "anonymous"
    );

    let other = RootCa::generate(CLUSTER).unwrap();
    let wrong = JoinToken::parse(&JoinToken::generate(&other)).unwrap();
    let err = fetch_ca_pinned(&addr, &wrong)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("the manager at {addr} presented a CA whose digest does not match the join token: check the token or the address")
    );
    server.stop().await;
}

#[tokio::test]
async fn fetch_ca_pinned_names_an_unreachable_manager() {
    // Bind then drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ca = RootCa::generate(CLUSTER).unwrap();
    let token = JoinToken::parse(&JoinToken::generate(&ca)).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let err = fetch_ca_pinned(&addr, &token)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("cannot fetch the root CA from {addr}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_client_neither_blocks_others_nor_stays_forever() {
    let (ca, server_id) = fixture();
    let options = ServeOptions {
        handshake_timeout: Duration::from_secs(2),
        ..ServeOptions::default()
    };
    let server = Server::start(&ca, &server_id, options).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();

    let client = http_client(&identity(&ca, "w1", Role::Worker)).unwrap();
    let started = Instant::now();
    assert!(get_text(&client, &server.url("/whoami")).await.is_ok());
    assert!(started.elapsed() < Duration::from_millis(1500));

    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(6), silent.read(&mut buf))
        .await
        .expect("the server drops the silent client after the handshake timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let (ca, server_id) = fixture();
    let options = ServeOptions {
        max_connections: 1,
        ..ServeOptions::default()
    };
    let server = Server::start(&ca, &server_id, options).await;
    let holder = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let client = http_client(&identity(&ca, "w1", Role::Worker)).unwrap();
    let url = server.url("/whoami");
    let waiting = tokio::spawn(async move { get_text(&client, &url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second client must wait for the slot"
    );
    drop(holder);
    let text = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(text, "worker w1 clusterxyz");
    server.stop().await;
}

#[tokio::test]
async fn requests_may_outlast_the_header_timeout() {
    let (ca, server_id) = fixture();
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let server = Server::start(&ca, &server_id, options).await;
    let client = http_client(&identity(&ca, "w1", Role::Worker)).unwrap();
    assert_eq!(
        get_text(&client, &server.url("/slow/1000")).await.unwrap(),
        "done"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_then_stops_accepting() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, ServeOptions::default()).await;
    let addr = server.addr;
    let client = http_client(&identity(&ca, "w1", Role::Worker)).unwrap();
    let url = server.url("/slow/500");
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { get_text(&client, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.stop().await;
    assert_eq!(in_flight.await.unwrap().unwrap(), "done");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_grace_bounds_a_request_that_never_ends() {
    let (ca, server_id) = fixture();
    let options = ServeOptions {
        shutdown_grace: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    let server = Server::start(&ca, &server_id, options).await;
    let client = http_client(&identity(&ca, "w1", Role::Worker)).unwrap();
    let url = server.url("/slow/60000");
    let stuck = tokio::spawn(async move { get_text(&client, &url).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(stuck.await.unwrap().is_err());
}

#[tokio::test]
async fn unix_socket_callers_are_local_admins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("swarm.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_unix(listener, app(String::new()), async move {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("admin local "), "{answer}");

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// The stock docker CLI against the control port with an admin bundle from
/// `issue_client`, as a user would point `DOCKER_CERT_PATH` at it.
#[tokio::test]
async fn docker_cli_talks_to_the_server_with_an_admin_certificate() {
    if std::env::var("SWARMUP_E2E").as_deref() != Ok("1") {
        println!("skipped: set SWARMUP_E2E=1 to run the docker CLI against the TLS server");
        return;
    }
    if tokio::process::Command::new("docker")
        .arg("--version")
        .output()
        .await
        .is_err()
    {
        println!("skipped: no docker CLI on PATH");
        return;
    }
    let (ca, server_id) = fixture();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = TlsAcceptorHandle::from_identity(&server_id).unwrap();
    let docker_api = Router::new()
        .route(
            "/_ping",
            get(|| async { ([("API-Version", "1.41")], "OK") }).head(|| async { [("API-Version", "1.41")] }),
        )
        .fallback(|peer: Peer, uri: http::Uri| async move {
            if uri.path().ends_with("/version") {
                let role = peer.identity.map(|p| format!("{}-{}", p.role, p.node_id));
                let body = format!(
                    r#"{{"Version":"{}","ApiVersion":"1.41","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64"}}"#,
                    role.unwrap_or_else(|| "anonymous".into())
                );
                ([("Content-Type", "application/json")], body).into_response()
            } else {
                http::StatusCode::NOT_FOUND.into_response()
            }
        });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_tls_with(
        listener,
        tls,
        docker_api,
        async move {
            let _ = stopped.await;
        },
        ServeOptions::default(),
    ));

    let certs = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = ca.issue_client("operator", CLUSTER).unwrap();
    std::fs::write(certs.path().join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(certs.path().join("cert.pem"), cert_pem).unwrap();
    std::fs::write(certs.path().join("key.pem"), key_pem).unwrap();
    let config = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new("docker")
        .env("DOCKER_CONFIG", config.path())
        .env("DOCKER_CERT_PATH", certs.path())
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_HOST", format!("tcp://{addr}"))
        .env_remove("DOCKER_CONTEXT")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "docker version failed: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), "admin-operator");

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// Attack: a worker's certificate (valid, signed by the cluster CA, naming the address)
/// serving as if it were a manager. Node clients require the manager role of the server.
#[tokio::test]
async fn node_clients_refuse_a_server_with_a_worker_certificate() {
    let (ca, _) = fixture();
    let impostor = identity(&ca, "worker9", Role::Worker);
    let server = Server::start(&ca, &impostor, ServeOptions::default()).await;
    let me = identity(&ca, "worker1", Role::Worker);
    let err = get_text(&http_client(&me).unwrap(), &server.url("/whoami"))
        .await
        .unwrap_err();
    let chain = format!("{err:?}");
    assert!(chain.contains("not a manager"), "{chain}");
    assert!(
        get_text(&bootstrap_client(&ca.cert_pem()).unwrap(), &server.url("/whoami"))
            .await
            .is_err(),
        "a joining node talks only to managers"
    );
    server.stop().await;
}

/// Renewal: clients built once from a [`swarm_pki::ClientIdentityHandle`] present the
/// new certificate after `replace`, without being rebuilt.
#[tokio::test]
async fn clients_follow_a_replaced_client_certificate() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, ServeOptions::default()).await;
    let first = identity(&ca, "worker1", Role::Worker);
    let handle = swarm_pki::ClientIdentityHandle::new(&first).unwrap();
    let client = handle.http_client().unwrap();
    let text = get_text(&client, &server.url("/whoami")).await.unwrap();
    assert_eq!(text, format!("worker worker1 {CLUSTER}"));
    let promoted = identity(&ca, "worker1", Role::Manager);
    handle.replace(&promoted).unwrap();
    // A fresh connection (the pooled one keeps the certificate it was opened with).
    let fresh = handle.http_client().unwrap();
    let text = get_text(&fresh, &server.url("/whoami")).await.unwrap();
    assert_eq!(text, format!("manager worker1 {CLUSTER}"));
    server.stop().await;
    let server = Server::start(&ca, &server_id, ServeOptions::default()).await;
    let text = get_text(&client, &server.url("/whoami")).await.unwrap();
    assert_eq!(text, format!("manager worker1 {CLUSTER}"), "the old client follows too");
    server.stop().await;
}
