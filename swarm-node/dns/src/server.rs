//! The sockets side: hickory-server's listeners with a request handler that asks the
//! [`Zone`] and, for names we do not own, the upstreams.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::Record;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use rand::seq::SliceRandom;
use swarm_state::netmap::NetMap;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::upstream::{Forward, Transport, Upstreams};
use crate::zone::{Answer, Zone};
use crate::DnsError;

/// How many forwarded queries may wait on upstreams at once. Beyond that, queries for
/// unknown names are dropped without a reply: the client retries, and a flood cannot pile
/// up sockets and tasks.
pub const MAX_FORWARDS_IN_FLIGHT: usize = 256;
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Replies queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// The DNS server of one node; see the crate documentation for what it answers.
pub struct DnsServer {
    view: watch::Receiver<Arc<NetMap>>,
    forwarder: Arc<dyn Forward>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("netmap_index", &self.view.borrow().index)
            .field("forwarding", &self.forwarder.enabled())
            .finish()
    }
}

impl DnsServer {
    pub fn new(view: watch::Receiver<Arc<NetMap>>, upstreams: Upstreams) -> Self {
        Self::with_forwarder(view, upstreams)
    }

    /// Like [`DnsServer::new`] with any way of forwarding (tests use fakes).
    pub fn with_forwarder(view: watch::Receiver<Arc<NetMap>>, forwarder: impl Forward) -> Self {
        DnsServer {
            view,
            forwarder: Arc::new(forwarder),
        }
    }

    /// Serves until `shutdown` completes. Sockets are injected (tests bind port 0).
    ///
    /// Follows the network map while serving: a query sees the newest map indexed so far.
    /// Returns an error only when the listeners end without being asked to.
    pub async fn serve(
        mut self,
        udp: UdpSocket,
        tcp: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DnsError> {
        let first = Zone::from_netmap(&self.view.borrow_and_update());
        let (zone_tx, zone_rx) = watch::channel(Arc::new(first));
        let _follower = AbortOnDrop(tokio::spawn(follow(self.view, zone_tx)));

        let mut server = Server::new(Handler {
            zone: zone_rx,
            forwarder: self.forwarder,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS_IN_FLIGHT)),
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);

        let token = server.shutdown_token().clone();
        tokio::select! {
            ended = server.block_until_done() => {
                token.cancel();
                ended.map_err(DnsError::Server)?;
                // Listeners only end on their own when their socket fails.
                Err(DnsError::Server("listeners ended".into()))
            }
            () = shutdown => server.shutdown_gracefully().await.map_err(DnsError::Server),
        }
    }
}

/// Re-indexes each new network map. Ends when the map's sender or the server goes away.
async fn follow(mut view: watch::Receiver<Arc<NetMap>>, zone: watch::Sender<Arc<Zone>>) {
    while view.changed().await.is_ok() {
        let map = view.borrow_and_update().clone();
        if zone.send(Arc::new(Zone::from_netmap(&map))).is_err() {
            break;
        }
    }
}

/// Stops the map follower when `serve` returns or is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === impl Handler ===

struct Handler {
    zone: watch::Receiver<Arc<Zone>>,
    forwarder: Arc<dyn Forward>,
    forwards: Arc<Semaphore>,
}

#[async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        if request.metadata.op_code != OpCode::Query {
            return send_error(request, response, ResponseCode::NotImp).await;
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question: nobody sends that in practice.
            return send_error(request, response, ResponseCode::FormErr).await;
        };
        let query = info.query.original();
        let answer = self.zone.borrow().answer(request.src().ip(), query);
        match answer {
            Answer::Local(mut records) => {
                // Spread clients over dnsrr tasks the way Docker does.
                records.shuffle(&mut rand::thread_rng());
                let mut meta = Metadata::response_from_request(&request.metadata);
                meta.authoritative = true;
                meta.recursion_available = self.forwarder.enabled();
                meta.response_code = ResponseCode::NoError;
                send(request, response, meta, &records, &[], &[]).await
            }
            Answer::Refused => send_error(request, response, ResponseCode::Refused).await,
            Answer::Forward => self.forward(request, response).await,
        }
    }
}

impl Handler {
    async fn forward<R: ResponseHandler>(&self, request: &Request, response: R) -> ResponseInfo {
        if !self.forwarder.enabled() {
            return send_error(request, response, ResponseCode::Refused).await;
        }
        let Ok(_permit) = self.forwards.clone().try_acquire_owned() else {
            debug!(src = %request.src(), "too many forwarded queries in flight, dropping one");
            return failed_info(request);
        };
        let transport = match request.protocol() {
            Protocol::Udp => Transport::Udp,
            _ => Transport::Tcp,
        };
        match self.forwarder.forward(request.as_slice(), transport).await {
            Ok(reply) => send_forwarded(request, response, reply).await,
            Err(error) => {
                debug!(%error, "forwarding failed");
                send_error(request, response, ResponseCode::ServFail).await
            }
        }
    }
}

async fn send_forwarded<R: ResponseHandler>(
    request: &Request,
    response: R,
    reply: Message,
) -> ResponseInfo {
    let mut meta = reply.metadata;
    meta.id = request.metadata.id;
    meta.message_type = MessageType::Response;
    send(
        request,
        response,
        meta,
        &reply.answers,
        &reply.authorities,
        &reply.additionals,
    )
    .await
}

async fn send_error<R: ResponseHandler>(
    request: &Request,
    response: R,
    code: ResponseCode,
) -> ResponseInfo {
    let mut meta = Metadata::response_from_request(&request.metadata);
    meta.response_code = code;
    send(request, response, meta, &[], &[], &[]).await
}

/// Sends a reply to `request`. With EDNS in the request the reply carries EDNS too, sized
/// to what the client accepts (hickory truncates a UDP reply to that size and sets TC).
async fn send<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    meta: Metadata,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let edns = request.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(request.max_payload());
        edns
    });
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(edns) = &edns {
        builder.edns(edns);
    }
    let message = builder.build(
        meta,
        answers.iter(),
        authorities.iter(),
        std::iter::empty(),
        additionals.iter(),
    );
    match response.send_response(message).await {
        Ok(info) => info,
        Err(error) => {
            debug!(%error, src = %request.src(), "sending a dns reply failed");
            failed_info(request)
        }
    }
}

/// What the server logs for a request that got no reply.
fn failed_info(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}
