//! A logical game server (a DGS): simulates the entities it has authority over, applies bot
//! and player inputs under the game rules, hands off what leaves its regions, and streams its
//! changes to the replication layer.
//!
//! Sans-IO: `handle` takes a message, `handle_input` an input, `tick` advances one tick; all
//! output is drained with `poll_message` and `poll_event`. The server acts only while it holds a
//! lease: once a lease runs out it stops at once and asks its driver for a restart, because the
//! replication layer may already have given its entities to someone else.
//!
//! Invariants: a held child's parent is held too; a handed-off subtree is removed before the
//! message leaves; deltas of a tick go out before its handoffs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use glam::Vec3;

use super::messages::{Delta, Epoch, Ghost, Incarnation, Owned, ReplicationMsg, ServerMsg, ToReplication, ToServer};
use super::physics::{self, Physics};
pub use crate::limits::CLIENT_INPUTS_PER_TICK_MAX;
use crate::limits::GRID_CELL_M;
use crate::limits::{
    BOARD_REACH_M, GHOST_MARGIN_M, HANDOFFS_PER_TICK_MAX, HIT_RADIUS_M, LEASE_DURATION_US, PROJECTILE_DAMAGE,
    PROJECTILE_TTL_US, REACH_M, TICK_DURATION_US,
};
use crate::world::stream::{STREAM_LOAD_RADIUS_M, STREAM_PERIOD_TICKS, STREAM_UNLOAD_RADIUS_M};
use crate::world::{
    is_streamed, ContainerId, EntityId, EntityKind, EntityState, Forest, Grid, RegionMap, ServerId, StreamIndex,
};

/// What a bot or player asks its entity to do this tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub entity: EntityId,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Action {
    /// Walk or fly in this direction at the kind's speed (zero stops).
    Move([f32; 3]),
    Fire([f32; 3]),
    PickUp,
    Drop,
    /// Put an item in hand into a backpack in hand.
    Stow,
    /// Take an item out of a backpack in hand.
    Unstow,
    Board,
    Disembark,
}

impl Action {
    pub fn index(&self) -> usize {
        match self {
            Action::Move(_) => 0,
            Action::Fire(_) => 1,
            Action::PickUp => 2,
            Action::Drop => 3,
            Action::Stow => 4,
            Action::Unstow => 5,
            Action::Board => 6,
            Action::Disembark => 7,
        }
    }
}

/// Metres per second.
pub fn speed_of(kind: EntityKind) -> f32 {
    match kind {
        EntityKind::Player => 30.0,
        EntityKind::Npc => 12.0,
        EntityKind::Ship => 150.0,
        EntityKind::Projectile => 1500.0,
        EntityKind::Item { .. } => 0.0,
    }
}

/// What rapier made of an entity's tick, held to its top speed: contacts between hulls may slow
/// a ship or turn it, but a pile-up's impulses and the push that separates overlapping hulls
/// must not send it faster than a ship flies, or further in a tick (one already faster, given
/// its speed by a test or a tool, keeps that as its limit). Clients check every entity's moves
/// against its kind's speed, and a server validates inputs the same way.
fn governed(current: &EntityState, next: Vec3, velocity: Vec3, dt: f32) -> (Vec3, Vec3) {
    let top = speed_of(current.kind).max(current.vel().length());
    let from = current.pos();
    (from + (next - from).clamp_length_max(top * dt), velocity.clamp_length_max(top))
}

#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub state: EntityState,
    pub epoch: Epoch,
    /// When authority arrived (for checks and handoff latency).
    pub adopted_at_us: u64,
    /// The newest client input applied to it (0: none), for the client's acknowledgement.
    pub input_seq: u32,
    /// The tick its state had been moved to when this server adopted it: a server on a core
    /// that ticks a little behind may adopt, within one tick, what its last holder already
    /// moved in that tick, and must not move it twice.
    moved_until_tick: u64,
    dirty: bool,
}

