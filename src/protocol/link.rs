//! A reliable, ordered link over a network that loses, duplicates, delays and reorders packets:
//! sequence numbers, cumulative acks, retransmission, a bounded reorder window. The mesh
//! protocol above it may rely on each link delivering each message once and in order; it may not
//! rely on any order between different links. On one host the shared-memory rings give the same
//! contract without this layer; between hosts this is the part QUIC or TCP would play.
//!
//! Sessions: each end has a session id (a server's incarnation). A packet from a newer session of
//! the peer resets the link, since the peer restarted and knows nothing of the old exchange;
//! packets from an older session are dropped. Sans-IO: time comes in as an argument.

use std::collections::{BTreeMap, VecDeque};

use crate::limits::{LINK_PACKET_MESSAGES_MAX, LINK_REORDER_WINDOW_COUNT, LINK_RETRANSMIT_US, LINK_UNACKED_MAX};

/// A session id the peer has not told us yet.
pub const SESSION_UNKNOWN: u32 = 0;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPacket {
    /// The sender's session.
    pub session: u32,
    /// The session the sender believes the receiver has.
    pub peer_session: u32,
    /// Every sequence number below this one has been received.
    pub ack: u64,
    pub frames: Vec<Frame>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("link has {LINK_UNACKED_MAX} messages unacknowledged: the peer is unreachable or too slow")]
    Full,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub sent: u64,
    pub retransmitted: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub beyond_window: u64,
    pub stale_packets: u64,
    pub peer_restarts: u64,
}

struct Outgoing {
    frame: Frame,
    last_sent_us: Option<u64>,
}

pub struct Link {
    session: u32,
    peer_session: u32,
    next_seq: u64,
    unacked: VecDeque<Outgoing>,
    recv_next: u64,
    reorder: BTreeMap<u64, Vec<u8>>,
    ready: VecDeque<Vec<u8>>,
    ack_due: bool,
    pub stats: LinkStats,
}

impl Link {
    pub fn new(session: u32) -> Self {
        assert_ne!(session, SESSION_UNKNOWN, "session 0 means unknown");
        Self {
            session,
            peer_session: SESSION_UNKNOWN,
            next_seq: 0,
            unacked: VecDeque::new(),
            recv_next: 0,
            reorder: BTreeMap::new(),
            ready: VecDeque::new(),
            ack_due: false,
            stats: LinkStats::default(),
        }
    }

    pub fn session(&self) -> u32 {
        self.session
    }

    pub fn peer_session(&self) -> u32 {
        self.peer_session
    }

    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Queues a message; it goes out on the next `poll_transmit`.
    pub fn send(&mut self, bytes: Vec<u8>) -> Result<(), LinkError> {
        if self.unacked.len() >= LINK_UNACKED_MAX {
            return Err(LinkError::Full);
        }
        let frame = Frame { seq: self.next_seq, bytes };
        self.next_seq += 1;
        self.unacked.push_back(Outgoing { frame, last_sent_us: None });
        Ok(())
    }

    pub fn handle_packet(&mut self, packet: &LinkPacket) {
        if packet.session == SESSION_UNKNOWN || packet.session < self.peer_session {
            self.stats.stale_packets += 1;
            return;
        }
        if packet.session > self.peer_session {
            if self.peer_session != SESSION_UNKNOWN {
                // The peer restarted: what we were sending was for its former life.
                self.stats.peer_restarts += 1;
                self.unacked.clear();
                self.next_seq = 0;
            }
            self.peer_session = packet.session;
            self.recv_next = 0;
            self.reorder.clear();
        }
        let addressed_to_us = packet.peer_session == self.session || packet.peer_session == SESSION_UNKNOWN;
        if !addressed_to_us {
            // Meant for a former session of ours; its acks and data are not ours.
            self.stats.stale_packets += 1;
            return;
        }
        if packet.peer_session == self.session {
            while self.unacked.front().is_some_and(|o| o.frame.seq < packet.ack) {
                self.unacked.pop_front();
            }
        }
        for frame in &packet.frames {
            self.ack_due = true;
            if frame.seq < self.recv_next || self.reorder.contains_key(&frame.seq) {
                self.stats.duplicates += 1;
            } else if frame.seq >= self.recv_next + LINK_REORDER_WINDOW_COUNT {
                self.stats.beyond_window += 1;
            } else {
                self.reorder.insert(frame.seq, frame.bytes.clone());
            }
        }
        while let Some(bytes) = self.reorder.remove(&self.recv_next) {
            self.ready.push_back(bytes);
            self.recv_next += 1;
            self.stats.delivered += 1;
        }
    }

    /// The next packet to put on the network, if anything is due: new messages, messages
    /// unacknowledged for a retransmission interval, or an ack owed.
    pub fn poll_transmit(&mut self, now_us: u64) -> Option<LinkPacket> {
        let mut frames = Vec::new();
        for out in self.unacked.iter_mut() {
            if frames.len() == LINK_PACKET_MESSAGES_MAX {
                break;
            }
            let due = match out.last_sent_us {
                None => {
                    self.stats.sent += 1;
                    true
                }
                Some(at) if now_us >= at + LINK_RETRANSMIT_US => {
                    self.stats.retransmitted += 1;
                    true
                }
                Some(_) => false,
            };
            if due {
                out.last_sent_us = Some(now_us);
                frames.push(out.frame.clone());
            }
        }
        if frames.is_empty() && !self.ack_due {
            return None;
        }
        self.ack_due = false;
        Some(LinkPacket { session: self.session, peer_session: self.peer_session, ack: self.recv_next, frames })
    }

