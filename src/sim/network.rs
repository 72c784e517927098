//! The simulated network: packets between the replication layer and the servers, each delayed,
//! maybe lost, maybe duplicated, delivered in order of arrival time (ties by send order), so one
//! seed always gives one history.

use std::collections::BTreeMap;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::faults::FaultPlan;
use crate::protocol::LinkPacket;
use crate::world::ServerId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Replication,
    Server(ServerId),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NetworkStats {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub spiked: u64,
    pub partitioned: u64,
    pub delivered: u64,
}

#[derive(Default)]
pub struct Network {
    in_flight: BTreeMap<(u64, u64), (Endpoint, Endpoint, LinkPacket)>,
    next_seq: u64,
    /// Servers whose link is dark until the given time.
    partitions: BTreeMap<ServerId, u64>,
    pub stats: NetworkStats,
}

impl Network {
    pub fn partition(&mut self, server: ServerId, until_us: u64) {
        self.partitions.insert(server, until_us);
    }

    /// Whether any server is cut off at `now_us`.
    pub fn any_partitioned(&self, now_us: u64) -> bool {
        self.partitions.values().any(|until| now_us < *until)
    }

    pub fn is_partitioned(&self, server: ServerId, now_us: u64) -> bool {
        self.partitions.get(&server).is_some_and(|until| now_us < *until)
    }

    pub fn send(
        &mut self,
        rng: &mut ChaCha8Rng,
        plan: &FaultPlan,
        now_us: u64,
        from: Endpoint,
        to: Endpoint,
        packet: LinkPacket,
    ) {
        self.stats.sent += 1;
        let server = match (from, to) {
            (Endpoint::Server(s), _) | (_, Endpoint::Server(s)) => s,
            _ => unreachable!("packets always have a server at one end"),
        };
        if self.is_partitioned(server, now_us) {
            self.stats.partitioned += 1;
            return;
        }
        if rng.random_bool(plan.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if rng.random_bool(plan.duplication) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = rng.random_range(plan.delay_us.0..=plan.delay_us.1);
            if rng.random_bool(plan.spike) {
                self.stats.spiked += 1;
                delay += rng.random_range(plan.spike_us.0..=plan.spike_us.1);
            }
            self.next_seq += 1;
            self.in_flight.insert((now_us + delay, self.next_seq), (from, to, packet.clone()));
        }
    }

    /// The next packet due at or before `now_us`.
    pub fn pop_due(&mut self, now_us: u64) -> Option<(Endpoint, Endpoint, LinkPacket)> {
        let (&key, _) = self.in_flight.iter().next()?;
        if key.0 > now_us {
            return None;
        }
        self.stats.delivered += 1;
        self.in_flight.remove(&key)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