impl Held {
    /// Where the entity is as of `tick` (ticks of `tick_us`), inside `world`. One adopted from a
    /// core that ticks ahead carries its state of a later tick (and stays put until this server's
    /// tick reaches it): as of `tick` it is that many ticks' motion back.
    pub fn position_at(&self, tick: u64, tick_us: u64, world: &crate::world::Aabb) -> [f32; 3] {
        let ahead = self.moved_until_tick.saturating_sub(tick);
        if ahead == 0 {
            return self.state.position;
        }
        let dt = ahead as f32 * tick_us as f32 / 1e6;
        world.clamp(self.state.pos() - self.state.vel() * dt).to_array()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub ticks: u64,
    pub adopted: u64,
    pub handed_off: u64,
    pub created: u64,
    pub destroyed: u64,
    pub hits: u64,
    /// Projectiles of this server that hit another server's entity (through its ghost).
    pub remote_hits: u64,
    /// Damage applied to held entities on behalf of other servers' projectiles.
    pub damage_received: u64,
    pub inputs_applied: u64,
    /// Applied inputs by action: move, fire, pick up, drop, stow, unstow, board, disembark.
    pub actions: [u64; 8],
    /// Inputs refused: not held, out of reach, too fast, not allowed by the graph rules.
    pub inputs_refused: u64,
    /// Client inputs refused for coming too often (more than `CLIENT_INPUTS_PER_TICK_MAX` for
    /// one entity in a tick) or out of order.
    pub inputs_rate_limited: u64,
    /// Inputs dropped with a tick the runtime held back under overload.
    pub inputs_held_back: u64,
    pub deltas_sent: u64,
    /// Containers this server asked the layer to load, and item roots it unloaded.
    pub containers_loaded: u64,
    pub roots_unloaded: u64,
    /// Messages for another incarnation or out of place; dropped.
    pub messages_ignored: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// The lease ran out or the layer fenced this incarnation: everything was dropped and the
    /// driver must start a new incarnation.
    Fenced,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Registering,
    Active,
    Fenced,
}

pub struct Server {
    id: ServerId,
    incarnation: Incarnation,
    phase: Phase,
    map: Option<RegionMap>,
    create_epoch: Epoch,
    next_counter: u32,
    lease_until_us: u64,
    started_at_us: u64,
    entities: BTreeMap<EntityId, Held>,
    forest: Forest,
    destroyed: Vec<(EntityId, Epoch)>,
    /// Inputs for the next tick, each with its client sequence number (0: not a client's).
    inputs: Vec<(Input, u32)>,
    outbox: VecDeque<ToReplication>,
    events: VecDeque<ServerEvent>,
    /// Where everything held is, rebuilt each tick for the game rules' "what is near".
    grid: Grid,
    /// Loose items and ships, apart from the crowd: a pickup or a boarding in a dense crowd
    /// looks only at what it could take.
    item_grid: Grid,
    ship_grid: Grid,
    /// Other servers' border entities, read-only, and where they are.
    ghosts: Vec<Ghost>,
    ghost_grid: Grid,
    /// rapier3d's world: the ships and projectiles held, and ghost ships.
    physics: Physics,
    /// Damage from other servers' projectiles, applied at the next tick.
    damage: Vec<(EntityId, u16)>,
    /// What this tick's handoffs gave up, as it was when it left: until another server adopts
    /// it, this is where it is.
    leaving: Vec<(EntityId, EntityState)>,
    /// Container streaming, when on: the world's containers, and those this server has asked
    /// the layer to load. Marks are scratch space for one streaming pass.
    streaming: Option<Arc<StreamIndex>>,
    loaded: BTreeSet<ContainerId>,
    marks: Vec<u8>,
    pub stats: ServerStats,
    /// Test-only planted bug: keep acting after the lease ran out.
    pub planted_ignore_lease: bool,
    /// Subtrees handed off per tick at most (`HANDOFFS_PER_TICK_MAX` unless a runtime sets it).
    pub handoffs_per_tick_max: usize,
    /// Game time a tick is (see `with_tick_us`).
    tick_us: u64,
}

impl Server {
    pub fn new(id: ServerId, incarnation: Incarnation, now_us: u64) -> Self {
        let mut server = Self {
            id,
            incarnation,
            phase: Phase::Registering,
            map: None,
            create_epoch: Epoch(0),
            next_counter: 0,
            lease_until_us: 0,
            started_at_us: now_us,
            entities: BTreeMap::new(),
            forest: Forest::default(),
            destroyed: Vec::new(),
            inputs: Vec::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            grid: Grid::new(GRID_CELL_M),
            item_grid: Grid::new(GRID_CELL_M),
            ship_grid: Grid::new(GRID_CELL_M),
            ghosts: Vec::new(),
            ghost_grid: Grid::new(GRID_CELL_M),
            physics: Physics::new(),
            damage: Vec::new(),
            leaving: Vec::new(),
            streaming: None,
            loaded: BTreeSet::new(),
            marks: Vec::new(),
            stats: ServerStats::default(),
            planted_ignore_lease: false,
            handoffs_per_tick_max: HANDOFFS_PER_TICK_MAX,
            tick_us: TICK_DURATION_US,
        };
        server.send(ServerMsg::Register);
        server
    }

    /// Turns container streaming on: loose items in containers no player is near are given
    /// back to the layer, and loaded again when a player comes near. The layer must stream with
    /// the same index.
    pub fn with_streaming(mut self, index: Arc<StreamIndex>) -> Self {
        self.marks = vec![0; index.tree().containers.len()];
        self.streaming = Some(index);
        self
    }

