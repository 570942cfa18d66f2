//! Serving an axum application over mutual TLS (the control port) or a unix socket (the
//! local Docker API socket), with the caller's identity on every request.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::Router;
use http::request::Parts;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::Service;
use tracing::{debug, warn};

use crate::{PeerIdentity, TlsAcceptorHandle};

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
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A client that has not finished the TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// After shutdown, how long in-flight requests may take before their connections are
    /// cut.
    pub shutdown_grace: Duration,
    /// How long a client may take to send request headers, which also bounds how long
    /// an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(30),
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
/// retried with a growing pause; they never end the server.
pub async fn serve_tls_with(
    listener: tokio::net::TcpListener,
    tls: TlsAcceptorHandle,
    app: Router,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) -> io::Result<()> {
    let handshake_timeout = options.handshake_timeout;
    let handshake = move |stream: tokio::net::TcpStream, remote: String| {
        let acceptor = tls.acceptor();
        async move {
            let _ = stream.set_nodelay(true);
            let tls_stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%remote, error = %e, "tls handshake failed");
                        return None;
                    }
                    Err(_) => {
                        debug!(%remote, "tls handshake timed out");
                        return None;
                    }
                };
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
}

struct TcpAccept(tokio::net::TcpListener);

impl Accept for TcpAccept {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Stream, String)> {
        let (stream, addr) = self.0.accept().await?;
        Ok((stream, addr.to_string()))
    }
}

struct UnixAccept(tokio::net::UnixListener);

impl Accept for UnixAccept {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<(Self::Stream, String)> {
        let (stream, _) = self.0.accept().await?;
        Ok((stream, "unix socket".to_owned()))
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
    let limit = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    tokio::pin!(shutdown);

    loop {
        while connections.try_join_next().is_some() {}

        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = limit.clone().acquire_owned() => permit.expect("the connection semaphore is never closed"),
        };
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

        let handshake = handshake.clone();
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let header_read_timeout = options.header_read_timeout;
        connections.spawn(async move {
            let _permit = permit;
            let ready = tokio::select! {
                ready = handshake(stream, remote.clone()) => ready,
                () = stopped(&mut stop) => None,
            };
            let Some((io, peer)) = ready else { return };
            serve_connection(io, peer, app, stop, header_read_timeout, &remote).await;
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

async fn serve_connection<IO>(
    io: IO,
    peer: Peer,
    app: Router,
    mut stop: watch::Receiver<bool>,
    header_read_timeout: Duration,
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
            router.call(request.map(axum::body::Body::new)).await
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
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

/// Resolves once shutdown has been signalled (or the signal is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send: drop it here, before any other await.
    let _ = stop.wait_for(|stopped| *stopped).await;
}
