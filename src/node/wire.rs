//! What carries messages between a node's servers and its replication slice. On one host they
//! share a thread and a message is a plain move ([`Direct`]); the simulator puts a lossy,
//! reordering network with the reliable link between them; a test can hold messages back. The
//! node's tick is the same whichever wire it runs over.

use std::collections::VecDeque;

use crate::protocol::{Incarnation, ToReplication, ToServer};
use crate::world::ServerId;

/// Messages between a node's servers and its slice. A message sent is not seen before the next
/// `recv_*` call; a wire with latency may hold it for ticks.
pub trait Wire {
    /// Server `from`'s message for the slice. An error (a link that cannot take more) is the
    /// driver's to report; the node keeps the first one.
    fn to_slice(&mut self, now_us: u64, from: ServerId, msg: ToReplication) -> Result<(), String>;
    /// The slice's message for `msg.server`.
    fn to_server(&mut self, now_us: u64, msg: ToServer) -> Result<(), String>;
    /// The next message for the slice that has arrived by `now_us`.
    fn recv_for_slice(&mut self, now_us: u64) -> Option<(ServerId, ToReplication)>;
    /// The next message for a server that has arrived by `now_us`.
    fn recv_for_server(&mut self, now_us: u64) -> Option<ToServer>;
    /// The end of the node's tick: what was sent is on its way.
    fn flush(&mut self, _now_us: u64) -> Result<(), String> {
        Ok(())
    }
    /// Server `id` starts as `incarnation` (a new process, with a new link).
    fn server_started(&mut self, _id: ServerId, _incarnation: Incarnation) {}
    /// Server `id` is gone: what was on its way to or from it is lost with it.
    fn server_stopped(&mut self, _id: ServerId) {}
}

/// Servers and slice on one thread: a message is moved, in order, at once.
#[derive(Default)]
pub struct Direct {
    for_slice: VecDeque<(ServerId, ToReplication)>,
    for_servers: VecDeque<ToServer>,
}

impl Wire for Direct {
    fn to_slice(&mut self, _now_us: u64, from: ServerId, msg: ToReplication) -> Result<(), String> {
        self.for_slice.push_back((from, msg));
        Ok(())
    }
    fn to_server(&mut self, _now_us: u64, msg: ToServer) -> Result<(), String> {
        self.for_servers.push_back(msg);
        Ok(())
    }
    fn recv_for_slice(&mut self, _now_us: u64) -> Option<(ServerId, ToReplication)> {
        self.for_slice.pop_front()
    }
    fn recv_for_server(&mut self, _now_us: u64) -> Option<ToServer> {
        self.for_servers.pop_front()
    }
    fn server_stopped(&mut self, id: ServerId) {
        self.for_slice.retain(|(from, _)| *from != id);
        self.for_servers.retain(|m| m.server != id);
    }
}