    /// A server whose ticks are `tick_us` of game time each (the default is
    /// `limits::TICK_DURATION_US`): the tick rate sets how often the world is simulated, and
    /// every motion is per second of game time, so not how fast it moves.
    pub fn with_tick_us(mut self, tick_us: u64) -> Self {
        self.tick_us = tick_us.max(1);
        self.physics = Physics::with_tick_us(self.tick_us);
        self
    }

    /// Game time a tick of this server is.
    pub fn tick_us(&self) -> u64 {
        self.tick_us
    }

    /// The containers this server has loaded (with streaming on).
    pub fn loaded(&self) -> &BTreeSet<ContainerId> {
        &self.loaded
    }

    pub fn id(&self) -> ServerId {
        self.id
    }

    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Whether the server may act on its entities at `now`: welcomed and within its lease.
    pub fn is_acting(&self, now_us: u64) -> bool {
        self.phase == Phase::Active && (now_us < self.lease_until_us || self.planted_ignore_lease)
    }

    pub fn held(&self) -> &BTreeMap<EntityId, Held> {
        &self.entities
    }

    /// The entities this server handed off in its last tick, as they left.
    pub fn leaving(&self) -> &[(EntityId, EntityState)] {
        &self.leaving
    }

    /// Other servers' border entities as last received.
    pub fn ghosts(&self) -> &[Ghost] {
        &self.ghosts
    }

    pub fn forest(&self) -> &Forest {
        &self.forest
    }

    pub fn map(&self) -> Option<&RegionMap> {
        self.map.as_ref()
    }

    fn send(&mut self, body: ServerMsg) {
        self.outbox.push_back(ToReplication { server: self.id, incarnation: self.incarnation, body });
    }

    pub fn poll_message(&mut self) -> Option<ToReplication> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    pub fn handle(&mut self, now_us: u64, msg: ToServer) {
        if msg.server != self.id || msg.incarnation != self.incarnation || self.phase == Phase::Fenced {
            self.stats.messages_ignored += 1;
            return;
        }
        match msg.body {
            ReplicationMsg::Welcome { create_epoch, map } => {
                if self.phase != Phase::Registering {
                    self.stats.messages_ignored += 1;
                    return;
                }
                self.phase = Phase::Active;
                self.create_epoch = create_epoch;
                self.map = Some(map);
                // The registration was sent at start and heard no earlier, so a lease measured
                // from the start ends no later than the layer's view of it.
                self.lease_until_us = self.started_at_us + LEASE_DURATION_US;
            }
            ReplicationMsg::Lease { sent_at_us } => {
                self.lease_until_us = self.lease_until_us.max(sent_at_us + LEASE_DURATION_US);
            }
            ReplicationMsg::Map(map) => {
                if self.map.as_ref().is_none_or(|m| m.epoch < map.epoch) {
                    self.map = Some(map);
                }
            }
            ReplicationMsg::Adopt { entities } => {
                // A subtree already held under this epoch or a newer one is a replay: ignore it
                // whole rather than hold anything twice.
                let replay = entities.iter().any(|o| self.entities.get(&o.id).is_some_and(|h| h.epoch >= o.epoch));
                if replay {
                    self.stats.messages_ignored += 1;
                    return;
                }
                for owned in entities {
                    if let Some(old) = self.entities.remove(&owned.id) {
                        if let Some(p) = old.state.parent {
                            self.forest.unlink(owned.id, p);
                        }
                    }
                    if let Some(p) = owned.state.parent {
                        self.forest.link(owned.id, p);
                    }
                    let held = Held {
                        moved_until_tick: owned.state.changed_tick,
                        state: owned.state,
                        epoch: owned.epoch,
                        adopted_at_us: now_us,
                        input_seq: 0,
                        dirty: false,
                    };
                    self.entities.insert(owned.id, held);
                    self.stats.adopted += 1;
                }
            }
            ReplicationMsg::Fenced => self.fence(),
            ReplicationMsg::Ghosts(ghosts) => {
                self.ghost_grid.clear();
                for g in ghosts.iter().filter(|g| g.server != self.id) {
                    self.ghost_grid.insert(g.id, Vec3::from_array(g.position));
                }
                let mut ships: Vec<(EntityId, Vec3)> = ghosts
                    .iter()
                    .filter(|g| g.server != self.id && g.kind == EntityKind::Ship && !self.entities.contains_key(&g.id))
                    .map(|g| (g.id, Vec3::from_array(g.position)))
                    .collect();
                ships.sort_by_key(|(id, _)| *id);
                ships.dedup_by_key(|(id, _)| *id);
                self.physics.set_ghosts(ships.into_iter());
                self.ghosts = ghosts;
            }
            ReplicationMsg::Damage { target, damage } => self.damage.push((target, damage)),
            ReplicationMsg::Input { entity, seq, action } => self.handle_client_input(Input { entity, action }, seq),
        }
    }

    /// Queues an input for the next tick; it is validated when applied.
    pub fn handle_input(&mut self, input: Input) {
        self.inputs.push((input, 0));
    }

