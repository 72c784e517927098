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

mod borders;
mod motion;
mod rules;
mod streaming;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use glam::Vec3;

use super::messages::{
    subtree_ranges, Delta, Epoch, Ghost, Incarnation, Owned, ReplicationMsg, ServerMsg, ToReplication, ToServer,
};
use super::physics::{self, Physics};
pub use crate::limits::CLIENT_INPUTS_PER_TICK_MAX;
use crate::limits::{
    BATCH_ENTITIES_MAX, BOARD_REACH_M, GHOST_MARGIN_M, GRID_CELL_M, HANDOFFS_PER_TICK_MAX, HIT_GRID_CELL_M,
    HIT_RADIUS_M, LEASE_DURATION_US, PRESENCE_CELL_M, PROJECTILE_DAMAGE, PROJECTILE_TTL_US, REACH_M, TICK_DURATION_US,
};
use crate::world::stream::{STREAM_LOAD_RADIUS_M, STREAM_PERIOD_US, STREAM_UNLOAD_RADIUS_M};
use crate::world::{
    is_streamed, ContainerId, EntityId, EntityKind, EntityMap, EntityState, Forest, Grid, RegionMap, ServerId,
    StreamIndex, Tick,
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
        EntityKind::Player => crate::limits::PLAYER_SPEED_M_S,
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
    moved_until_tick: Tick,
    dirty: bool,
}

impl Held {
    /// Its state, to be changed in `tick`: marked for the tick's deltas.
    fn touch(&mut self, tick: Tick) -> &mut EntityState {
        self.dirty = true;
        self.state.changed_tick = tick;
        &mut self.state
    }

    /// Where the entity is as of `tick` (ticks of `tick_us`), inside `world`. One adopted from a
    /// core that ticks ahead carries its state of a later tick (and stays put until this server's
    /// tick reaches it): as of `tick` it is that many ticks' motion back.
    pub fn position_at(&self, tick: Tick, tick_us: u64, world: &crate::world::Aabb) -> [f32; 3] {
        let ahead = self.moved_until_tick.since(tick);
        if ahead == 0 {
            return self.state.position;
        }
        let dt = ahead as f32 * tick_us as f32 / 1e6;
        world.clamp(self.state.pos() - self.state.vel() * dt).to_array()
    }
}

