//! Checkpoints: the journal a slice's log is written from, and the Chandy-Lamport rounds across slices (a snapshot, markers to every peer, done once stored and every marker is in).

use super::*;

impl Replication {
    /// Turns the journal on: from now every change is recorded for the replication log, and
    /// checkpoints continue from `round` (the one the log was last opened at).
    pub fn enable_journal(&mut self, round: u64) {
        self.journal = Some(Vec::new());
        self.checkpoints = Checkpointing::new(self.slices, round);
    }

    /// The changes recorded since the last call, in order.
    pub fn drain_journal(&mut self) -> Vec<JournalOp> {
        self.journal.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub(super) fn journal(&mut self, op: JournalOp) {
        if let Some(j) = &mut self.journal {
            j.push(op);
        }
    }

    /// The newest checkpoint round this slice has completed.
    pub fn checkpoint_done(&self) -> u64 {
        self.checkpoints.done
    }

    /// Controller: starts checkpoint round `n + 1` if the journal is on and every slice has
    /// completed round `n`; the round's number if it started.
    pub fn begin_checkpoint(&mut self) -> Option<u64> {
        let c = &self.checkpoints;
        if !self.is_controller() || self.journal.is_none() || c.completed.iter().any(|r| *r < c.taken) {
            return None;
        }
        let round = c.taken + 1;
        self.take_snapshot(round);
        Some(round)
    }

    /// The driver has stored this slice's snapshot for `round` durably.
    pub fn snapshot_stored(&mut self, round: u64) {
        self.checkpoints.stored = self.checkpoints.stored.max(round);
        self.complete_checkpoint();
    }

    /// Snapshots every record for `round`, then sends the round's marker on every link, so the
    /// snapshot holds exactly what this slice did before the marker.
    pub(super) fn take_snapshot(&mut self, round: u64) {
        // Roots by id, each followed by its subtree: the same records make the same snapshot.
        let mut roots: Vec<EntityId> =
            self.records.iter().filter(|(_, r)| r.state.parent.is_none()).map(|(id, _)| *id).collect();
        roots.sort_unstable();
        let mut entities = Vec::with_capacity(self.records.len());
        for root in roots {
            for e in self.forest.subtree(root) {
                let r = &self.records[&e];
                entities.push(Committed { id: e, state: r.state.clone(), commit_seq: r.commit_seq });
            }
        }
        let snapshot = SliceSnapshot { round, slice: self.slice, slices: self.slices, map: self.map.clone(), entities };
        self.journal(JournalOp::Snapshot(Box::new(snapshot)));
        self.checkpoints.taken = round;
        self.checkpoints.markers[self.slice.0 as usize] = round;
        for slice in (0..self.slices).map(SliceId).filter(|s| *s != self.slice) {
            self.peer_outbox.push_back((slice, SliceMsg::Marker { round }));
        }
        self.complete_checkpoint();
    }

    /// This slice's part of the round is complete: the log records it. The controller hears of it
    /// only once that record is durable (`round_done_durable`): the next round lets each slice
    /// delete the files of the round before this one, which recovery needs until then.
    pub(super) fn complete_checkpoint(&mut self) {
        if self.journal.is_some() && self.checkpoints.ready_to_complete() {
            let round = self.checkpoints.taken;
            self.checkpoints.done = round;
            self.journal(JournalOp::RoundDone(round));
        }
    }

    /// The driver has made this slice's record that `round` is complete durable.
    pub fn round_done_durable(&mut self, round: u64) {
        if round > self.checkpoints.reported && round <= self.checkpoints.done {
            self.checkpoints.reported = round;
            self.tell_controller(SliceMsg::Checkpointed { round });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::Aabb;
    use glam::Vec3;

    fn slices(n: u16) -> Vec<Replication> {
        let map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::splat(100.0)), 2);
        let item = EntityState::new(EntityKind::Item { capacity: 0 }, Vec3::splat(10.0));
        (0..n)
            .map(|i| {
                let initial = if i == 0 { vec![(EntityId(1), item.clone())] } else { Vec::new() };
                let mut s = Replication::new_slice(SliceId(i), n, map.clone(), initial);
                s.enable_journal(0);
                s
            })
            .collect()
    }

    #[test]
    fn only_the_controller_begins_a_round_and_only_with_the_journal_on() {
        let mut s = slices(2);
        assert_eq!(s[1].begin_checkpoint(), None, "slice 1 is not the controller");
        let map = s[0].map().clone();
        let mut off = Replication::new_slice(SliceId(0), 2, map, Vec::new());
        assert_eq!(off.begin_checkpoint(), None, "no journal, no checkpoint");
        assert_eq!(s[0].begin_checkpoint(), Some(1));
        let snapshot = s[0].drain_journal().into_iter().find_map(|op| match op {
            JournalOp::Snapshot(snap) => Some(snap),
            _ => None,
        });
        assert!(snapshot.is_some_and(|snap| snap.round == 1 && snap.entities.iter().any(|c| c.id == EntityId(1))));
    }

    #[test]
    fn a_round_completes_once_stored_and_every_marker_is_in_and_the_next_waits_for_it_to_be_durable() {
        let mut s = slices(2);
        assert_eq!(s[0].begin_checkpoint(), Some(1));
        // The marker reaches slice 1, which takes its own snapshot.
        while let Some((to, msg)) = s[0].poll_peer() {
            s[to.0 as usize].handle_peer(SliceId(0), msg);
        }
        assert_eq!(s[0].checkpoint_done(), 0, "not stored yet");
        for slice in s.iter_mut() {
            slice.snapshot_stored(1);
        }
        // Slice 1's marker and its report reach the controller.
        while let Some((to, msg)) = s[1].poll_peer() {
            s[to.0 as usize].handle_peer(SliceId(1), msg);
        }
        for (i, slice) in s.iter_mut().enumerate() {
            assert!(slice.drain_journal().contains(&JournalOp::RoundDone(1)), "slice {i} logs its part done");
        }
        while let Some((to, msg)) = s[1].poll_peer() {
            s[to.0 as usize].handle_peer(SliceId(1), msg);
        }
        assert_eq!(s[0].checkpoint_done(), 1);
        assert_eq!(s[0].begin_checkpoint(), None, "round 1's completion is not durable yet");
        for slice in s.iter_mut() {
            slice.round_done_durable(1);
        }
        while let Some((to, msg)) = s[1].poll_peer() {
            s[to.0 as usize].handle_peer(SliceId(1), msg);
        }
        assert_eq!(s[0].begin_checkpoint(), Some(2));
    }
}
