//! Serving an axum application over mutual TLS (the control port) or a unix socket (the
//! local Docker API socket), with the caller's identity on every request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::Router;
use http::request::Parts;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tower::Service;
use tracing::{debug, warn};

use crate::{PeerIdentity, Role, TlsAcceptorHandle};

/// Who sent a request: the identity in the client certificate (`None` for a client
/// without one) and where the connection came from. Every request served by
/// [`serve_tls`] or [`serve_unix`] carries it as an extension; handlers take it as an
/// extractor (`peer: Peer`) or as `axum::Extension<Peer>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub identity: Option<PeerIdentity>,
    pub origin: Origin,
}

/// Where a connection came from. Calls that only the machine's own administrator may
/// make (`client-cert`, `leave`) check for [`Origin::LocalSocket`], never for a role: an
/// admin certificate used from elsewhere is not the local socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The node's unix socket, whose file mode restricts it to root.
    LocalSocket,
    /// A TCP client at this address.
    Remote(std::net::SocketAddr),
    /// Served some other way (tests calling a router directly): trusted with nothing.
    Unknown,
}

impl Peer {
    /// A caller without a certificate, from nowhere known.
    pub fn anonymous() -> Peer {
        Peer {
            identity: None,
            origin: Origin::Unknown,
        }
    }

    /// The caller's identity, if its certificate gave one.
    pub fn identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref()
    }

    /// True for requests that came in on the node's unix socket.
    pub fn is_local_socket(&self) -> bool {
        self.origin == Origin::LocalSocket
    }

    /// The client's IP address, for a TCP caller.
    pub fn remote_ip(&self) -> Option<std::net::IpAddr> {
        match self.origin {
            Origin::Remote(addr) => Some(addr.ip()),
            _ => None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Peer, Infallible> {
        // A router served some other way has no extension: treat the caller as anonymous.
        Ok(parts
            .extensions
            .get::<Peer>()
            .cloned()
            .unwrap_or_else(Peer::anonymous))
    }
}

/// Limits of a server. The defaults suit the control port.
///
/// # Who may hold a connection
///
/// Anyone who can reach the control port can open connections, and a client without a
/// certificate may legitimately send a request (fetching the CA, joining). So that such
/// clients cannot hold every slot, a connection goes through three budgets, each with
/// its own count ([`Admission`] makes the decisions):
///
/// - **Handshakes** ([`max_handshakes`](Self::max_handshakes)): a connection in the TLS
///   handshake. When the budget is full, a new connection evicts the longest-waiting one
///   that has sent nothing for [`SILENT_GRACE`], and only when there is none, the longest
///   waiting of all. A real client speaks at once, so connections opened and left silent
///   cannot push it out; clients that stall in the middle of the handshake delay a real
///   client by at most the time it takes `max_handshakes` other connections to arrive;
///   none lasts longer than [`handshake_timeout`](Self::handshake_timeout).
/// - **Anonymous** ([`max_anonymous`](Self::max_anonymous), at most
///   [`max_anonymous_per_ip`](Self::max_anonymous_per_ip) per client address): a
///   connection without a client certificate. They may only fetch the CA and join, so a
///   small budget is plenty, and their requests must be read within
///   [`anonymous_read_timeout`](Self::anonymous_read_timeout).
/// - **Certified** ([`max_connections`](Self::max_connections)): a connection with a
///   certificate of this swarm's CA, at most [`max_per_worker`](Self::max_per_worker)
///   per worker certificate and [`max_per_manager`](Self::max_per_manager) per manager
///   certificate (managers relay and replicate, so they get more); administrators share
///   the whole budget.
///
/// A connection that finishes its handshake without room in its budget leaves the
/// handshake budget at once (so refused clients never push real ones out of it) and is
/// answered `503 Service Unavailable` with Docker's `{"message": ...}` body within
/// [`REFUSAL_TIMEOUT`], then closed; it never waits in the server. At most
/// [`MAX_REFUSING`] are being answered at a time; beyond that a refused connection is
/// closed without an answer, which keeps the descriptors in use bounded by the sum of
/// the budgets. Upgraded connections leave the
/// budgets: what they do is up to the handler that upgraded them (an administrator's).
///
/// # How long a request may take to arrive
///
/// The request line and headers must arrive within the class's header timeout (which
/// also bounds an idle keep-alive connection), and the body within the class's body
/// timeout counted from the end of the headers; a body still incomplete then fails (the
/// handler sees a body error and answers 400) and the connection is closed. Responses are
/// not bounded: a long poll is a slow response to a quick request, and an upgraded
/// connection (attach, exec) is no longer a request.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A client that has not finished the TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// Connections in the TLS handshake at once; a new one evicts the oldest.
    pub max_handshakes: usize,
    /// Connections with a client certificate served at once.
    pub max_connections: usize,
    /// Connections of one worker certificate served at once.
    pub max_per_worker: usize,
    /// Connections of one manager certificate served at once.
    pub max_per_manager: usize,
    /// Connections without a client certificate served at once.
    pub max_anonymous: usize,
    /// Connections without a client certificate from one IP address served at once.
    pub max_anonymous_per_ip: usize,
    /// After shutdown, how long in-flight requests may take before their connections are
    /// cut.
    pub shutdown_grace: Duration,
    /// How long a client with a certificate may take to send request headers, which also
    /// bounds how long its idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// How long a client with a certificate may take to send a request body, from the
    /// end of its headers.
    pub body_read_timeout: Duration,
    /// How long a client without a certificate may take to send request headers (or to
    /// send the next request on a kept-alive connection), and then again its body.
    pub anonymous_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 256,
            max_connections: 1024,
            max_per_worker: 64,
            max_per_manager: 512,
            max_anonymous: 64,
            max_anonymous_per_ip: 16,
            shutdown_grace: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            anonymous_read_timeout: Duration::from_secs(5),
        }
    }
}

