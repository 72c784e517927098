//! What the gateway and the bots share under renet: pacing renet's acknowledgement packets, and a
//! client transport (netcode over a UDP socket) that applies it.
//!
//! renet acknowledges every packet it receives, and it sends those acknowledgements as a packet
//! of their own with every batch, until the peer acknowledges that packet in turn. With a batch a
//! tick on each side, every datagram that carries data has an acknowledgement datagram beside it:
//! half the packets on the wire, each one a `sendto`, a `recvfrom`, a netcode encryption and a
//! decryption. shardmesh's channels are all unreliable and its updates carry their own
//! acknowledgement (`ClientMsg::Ack`), so renet's acknowledgements only feed its round-trip and
//! loss figures and let it forget what it sent; one a second does that.

use std::net::UdpSocket;
use std::time::Duration;

use renet::RenetClient;
use renetcode::{ClientAuthentication, NetcodeClient, NETCODE_MAX_PACKET_BYTES};

use super::guard;
pub use crate::limits::ACK_EVERY_US;
use crate::limits::{ticks_in, TICK_DURATION_US};
use crate::world::Tick;

/// The first byte of a renet packet that carries only acknowledgements (renet 2's wire format;
/// a test checks it against renet itself).
pub const RENET_ACK_PACKET: u8 = 4;

/// Lets one renet acknowledgement packet through every `ACK_EVERY_US` of game time; everything
/// else passes.
#[derive(Debug, Clone, Copy)]
pub struct AckPacer {
    next: Tick,
    /// Ticks between two acknowledgement packets.
    every: u64,
}

impl Default for AckPacer {
    /// A pacer for ticks of the default rate.
    fn default() -> Self {
        Self::new(TICK_DURATION_US)
    }
}

impl AckPacer {
    /// A pacer for ticks of `tick_us` each.
    pub fn new(tick_us: u64) -> Self {
        Self { next: Tick::ZERO, every: ticks_in(ACK_EVERY_US, tick_us) }
    }

    /// Ticks between two acknowledgement packets.
    pub fn every(&self) -> u64 {
        self.every
    }

    /// Whether `packet`, one of the packets renet gave to send at `tick`, goes out.
    pub fn pass(&mut self, packet: &[u8], tick: Tick) -> bool {
        if packet.first() != Some(&RENET_ACK_PACKET) {
            return true;
        }
        if tick < self.next {
            return false;
        }
        self.next = tick.after(self.every);
        true
    }
}

/// A client's netcode connection over its own UDP socket, carrying a renet client: what
/// renet_netcode's client transport does, with renet's acknowledgements paced.
pub struct ClientTransport {
    socket: UdpSocket,
    netcode: NetcodeClient,
    buffer: Box<[u8; NETCODE_MAX_PACKET_BYTES]>,
    acks: AckPacer,
    /// Datagrams dropped before netcode saw them (`guard`).
    pub refused: u64,
}

