//! Writes from servers: who may write an entity (its current authority epoch), new entities, parents the graph allows, and the commit itself.

use super::*;

impl Replication {
    /// Whether `server` may write `id` under `epoch`.
    pub(super) fn authorized(&self, server: ServerId, id: EntityId, epoch: Epoch) -> bool {
        if self.planted.skip_authority_check {
            return self.records.contains_key(&id);
        }
        self.records.get(&id).is_some_and(|r| r.authority == Some(server) && r.epoch == epoch)
    }

    pub(super) fn refuse(&mut self, server: ServerId, inc: Incarnation, why: impl FnOnce() -> String) {
        if self.is_live(server, inc) {
            self.protocol_error(why);
        } else {
            self.stats.stale_rejected += 1;
        }
    }

    pub(super) fn protocol_error(&mut self, why: impl FnOnce() -> String) {
        self.stats.protocol_errors += 1;
        if self.first_protocol_error.is_none() {
            self.first_protocol_error = Some(why());
        }
    }

    /// A projectile the server made: its id must carry the server's incarnation and its epoch
    /// the incarnation's creation epoch.
    pub(super) fn admit_new(&mut self, server: ServerId, inc: Incarnation, owned: &Owned) -> bool {
        let slot_ok =
            self.servers.get(&server).is_some_and(|s| s.live && s.incarnation == inc && s.create_epoch == owned.epoch);
        let ok = self.planted.skip_authority_check
            || (slot_ok
                && owned.state.is_finite()
                && owned.state.kind == EntityKind::Projectile
                && owned.state.parent.is_none()
                && owned.id.creator_incarnation() == inc.0);
        if !ok {
            self.refuse(server, inc, || {
                format!("{server} created {} under {:?}, not its creation epoch", owned.id, owned.epoch)
            });
            return false;
        }
        let record = Record {
            state: owned.state.clone(),
            authority: Some(server),
            epoch: owned.epoch,
            committed_epoch: owned.epoch,
            commit_seq: 1,
        };
        self.records.insert(owned.id, record);
        self.journal(JournalOp::Put(owned.id));
        self.stats.created += 1;
        true
    }

    /// Whether `child` may sit under `parent` for a write by `server`.
    pub(super) fn parent_allowed(&self, server: ServerId, child: EntityId, kind: EntityKind, parent: EntityId) -> bool {
        let Some(p) = self.records.get(&parent) else { return false };
        let siblings = self.forest.children(parent).filter(|c| *c != child).count();
        // No cycle: `child` must not be `parent` or above it (a walk up, at most the graph's depth).
        let mut above = Some(parent);
        for _ in 0..=crate::limits::GRAPH_DEPTH_MAX {
            match above {
                Some(a) if a == child => return false,
                Some(a) => above = self.records.get(&a).and_then(|r| r.state.parent),
                None => break,
            }
        }
        p.authority == Some(server) && p.state.kind.capacity_for(kind) > siblings && above.is_none()
    }

    pub(super) fn commit(&mut self, owned: Owned) {
        let record = self.records.get_mut(&owned.id).expect("committed entities exist");
        let (old_parent, new_parent) = (record.state.parent, owned.state.parent);
        record.state = owned.state;
        record.committed_epoch = owned.epoch;
        record.commit_seq += 1;
        self.journal(JournalOp::Put(owned.id));
        if old_parent != new_parent {
            if let Some(p) = old_parent {
                self.forest.unlink(owned.id, p);
            }
            if let Some(p) = new_parent {
                self.forest.link(owned.id, p);
            }
        }
        self.stats.commits += 1;
    }

    /// Checks one write; true if it may be committed.
    pub(super) fn admit_write(&mut self, server: ServerId, inc: Incarnation, owned: &Owned) -> bool {
        if !self.authorized(server, owned.id, owned.epoch) {
            self.stats.stale_rejected += 1;
            return false;
        }
        if !owned.state.is_finite() {
            self.refuse(server, inc, || format!("{server} wrote a non-finite state for {}", owned.id));
            return false;
        }
        let record = &self.records[&owned.id];
        if owned.state.changed_tick < record.state.changed_tick || owned.state.kind != record.state.kind {
            // Older than what is committed (a reordered or replayed write), or a kind change.
            self.stats.stale_rejected += 1;
            return false;
        }
        if let Some(p) = owned.state.parent {
            if !self.parent_allowed(server, owned.id, owned.state.kind, p) && !self.planted.skip_authority_check {
                self.refuse(server, inc, || format!("{server} put {} in {p}, which it may not", owned.id));
                return false;
            }
        }
        true
    }

    pub(super) fn upsert(&mut self, server: ServerId, inc: Incarnation, owned: Owned) {
        // The common write, an entity that keeps its parent (anything moving, every tick), in
        // one lookup: its place in the graph was checked when it got that parent, and a child
        // shares its parent's authority, so only the writer's authority needs checking.
        if !self.planted.skip_authority_check && owned.state.is_finite() {
            match self.records.get_mut(&owned.id) {
                None => {
                    self.admit_new(server, inc, &owned);
                    return;
                }
                Some(r) if r.state.parent == owned.state.parent => {
                    let current = r.authority == Some(server) && r.epoch == owned.epoch;
                    if !current || owned.state.changed_tick < r.state.changed_tick || owned.state.kind != r.state.kind {
                        self.stats.stale_rejected += 1;
                        return;
                    }
                    r.state = owned.state;
                    r.committed_epoch = owned.epoch;
                    r.commit_seq += 1;
                    if let Some(j) = &mut self.journal {
                        j.push(JournalOp::Put(owned.id));
                    }
                    self.stats.commits += 1;
                    return;
                }
                Some(_) => {}
            }
        }
        if !self.records.contains_key(&owned.id) {
            self.admit_new(server, inc, &owned);
            return;
        }
        if self.admit_write(server, inc, &owned) {
            self.commit(owned);
        }
    }

    pub(super) fn destroy(&mut self, server: ServerId, inc: Incarnation, id: EntityId, epoch: Epoch) {
        if !self.authorized(server, id, epoch) {
            self.stats.stale_rejected += 1;
            return;
        }
        if self.forest.child_count(id) > 0 {
            self.refuse(server, inc, || format!("{server} destroyed {id}, which still holds entities"));
            return;
        }
        let record = self.records.remove(&id).expect("authorized entities exist");
        if let Some(p) = record.state.parent {
            self.forest.unlink(id, p);
        }
        self.journal(JournalOp::Destroy { id, seq: record.commit_seq + 1 });
        self.orphans.remove(&id);
        self.stats.destroyed += 1;
    }
}
