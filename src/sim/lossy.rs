//! The simulator's wire between a node's servers and its slice: the reliable link over the
//! simulated network, which loses, duplicates, delays and reorders packets and cuts servers off,
//! as the fault plan draws. Messages cross as rkyv bytes and are validated on the way in.

use std::collections::{BTreeMap, VecDeque};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::faults::FaultPlan;
use super::network::{Endpoint, Network};
use super::{decode, encode};
use crate::node::Wire;
use crate::protocol::{Incarnation, Link, ToReplication, ToServer};
use crate::world::ServerId;

/// The replication layer's link session; it never restarts in the simulator.
const REPLICATION_SESSION: u32 = 1;

pub struct Lossy {
    pub net: Network,
    rng: ChaCha8Rng,
    plan: FaultPlan,
    /// The layer's end of each server's link, made when the server's first packet arrives.
    rl_links: BTreeMap<ServerId, Link>,
    /// The servers' ends, one per running incarnation.
    server_links: BTreeMap<ServerId, Link>,
    for_slice: VecDeque<(ServerId, ToReplication)>,
    for_servers: VecDeque<ToServer>,
    pub decode_errors: u64,
}

impl Lossy {
    pub fn new(seed: u64, plan: FaultPlan) -> Self {
        Self {
            net: Network::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            plan,
            rl_links: BTreeMap::new(),
            server_links: BTreeMap::new(),
            for_slice: VecDeque::new(),
            for_servers: VecDeque::new(),
            decode_errors: 0,
        }
    }

    /// What the network does from now on (the calm phase's clean network).
    pub fn set_plan(&mut self, plan: FaultPlan) {
        self.plan = plan;
    }

    /// Server `id`'s link is dark until `until_us`.
    pub fn partition(&mut self, id: ServerId, until_us: u64) {
        self.net.partition(id, until_us);
    }

    /// Packets due by `now_us` through their links, into the inboxes.
    fn deliver(&mut self, now_us: u64) {
        while let Some((from, to, packet)) = self.net.pop_due(now_us) {
            match (from, to) {
                (Endpoint::Server(sid), Endpoint::Replication) => {
                    let link = self.rl_links.entry(sid).or_insert_with(|| Link::new(REPLICATION_SESSION));
                    link.handle_packet(&packet);
                    while let Some(bytes) = link.poll_deliver() {
                        match decode::<ToReplication>(&bytes) {
                            Ok(msg) => self.for_slice.push_back((sid, msg)),
                            Err(_) => self.decode_errors += 1,
                        }
                    }
                }
                (_, Endpoint::Server(sid)) => {
                    let Some(link) = self.server_links.get_mut(&sid) else { continue };
                    link.handle_packet(&packet);
                    while let Some(bytes) = link.poll_deliver() {
                        match decode::<ToServer>(&bytes) {
                            Ok(msg) => self.for_servers.push_back(msg),
                            Err(_) => self.decode_errors += 1,
                        }
                    }
                }
                _ => unreachable!("packets always have a server at one end"),
            }
        }
    }
}

impl Wire for Lossy {
    fn to_slice(&mut self, _now_us: u64, from: ServerId, msg: ToReplication) -> Result<(), String> {
        let Some(link) = self.server_links.get_mut(&from) else { return Ok(()) };
        link.send(encode(&msg)).map_err(|e| format!("link from {from}: {e}"))
    }

    fn to_server(&mut self, _now_us: u64, msg: ToServer) -> Result<(), String> {
        let server = msg.server;
        let Some(link) = self.rl_links.get_mut(&server) else { return Ok(()) };
        link.send(encode(&msg)).map_err(|e| format!("link to {server}: {e}"))
    }

    fn recv_for_slice(&mut self, now_us: u64) -> Option<(ServerId, ToReplication)> {
        self.deliver(now_us);
        self.for_slice.pop_front()
    }

    fn recv_for_server(&mut self, now_us: u64) -> Option<ToServer> {
        self.deliver(now_us);
        self.for_servers.pop_front()
    }

    fn flush(&mut self, now_us: u64) -> Result<(), String> {
        for (sid, link) in &mut self.rl_links {
            while let Some(packet) = link.poll_transmit(now_us) {
                self.net.send(&mut self.rng, &self.plan, now_us, Endpoint::Replication, Endpoint::Server(*sid), packet);
            }
        }
        for (sid, link) in &mut self.server_links {
            while let Some(packet) = link.poll_transmit(now_us) {
                self.net.send(&mut self.rng, &self.plan, now_us, Endpoint::Server(*sid), Endpoint::Replication, packet);
            }
        }
        Ok(())
    }

    fn server_started(&mut self, id: ServerId, incarnation: Incarnation) {
        self.server_links.insert(id, Link::new(incarnation.0));
    }

    fn server_stopped(&mut self, id: ServerId) {
        self.server_links.remove(&id);
        self.for_servers.retain(|m| m.server != id);
    }
}
