//! A live gateway session on loopback, for the tests and fuzz targets that attack the whole
//! receive path: a real `Gateway` on a real UDP socket with a client connected through netcode
//! and renet, and the means to send, from that client's own address, any bytes at all, any
//! payload netcode encrypts for it, or a real input.
//!
//! Invariant it lets a test check: whatever arrives from a session's address, the gateway does
//! not panic, the session stays connected, and its next real input is taken.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use renet::RenetClient;
use renetcode::{ClientAuthentication, NetcodeClient};

use super::gateway::{bind_endpoints, connection_config, unix_now, Gateway};
use super::wire::{self, ClientMsg, INPUT_CHANNEL};
use super::Seats;
use crate::protocol::Action;
use crate::world::EntityId;

/// The key the session's gateway and tokens are signed with.
pub const KEY: [u8; 32] = [0x5a; 32];

/// How long a connection may take on loopback before the harness gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Session {
    pub gateway: Gateway,
    pub server_addr: SocketAddr,
    client: Client,
    seq: u32,
}

/// One netcode client on its own socket.
pub struct Client {
    pub socket: UdpSocket,
    pub netcode: NetcodeClient,
    pub renet: RenetClient,
    /// The last datagram it sent, for a replay.
    pub last_sent: Vec<u8>,
    /// Netcode and renet keep the real time the gateway keeps: their time-outs are real.
    last_pump: Instant,
}

impl Client {
    /// A client for `seat` of the gateway at `server`, not yet connected.
    pub fn new(server: SocketAddr, seat: u64) -> std::io::Result<Self> {
        Self::with_key(server, seat, &KEY)
    }

    /// A client whose token is signed with `key`, not yet connected.
    pub fn with_key(server: SocketAddr, seat: u64, key: &[u8; 32]) -> std::io::Result<Self> {
        // Made the way a login service makes them (`shardmesh token`), so every session here
        // shows such a token connects.
        let token = super::key::connect_token(key, seat, server, 60, unix_now()).map_err(std::io::Error::other)?;
        Self::with_token(token)
    }

    /// A client with a token made elsewhere, not yet connected.
    pub fn with_token(token: super::key::ConnectToken) -> std::io::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_nonblocking(true)?;
        let netcode = NetcodeClient::new(unix_now(), ClientAuthentication::Secure { connect_token: token })
            .map_err(std::io::Error::other)?;
        let renet = RenetClient::new(connection_config());
        Ok(Self { socket, netcode, renet, last_sent: Vec::new(), last_pump: Instant::now() })
    }

    /// A client of the gateway at `server` with a token signed with `key`, connected (or an
    /// error after `CONNECT_TIMEOUT`).
    pub fn connect(server: SocketAddr, seat: u64, key: &[u8; 32]) -> std::io::Result<Self> {
        let mut client = Self::with_key(server, seat, key)?;
        let began = Instant::now();
        while !client.netcode.is_connected() {
            if began.elapsed() > CONNECT_TIMEOUT {
                return Err(std::io::Error::other("the client never connected"));
            }
            client.pump();
            std::thread::sleep(Duration::from_millis(10));
        }
        client.renet.set_connected();
        Ok(client)
    }

    /// Any bytes as an input message, sent at once.
    pub fn send(&mut self, message: Vec<u8>) {
        self.renet.send_message(INPUT_CHANNEL, message);
        self.pump();
    }

    /// Says goodbye, as a client that quits does: the gateway ends the connection at once (its
    /// account logs out) rather than when it times out. Sent a few times, as netcode's datagrams
    /// may be lost.
    pub fn disconnect(&mut self) {
        for _ in 0..3 {
            if let Ok((to, packet)) = self.netcode.disconnect() {
                let _ = self.socket.send_to(packet, to);
            }
        }
    }

    /// Reads what the gateway sent, keeps netcode's timers, and sends what renet queued.
    pub fn pump(&mut self) {
        let mut buffer = [0u8; 2048];
        while let Ok((len, _)) = self.socket.recv_from(&mut buffer) {
            if let Some(payload) = self.netcode.process_packet(&mut buffer[..len]) {
                self.renet.process_packet(payload);
            }
        }
        let dt = self.last_pump.elapsed();
        self.last_pump = Instant::now();
        if let Some((packet, to)) = self.netcode.update(dt) {
            let _ = self.socket.send_to(packet, to);
        }
        if self.netcode.is_connected() {
            self.renet.set_connected();
        }
        self.renet.update(dt);
        for packet in self.renet.get_packets_to_send() {
            if let Ok((to, bytes)) = self.netcode.generate_payload_packet(&packet) {
                self.last_sent.clear();
                self.last_sent.extend_from_slice(bytes);
                let _ = self.socket.send_to(bytes, to);
            }
        }
    }
}

