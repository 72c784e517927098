//! The layer's own invariants, checked by the simulator after every step.

use super::*;

impl Replication {
    /// The layer's own invariants; a description of each breach.
    pub fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = self.map.check_tiling() {
            errors.push(e);
        }
        for (id, r) in &self.records {
            if r.committed_epoch != r.epoch {
                errors.push(format!(
                    "{id}: committed under epoch {:?} but authority epoch is {:?}",
                    r.committed_epoch, r.epoch
                ));
            }
            if let Some(p) = r.state.parent {
                match self.records.get(&p) {
                    None => errors.push(format!("{id}: parent {p} does not exist")),
                    Some(parent) => {
                        if parent.authority != r.authority {
                            errors.push(format!(
                                "{id}: authority {:?} differs from its parent {p}'s {:?}",
                                r.authority, parent.authority
                            ));
                        }
                        if parent.state.kind.capacity_for(r.state.kind) == 0 {
                            errors.push(format!("{id}: a {:?} cannot sit in a {:?}", r.state.kind, parent.state.kind));
                        }
                    }
                }
                if !self.forest.children(p).any(|c| c == *id) {
                    errors.push(format!("{id}: missing from its parent {p}'s children"));
                }
            }
            if let Some(s) = r.authority.filter(|s| self.home_of(*s) != self.slice) {
                errors.push(format!("{id}: held by {s}, which lives on {}, not on {}", self.home_of(s), self.slice));
            }
            let dormant = self.streaming.as_ref().is_some_and(|index| {
                self.dormant.get(&index.locate(r.state.pos())).is_some_and(|roots| roots.contains(id))
            });
            let offline = self.offline.contains(id);
            if r.authority.is_none() && r.state.parent.is_none() && !self.orphans.contains(id) && !dormant && !offline {
                errors.push(format!("{id}: has no authority and is neither an orphan nor at rest"));
            }
            if offline && (r.authority.is_some() || self.orphans.contains(id) || r.state.parent.is_some() || dormant) {
                errors.push(format!(
                    "{id}: parked logged out, but held by {:?}, an orphan, aboard or at rest",
                    r.authority
                ));
            }
            if dormant && (r.authority.is_some() || self.orphans.contains(id) || !is_streamed(&r.state)) {
                errors.push(format!("{id}: at rest, but held by {:?} or an orphan or not a loose item", r.authority));
            }
        }
        if let Some(id) = self.offline.iter().find(|id| !self.records.contains_key(id) || id.account().is_none()) {
            errors.push(format!("{id}: parked logged out here but not recorded here or no account's"));
        }
        if let Some(id) = self.dormant.values().flatten().find(|id| !self.records.contains_key(id)) {
            errors.push(format!("{id}: at rest here but not recorded here"));
        }
        for (p, c) in self.forest.edges() {
            if self.records.get(&c).and_then(|r| r.state.parent) != Some(p) {
                errors.push(format!("forest says {c} is in {p}, its record disagrees"));
            }
        }
        if self.stats.protocol_errors > 0 {
            let first = self.first_protocol_error.as_deref().unwrap_or("");
            errors.push(format!("{} protocol errors, the first: {first}", self.stats.protocol_errors));
        }
        errors
    }
}