    /// A client's input for its entity, numbered by the client: applied like any input, and its
    /// number acknowledged once applied.
    pub fn handle_client_input(&mut self, input: Input, seq: u32) {
        self.inputs.push((input, seq.max(1)));
    }

    fn fence(&mut self) {
        self.phase = Phase::Fenced;
        self.entities.clear();
        self.forest = Forest::default();
        self.outbox.clear();
        self.inputs.clear();
        self.events.push_back(ServerEvent::Fenced);
    }

    /// A tick the runtime holds back under overload: nothing is simulated and the tick's inputs
    /// are dropped (counted), but the lease is renewed, so a slow world never fails a server over.
    pub fn hold(&mut self, now_us: u64) {
        if self.phase == Phase::Active && !self.is_acting(now_us) {
            self.fence();
        }
        self.stats.inputs_held_back += self.inputs.len() as u64;
        self.inputs.clear();
        if self.phase == Phase::Active {
            self.send(ServerMsg::Heartbeat { sent_at_us: now_us });
        }
    }

    pub fn tick(&mut self, now_us: u64) {
        let tick = now_us / self.tick_us;
        if self.phase == Phase::Active && !self.is_acting(now_us) {
            self.fence();
        }
        if self.phase != Phase::Active {
            self.inputs.clear();
            return;
        }
        self.stats.ticks += 1;
        self.leaving.clear();
        self.rebuild_input_grids();
        let mut client_inputs: BTreeMap<EntityId, u32> = BTreeMap::new();
        for (input, seq) in std::mem::take(&mut self.inputs) {
            if seq > 0 {
                // A client's: a few a tick at most, each newer than the last applied.
                let count = client_inputs.entry(input.entity).or_default();
                *count += 1;
                let stale = self.entities.get(&input.entity).is_some_and(|h| h.input_seq >= seq);
                if *count > CLIENT_INPUTS_PER_TICK_MAX || stale {
                    self.stats.inputs_rate_limited += 1;
                    continue;
                }
            }
            if self.apply(tick, &input) {
                self.stats.inputs_applied += 1;
                self.stats.actions[input.action.index()] += 1;
                if let Some(held) = self.entities.get_mut(&input.entity).filter(|_| seq > 0) {
                    held.input_seq = seq;
                }
            } else {
                self.stats.inputs_refused += 1;
            }
        }
        for (target, damage) in std::mem::take(&mut self.damage) {
            if self.entities.contains_key(&target) {
                let state = self.touch(target, tick);
                state.health = state.health.checked_sub(damage).filter(|h| *h > 0).unwrap_or(100);
                self.stats.damage_received += 1;
            }
        }
        self.integrate(tick);
        self.rebuild_grid();
        self.resolve_hits(tick);
        let mut leaving = self.roots_outside_regions();
        leaving.truncate(self.handoffs_per_tick_max);
        self.flush_deltas(tick);
        for root in leaving {
            self.hand_off(root);
        }
        if self.streaming.is_some() && tick % STREAM_PERIOD_TICKS == 0 {
            self.stream();
        }
        let ghosts = self.border_ghosts();
        self.send(ServerMsg::Ghosts { ghosts });
        self.send(ServerMsg::Heartbeat { sent_at_us: now_us });
    }

    /// The targets grid (players, NPCs, ships), rebuilt after movement for hits.
    fn rebuild_grid(&mut self) {
        self.grid.clear();
        for (id, held) in &self.entities {
            if matches!(held.state.kind, EntityKind::Player | EntityKind::Npc | EntityKind::Ship) {
                self.grid.insert(*id, held.state.pos());
            }
        }
    }

    /// The grids the inputs use, before they are applied: what can be picked up or boarded.
    /// (The targets grid is built after movement, where hits are resolved.)
    fn rebuild_input_grids(&mut self) {
        self.item_grid.clear();
        self.ship_grid.clear();
        for (id, held) in &self.entities {
            match held.state.kind {
                EntityKind::Item { .. } if held.state.parent.is_none() => self.item_grid.insert(*id, held.state.pos()),
                EntityKind::Ship => self.ship_grid.insert(*id, held.state.pos()),
                _ => {}
            }
        }
    }

    /// The world's bounds (an active server's).
    pub fn world(&self) -> crate::world::Aabb {
        self.map.as_ref().expect("active servers have a map").world
    }

    fn touch(&mut self, id: EntityId, tick: u64) -> &mut EntityState {
        let held = self.entities.get_mut(&id).expect("touched entities are held");
        held.dirty = true;
        held.state.changed_tick = tick;
        &mut held.state
    }

    fn state(&self, id: EntityId) -> Option<&EntityState> {
        self.entities.get(&id).map(|h| &h.state)
    }

