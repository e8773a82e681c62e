//! One libp2p swarm per process, owned by one event loop; everything else talks to it through
//! the cloneable [`Net`] handle and reads what happens from an [`Event`] channel.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, noise,
    ping, relay, request_response, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use market_protocol::{AccountId, Identity};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{Inbound, MarketCodec};
use crate::wire::{Reply, Request, PROTOCOL_NAME, TOPIC_HEADS, TOPIC_TASKS};

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The event loop has stopped.
    #[error("the network event loop has stopped")]
    Stopped,
    /// The request did not get a response.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// To whom.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// Building the swarm or listening failed.
    #[error("network setup: {0}")]
    Setup(String),
}

/// How a process joins the network.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on (`/ip4/127.0.0.1/tcp/0`, `/ip4/0.0.0.0/udp/0/quic-v1`, ...).
    pub listen: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Act as a relay for peers behind NAT (market nodes do).
    pub relay_server: bool,
    /// How long a request may wait for its response.
    pub request_timeout: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            mdns: false,
            relay_server: false,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// The behaviours every market peer runs.
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    rr: request_response::Behaviour<MarketCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    relay_client: relay::client::Behaviour,
    relay_server: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
}

/// Something the network loop reports.
// Requests dominate the traffic; boxing them would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// A peer asks something; answer through the responder (dropping it answers nothing and
    /// the peer's request times out).
    Request {
        /// Who asks (authenticated by the connection).
        peer: PeerId,
        /// What.
        request: Request,
        /// Where the answer goes.
        responder: Responder,
    },
    /// A first connection to `peer` opened.
    Connected {
        /// The peer.
        peer: PeerId,
    },
    /// The last connection to `peer` closed.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A peer sent something that does not decode (oversized or garbage); it has been banned.
    Misbehaved {
        /// The peer.
        peer: PeerId,
        /// What it did.
        reason: String,
    },
    /// A gossip message.
    Gossip {
        /// Topic name.
        topic: String,
        /// Who published it (the message is signed by that peer).
        source: Option<PeerId>,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// Now listening on an address.
    Listening {
        /// The address.
        addr: Multiaddr,
    },
    /// AutoNAT's view of this peer's reachability changed.
    Reachability {
        /// `public`, `private` or `unknown`.
        status: String,
    },
}

/// Answers one inbound request.
#[derive(Debug)]
pub struct Responder {
    channel: request_response::ResponseChannel<Reply>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Responder {
    /// Sends the reply.
    pub fn send(self, reply: Reply) {
        let _ = self.commands.send(Command::Respond {
            channel: self.channel,
            reply,
        });
    }
}

#[allow(clippy::large_enum_variant)] // as for Event
enum Command {
    Request {
        peer: PeerId,
        request: Request,
        done: oneshot::Sender<Result<Reply, NetError>>,
    },
    Respond {
        channel: request_response::ResponseChannel<Reply>,
        reply: Reply,
    },
    Dial(Multiaddr, oneshot::Sender<Result<PeerId, NetError>>),
    Listen(Multiaddr, oneshot::Sender<Result<(), NetError>>),
    Disconnect(PeerId),
    Ban(PeerId),
    Publish(&'static str, Vec<u8>),
    Addresses(oneshot::Sender<Vec<Multiaddr>>),
}

/// The handle to a running network loop.
#[derive(Debug, Clone)]
pub struct Net {
    commands: mpsc::UnboundedSender<Command>,
    peer_id: PeerId,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// The account behind a peer id (every market peer's id is its ed25519 account key).
pub fn account_of(peer: &PeerId) -> Option<AccountId> {
    AccountId::from_peer_id(peer).ok()
}

fn build_swarm(identity: &Identity, config: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let keypair = identity.to_libp2p_keypair();
    let request_timeout = config.request_timeout;
    let (mdns_on, relay_on) = (config.mdns, config.relay_server);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_quic()
        .with_dns()
        .map_err(|e| setup(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let gossip_config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                // Nothing is relayed before `crate::gossip::validate` accepts it.
                .validate_messages()
                .max_transmit_size(crate::gossip::MAX_GOSSIP_BYTES + 4096)
                .heartbeat_interval(Duration::from_secs(1))
                .build()?;
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )?;
            for topic in [TOPIC_TASKS, TOPIC_HEADS] {
                gossipsub.subscribe(&gossipsub::IdentTopic::new(topic))?;
            }
            // Bootstrap when peers are learnt (identify, mDNS), not on a timer that would only
            // warn while the routing table is still empty.
            let mut kad_config = kad::Config::new(StreamProtocol::new("/market/kad/1"));
            kad_config.set_periodic_bootstrap_interval(None);
            let kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad_config,
            );
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            let relay_server =
                relay_on.then(|| relay::Behaviour::new(peer_id, relay::Config::default()));
            Ok(Behaviour {
                rr: request_response::Behaviour::new(
                    [(
                        StreamProtocol::new(PROTOCOL_NAME),
                        request_response::ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(request_timeout)
                        .with_max_concurrent_streams(64),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/market/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new()),
                gossipsub,
                kad,
                mdns: mdns.into(),
                relay_client,
                relay_server: relay_server.into(),
                dcutr: dcutr::Behaviour::new(peer_id),
                autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
                blocked: allow_block_list::Behaviour::default(),
                // A participant needs one connection; these bound what a crowd of peers can
                // make a node hold.
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established_per_peer(Some(4))
                        .with_max_pending_incoming(Some(128))
                        .with_max_established_incoming(Some(4096)),
                ),
            })
        })
        .map_err(|e| setup(&e))?
        // Participants hold one long-lived connection to their node; it must not be closed
        // for being idle between tasks.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

impl Net {
    /// Builds the swarm, starts listening and spawns the event loop on the current tokio
    /// runtime. Returns the handle and the event stream.
    pub fn start(
        identity: &Identity,
        config: NetConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Event>), NetError> {
        let mut swarm = build_swarm(identity, &config)?;
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Setup(format!("listening on {addr}: {e}")))?;
        }
        let peer_id = *swarm.local_peer_id();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::unbounded_channel();
        let event_loop = EventLoop {
            swarm,
            commands: commands.clone(),
            command_rx,
            events,
            pending: HashMap::new(),
            dials: HashMap::new(),
            listening: Vec::new(),
            public: config.relay_server,
            strikes: Default::default(),
        };
        tokio::spawn(event_loop.run());
        Ok((Self { commands, peer_id }, event_rx))
    }

    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    fn send(&self, c: Command) -> Result<(), NetError> {
        self.commands.send(c).map_err(|_| NetError::Stopped)
    }