    pub fn poll_deliver(&mut self) -> Option<Vec<u8>> {
        self.ready.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn msg(i: u32) -> Vec<u8> {
        i.to_le_bytes().to_vec()
    }

    /// Drives two links over a network that loses, duplicates and reorders, and checks that
    /// everything arrives exactly once, in order.
    fn exchange(seed: u64, count: u32, loss: f64, dup: f64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut a, mut b) = (Link::new(1), Link::new(2));
        let mut in_flight: Vec<(u64, bool, LinkPacket)> = Vec::new();
        let mut received = Vec::new();
        let mut now = 0u64;
        let mut queued = 0;
        while received.len() < count as usize {
            assert!(now < 100_000_000_000, "seed {seed}: stuck at {} of {count}", received.len());
            while queued < count && a.unacked() < 50 {
                a.send(msg(queued)).unwrap();
                queued += 1;
            }
            for (from_a, link) in [(true, &mut a), (false, &mut b)] {
                while let Some(p) = link.poll_transmit(now) {
                    for _ in 0..if rng.random_bool(dup) { 2 } else { 1 } {
                        if !rng.random_bool(loss) {
                            in_flight.push((now + rng.random_range(0..200_000), from_a, p.clone()));
                        }
                    }
                }
            }
            now += 10_000;
            let (due, later): (Vec<_>, Vec<_>) = in_flight.drain(..).partition(|(at, _, _)| *at <= now);
            in_flight = later;
            for (_, from_a, p) in due {
                if from_a {
                    b.handle_packet(&p)
                } else {
                    a.handle_packet(&p)
                }
            }
            while let Some(m) = b.poll_deliver() {
                received.push(m);
            }
        }
        let expected: Vec<_> = (0..count).map(msg).collect();
        assert_eq!(received, expected, "seed {seed}");
    }

    #[test]
    fn delivers_once_in_order_through_loss_duplication_and_reordering() {
        for seed in 0..20 {
            exchange(seed, 500, 0.3, 0.3);
        }
    }

    #[test]
    fn duplicated_and_reordered_packets_deliver_once() {
        let (mut a, mut b) = (Link::new(1), Link::new(2));
        for i in 0..3 {
            a.send(msg(i)).unwrap();
        }
        let p = a.poll_transmit(0).unwrap();
        let mut late = p.clone();
        late.frames.remove(0);
        let mut first = p.clone();
        first.frames.truncate(1);
        b.handle_packet(&late);
        assert_eq!(b.poll_deliver(), None, "a gap holds back later messages");
        b.handle_packet(&first);
        b.handle_packet(&p);
        b.handle_packet(&late);
        let got: Vec<_> = std::iter::from_fn(|| b.poll_deliver()).collect();
        assert_eq!(got, vec![msg(0), msg(1), msg(2)]);
        assert_eq!(b.stats.duplicates, 5);
        let ack = b.poll_transmit(1).unwrap();
        assert_eq!(ack.ack, 3);
        a.handle_packet(&ack);
        assert_eq!(a.unacked(), 0);
    }

    #[test]
    fn a_restarted_peer_resets_the_link_and_old_packets_are_dropped() {
        let (mut server_old, mut rl) = (Link::new(5), Link::new(1));
        server_old.send(msg(1)).unwrap();
        let old = server_old.poll_transmit(0).unwrap();
        rl.handle_packet(&old);
        assert_eq!(rl.poll_deliver(), Some(msg(1)));
        rl.send(msg(100)).unwrap();
        let mut server_new = Link::new(6);
        server_new.send(msg(2)).unwrap();
        rl.handle_packet(&server_new.poll_transmit(0).unwrap());
        assert_eq!(rl.poll_deliver(), Some(msg(2)), "new session starts at sequence 0");
        assert_eq!(rl.unacked(), 0, "messages for the dead session are dropped");
        rl.handle_packet(&old);
        assert_eq!(rl.poll_deliver(), None);
        assert!(rl.stats.stale_packets >= 1);
    }

    #[test]
    fn a_full_link_refuses_more() {
        let mut a = Link::new(1);
        for i in 0..LINK_UNACKED_MAX {
            a.send(msg(i as u32)).unwrap();
        }
        assert_eq!(a.send(msg(0)), Err(LinkError::Full));
    }

    #[test]
    fn retransmits_only_after_the_interval() {
        let mut a = Link::new(1);
        a.send(msg(0)).unwrap();
        assert_eq!(a.poll_transmit(0).unwrap().frames.len(), 1);
        assert!(a.poll_transmit(LINK_RETRANSMIT_US - 1).is_none());
        assert_eq!(a.poll_transmit(LINK_RETRANSMIT_US).unwrap().frames.len(), 1);
        assert_eq!(a.stats.retransmitted, 1);
    }
}