    /// Applies one input under the game rules; false if refused.
    fn apply(&mut self, tick: u64, input: &Input) -> bool {
        let Some(actor) = self.state(input.entity).cloned() else { return false };
        match &input.action {
            Action::Move(dir) => {
                let dir = Vec3::from_array(*dir);
                if actor.parent.is_some() || !actor.kind.is_driven() || !dir.is_finite() {
                    return false;
                }
                let v = (dir.clamp_length_max(1.0) * speed_of(actor.kind)).to_array();
                if v != actor.velocity {
                    let state = self.touch(input.entity, tick);
                    state.velocity = v;
                    state.face(Vec3::from_array(v));
                }
                true
            }
            Action::Fire(dir) => {
                let dir = Vec3::from_array(*dir).normalize_or_zero();
                if dir == Vec3::ZERO || !matches!(actor.kind, EntityKind::Player | EntityKind::Ship) {
                    return false;
                }
                let id = EntityId::new(self.incarnation.0, self.next_counter);
                self.next_counter += 1;
                let mut state = EntityState::new(EntityKind::Projectile, actor.pos() + dir * (HIT_RADIUS_M + 0.5));
                state.velocity = (dir * speed_of(EntityKind::Projectile)).to_array();
                state.face(dir);
                state.ttl_ticks = PROJECTILE_TTL_US.div_ceil(self.tick_us).min(u16::MAX as u64) as u16;
                state.source = Some(input.entity);
                state.changed_tick = tick;
                let held = Held {
                    state,
                    epoch: self.create_epoch,
                    adopted_at_us: 0,
                    input_seq: 0,
                    moved_until_tick: 0,
                    dirty: true,
                };
                self.entities.insert(id, held);
                self.stats.created += 1;
                true
            }
            Action::PickUp => {
                let (grid, entities) = (&self.item_grid, &self.entities);
                let item = grid.nearest_by_id(actor.pos(), REACH_M, |id| {
                    id != input.entity
                        && entities.get(&id).is_some_and(|h| h.state.kind.is_item() && h.state.parent.is_none())
                });
                match item {
                    Some(item) => self.attach(tick, item, input.entity),
                    None => false,
                }
            }
            Action::Drop => {
                let item = self.forest.children(input.entity).find(|c| self.is_item(*c));
                match item {
                    Some(item) => self.detach(tick, item),
                    None => false,
                }
            }
            Action::Stow => {
                let hand: Vec<EntityId> = self.forest.children(input.entity).collect();
                let pack = hand.iter().copied().find(
                    |c| matches!(self.state(*c).map(|s| s.kind), Some(EntityKind::Item { capacity }) if capacity > 0),
                );
                let loose = hand
                    .iter()
                    .copied()
                    .find(|c| matches!(self.state(*c).map(|s| s.kind), Some(EntityKind::Item { capacity: 0 })));
                match (pack, loose) {
                    (Some(pack), Some(item)) => self.attach(tick, item, pack),
                    _ => false,
                }
            }
            Action::Unstow => {
                let packed =
                    self.forest.children(input.entity).flat_map(|c| self.forest.children(c).collect::<Vec<_>>()).next();
                match packed {
                    Some(item) => self.attach(tick, item, input.entity),
                    None => false,
                }
            }
            Action::Board => {
                if actor.parent.is_some() {
                    return false;
                }
                let (grid, entities) = (&self.ship_grid, &self.entities);
                let ship = grid.nearest_by_id(actor.pos(), BOARD_REACH_M, |id| {
                    entities.get(&id).is_some_and(|h| h.state.kind == EntityKind::Ship)
                });
                match ship {
                    Some(ship) => self.attach(tick, input.entity, ship),
                    None => false,
                }
            }
            Action::Disembark => {
                let aboard = actor.parent.and_then(|p| self.state(p)).is_some_and(|p| p.kind == EntityKind::Ship);
                aboard && self.detach(tick, input.entity)
            }
        }
    }

    fn is_item(&self, id: EntityId) -> bool {
        self.state(id).is_some_and(|s| s.kind.is_item())
    }

    /// Moves `child` (and its subtree) under `parent`, if the graph rules allow it.
    fn attach(&mut self, tick: u64, child: EntityId, parent: EntityId) -> bool {
        let (Some(c), Some(p)) = (self.state(child), self.state(parent)) else { return false };
        if child == parent || p.kind.capacity_for(c.kind) <= self.forest.child_count(parent) {
            return false;
        }
        if self.forest.subtree(child).contains(&parent) {
            return false;
        }
        let position = p.position;
        if let Some(old) = c.parent {
            self.forest.unlink(child, old);
        }
        self.forest.link(child, parent);
        let state = self.touch(child, tick);
        state.parent = Some(parent);
        state.velocity = [0.0; 3];
        self.place_subtree(tick, child, position);
        true
    }