/// Who holds a served connection, as far as the budgets are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Caller {
    /// No client certificate (the address, when the connection has one).
    Anonymous(Option<IpAddr>),
    /// A certificate of this swarm's CA.
    Certified { role: Role, name: String },
}

impl Caller {
    fn of(peer: &Peer) -> Caller {
        match &peer.identity {
            Some(identity) => Caller::Certified {
                role: identity.role,
                name: identity.node_id.clone(),
            },
            None => Caller::Anonymous(peer.remote_ip()),
        }
    }
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The budget of its class is full.
    Full,
    /// Its address (anonymous) or certificate (node) holds its share already.
    OwnShare,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::Full => "the server has too many open connections: try again later",
            Refusal::OwnShare => {
                "too many open connections from this client: close some and try again"
            }
        }
    }
}

/// The connection budgets of [`ServeOptions`] and what is using them: the decisions
/// only, without sockets or clocks, so the policy is tested on its own.
#[derive(Debug)]
struct Admission {
    limits: ServeOptions,
    /// Connections in the handshake that have sent nothing yet, by arrival order (ids
    /// grow), with their arrival: the first to go when the budget is full, once silent
    /// for [`SILENT_GRACE`].
    silent: BTreeMap<u64, Instant>,
    /// Connections in the handshake that have sent their first bytes.
    handshakes: BTreeSet<u64>,
    anonymous: usize,
    anonymous_by_ip: HashMap<IpAddr, usize>,
    certified: usize,
    by_identity: HashMap<(Role, String), usize>,
}

impl Admission {
    fn new(limits: ServeOptions) -> Admission {
        Admission {
            limits,
            silent: BTreeMap::new(),
            handshakes: BTreeSet::new(),
            anonymous: 0,
            anonymous_by_ip: HashMap::new(),
            certified: 0,
            by_identity: HashMap::new(),
        }
    }