fn netcode_error(e: renetcode::NetcodeError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl ClientTransport {
    pub fn new(now: Duration, authentication: ClientAuthentication, socket: UdpSocket) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        let netcode = NetcodeClient::new(now, authentication).map_err(netcode_error)?;
        Ok(Self {
            socket,
            netcode,
            buffer: Box::new([0; NETCODE_MAX_PACKET_BYTES]),
            acks: AckPacer::default(),
            refused: 0,
        })
    }

    /// Advances netcode by `dt` and hands `client` what arrived. An error means the connection is
    /// over (refused, timed out, or disconnected by either side).
    pub fn update(&mut self, dt: Duration, client: &mut RenetClient) -> std::io::Result<()> {
        if let Some(reason) = self.netcode.disconnect_reason() {
            client.disconnect_due_to_transport();
            return Err(std::io::Error::other(format!("disconnected: {reason}")));
        }
        if let Some(reason) = client.disconnect_reason() {
            let (addr, packet) = self.netcode.disconnect().map_err(netcode_error)?;
            self.socket.send_to(packet, addr)?;
            return Err(std::io::Error::other(format!("disconnected: {reason}")));
        }
        if self.netcode.is_connected() {
            client.set_connected();
        } else if self.netcode.is_connecting() {
            client.set_connecting();
        }
        self.receive(client)?;
        if let Some((packet, addr)) = self.netcode.update(dt) {
            self.socket.send_to(packet, addr)?;
        }
        Ok(())
    }

    /// Hands `client` what arrived, and nothing else: between two `update`s, a client that reads
    /// more often than it ticks.
    pub fn receive(&mut self, client: &mut RenetClient) -> std::io::Result<()> {
        loop {
            let (len, addr) = match self.socket.recv_from(&mut self.buffer[..]) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                Err(e) => return Err(e),
            };
            if addr != self.netcode.server_addr() {
                continue;
            }
            // Whatever address it claims, a datagram renetcode would choke on never reaches it.
            if guard::datagram(&self.buffer[..len], guard::Peer::Server).is_err() {
                self.refused += 1;
                continue;
            }
            if let Some(payload) = self.netcode.process_packet(&mut self.buffer[..len]) {
                client.process_packet(payload);
            }
        }
        Ok(())
    }

    /// Sends what `client` has queued, as of the client's `tick` (which paces acknowledgements).
    pub fn send_packets(&mut self, client: &mut RenetClient, tick: Tick) -> std::io::Result<()> {
        if let Some(reason) = self.netcode.disconnect_reason() {
            return Err(std::io::Error::other(format!("disconnected: {reason}")));
        }
        for packet in client.get_packets_to_send() {
            if !self.acks.pass(&packet, tick) {
                continue;
            }
            let (addr, payload) = self.netcode.generate_payload_packet(&packet).map_err(netcode_error)?;
            self.socket.send_to(payload, addr)?;
        }
        Ok(())
    }

    /// Why netcode ended the connection, if it did.
    pub fn disconnect_reason(&self) -> Option<renetcode::DisconnectReason> {
        self.netcode.disconnect_reason()
    }

    /// Tells the server this client is leaving, at once.
    pub fn disconnect(&mut self) {
        if self.netcode.is_disconnected() {
            return;
        }
        if let Ok((addr, packet)) = self.netcode.disconnect() {
            let _ = self.socket.send_to(packet, addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::gateway::connection_config;
    use crate::net::wire::{INPUT_CHANNEL, UPDATE_CHANNEL};

    /// A client and a server connection exchanging one message each way a tick, each side
    /// pacing its acknowledgements (or not). Returns the packets sent, and the largest packet
    /// seen that carried only acknowledgements.
    fn exchange(ticks: u64, paced: bool) -> (u64, usize) {
        let mut client = RenetClient::new(connection_config());
        let mut server = renet::RenetServer::new(connection_config());
        server.add_connection(1);
        client.set_connected();
        let (mut client_acks, mut server_acks) = (AckPacer::default(), AckPacer::default());
        let (mut sent, mut largest_ack) = (0, 0);
        let dt = Duration::from_millis(33);
        for tick in 1..=ticks {
            client.update(dt);
            server.update(dt);
            client.send_message(INPUT_CHANNEL, vec![1u8; 20]);
            server.send_message(1, UPDATE_CHANNEL, vec![2u8; 200]);
            let mut keep = |packet: &[u8], pacer: &mut AckPacer| {
                if packet[0] == RENET_ACK_PACKET {
                    largest_ack = largest_ack.max(packet.len());
                }
                let pass = !paced || pacer.pass(packet, Tick(tick));
                sent += pass as u64;
                pass
            };
            for packet in client.get_packets_to_send() {
                if keep(&packet, &mut client_acks) {
                    server.process_packet_from(&packet, 1).expect("connected");
                }
            }
            for packet in server.get_packets_to_send(1).expect("connected") {
                if keep(&packet, &mut server_acks) {
                    client.process_packet(&packet);
                }
            }
            assert!(client.receive_message(UPDATE_CHANNEL).is_some(), "every update arrives");
            assert!(server.receive_message(1, INPUT_CHANNEL).is_some(), "every input arrives");
        }
        (sent, largest_ack)
    }

    #[test]
    fn renet_sends_an_ack_packet_with_every_batch_and_pacing_leaves_one_a_second() {
        let (unpaced, _) = exchange(300, false);
        // Data and acknowledgements, both ways, from the second tick on.
        assert!(unpaced >= 4 * 299, "renet acknowledges on every batch ({unpaced} packets)");
        let ticks = 3_000;
        let (paced, largest_ack) = exchange(ticks, true);
        // Data both ways, and an acknowledgement each way a second.
        assert!(paced <= 2 * ticks + 2 * (ticks / AckPacer::default().every() + 1), "{paced} packets");
        // The acknowledgements still get acknowledged, so what each carries stays bounded: the
        // ranges of the second or two since the last one (each acknowledgement left out leaves a
        // gap in the sequence numbers the peer saw).
        assert!(largest_ack < 256, "an acknowledgement packet of {largest_ack} bytes");
    }

    #[test]
    fn data_always_passes() {
        let mut pacer = AckPacer::default();
        assert!(pacer.pass(&[RENET_ACK_PACKET, 1], Tick(5)));
        assert!(!pacer.pass(&[RENET_ACK_PACKET, 2], Tick(6)));
        assert!(pacer.pass(&[1, 2, 3], Tick(6)));
        assert!(pacer.pass(&[], Tick(6)));
        assert!(pacer.pass(&[RENET_ACK_PACKET], Tick(5 + pacer.every())));
    }
}