    fn detach(&mut self, tick: u64, child: EntityId) -> bool {
        let Some(parent) = self.state(child).and_then(|s| s.parent) else { return false };
        self.forest.unlink(child, parent);
        self.touch(child, tick).parent = None;
        true
    }

    fn place_subtree(&mut self, tick: u64, root: EntityId, position: [f32; 3]) {
        if self.forest.child_count(root) == 0 {
            let held = self.entities.get_mut(&root).expect("placed entities are held");
            if held.state.position != position {
                held.state.position = position;
                held.state.changed_tick = tick;
                held.dirty = true;
            }
            return;
        }
        for id in self.forest.subtree(root) {
            let held = self.entities.get_mut(&id).expect("subtree entities are held");
            if held.state.position != position {
                held.state.position = position;
                held.state.changed_tick = tick;
                held.dirty = true;
            }
        }
    }

    /// Moves every root; children ride along. rapier moves ships and projectiles (ships collide
    /// with ships); walkers and loose items move by their velocity. Projectiles age and vanish at
    /// the world's edge; everything else bounces off it.
    fn integrate(&mut self, tick: u64) {
        let dt = self.tick_us as f32 / 1e6;
        let world = self.world();
        let simulated = |h: &Held| h.state.parent.is_none() && physics::is_simulated(h.state.kind);
        self.physics.sync(
            self.entities
                .iter()
                .filter(|(_, h)| simulated(h))
                .map(|(id, h)| (*id, h.state.kind, h.state.pos(), h.state.vel())),
        );
        self.physics.step();
        let roots: Vec<EntityId> = self
            .entities
            .iter()
            .filter(|(_, h)| {
                h.state.parent.is_none() && (h.state.vel() != Vec3::ZERO || h.state.ttl_ticks > 0 || simulated(h))
            })
            .filter(|(_, h)| h.moved_until_tick < tick)
            .map(|(id, _)| *id)
            .collect();
        for id in roots {
            let current = &self.entities[&id].state;
            let (mut next, mut velocity) = match self.physics.motion(id) {
                Some((next, velocity)) => governed(current, next, velocity, dt),
                None => (current.pos() + current.vel() * dt, current.vel()),
            };
            // Hulls resting against each other are nudged apart by the solver a hair each tick,
            // forever; at rest is at rest.
            if current.kind != EntityKind::Projectile && velocity.length() < crate::limits::REST_SPEED_M_S {
                velocity = Vec3::ZERO;
                if next.distance(current.pos()) < crate::limits::REST_SPEED_M_S * dt {
                    next = current.pos();
                }
            }
            if current.kind != EntityKind::Projectile && next == current.pos() && velocity == current.vel() {
                // A ship at rest that nothing bumped.
                continue;
            }
            let state = self.touch(id, tick);
            state.velocity = velocity.to_array();
            if state.kind == EntityKind::Projectile {
                state.ttl_ticks = state.ttl_ticks.saturating_sub(1);
                if state.ttl_ticks == 0 || !world.contains(next) {
                    self.destroy(id);
                    continue;
                }
                state.position = next.to_array();
                continue;
            }
            let clamped = world.clamp(next);
            if clamped != next {
                let bounce = Vec3::select(clamped.cmpne(next), -Vec3::ONE, Vec3::ONE);
                state.velocity = (state.vel() * bounce).to_array();
            }
            state.position = clamped.to_array();
            self.place_subtree(tick, id, clamped.to_array());
        }
    }

    fn destroy(&mut self, id: EntityId) {
        let held = self.entities.remove(&id).expect("destroyed entities are held");
        debug_assert_eq!(self.forest.child_count(id), 0, "only leaf entities are destroyed");
        self.destroyed.push((id, held.epoch));
        self.stats.destroyed += 1;
    }