    /// Connection `id` arrives at `now`, silent so far; returns the one it evicts if the
    /// budget was full: the longest-waiting one silent for [`SILENT_GRACE`], else the
    /// longest waiting of all. (A connection just accepted is silent until its first
    /// bytes arrive: the grace keeps a real client's first milliseconds safe.)
    fn start_handshake(&mut self, id: u64, now: Instant) -> Option<u64> {
        let full = self.silent.len() + self.handshakes.len() >= self.limits.max_handshakes.max(1);
        let evicted = if full {
            let stale_silent = self
                .silent
                .first_key_value()
                .filter(|(_, since)| now.saturating_duration_since(**since) >= SILENT_GRACE)
                .map(|(id, _)| *id);
            let oldest = match (self.silent.keys().next(), self.handshakes.first()) {
                (Some(a), Some(b)) => Some(*a.min(b)),
                (a, b) => a.or(b).copied(),
            };
            let victim = stale_silent.or(oldest);
            if let Some(v) = victim {
                self.end_handshake(v);
            }
            victim
        } else {
            None
        };
        self.silent.insert(id, now);
        evicted
    }

    /// Connection `id` has sent its first bytes: it is no longer among the first to go.
    fn heard_from(&mut self, id: u64) {
        if self.silent.remove(&id).is_some() {
            self.handshakes.insert(id);
        }
    }

    /// Connection `id` is out of the handshake (done, failed or evicted).
    fn end_handshake(&mut self, id: u64) {
        self.silent.remove(&id);
        self.handshakes.remove(&id);
    }

    /// Takes a slot for `caller`, or says why there is none.
    fn admit(&mut self, caller: &Caller) -> Result<(), Refusal> {
        match caller {
            Caller::Anonymous(ip) => {
                if self.anonymous >= self.limits.max_anonymous {
                    return Err(Refusal::Full);
                }
                if let Some(ip) = ip {
                    let held = self.anonymous_by_ip.entry(*ip).or_default();
                    if *held >= self.limits.max_anonymous_per_ip {
                        return Err(Refusal::OwnShare);
                    }
                    *held += 1;
                }
                self.anonymous += 1;
            }
            Caller::Certified { role, name } => {
                if self.certified >= self.limits.max_connections.max(1) {
                    return Err(Refusal::Full);
                }
                let share = match role {
                    Role::Worker => self.limits.max_per_worker,
                    Role::Manager => self.limits.max_per_manager,
                    Role::Admin => self.limits.max_connections,
                };
                let held = self.by_identity.entry((*role, name.clone())).or_default();
                if *held >= share {
                    return Err(Refusal::OwnShare);
                }
                *held += 1;
                self.certified += 1;
            }
        }
        Ok(())
    }

    /// Gives back the slot [`admit`](Self::admit) gave `caller`.
    fn release(&mut self, caller: &Caller) {
        fn down<K: Eq + std::hash::Hash>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        match caller {
            Caller::Anonymous(ip) => {
                self.anonymous -= 1;
                if let Some(ip) = ip {
                    down(&mut self.anonymous_by_ip, ip);
                }
            }
            Caller::Certified { role, name } => {
                self.certified -= 1;
                down(&mut self.by_identity, &(*role, name.clone()));
            }
        }
    }
}

/// The admission state shared by the accept loop and the connections, with the handles
/// that evict a connection from the handshake budget (dropping one evicts).
#[derive(Debug)]
struct Gate {
    admission: Admission,
    evict: HashMap<u64, oneshot::Sender<()>>,
    /// Refused connections being answered now.
    refusing: usize,
}

type SharedGate = Arc<Mutex<Gate>>;

fn lock(gate: &SharedGate) -> std::sync::MutexGuard<'_, Gate> {
    // The state is counts only, consistent after every call: a panic elsewhere
    // does not make it unusable.
    gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a Docker Engine that runs `docker swarm join` against a swarm-node manager is
