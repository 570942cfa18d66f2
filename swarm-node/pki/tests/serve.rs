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
            "/echo",
            axum::routing::post(|body: String| async move { body }),
        )
        .route("/upgrade", axum::routing::post(upgrade_to_echo))
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

/// Switches the connection to a raw stream that echoes what it receives, as Docker's
/// attach and exec switch to a raw stream.
async fn upgrade_to_echo(mut request: axum::extract::Request) -> axum::response::Response {
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = on_upgrade.await.unwrap();
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => io.write_all(&buf[..n]).await.unwrap(),
            }
        }
    });
    http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "tcp")
        .body(axum::body::Body::empty())
        .unwrap()
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

/// What the docker CLI does: dial the IP and check the server certificate for it (against
/// the CA only: the CLI does not look at the role).
async fn server_cert_seen_by_raw_client(addr: SocketAddr, client: &Identity) -> PeerIdentity {
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pemfile::certs(&mut client.ca_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let chain = rustls_pemfile::certs(&mut client.cert_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut client.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(swarm_pki::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
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

    // A new certificate is served without a restart.
    server
        .tls
        .replace_identity(&identity(&ca, "manager2", Role::Manager))
        .unwrap();
    let seen = server_cert_seen_by_raw_client(server.addr, &worker).await;
    assert_eq!(
        (seen.node_id.as_str(), seen.role),
        ("manager2", Role::Manager)
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

/// A TLS connection without a client certificate, as a joining node makes.
async fn anonymous_tls(
    addr: SocketAddr,
    ca: &RootCa,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(swarm_pki::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    connect_tls(addr, std::sync::Arc::new(config)).await
}

async fn certified_tls(
    addr: SocketAddr,
    identity: &Identity,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    connect_tls(addr, client_config(identity).unwrap()).await
}

async fn connect_tls(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or `limit` passes: then panics), and
/// returns what it sent.
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection");
    String::from_utf8_lossy(&seen).into_owned()
}

/// Reads until the response so far contains `needle`.
async fn read_until(stream: &mut (impl AsyncReadExt + Unpin), needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the answer arrives");
    String::from_utf8_lossy(&seen).into_owned()
}

fn short_anonymous_deadline() -> ServeOptions {
    ServeOptions {
        anonymous_read_timeout: Duration::from_millis(500),
        ..ServeOptions::default()
    }
}

/// Slowloris without a certificate: request headers that never end.
#[tokio::test]
async fn anonymous_slow_headers_are_cut_after_the_deadline() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, short_anonymous_deadline()).await;
    let mut tls = anonymous_tls(server.addr, &ca).await;
    tls.write_all(b"POST /swarmup/v1/join HTTP/1.1\r\nHost: manager\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut tls, Duration::from_secs(5)).await;
    assert!(!answer.contains(" 200 "), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.stop().await;
}

/// A join whose headers arrive and whose body never does, without a certificate.
#[tokio::test]
async fn anonymous_slow_body_is_cut_after_the_deadline() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, short_anonymous_deadline()).await;
    let mut tls = anonymous_tls(server.addr, &ca).await;
    tls.write_all(
        b"POST /echo HTTP/1.1\r\nHost: manager\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"token\":",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut tls, Duration::from_secs(5)).await;
    // The handler sees a body error (400) or the connection is simply cut.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    server.stop().await;
}

/// The counterpart: a node's certificate buys a longer deadline than the anonymous one.
#[tokio::test]
async fn certified_clients_may_send_slower_than_anonymous_ones() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, short_anonymous_deadline()).await;
    let mut tls = certified_tls(server.addr, &identity(&ca, "w1", Role::Worker)).await;
    tls.write_all(b"POST /echo HTTP/1.1\r\nHost: manager\r\nContent-Length: 5\r\n\r\nhel")
        .await
        .unwrap();
    // Pace the body past the anonymous deadline: the slowness is what is tested.
    tokio::time::sleep(Duration::from_millis(900)).await;
    tls.write_all(b"lo").await.unwrap();
    let answer = read_until(&mut tls, "hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}

/// Connections that open TCP and never start TLS, more than the handshake budget: a new
/// client evicts the oldest instead of waiting for the handshake timeout.
#[tokio::test]
async fn clients_stuck_in_the_handshake_do_not_lock_out_a_new_one() {
    let (ca, server_id) = fixture();
    let options = ServeOptions {
        max_handshakes: 8,
        handshake_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    };
    let server = Server::start(&ca, &server_id, options).await;
    let mut stuck = Vec::new();
    for _ in 0..100 {
        stuck.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let client = http_client(&identity(&ca, "w1", Role::Worker)).unwrap();
    let text = tokio::time::timeout(
        Duration::from_secs(10),
        get_text(&client, &server.url("/whoami")),
    )
    .await
    .expect("a new client is served while the handshake budget is held")
    .unwrap();
    assert_eq!(text, "worker w1 clusterxyz");
    // The oldest were evicted long before their handshake timeout.
    read_until_closed(&mut stuck[0], Duration::from_secs(10)).await;
    server.stop().await;
}

/// Many TLS clients without a certificate that hold their connections with unfinished
/// requests: they fill the anonymous budget only, certified clients are served, further
/// anonymous ones are told to come back.
#[tokio::test]
async fn an_anonymous_flood_does_not_stop_a_certified_client() {
    let (ca, server_id) = fixture();
    let options = ServeOptions {
        max_anonymous: 8,
        max_anonymous_per_ip: 8,
        anonymous_read_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    };
    let server = Server::start(&ca, &server_id, options).await;
    let mut flood = Vec::new();
    for _ in 0..100 {
        let mut tls = anonymous_tls(server.addr, &ca).await;
        // Refused connections may already be closed: the write may fail.
        let _ = tls
            .write_all(b"POST /echo HTTP/1.1\r\nHost: manager\r\nContent-Length: 100\r\n\r\n")
            .await;
        flood.push(tls);
    }
    let refused = async {
        loop {
            // A new client each time: a pooled connection would keep its slot.
            let anonymous = bootstrap_client(ca.cert_pem()).unwrap();
            let resp = anonymous.get(server.url("/whoami")).send().await;
            if let Ok(resp) = resp {
                if resp.status() == http::StatusCode::SERVICE_UNAVAILABLE {
                    return resp.text().await.unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let body = tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("a further anonymous client is refused once the budget is held");
    let message: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        message["message"].as_str().unwrap().contains("too many"),
        "{body}"
    );

    let (cert_pem, key_pem) = ca.issue_client("operator", CLUSTER).unwrap();
    let admin = http_client(&Identity {
        cert_pem,
        key_pem,
        ca_pem: ca.cert_pem().to_owned(),
    })
    .unwrap();
    assert_eq!(
        get_text(&admin, &server.url("/whoami")).await.unwrap(),
        format!("admin operator {CLUSTER}")
    );
    drop(flood);
    server.stop().await;
}

/// One worker certificate opening connection after connection: it holds its share, the
/// next is refused with 503, other nodes are served.
#[tokio::test]
async fn one_worker_certificate_holds_only_its_share_of_connections() {
    let (ca, server_id) = fixture();
    let options = ServeOptions {
        max_per_worker: 2,
        ..ServeOptions::default()
    };
    let server = Server::start(&ca, &server_id, options).await;
    let w1 = identity(&ca, "w1", Role::Worker);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = certified_tls(server.addr, &w1).await;
        tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: manager\r\n\r\n")
            .await
            .unwrap();
        // Answered: the connection holds its slot.
        read_until(&mut tls, "worker w1").await;
        held.push(tls);
    }
    let client = http_client(&w1).unwrap();
    let resp = client.get(server.url("/whoami")).send().await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["message"],
        "too many open connections from this client: close some and try again"
    );
    let other = http_client(&identity(&ca, "w2", Role::Worker)).unwrap();
    assert_eq!(
        get_text(&other, &server.url("/whoami")).await.unwrap(),
        "worker w2 clusterxyz"
    );
    // A released slot serves the first worker again.
    drop(held.pop());
    let again = async {
        loop {
            if let Ok(text) = get_text(&client, &server.url("/whoami")).await {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let text = tokio::time::timeout(Duration::from_secs(10), again)
        .await
        .expect("the worker is served once it closed a connection");
    assert_eq!(text, "worker w1 clusterxyz");
    server.stop().await;
}

/// The read deadlines end with the request: an upgraded connection (attach, exec) stays
/// open and quiet for longer than any of them.
#[tokio::test]
async fn upgraded_connections_outlive_the_read_deadlines() {
    let (ca, server_id) = fixture();
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        anonymous_read_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let server = Server::start(&ca, &server_id, options).await;
    let mut tls = certified_tls(server.addr, &identity(&ca, "w1", Role::Worker)).await;
    tls.write_all(
        b"POST /upgrade HTTP/1.1\r\nHost: manager\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_until(&mut tls, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Quiet past every deadline: the quiet is what is tested.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tls.write_all(b"still here").await.unwrap();
    read_until(&mut tls, "still here").await;
    server.stop().await;
}

/// A Docker Engine running `docker swarm join` against the control port speaks gRPC
/// (HTTP/2 only): it gets a gRPC status that says what to do instead, while HTTP clients
/// (which offer HTTP/1.1) keep HTTP/1.1.
#[tokio::test]
async fn a_grpc_client_is_told_this_is_a_swarmup_cluster() {
    let (ca, server_id) = fixture();
    let server = Server::start(&ca, &server_id, ServeOptions::default()).await;
    let mut config = (*client_config(&server_id).unwrap()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://{}/docker.swarmkit.v1.NodeCA/GetRootCACertificate",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "9");
    let message = response.headers()["grpc-message"].to_str().unwrap();
    assert!(message.contains("swarmup create --nodes N"), "{message}");

    // The docker CLI and reqwest offer HTTP/1.1 too and get it.
    let client = http_client(&identity(&ca, "w", Role::Worker)).unwrap();
    assert!(get_text(&client, &server.url("/whoami")).await.is_ok());
    server.stop().await;
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
        get_text(
            &bootstrap_client(ca.cert_pem()).unwrap(),
            &server.url("/whoami")
        )
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
    assert_eq!(
        text,
        format!("manager worker1 {CLUSTER}"),
        "the old client follows too"
    );
    server.stop().await;
}