    /// A projectile hits the first thing on the path it swept this tick (not what fired it): a
    /// player or NPC that came within reach of the path, or a ship's hull (rapier's ray cast),
    /// held here or seen as a ghost. At 1500 m/s it moves 50 m a tick, so testing only where it
    /// ends would let it pass through. Two at the same point of the path: the smaller id.
    fn resolve_hits(&mut self, tick: u64) {
        let dt = self.tick_us as f32 / 1e6;
        let projectiles: Vec<(EntityId, Vec3, Vec3, Option<EntityId>)> = self
            .entities
            .iter()
            .filter(|(_, h)| h.state.kind == EntityKind::Projectile)
            .map(|(id, h)| (*id, h.state.pos() - h.state.vel() * dt, h.state.pos(), h.state.source))
            .collect();
        let walker = |kind: EntityKind| matches!(kind, EntityKind::Player | EntityKind::Npc);
        for (projectile, from, to, source) in projectiles {
            let pad = Vec3::splat(HIT_RADIUS_M);
            // (how far along the path, target, a ghost)
            let mut hits: Vec<(f32, EntityId, bool)> = Vec::new();
            let entities = &self.entities;
            self.grid.query(from.min(to) - pad, from.max(to) + pad, |id, at| {
                if Some(id) != source
                    && distance_to_segment(at, from, to) <= HIT_RADIUS_M
                    && entities.get(&id).is_some_and(|h| walker(h.state.kind))
                {
                    hits.push((along_segment(at, from, to), id, false));
                }
            });
            let ghosts = &self.ghosts;
            self.ghost_grid.query(from.min(to) - pad, from.max(to) + pad, |id, at| {
                if Some(id) != source
                    && distance_to_segment(at, from, to) <= HIT_RADIUS_M
                    && !entities.contains_key(&id)
                    && ghosts.iter().any(|g| g.id == id && walker(g.kind))
                {
                    hits.push((along_segment(at, from, to), id, true));
                }
            });
            if let Some((ship, along)) = self.physics.first_hull_on(from, to, source) {
                hits.push((along, ship, !entities.contains_key(&ship)));
            }
            let first = hits.into_iter().min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            match first {
                Some((_, ghost, true)) => {
                    self.destroy(projectile);
                    self.stats.hits += 1;
                    self.stats.remote_hits += 1;
                    self.send(ServerMsg::Hit { target: ghost, damage: PROJECTILE_DAMAGE });
                }
                Some((_, target, false)) => {
                    let state = self.touch(target, tick);
                    // Damage; at zero health the entity is restored, never removed, so counts hold.
                    state.health = state.health.checked_sub(PROJECTILE_DAMAGE).filter(|h| *h > 0).unwrap_or(100);
                    self.destroy(projectile);
                    self.stats.hits += 1;
                }
                None => {}
            }
        }
    }

    /// Held players, NPCs and ships within `GHOST_MARGIN_M` of a region another server owns:
    /// what neighbouring servers must see. Entities deep inside this server's area, or by the
    /// world's edge, are nobody else's business.
    fn border_ghosts(&self) -> Vec<Ghost> {
        let map = self.map.as_ref().expect("active servers have a map");
        let margin = Vec3::splat(GHOST_MARGIN_M);
        // For each region of this server, the foreign regions within the margin of it.
        let mut near: Vec<(crate::world::RegionId, Vec<crate::world::Aabb>)> = Vec::new();
        for mine in map.regions_of(self.id) {
            let reach = crate::world::Aabb::new(mine.bounds.min() - margin, mine.bounds.max() + margin);
            let foreign: Vec<_> = map
                .regions()
                .iter()
                .filter(|r| r.server != Some(self.id) && r.bounds.overlaps(&reach))
                .map(|r| r.bounds)
                .collect();
            if !foreign.is_empty() {
                near.push((mine.id, foreign));
            }
        }
        if near.is_empty() {
            return Vec::new();
        }
        self.entities
            .iter()
            .filter(|(_, h)| matches!(h.state.kind, EntityKind::Player | EntityKind::Npc | EntityKind::Ship))
            .filter(|(_, h)| {
                let p = h.state.pos();
                let region = map.region_at(p).id;
                near.iter()
                    .find(|(r, _)| *r == region)
                    .is_some_and(|(_, foreign)| foreign.iter().any(|b| distance_to_box(p, b) <= GHOST_MARGIN_M))
            })
            .map(|(id, h)| Ghost { id: *id, kind: h.state.kind, position: h.state.position, server: self.id })
            .collect()
    }