impl Session {
    /// A gateway on a loopback port with `seats` players, and a client connected to seat 0.
    pub fn connect(seats: usize) -> std::io::Result<Self> {
        let sockets = bind_endpoints("127.0.0.1:0".parse().expect("valid"), 1)?;
        let server_addr = sockets[0].local_addr()?;
        let seats = Arc::new(Seats::new((0..seats as u64).map(|i| EntityId(1000 + i)).collect()));
        let gateway = Gateway::new(sockets, server_addr, KEY, false, 16_000, seats)?;
        let client = Client::new(server_addr, 0)?;
        let mut session = Self { gateway, server_addr, client, seq: 0 };
        let began = Instant::now();
        while !(session.client.netcode.is_connected() && session.gateway.stats.connected == 1) {
            if began.elapsed() > CONNECT_TIMEOUT {
                return Err(std::io::Error::other("the session never connected"));
            }
            session.client.pump();
            session.gateway.poll();
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(session)
    }

    /// A second client, with `token`, connected (or an error after `CONNECT_TIMEOUT`).
    pub fn connect_another(&mut self, token: super::key::ConnectToken) -> std::io::Result<Client> {
        let mut other = Client::with_token(token)?;
        let connected = self.gateway.stats.connected;
        let began = Instant::now();
        while !(other.netcode.is_connected() && self.gateway.stats.connected > connected) {
            if began.elapsed() > CONNECT_TIMEOUT {
                return Err(std::io::Error::other("the other client never connected"));
            }
            other.pump();
            self.client.pump();
            self.gateway.poll();
            std::thread::sleep(Duration::from_millis(2));
        }
        other.renet.set_connected();
        Ok(other)
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client.socket.local_addr().expect("bound")
    }

    /// Any bytes, from the session's own address.
    pub fn send_raw(&self, datagram: &[u8]) {
        let _ = self.client.socket.send_to(datagram, self.server_addr);
    }

    /// Any bytes as a renet packet, encrypted and authenticated by the session's netcode.
    pub fn send_payload(&mut self, payload: &[u8]) {
        if let Ok((to, bytes)) = self.client.netcode.generate_payload_packet(payload) {
            let _ = self.client.socket.send_to(bytes, to);
        }
    }

    /// The gateway takes in what arrived; returns the inputs it passed on.
    pub fn poll(&mut self) -> Vec<(EntityId, u32, Action)> {
        let inputs = self.gateway.poll();
        // An input the session's own payloads carried counts: the next real one numbers past it.
        self.seq = inputs.iter().map(|i| i.1).fold(self.seq, u32::max);
        inputs
    }

    /// Whether both ends still hold the connection.
    pub fn connected(&mut self) -> bool {
        self.client.pump();
        self.client.netcode.is_connected() && !self.client.renet.is_disconnected() && self.gateway.stats.connected == 1
    }

    /// Sends a real input; returns its number.
    pub fn send_input(&mut self) -> u32 {
        self.seq = self.seq.saturating_add(1);
        let msg = wire::encode(&ClientMsg::Input { seq: self.seq, action: Action::Move([0.0, 0.5, 0.0]) });
        self.client.renet.send_message(INPUT_CHANNEL, msg);
        self.client.pump();
        self.seq
    }

    /// Sends a real input and reports whether the gateway took it within a few polls.
    pub fn input_arrives(&mut self) -> bool {
        if self.seq == u32::MAX {
            // The session's own payloads used every number up.
            return true;
        }
        let seq = self.send_input();
        for _ in 0..20 {
            if self.poll().iter().any(|(_, s, _)| *s == seq) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }
}