/// How a crash drill's panic begins (`Server::panic_mid_tick`): a runtime's panic hook keeps it
/// quiet (no backtrace to print and resolve mid-tick), and the driver reports it in a line.
pub const DRILL_PANIC: &str = "a crash drill";

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
    /// Projectiles stopped where their path left this server's regions, to be handed on there.
    pub shots_handed_on: u64,
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
    /// Players handed back because their accounts logged out.
    pub logged_out: u64,
    /// Times the entity table was rebuilt smaller after a crowd left it mostly empty.
    pub tables_shrunk: u64,
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
    entities: EntityMap<Held>,
    forest: Forest,
    destroyed: Vec<(EntityId, Epoch)>,
    /// Inputs for the next tick, each with its client sequence number (0: not a client's).
    inputs: Vec<(Input, u32)>,
    /// Players whose accounts logged out: handed back to the layer (which parks them) this tick.
    logging_out: Vec<EntityId>,
    outbox: VecDeque<ToReplication>,
    events: VecDeque<ServerEvent>,
    /// Where everything held is, rebuilt each tick for the game rules' "what is near".
    grid: Grid,
    /// Loose items and ships, apart from the crowd: a pickup or a boarding in a dense crowd
    /// looks only at what it could take.
    item_grid: Grid,
    ship_grid: Grid,
    /// The ships met while the items' grid is built, for the ships' grid: one pass over what is
    /// held for both (kept for the next tick).
    ships_seen: Vec<(EntityId, Vec3)>,
    /// Other servers' border entities, read-only, and where they are.
    ghosts: Vec<Ghost>,
    /// Where other servers' players stand near this server's regions (cells' centres), for
    /// streaming.
    presence: Vec<[f32; 3]>,
    ghost_grid: Grid,
    /// rapier3d's world: the ships and projectiles held, and ghost ships.
    physics: Physics,
    /// Damage from other servers' projectiles, applied at the next tick.
    damage: Vec<(EntityId, u16)>,
    /// What this tick's handoffs gave up, as it was when it left: until another server adopts
    /// it, this is where it is.
    leaving: Vec<(EntityId, EntityState)>,
    /// Scratch space for one subtree at a time (moving what a root carries).
    subtree: Vec<EntityId>,
    /// How many deltas and ghosts the last tick sent: this tick's lists start that large (a
    /// crowd's are tens of thousands, and grown by doubling each was copied over and over).
    sent_last_tick: (usize, usize),
    /// Container streaming, when on: the world's containers, and those this server has asked
    /// the layer to load. Marks are scratch space for one streaming pass.
    streaming: Option<Arc<StreamIndex>>,
    loaded: BTreeSet<ContainerId>,
    marks: Vec<u8>,
    pub stats: ServerStats,
    /// Test-only planted bug: keep acting after the lease ran out.
    pub planted_ignore_lease: bool,
    /// Whether this incarnation has run a streaming pass yet.
    streamed: bool,
    /// Took over a crashed incarnation's containers: no streaming pass before this (game time)
    /// unless it holds something, so they are not unloaded before its entities arrive.
    keep_loaded_until_us: u64,
    /// Heard a new map: streaming gives nothing back before this (game time,
    /// `STREAM_HOLD_AFTER_MAP_US`).
    hold_unloads_until_us: u64,
    /// A drill: the next tick panics halfway, its entities moved and nothing of it sent (what
    /// `--chaos-crash-every` does to a random server).
    panic_mid_tick: bool,
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
            entities: EntityMap::default(),
            forest: Forest::default(),
            destroyed: Vec::new(),
            inputs: Vec::new(),
            logging_out: Vec::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            grid: Grid::new(HIT_GRID_CELL_M),
            item_grid: Grid::new(GRID_CELL_M),
            ship_grid: Grid::new(GRID_CELL_M),
            ships_seen: Vec::new(),
            ghosts: Vec::new(),
            presence: Vec::new(),
            ghost_grid: Grid::new(HIT_GRID_CELL_M),
            physics: Physics::new(),
            damage: Vec::new(),
            leaving: Vec::new(),
            subtree: Vec::new(),
            sent_last_tick: (0, 0),
            streaming: None,
            loaded: BTreeSet::new(),
            marks: Vec::new(),
            stats: ServerStats::default(),
            planted_ignore_lease: false,
            panic_mid_tick: false,
            streamed: false,
            keep_loaded_until_us: 0,
            hold_unloads_until_us: 0,
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
    /// A crash drill: this server's next tick panics halfway through, after its entities moved
    /// and before any of it is sent.
    pub fn panic_mid_tick(&mut self) {
        self.panic_mid_tick = true;
    }

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

    pub fn held(&self) -> &EntityMap<Held> {
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
            ReplicationMsg::Welcome { create_epoch, map, loaded } => {
                if self.phase != Phase::Registering {
                    self.stats.messages_ignored += 1;
                    return;
                }
                self.phase = Phase::Active;
                self.create_epoch = create_epoch;
                self.map = Some(map);
                if let Some(index) = &self.streaming {
                    // A crashed incarnation's containers: this one holds their items from now on,
                    // and its streaming passes unload what its players are not near.
                    self.loaded.extend(loaded.into_iter().filter(|c| index.bounds(*c).is_some()));
                    if !self.loaded.is_empty() {
                        self.keep_loaded_until_us = now_us + 2 * self.tick_us;
                    }
                }
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
                    self.hold_unloads_until_us = now_us.saturating_add(crate::limits::STREAM_HOLD_AFTER_MAP_US);
                }
            }
            ReplicationMsg::Adopt { entities } => {
                let Some(subtrees) = subtree_ranges(&entities, |o| o.state.parent.is_none()) else {
                    self.stats.messages_ignored += 1;
                    return;
                };
                // A subtree already held under its epoch or a newer one is a replay: ignore it
                // whole rather than hold anything twice.
                let replays: Vec<bool> = subtrees
                    .iter()
                    .map(|r| {
                        entities[r.clone()].iter().any(|o| self.entities.get(&o.id).is_some_and(|h| h.epoch >= o.epoch))
                    })
                    .collect();
                let mut entities = entities.into_iter();
                for (range, replay) in subtrees.into_iter().zip(replays) {
                    let subtree = entities.by_ref().take(range.len());
                    if replay {
                        self.stats.messages_ignored += 1;
                        subtree.for_each(drop);
                        continue;
                    }
                    for owned in subtree {
                        self.adopt(now_us, owned);
                    }
                }
            }
            ReplicationMsg::Fenced => self.fence(),
            ReplicationMsg::Ghosts { ghosts, presence } => {
                self.presence = presence;
                // Only walkers: the grid is where a projectile looks for a ghost it hits (ships
                // are hulls in physics), and finding one must not scan every ghost.
                let walker = |kind: EntityKind| matches!(kind, EntityKind::Player | EntityKind::Npc);
                let me = self.id;
                self.ghost_grid.rebuild(
                    ghosts
                        .iter()
                        .filter(|g| g.server != me && walker(g.kind))
                        .map(|g| (g.id, Vec3::from_array(g.position))),
                );
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
            ReplicationMsg::LogOut { entity } => self.logging_out.push(entity),
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
        self.logging_out.clear();
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

    fn adopt(&mut self, now_us: u64, owned: Owned) {
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

    pub fn tick(&mut self, now_us: u64) {
        let tick = Tick::at_game_us(now_us, self.tick_us);
        if self.phase == Phase::Active && !self.is_acting(now_us) {
            self.fence();
        }
        if self.phase != Phase::Active {
            self.inputs.clear();
            self.logging_out.clear();
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
                if *count > crate::limits::client_inputs_per_tick(self.tick_us) || stale {
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
        if std::mem::take(&mut self.panic_mid_tick) {
            panic!("{}: server {} panics halfway through tick {tick}", DRILL_PANIC, self.id);
        }
        self.rebuild_grid();
        self.resolve_hits(tick);
        // The border pass comes after the tick's moves and hits: what leaves is shown as a ghost
        // where it stands too (a neighbour that now holds it ignores the ghost).
        let settled = now_us >= self.hold_unloads_until_us;
        let borders = self.border_pass(settled);
        let mut leaving = borders.leaving;
        if leaving.len() > self.handoffs_per_tick_max {
            // The farthest past first: a region that moved drains while a crowd milling on a
            // border waits (and mostly walks back) instead of taking the tick's handoffs.
            let cap = self.handoffs_per_tick_max;
            leaving.select_nth_unstable_by(cap, |a, b| b.0.total_cmp(&a.0));
            leaving.truncate(cap);
        }
        let mut leaving: Vec<EntityId> = leaving.into_iter().map(|(_, id)| id).collect();
        // Players logged out leave with what they carry, off whatever they were aboard.
        for player in std::mem::take(&mut self.logging_out) {
            if self.entities.get(&player).is_none_or(|h| h.state.kind != EntityKind::Player) {
                continue;
            }
            self.detach(tick, player);
            if !leaving.contains(&player) {
                leaving.push(player);
            }
            self.stats.logged_out += 1;
        }
        self.flush_deltas(tick);
        self.hand_off(leaving);
        self.shrink_if_sparse();
        // A fresh incarnation streams in as soon as it holds something (a failover: the items
        // around its players wait at rest until it has loaded their containers); one that took
        // over a crashed incarnation's containers keeps them until its entities arrive. Then
        // once a period, each server of a core on its own tick of it (by id), so a core's
        // servers do not all pay for the pass in the same tick.
        let period = crate::limits::ticks_in(STREAM_PERIOD_US, self.tick_us);
        let periodic = Tick(tick.get().wrapping_add(self.id.0 as u64)).is_every(period);
        let waiting = !self.streamed && self.entities.is_empty() && now_us < self.keep_loaded_until_us;
        // While a new map settles, every tick: the region's new owner loads what its neighbours'
        // players stand by as soon as it hears of them.
        if self.streaming.is_some() && !waiting && (!self.streamed || periodic || !settled) {
            self.stream(settled);
            self.streamed = true;
        }
        self.sent_last_tick.1 = borders.ghosts.len();
        self.send(ServerMsg::Ghosts { ghosts: borders.ghosts, presence: borders.presence });
        self.send(ServerMsg::Heartbeat { sent_at_us: now_us });
    }

    /// Rebuilds the entity table at the size of what it holds once a crowd has left it mostly
    /// empty (`ENTITY_TABLE_SHRINK_BELOW`): the tick's passes walk every bucket.
    fn shrink_if_sparse(&mut self) {
        use crate::limits::{ENTITY_TABLE_SHRINK_BELOW, ENTITY_TABLE_SHRINK_MIN, ENTITY_TABLE_SLACK};
        let (len, capacity) = (self.entities.len(), self.entities.capacity());
        if capacity >= ENTITY_TABLE_SHRINK_MIN && (len as f64) < ENTITY_TABLE_SHRINK_BELOW * capacity as f64 {
            self.entities.shrink_to(len + (ENTITY_TABLE_SLACK * len as f64) as usize);
            self.stats.tables_shrunk += 1;
        }
    }

    /// The targets grid (players, NPCs, ships), rebuilt after movement for hits.
    fn rebuild_grid(&mut self) {
        self.grid.rebuild(
            self.entities
                .iter()
                .filter(|(_, held)| matches!(held.state.kind, EntityKind::Player | EntityKind::Npc | EntityKind::Ship))
                .map(|(id, held)| (*id, held.state.pos())),
        );
    }

    /// The grids the inputs use, before they are applied: what can be picked up or boarded.
    /// (The targets grid is built after movement, where hits are resolved.)
    fn rebuild_input_grids(&mut self) {
        let mut ships = std::mem::take(&mut self.ships_seen);
        ships.clear();
        self.item_grid.rebuild(self.entities.iter().filter_map(|(id, h)| match h.state.kind {
            EntityKind::Item { .. } if h.state.parent.is_none() => Some((*id, h.state.pos())),
            EntityKind::Ship => {
                ships.push((*id, h.state.pos()));
                None
            }
            _ => None,
        }));
        self.ship_grid.rebuild(ships.iter().copied());
        self.ships_seen = ships;
    }

    /// The world's bounds (an active server's).
    pub fn world(&self) -> crate::world::Aabb {
        self.map.as_ref().expect("active servers have a map").world
    }

    fn touch(&mut self, id: EntityId, tick: Tick) -> &mut EntityState {
        self.entities.get_mut(&id).expect("touched entities are held").touch(tick)
    }

    fn state(&self, id: EntityId) -> Option<&EntityState> {
        self.entities.get(&id).map(|h| &h.state)
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

/// How far a border entity of this kind is shown to neighbouring servers in a world whose ticks
/// are `tick_us` long: ship hulls widely, walkers in a narrow strip (`walker_ghost_margin_m`);
/// anything else is never a ghost.
pub fn ghost_margin_m(kind: EntityKind, tick_us: u64) -> Option<f32> {
    match kind {
        EntityKind::Ship => Some(GHOST_MARGIN_M),
        EntityKind::Player | EntityKind::Npc => Some(crate::limits::walker_ghost_margin_m(tick_us)),
        EntityKind::Projectile | EntityKind::Item { .. } => None,
    }
}

/// The `PRESENCE_CELL_M` cell a player at `p` stands in.
pub fn presence_cell(p: Vec3) -> glam::IVec3 {
    (p / PRESENCE_CELL_M).floor().as_ivec3()
}

/// The centre of a presence cell: where it stands for the players in it.
pub fn presence_centre(cell: glam::IVec3) -> Vec3 {
    (cell.as_vec3() + 0.5) * PRESENCE_CELL_M
}

/// How far a presence cell's centre may be from a player in it (half its diagonal): streaming
/// widens its radii by this, so a container loads no later than for the players themselves.
pub fn presence_slack_m() -> f32 {
    PRESENCE_CELL_M * 3f32.sqrt() / 2.0
}

/// Where (0..1) the segment `from..to` leaves the box `b`, taking the line on past `to`.
fn leaves_box_at(b: &crate::world::Aabb, from: Vec3, to: Vec3) -> f32 {
    let d = to - from;
    let mut exit = f32::INFINITY;
    for axis in 0..3 {
        let wall = if d[axis] > 0.0 {
            b.max()[axis]
        } else if d[axis] < 0.0 {
            b.min()[axis]
        } else {
            continue;
        };
        exit = exit.min((wall - from[axis]) / d[axis]);
    }
    exit
}

/// Distance from `p` to the box `b` (0 inside).
pub fn distance_to_box(p: Vec3, b: &crate::world::Aabb) -> f32 {
    p.distance(p.clamp(b.min(), b.max()))
}

/// Whether `p` lies within `reach` of any of `boxes` (squared distances: no root taken).
pub fn within_any(p: Vec3, boxes: &[crate::world::Aabb], reach: f32) -> bool {
    let reach_sq = reach * reach;
    boxes.iter().any(|b| p.distance_squared(p.clamp(b.min(), b.max())) <= reach_sq)
}

/// The gap between two boxes (0 where they touch or overlap).
pub fn box_gap(a: &crate::world::Aabb, b: &crate::world::Aabb) -> f32 {
    (a.min() - b.max()).max(b.min() - a.max()).max(Vec3::ZERO).length()
}