/// told (as a gRPC status, which the engine prints).
pub const GRPC_REFUSAL: &str = "this is a swarmup cluster (swarm-node), which a Docker Engine cannot join with `docker swarm join`: grow it with `swarmup create --nodes N`, or run `swarm-node join` on the new machine";
/// How long a refused gRPC client is served.
const GRPC_REFUSAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Answers every gRPC call on an HTTP/2 connection with FAILED_PRECONDITION and
/// [`GRPC_REFUSAL`] (a trailers-only response, as gRPC allows).
async fn refuse_grpc<IO>(io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(|_request: http::Request<Incoming>| {
        let message: String = GRPC_REFUSAL
            .bytes()
            .map(|b| match b {
                b' '..=b'~' if b != b'%' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let response = http::Response::builder()
            .status(http::StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            // 9: FAILED_PRECONDITION.
            .header("grpc-status", "9")
            .header("grpc-message", message)
            .body(axum::body::Body::empty());
        std::future::ready(response)
    });
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// How long a connection may stay silent before it is the first to be evicted from a
/// full handshake budget.
pub const SILENT_GRACE: Duration = Duration::from_millis(250);

/// Refused connections being answered at once; more are closed without an answer.
pub const MAX_REFUSING: usize = 64;
/// How long a refused client has to send its request and read the 503.
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Counts refusals being answered; gives the place back when dropped.
struct RefusingSlot(SharedGate);

impl Drop for RefusingSlot {
    fn drop(&mut self) {
        lock(&self.0).refusing -= 1;
    }
}

/// Holds a handshake slot; gives it back when dropped.
struct HandshakeSlot {
    gate: SharedGate,
    id: u64,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut gate = lock(&self.gate);
        gate.admission.end_handshake(self.id);
        gate.evict.remove(&self.id);
    }
}

/// Holds a connection slot; gives it back when dropped.
struct ConnectionSlot {
    gate: SharedGate,
    caller: Caller,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        lock(&self.gate).admission.release(&self.caller);
    }
}

/// How long a connection's requests may take to arrive (see [`ServeOptions`]).
#[derive(Debug, Clone, Copy)]
struct ReadTimeouts {
    header: Duration,
    body: Duration,
}

impl ReadTimeouts {
    fn for_caller(caller: &Caller, options: &ServeOptions) -> ReadTimeouts {
        match caller {
            Caller::Anonymous(_) => ReadTimeouts {
                header: options.anonymous_read_timeout,
                body: options.anonymous_read_timeout,
            },
            Caller::Certified { .. } => ReadTimeouts {
                header: options.header_read_timeout,
                body: options.body_read_timeout,
            },
        }
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, with
/// [`ServeOptions::default`]. See [`serve_tls_with`].
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: TlsAcceptorHandle,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_tls_with(listener, tls, app, shutdown, ServeOptions::default()).await
}

/// Serves `app` over TLS on `listener`: HTTP/1.1 with keep-alive (and upgrades), each
/// request carrying the [`Peer`] from the client certificate. The TLS configuration is
/// read from `tls` for every new connection, so it can change while serving.
///
/// When `shutdown` completes the listener stops accepting, open connections finish
/// their in-flight requests within [`ServeOptions::shutdown_grace`], and the function
/// returns. Accept errors (such as running out of file descriptors) are logged and
/// retried with a growing pause; they never end the server. Connections are admitted
/// and their requests timed as [`ServeOptions`] describes.
pub async fn serve_tls_with(
    listener: tokio::net::TcpListener,
    tls: TlsAcceptorHandle,
    app: Router,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) -> io::Result<()> {
    let handshake = move |stream: tokio::net::TcpStream, remote: String| {
        let acceptor = tls.acceptor();
        async move {
            let _ = stream.set_nodelay(true);
            // The serve loop bounds how long this may take.
            let tls_stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(%remote, error = %e, "tls handshake failed");
                    return None;
                }
            };
            // Only a gRPC client offers nothing but HTTP/2: a Docker Engine running the
            // `docker swarm join` a user copied. It gets a status it prints, saying what
            // to do instead.
            if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
                debug!(%remote, "a gRPC client (a Docker Engine joining?): refusing");
                let _ = tokio::time::timeout(GRPC_REFUSAL_TIMEOUT, refuse_grpc(tls_stream)).await;
                return None;
            }
            let peer = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| match PeerIdentity::from_der(der) {
                    Ok(identity) => Some(identity),
                    Err(e) => {
                        // Signed by our CA but not naming a role: grant nothing.
                        warn!(%remote, error = %e, "client certificate has no usable identity");
                        None
                    }
                });
            let origin = remote
                .parse()
                .map(Origin::Remote)
                .unwrap_or(Origin::Unknown);
            Some((
                tls_stream,
                Peer {
                    identity: peer,
                    origin,
                },
            ))
        }
    };
    serve_loop(TcpAccept(listener), app, shutdown, options, handshake).await
}