    /// Sends `request` to `peer` and waits for its reply.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Reply, NetError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::Request {
            peer,
            request,
            done,
        })?;
        wait.await.map_err(|_| NetError::Stopped)?
    }

    /// Dials `addr`; returns the peer once a connection is established (or the failure).
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::Dial(addr, done))?;
        wait.await.map_err(|_| NetError::Stopped)?
    }

    /// Starts listening on `addr` (for example a relay circuit address).
    pub async fn listen(&self, addr: Multiaddr) -> Result<(), NetError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::Listen(addr, done))?;
        wait.await.map_err(|_| NetError::Stopped)?
    }

    /// Closes every connection to `peer`.
    pub fn disconnect(&self, peer: PeerId) -> Result<(), NetError> {
        self.send(Command::Disconnect(peer))
    }

    /// Refuses and closes every connection to `peer`, now and later.
    pub fn ban(&self, peer: PeerId) -> Result<(), NetError> {
        self.send(Command::Ban(peer))
    }

    /// Publishes on a gossip topic ([`TOPIC_TASKS`] or [`TOPIC_HEADS`]).
    pub fn publish(&self, topic: &'static str, data: Vec<u8>) -> Result<(), NetError> {
        self.send(Command::Publish(topic, data))
    }

    /// The addresses this peer listens on, each ending in `/p2p/<peer id>`.
    pub async fn addresses(&self) -> Result<Vec<Multiaddr>, NetError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::Addresses(done))?;
        wait.await.map_err(|_| NetError::Stopped)
    }

    /// Waits (up to ten seconds) until at least one listen address is bound, and returns them.
    pub async fn wait_listening(&self) -> Result<Vec<Multiaddr>, NetError> {
        for _ in 0..200 {
            let addrs = self.addresses().await?;
            if !addrs.is_empty() {
                return Ok(addrs);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(NetError::Setup("no listen address came up".into()))
    }
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::UnboundedSender<Command>,
    command_rx: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    pending: HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<Reply, NetError>>>,
    dials: HashMap<libp2p::swarm::ConnectionId, oneshot::Sender<Result<PeerId, NetError>>>,
    listening: Vec<Multiaddr>,
    /// A node: its listen addresses are where the public reaches it, so they are its
    /// external addresses (the relay serves reservations only with some).
    public: bool,
    /// Peers that relayed invalid gossip.
    strikes: crate::gossip::Strikes,
}

impl EventLoop {
    async fn run(mut self) {
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm(event),
                command = self.command_rx.recv() => match command {
                    Some(c) => self.on_command(c),
                    // Every handle is gone, except the one this loop keeps for responders.
                    None => return,
                },
            }
            if self.events.is_closed() {
                // Nobody listens any more: the process is shutting this network down.
                return;
            }
        }
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Request {
                peer,
                request,
                done,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .rr
                    .send_request(&peer, Inbound::Request(request));
                self.pending.insert(id, done);
            }
            Command::Respond { channel, reply } => {
                let _ = self.swarm.behaviour_mut().rr.send_response(channel, reply);
            }
            Command::Dial(addr, done) => {
                let opts = libp2p::swarm::dial_opts::DialOpts::unknown_peer_id()
                    .address(addr)
                    .build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, done);
                    }
                    Err(e) => {
                        let _ = done.send(Err(NetError::Setup(e.to_string())));
                    }
                }
            }
            Command::Listen(addr, done) => {
                let r = self
                    .swarm
                    .listen_on(addr)
                    .map(|_| ())
                    .map_err(|e| NetError::Setup(e.to_string()));
                let _ = done.send(r);
            }
            Command::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Ban(peer) => {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
            Command::Publish(topic, data) => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(gossipsub::IdentTopic::new(topic), data)
                {
                    // No peer subscribed yet is normal on a fresh network.
                    tracing::debug!(topic, error = %e, "gossip publish");
                }
            }
            Command::Addresses(done) => {
                let me = self.swarm.local_peer_id().to_owned();
                let addrs = self
                    .listening
                    .iter()
                    .cloned()
                    .map(|a| a.with_p2p(me).unwrap_or_else(|a| a))
                    .collect();
                let _ = done.send(addrs);
            }
        }
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Rr(e)) => self.on_rr(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let topic = message.topic.into_string();
                let checked = crate::gossip::validate(&topic, message.source, &message.data);
                let acceptance = match &checked {
                    Ok(()) => gossipsub::MessageAcceptance::Accept,
                    Err(_) => gossipsub::MessageAcceptance::Reject,
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                match checked {
                    Ok(()) => self.emit(Event::Gossip {
                        topic,
                        source: message.source,
                        data: message.data,
                    }),
                    Err(e) => {
                        tracing::debug!(peer = %propagation_source, error = %e, "invalid gossip");
                        if self.strikes.strike(propagation_source) {
                            let reason = format!(
                                "relayed invalid gossip {} times: {e}",
                                crate::gossip::STRIKES
                            );
                            tracing::warn!(peer = %propagation_source, %reason, "banned");
                            self.swarm
                                .behaviour_mut()
                                .blocked
                                .block_peer(propagation_source);
                            self.emit(Event::Misbehaved {
                                peer: propagation_source,
                                reason,
                            });
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => self.emit(Event::Reachability {
                status: match new {
                    autonat::NatStatus::Public(_) => "public",
                    autonat::NatStatus::Private => "private",
                    autonat::NatStatus::Unknown => "unknown",
                }
                .into(),
            }),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(done) = self.dials.remove(&connection_id) {
                    let _ = done.send(Ok(peer_id));
                }
                if num_established.get() == 1 {
                    self.emit(Event::Connected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some(done) = self.dials.remove(&connection_id) {
                    let _ = done.send(Err(NetError::Setup(error.to_string())));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => self.emit(Event::Disconnected { peer: peer_id }),
            SwarmEvent::NewListenAddr { address, .. } => {
                if self.public {
                    self.swarm.add_external_address(address.clone());
                }
                self.listening.push(address.clone());
                self.emit(Event::Listening { addr: address })
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listening.retain(|a| *a != address);
            }
            _ => {}
        }
    }

    fn on_rr(&mut self, e: request_response::Event<Inbound, Reply>) {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: Inbound::Malformed(reason),
                    ..
                } => {
                    // Oversized or undecodable: the peer broke the protocol. Ban it; the node
                    // carries on with everyone else.
                    tracing::warn!(%peer, %reason, "peer sent a bad message; banned");
                    self.swarm.behaviour_mut().blocked.block_peer(peer);
                    self.emit(Event::Misbehaved { peer, reason });
                }
                request_response::Message::Request {
                    request: Inbound::Request(request),
                    channel,
                    ..
                } => self.emit(Event::Request {
                    peer,
                    request,
                    responder: Responder {
                        channel,
                        commands: self.commands.clone(),
                    },
                }),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(done) = self.pending.remove(&request_id) {
                        let _ = done.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(done) = self.pending.remove(&request_id) {
                    let _ = done.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}