    fn roots_outside_regions(&self) -> Vec<EntityId> {
        let map = self.map.as_ref().expect("active servers have a map");
        self.entities
            .iter()
            .filter(|(_, h)| h.state.parent.is_none() && map.owner_at(h.state.pos()) != Some(self.id))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every change of the tick, leaving entities included: a handoff may only carry what the
    /// layer already knows the shape of, or a child dropped this tick would travel with it.
    fn flush_deltas(&mut self, tick: u64) {
        let mut entries: Vec<Delta> = Vec::new();
        // Every root first, then the children, parents before their own children: whatever left
        // a parent this tick (and is a root now) is off its parent's list before anything joins
        // it, so the layer never counts a parent over its capacity, nor sees an unknown parent.
        let roots: Vec<EntityId> =
            self.entities.iter().filter(|(_, h)| h.state.parent.is_none()).map(|(id, _)| *id).collect();
        let mut order: Vec<EntityId> = roots.clone();
        for root in roots {
            if self.forest.child_count(root) > 0 {
                order.extend(self.forest.subtree(root).into_iter().skip(1));
            }
        }
        for id in order {
            let held = self.entities.get_mut(&id).expect("ordered entities are held");
            if held.dirty {
                held.dirty = false;
                entries.push(Delta::Upsert(Owned { id, epoch: held.epoch, state: held.state.clone() }));
            }
        }
        for (id, epoch) in self.destroyed.drain(..) {
            entries.push(Delta::Destroy { id, epoch });
        }
        if !entries.is_empty() {
            self.stats.deltas_sent += entries.len() as u64;
            self.send(ServerMsg::Deltas { tick, entries });
        }
    }

    fn hand_off(&mut self, root: EntityId) {
        let entities = self.remove_subtree(root);
        self.stats.handed_off += entities.len() as u64;
        self.leaving.extend(entities.iter().map(|o| (o.id, o.state.clone())));
        self.send(ServerMsg::Handoff { root, entities });
    }

    /// Drops `root` and everything in it, parents first.
    fn remove_subtree(&mut self, root: EntityId) -> Vec<Owned> {
        let ids = self.forest.subtree(root);
        let mut entities = Vec::with_capacity(ids.len());
        for id in &ids {
            let held = self.entities.remove(id).expect("subtree entities are held");
            if let Some(p) = held.state.parent {
                self.forest.unlink(*id, p);
            }
            entities.push(Owned { id: *id, epoch: held.epoch, state: held.state });
        }
        entities
    }

    /// One streaming pass: load the containers in this server's regions that a player (held,
    /// or a neighbour's seen as a ghost) has come near; unload the loaded ones no player is near
    /// any more, giving their loose items back to the layer. A loose item held in a container
    /// that is not loaded (adopted while an unload was on its way) goes back too.
    fn stream(&mut self) {
        const KEEP: u8 = 1;
        const WANT: u8 = 2;
        let index = self.streaming.clone().expect("streaming is on");
        let players: Vec<Vec3> = self
            .entities
            .values()
            .filter(|h| h.state.kind == EntityKind::Player)
            .map(|h| h.state.pos())
            .chain(self.ghosts.iter().filter(|g| g.kind == EntityKind::Player).map(|g| Vec3::from_array(g.position)))
            .collect();
        let mut touched: Vec<ContainerId> = Vec::new();
        for p in players {
            let marks = &mut self.marks;
            index.near(p, STREAM_UNLOAD_RADIUS_M, |c| {
                let mark = &mut marks[c as usize];
                if *mark == 0 {
                    touched.push(c);
                }
                *mark |= KEEP;
                if *mark & WANT == 0 && index.is_near(c, p, STREAM_LOAD_RADIUS_M) {
                    *mark |= WANT;
                }
            });
        }
        let map = self.map.as_ref().expect("active servers have a map");
        let mine: Vec<crate::world::Aabb> = map.regions_of(self.id).map(|r| r.bounds).collect();
        let mut loads = Vec::new();
        for &c in &touched {
            let in_my_regions = || index.bounds(c).is_some_and(|b| mine.iter().any(|r| r.overlaps(&b)));
            if self.marks[c as usize] & WANT != 0 && !self.loaded.contains(&c) && in_my_regions() {
                loads.push(c);
            }
        }
        let dropped: Vec<ContainerId> =
            self.loaded.iter().copied().filter(|c| self.marks[*c as usize] & KEEP == 0).collect();
        for c in touched {
            self.marks[c as usize] = 0;
        }
        for c in &dropped {
            self.loaded.remove(c);
        }
        self.loaded.extend(loads.iter().copied());
        let mut unloads: BTreeMap<ContainerId, Vec<(EntityId, Epoch)>> =
            dropped.into_iter().map(|c| (c, Vec::new())).collect();
        for (id, h) in &self.entities {
            if is_streamed(&h.state) && map.owner_at(h.state.pos()) == Some(self.id) {
                let c = index.locate(h.state.pos());
                if !self.loaded.contains(&c) {
                    unloads.entry(c).or_default().push((*id, h.epoch));
                }
            }
        }
        for (container, roots) in unloads {
            for (root, _) in &roots {
                self.stats.roots_unloaded += 1;
                self.remove_subtree(*root);
            }
            self.send(ServerMsg::Unload { container, roots });
        }
        for container in loads {
            self.stats.containers_loaded += 1;
            self.send(ServerMsg::Load { container });
        }
    }
}

/// Distance from `p` to the segment `a`..`b`.
/// How far along the segment `a`..`b` the point nearest `p` is (0 at `a`, 1 at `b`).
pub fn along_segment(p: Vec3, a: Vec3, b: Vec3) -> f32 {
    let ab = b - a;
    if ab.length_squared() > 0.0 {
        ((p - a).dot(ab) / ab.length_squared()).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

pub fn distance_to_segment(p: Vec3, a: Vec3, b: Vec3) -> f32 {
    let ab = b - a;
    let t = if ab.length_squared() > 0.0 { ((p - a).dot(ab) / ab.length_squared()).clamp(0.0, 1.0) } else { 0.0 };
    p.distance(a + ab * t)
}

/// Distance from `p` to the box `b` (0 inside).
pub fn distance_to_box(p: Vec3, b: &crate::world::Aabb) -> f32 {
    p.distance(p.clamp(b.min(), b.max()))
}