/// Serves `app` on a unix socket until `shutdown` completes, with
/// [`ServeOptions::default`]. Every request carries
/// the identity [`PeerIdentity::local_admin`] and [`Origin::LocalSocket`]: like `/var/run/docker.sock`, the socket's
/// file mode is what restricts it to root, so the caller must create it so.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_unix_with(listener, app, shutdown, ServeOptions::default()).await
}

/// As [`serve_unix`], with limits given.
pub async fn serve_unix_with(
    listener: tokio::net::UnixListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) -> io::Result<()> {
    let handshake = |stream: tokio::net::UnixStream, _remote: String| async move {
        Some((
            stream,
            Peer {
                identity: Some(PeerIdentity::local_admin()),
                origin: Origin::LocalSocket,
            },
        ))
    };
    serve_loop(UnixAccept(listener), app, shutdown, options, handshake).await
}

/// A listener the serve loop can accept from; the string names the remote end in logs.
trait Accept {
    type Stream: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
    /// Resolves once the client has sent something (or the connection failed).
    fn readable(stream: &Self::Stream) -> impl Future<Output = io::Result<()>> + Send;
}

struct TcpAccept(tokio::net::TcpListener);

impl Accept for TcpAccept {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Stream, String)> {
        let (stream, addr) = self.0.accept().await?;
        Ok((stream, addr.to_string()))
    }
    async fn readable(stream: &Self::Stream) -> io::Result<()> {
        stream.readable().await
    }
}

struct UnixAccept(tokio::net::UnixListener);

impl Accept for UnixAccept {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<(Self::Stream, String)> {
        let (stream, _) = self.0.accept().await?;
        Ok((stream, "unix socket".to_owned()))
    }
    async fn readable(stream: &Self::Stream) -> io::Result<()> {
        stream.readable().await
    }
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

async fn serve_loop<L, H, HF, IO>(
    listener: L,
    app: Router,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
    handshake: H,
) -> io::Result<()>
where
    L: Accept,
    H: Fn(L::Stream, String) -> HF + Clone + Send + 'static,
    HF: Future<Output = Option<(IO, Peer)>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let gate: SharedGate = Arc::new(Mutex::new(Gate {
        admission: Admission::new(options.clone()),
        evict: HashMap::new(),
        refusing: 0,
    }));
    let options = Arc::new(options);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut next_id = 0u64;
    tokio::pin!(shutdown);

    loop {
        while connections.try_join_next().is_some() {}

        // Accepting never waits for a slot: every budget is enforced once the client is
        // known, so the listen backlog cannot fill up with clients nobody looks at.
        let (stream, remote) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    accepted
                }
                Err(e) => {
                    warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };

        let id = next_id;
        next_id += 1;
        let (evict_tx, mut evicted) = oneshot::channel::<()>();
        {
            let mut g = lock(&gate);
            if let Some(oldest) = g.admission.start_handshake(id, Instant::now()) {
                // Dropping its sender wakes the evicted connection.
                g.evict.remove(&oldest);
            }
            g.evict.insert(id, evict_tx);
        }
        let handshake_slot = HandshakeSlot {
            gate: gate.clone(),
            id,
        };

        let handshake = handshake.clone();
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let options = options.clone();
        let gate = gate.clone();
        let heard = gate.clone();
        connections.spawn(async move {
            let shaking = remote.clone();
            let handshake = async move {
                L::readable(&stream).await.ok()?;
                lock(&heard).admission.heard_from(id);
                handshake(stream, shaking).await
            };
            let ready = tokio::select! {
                ready = tokio::time::timeout(options.handshake_timeout, handshake) => match ready {
                    Ok(ready) => ready,
                    Err(_) => {
                        debug!(%remote, "handshake timed out");
                        None
                    }
                },
                _ = &mut evicted => {
                    debug!(%remote, "handshake evicted by a newer connection");
                    None
                }
                () = stopped(&mut stop) => None,
            };
            let Some((io, peer)) = ready else { return };
            let caller = Caller::of(&peer);
            let admitted = lock(&gate).admission.admit(&caller);
            match admitted {
                Ok(()) => {
                    drop(handshake_slot);
                    let _slot = ConnectionSlot {
                        gate,
                        caller: caller.clone(),
                    };
                    let timeouts = ReadTimeouts::for_caller(&caller, &options);
                    serve_connection(io, peer, app, stop, timeouts, &remote).await;
                }
                Err(refusal) => {
                    debug!(%remote, ?caller, ?refusal, "no connection slot: refusing");
                    drop(handshake_slot);
                    let slot = {
                        let mut g = lock(&gate);
                        (g.refusing < MAX_REFUSING).then(|| {
                            g.refusing += 1;
                            RefusingSlot(gate.clone())
                        })
                    };
                    if let Some(_slot) = slot {
                        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse(io, refusal)).await;
                    }
                }
            }
        });
    }

    drop(listener);
    let _ = stop_tx.send(true);
    let open = connections.len();
    if open > 0 {
        debug!(open, "waiting for open connections to finish");
    }
    let drained = tokio::time::timeout(options.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            cut = connections.len(),
            grace_secs = options.shutdown_grace.as_secs(),
            "connections still busy after the shutdown grace period: closing them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Answers the first request of a connection that got no slot with 503 and Docker's
/// error body, then closes it.
async fn refuse<IO>(io: IO, refusal: Refusal)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |_request: http::Request<Incoming>| {
        let body = format!(r#"{{"message":"{}"}}"#, refusal.message());
        let response = http::Response::builder()
            .status(http::StatusCode::SERVICE_UNAVAILABLE)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONNECTION, "close")
            .body(axum::body::Body::from(body));
        std::future::ready(response)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn serve_connection<IO>(
    io: IO,
    peer: Peer,
    app: Router,
    mut stop: watch::Receiver<bool>,
    timeouts: ReadTimeouts,
    remote: &str,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(peer.clone());
        let mut router = app.clone();
        async move {
            std::future::poll_fn(|cx| {
                <Router as Service<http::Request<axum::body::Body>>>::poll_ready(&mut router, cx)
            })
            .await?;
            let request = request.map(|body| {
                if body.is_end_stream() {
                    axum::body::Body::new(body)
                } else {
                    axum::body::Body::new(DeadlineBody::new(body, timeouts.body))
                }
            });
            router.call(request).await
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(&mut stop) => {
            // Finish the request in flight, then close instead of waiting for another.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(%remote, error = %e, "connection ended with an error");
    }
}

/// A request body that fails once its deadline passes before it has all arrived. The
/// handler then answers with an error and the server closes the connection, since the
/// rest of the body was never read.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

/// The error of a request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

impl hyper::body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves once shutdown has been signalled (or the signal is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send: drop it here, before any other await.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServeOptions {
        ServeOptions {
            max_handshakes: 2,
            max_connections: 6,
            max_per_worker: 2,
            max_per_manager: 4,
            max_anonymous: 3,
            max_anonymous_per_ip: 2,
            ..ServeOptions::default()
        }
    }

    fn anonymous(last: u8) -> Caller {
        Caller::Anonymous(Some(IpAddr::from([10, 0, 0, last])))
    }

    fn node(role: Role, name: &str) -> Caller {
        Caller::Certified {
            role,
            name: name.into(),
        }
    }

    #[test]
    fn a_new_handshake_evicts_the_longest_waiting_when_the_budget_is_full() {
        let t = Instant::now();
        let mut a = Admission::new(limits());
        assert_eq!(a.start_handshake(1, t), None);
        assert_eq!(a.start_handshake(2, t), None);
        assert_eq!(a.start_handshake(3, t), Some(1));
        assert_eq!(a.start_handshake(4, t), Some(2));
        // A finished handshake makes room without evicting anyone.
        a.end_handshake(3);
        assert_eq!(a.start_handshake(5, t), None);
        assert_eq!(a.start_handshake(6, t), Some(4));
        // Ending an evicted handshake again changes nothing.
        a.end_handshake(1);
        assert_eq!(a.silent.keys().copied().collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn long_silent_connections_are_evicted_before_ones_that_spoke() {
        let t = Instant::now();
        let later = t + SILENT_GRACE;
        let mut a = Admission::new(limits());
        assert_eq!(a.start_handshake(1, t), None);
        a.heard_from(1);
        assert_eq!(a.start_handshake(2, t), None);
        // 1 spoke, 2 has been silent for the grace: a newcomer pushes out 2 although 1
        // is older.
        assert_eq!(a.start_handshake(3, later), Some(2));
        // 3 has just arrived: still in its grace, so the oldest of all goes.
        assert_eq!(a.start_handshake(4, later), Some(1));
        a.heard_from(4);
        assert_eq!(a.start_handshake(5, later + SILENT_GRACE), Some(3));
    }

    #[test]
    fn anonymous_connections_have_a_small_budget_and_a_share_per_address() {
        let mut a = Admission::new(limits());
        assert_eq!(a.admit(&anonymous(1)), Ok(()));
        assert_eq!(a.admit(&anonymous(1)), Ok(()));
        assert_eq!(a.admit(&anonymous(1)), Err(Refusal::OwnShare));
        assert_eq!(a.admit(&anonymous(2)), Ok(()));
        assert_eq!(a.admit(&anonymous(3)), Err(Refusal::Full));
        a.release(&anonymous(1));
        assert_eq!(a.admit(&anonymous(3)), Ok(()));
        assert_eq!(a.admit(&anonymous(1)), Err(Refusal::Full));
        // Certified callers do not draw on the anonymous budget.
        assert_eq!(a.admit(&node(Role::Admin, "operator")), Ok(()));
    }

    #[test]
    fn an_anonymous_flood_leaves_the_certified_budget_whole() {
        let mut a = Admission::new(limits());
        let refused = (0..1000)
            .filter(|i| a.admit(&anonymous((i % 200) as u8)).is_err())
            .count();
        assert_eq!(refused, 1000 - 3);
        for _ in 0..6 {
            assert_eq!(a.admit(&node(Role::Admin, "operator")), Ok(()));
        }
        assert_eq!(a.admit(&node(Role::Admin, "operator")), Err(Refusal::Full));
    }

    #[test]
    fn one_node_certificate_holds_only_its_share() {
        let mut a = Admission::new(limits());
        assert_eq!(a.admit(&node(Role::Worker, "w1")), Ok(()));
        assert_eq!(a.admit(&node(Role::Worker, "w1")), Ok(()));
        assert_eq!(a.admit(&node(Role::Worker, "w1")), Err(Refusal::OwnShare));
        assert_eq!(a.admit(&node(Role::Worker, "w2")), Ok(()));
        // Managers get more; their share is counted apart from a worker of the same name.
        for _ in 0..3 {
            assert_eq!(a.admit(&node(Role::Manager, "w1")), Ok(()));
        }
        assert_eq!(a.admit(&node(Role::Admin, "operator")), Err(Refusal::Full));
        a.release(&node(Role::Worker, "w1"));
        assert_eq!(a.admit(&node(Role::Admin, "operator")), Ok(()));
        assert_eq!(a.admit(&node(Role::Worker, "w1")), Err(Refusal::Full));
    }

    #[test]
    fn released_slots_leave_no_trace() {
        let mut a = Admission::new(limits());
        let callers = [
            anonymous(1),
            node(Role::Worker, "w1"),
            Caller::Anonymous(None),
        ];
        for c in &callers {
            a.admit(c).unwrap();
        }
        for c in &callers {
            a.release(c);
        }
        assert_eq!((a.anonymous, a.certified), (0, 0));
        assert!(a.anonymous_by_ip.is_empty() && a.by_identity.is_empty());
    }

    #[test]
    fn anonymous_callers_get_the_short_read_timeouts() {
        let options = ServeOptions::default();
        let t = ReadTimeouts::for_caller(&anonymous(1), &options);
        assert_eq!(
            (t.header, t.body),
            (
                options.anonymous_read_timeout,
                options.anonymous_read_timeout
            )
        );
        let t = ReadTimeouts::for_caller(&node(Role::Worker, "w1"), &options);
        assert_eq!(
            (t.header, t.body),
            (options.header_read_timeout, options.body_read_timeout)
        );
    }
}
