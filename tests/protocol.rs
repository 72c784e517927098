//! The protocol state machines on their edge cases. A harness drives nodes tick by tick as the
//! runtime does (servers and slice over a direct wire, nodes through mailboxes); a test holds
//! messages back, cuts a server off, or hands a slice a replayed, reordered or late message.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use glam::Vec3;
use shardmesh::limits::{LEASE_DURATION_US, TICK_DURATION_US};
use shardmesh::node::{Direct, Durable, LogRecord, Node, NodeConfig, NodeIo, Step, Wire};
use shardmesh::protocol::{Delta, Epoch, Owned, ReplicationMsg, ServerMsg, SliceId, SliceMsg, ToReplication, ToServer};
use shardmesh::protocol::{Replication, Server};
use shardmesh::world::{Aabb, EntityId, EntityKind, EntityState, RegionId, RegionMap, ServerId, StreamIndex, Tick};

/// Three regions in a row along x: A = [0, 40) for s0, B = [40, 80) for s1, C = [80, 160) for s2.
fn three_regions() -> RegionMap {
    let mut map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::new(160.0, 20.0, 20.0)), 1);
    let (left, _right) = map.split(RegionId(0)).unwrap();
    map.split(left).unwrap();
    map
}

fn region_at(map: &RegionMap, x: f32) -> RegionId {
    map.region_at(Vec3::new(x, 10.0, 10.0)).id
}

/// The wire between a node's servers and its slice in these tests: direct, but a test can hold
/// the slice's messages to servers back, or cut one server off.
#[derive(Default)]
struct TestWire {
    direct: Direct,
    hold: bool,
    held_back: Vec<ToServer>,
    cut_off: Option<ServerId>,
}

impl Wire for TestWire {
    fn to_slice(&mut self, now: u64, from: ServerId, msg: ToReplication) -> Result<(), String> {
        if self.cut_off == Some(from) {
            return Ok(());
        }
        self.direct.to_slice(now, from, msg)
    }
    fn to_server(&mut self, now: u64, msg: ToServer) -> Result<(), String> {
        if self.cut_off == Some(msg.server) {
            return Ok(());
        }
        if self.hold {
            self.held_back.push(msg);
            return Ok(());
        }
        self.direct.to_server(now, msg)
    }
    fn recv_for_slice(&mut self, now: u64) -> Option<(ServerId, ToReplication)> {
        self.direct.recv_for_slice(now)
    }
    fn recv_for_server(&mut self, now: u64) -> Option<ToServer> {
        self.direct.recv_for_server(now)
    }
    fn server_stopped(&mut self, id: ServerId) {
        self.direct.server_stopped(id)
    }
}

/// Messages between nodes: a mailbox each, delivered at the receiver's next tick or exchange.
struct TestIo<'a> {
    me: SliceId,
    mailboxes: &'a mut [VecDeque<(SliceId, SliceMsg)>],
    overloaded: bool,
    /// What the node gave its log (none of it is made durable: a test says what is).
    log: &'a mut Vec<LogRecord>,
}

impl NodeIo for TestIo<'_> {
    fn receive(&mut self, into: &mut Vec<(SliceId, SliceMsg)>) {
        into.extend(self.mailboxes[self.me.0 as usize].drain(..));
    }
    fn send(&mut self, to: SliceId, msg: &SliceMsg) {
        self.mailboxes[to.0 as usize].push_back((self.me, msg.clone()));
    }
    fn overloaded(&self) -> bool {
        self.overloaded
    }
    fn log(&mut self, _tick: Tick, records: &mut Vec<LogRecord>) -> Option<Result<Durable, String>> {
        self.log.extend(records.drain(..).filter(|r| !matches!(r, LogRecord::Batch(b) if b.ops.is_empty())));
        None
    }
}

/// Nodes (cores) driven tick by tick, as the runtime drives them; server `s` lives on node
/// `s % nodes`. Regions are owned from the start as `owners` says.
struct Mesh {
    nodes: Vec<Node<TestWire>>,
    mailboxes: Vec<VecDeque<(SliceId, SliceMsg)>>,
    logs: Vec<Vec<LogRecord>>,
    now: u64,
    /// Every node's messages for other nodes wait past their bound: servers hold back.
    overloaded: bool,
    /// Game time a tick is.
    tick_us: u64,
}

impl Mesh {
    fn new(nodes: u16, servers: u32, map: RegionMap, entities: Vec<(EntityId, EntityState)>) -> Self {
        Self::build(nodes, servers, map, entities, None, TICK_DURATION_US)
    }

    /// Servers and slices that stream containers as players come near.
    fn with_streaming(
        nodes: u16,
        servers: u32,
        map: RegionMap,
        entities: Vec<(EntityId, EntityState)>,
        index: Arc<StreamIndex>,
    ) -> Self {
        Self::build(nodes, servers, map, entities, Some(index), TICK_DURATION_US)
    }

    fn build(
        nodes: u16,
        servers: u32,
        map: RegionMap,
        entities: Vec<(EntityId, EntityState)>,
        streaming: Option<Arc<StreamIndex>>,
        tick_us: u64,
    ) -> Self {
        let incarnations = Arc::new(AtomicU32::new(1));
        let mut initial = Some(entities);
        let nodes = (0..nodes)
            .map(|i| {
                let mut slice =
                    Replication::new_slice(SliceId(i), nodes, map.clone(), initial.take().unwrap_or_default());
                if let Some(index) = &streaming {
                    slice = slice.with_streaming(index.clone());
                }
                let cfg = NodeConfig { streaming: streaming.clone(), tick_us, ..NodeConfig::new(i as usize, 0) };
                let hosted = (0..servers).filter(|s| s % nodes as u32 == i as u32).map(ServerId);
                Node::new(cfg, slice, hosted, TestWire::default(), incarnations.clone(), 0)
            })
            .collect::<Vec<_>>();
        let mut m = Mesh {
            mailboxes: (0..nodes.len()).map(|_| VecDeque::new()).collect(),
            logs: (0..nodes.len()).map(|_| Vec::new()).collect(),
            nodes,
            now: 0,
            overloaded: false,
            tick_us,
        };
        m.pump();
        for node in &mut m.nodes {
            node.slice_mut().tick(0);
        }
        m.pump();
        m
    }

    fn io<'a>(
        mailboxes: &'a mut [VecDeque<(SliceId, SliceMsg)>],
        logs: &'a mut [Vec<LogRecord>],
        node: &Node<TestWire>,
        overloaded: bool,
    ) -> TestIo<'a> {
        TestIo { me: SliceId(node.index() as u16), mailboxes, overloaded, log: &mut logs[node.index()] }
    }

    /// Messages move until none is left; nothing is simulated.
    fn pump(&mut self) {
        for _ in 0..64 {
            for node in &mut self.nodes {
                let mut io = Self::io(&mut self.mailboxes, &mut self.logs, node, self.overloaded);
                node.exchange(self.now, &mut io);
            }
            if self.mailboxes.iter().all(|m| m.is_empty()) {
                return;
            }
        }
        panic!("messages between nodes never settled");
    }

    /// One tick of every node, in node order.
    fn tick(&mut self) {
        self.now += self.tick_us;
        let tick = Tick::at_game_us(self.now, self.tick_us);
        for node in &mut self.nodes {
            let mut io = Self::io(&mut self.mailboxes, &mut self.logs, node, self.overloaded);
            assert_eq!(node.advance(tick, &mut io), Step::Done);
        }
    }

    fn servers(&self) -> impl Iterator<Item = &Server> + Clone {
        self.nodes.iter().flat_map(|n| n.servers())
    }
    fn server(&self, id: u32) -> &Server {
        self.servers().find(|s| s.id() == ServerId(id)).expect("the server runs")
    }
    fn server_mut(&mut self, id: u32) -> &mut Server {
        let n = self.nodes.len() as u32;
        self.nodes[(id % n) as usize].server_mut(ServerId(id)).expect("the server runs")
    }
    fn slice(&self, i: usize) -> &Replication {
        self.nodes[i].slice()
    }
    fn slice_mut(&mut self, i: usize) -> &mut Replication {
        self.nodes[i].slice_mut()
    }
    fn wire(&mut self, server: u32) -> &mut TestWire {
        let n = self.nodes.len() as u32;
        self.nodes[(server % n) as usize].wire_mut()
    }
    /// Server `id` crashes and is not back for a long while (its regions go to other servers).
    /// Its slice is told if `reported`.
    fn crash(&mut self, id: u32, reported: bool) {
        self.crash_for(id, 1_000, reported);
    }
    /// Server `id` crashes; its next incarnation starts `down_ticks` ticks later.
    fn crash_for(&mut self, id: u32, down_ticks: u64, reported: bool) {
        let n = self.nodes.len() as u32;
        let now = self.now;
        assert!(self.nodes[(id % n) as usize].crash(ServerId(id), now, down_ticks, reported));
    }

    fn holder(&self, id: EntityId) -> Option<ServerId> {
        let holders: Vec<ServerId> = self.servers().filter(|s| s.held().contains_key(&id)).map(|s| s.id()).collect();
        assert!(holders.len() <= 1, "{id} held by {holders:?}");
        holders.first().copied()
    }

    /// Records in subtrees on their way between nodes (in a mailbox until the receiver's tick).
    fn in_transit(&self) -> Vec<shardmesh::protocol::Committed> {
        let mut records = Vec::new();
        for (_, msg) in self.mailboxes.iter().flatten() {
            if let SliceMsg::Transfer { entities, .. } = msg {
                records.extend(entities.iter().cloned());
            }
        }
        records
    }

    /// Where the layer has `id`: in a slice's records or on its way between slices.
    fn committed_position(&self, id: EntityId) -> Option<Vec3> {
        let recorded = self.nodes.iter().find_map(|n| n.slice().records().get(&id)).map(|r| r.state.pos());
        recorded.or_else(|| self.in_transit().into_iter().find(|c| c.id == id).map(|c| c.state.pos()))
    }

    fn slice_of(&self, id: EntityId) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.slice(*i).records().contains_key(&id)).collect()
    }
}

/// One core: the layer and three servers, regions A, B, C owned by s0, s1, s2.
struct Harness {
    m: Mesh,
}

impl std::ops::Deref for Harness {
    type Target = Mesh;
    fn deref(&self) -> &Mesh {
        &self.m
    }
}
impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Mesh {
        &mut self.m
    }
}

/// Three regions owned by s0, s1 and s2 in turn.
fn owned_regions() -> RegionMap {
    let mut map = three_regions();
    for (x, s) in [(5.0, 0), (50.0, 1), (100.0, 2)] {
        map.assign(region_at(&map, x), Some(ServerId(s))).unwrap();
    }
    map
}

impl Harness {
    fn new(entities: Vec<(EntityId, EntityState)>) -> Self {
        Harness { m: Mesh::new(1, 3, owned_regions(), entities) }
    }
    fn rl(&self) -> &Replication {
        self.m.slice(0)
    }
    fn rl_mut(&mut self) -> &mut Replication {
        self.m.slice_mut(0)
    }
    fn authority(&self, id: EntityId) -> Option<ServerId> {
        self.rl().records()[&id].authority
    }
    /// Holds the layer's messages to servers back (or lets them go again).
    fn hold(&mut self, hold: bool) {
        self.m.nodes[0].wire_mut().hold = hold;
    }
    fn take_held_back(&mut self) -> Vec<ToServer> {
        std::mem::take(&mut self.m.nodes[0].wire_mut().held_back)
    }
}

fn at(kind: EntityKind, x: f32) -> EntityState {
    EntityState::new(kind, Vec3::new(x, 10.0, 10.0))
}

fn ship_with_crew(x: f32, velocity_x: f32) -> Vec<(EntityId, EntityState)> {
    let (ship, pilot, pack, coin) = (EntityId(1), EntityId(2), EntityId(3), EntityId(4));
    let mut s = at(EntityKind::Ship, x);
    s.velocity = [velocity_x, 0.0, 0.0];
    let mut p = at(EntityKind::Player, x);
    p.parent = Some(ship);
    let mut b = at(EntityKind::Item { capacity: 4 }, x);
    b.parent = Some(pilot);
    let mut c = at(EntityKind::Item { capacity: 0 }, x);
    c.parent = Some(pack);
    vec![(ship, s), (pilot, p), (pack, b), (coin, c)]
}

#[test]
fn starting_entities_go_to_the_owner_of_their_region() {
    let h = Harness::new(vec![(EntityId(1), at(EntityKind::Npc, 5.0)), (EntityId(2), at(EntityKind::Npc, 100.0))]);
    assert_eq!(h.holder(EntityId(1)), Some(ServerId(0)));
    assert_eq!(h.holder(EntityId(2)), Some(ServerId(2)));
}

#[test]
fn an_entity_crossing_two_borders_in_one_tick_lands_on_the_far_server_with_its_subtree() {
    // 1800 m/s is 60 m a tick: from A at x=30 over all of B to C at x=90.
    let mut h = Harness::new(ship_with_crew(30.0, 1800.0));
    assert_eq!(h.holder(EntityId(1)), Some(ServerId(0)));
    h.tick();
    for id in 1..=4 {
        assert_eq!(h.holder(EntityId(id)), Some(ServerId(2)), "e{id} rides with the ship");
        assert_eq!(h.authority(EntityId(id)), Some(ServerId(2)));
    }
    assert_eq!(h.server(1).stats.adopted, 0, "the middle server never holds it");
    let ship = &h.server(2).held()[&EntityId(1)];
    let coin = &h.server(2).held()[&EntityId(4)];
    assert_eq!(coin.state.position, ship.state.position, "the coin in the backpack moved with the ship");
    assert!(h.rl().check().is_empty(), "{:?}", h.rl().check());
}

/// A projectile's path is its server's to test only within that server's regions: where it
/// leaves them it stops just past the border and is handed on, and the next server flies it on
/// from there. Fired at 37.5 m, 50 m a tick: stopped at A's border (40 m), then at B's (80 m).
#[test]
fn a_projectile_is_handed_on_at_each_border_it_crosses() {
    let mut h = Harness::new(vec![(EntityId(1), at(EntityKind::Player, 35.0))]);
    h.server_mut(0).handle_input(shardmesh::protocol::Input {
        entity: EntityId(1),
        action: shardmesh::protocol::Action::Fire([1.0, 0.0, 0.0]),
    });
    let projectile_on = |h: &Harness, s: u32| {
        h.server(s)
            .held()
            .iter()
            .find(|(_, e)| e.state.kind == EntityKind::Projectile)
            .map(|(id, e)| (*id, e.state.pos()))
    };
    h.tick();
    let (projectile, p) = projectile_on(&h, 1).expect("the next server holds the projectile");
    assert!((p.x - 40.0).abs() < 0.01, "stopped just past the border: {p}");
    assert_eq!(h.authority(projectile), Some(ServerId(1)));
    assert_eq!(projectile.creator_incarnation(), h.server(0).incarnation().0);
    assert_eq!(h.server(0).stats.shots_handed_on, 1);
    h.tick();
    let (_, p) = projectile_on(&h, 2).expect("then the far server");
    assert!((p.x - 80.0).abs() < 0.01, "{p}");
    assert_eq!(h.server(1).stats.shots_handed_on, 1);
    assert_eq!(h.server(2).stats.adopted, 1);
}

/// A crashed server the host restarts at once (a panic in its code) keeps its regions: its fresh
/// incarnation adopts what it held, from the committed state, on the same slice, at the next
/// tick; no map change, nothing moved to another server.
#[test]
fn a_server_restarted_at_once_takes_its_own_entities_back_the_next_tick() {
    let mut h = Harness::new(ship_with_crew(50.0, 0.0));
    assert_eq!(h.holder(EntityId(1)), Some(ServerId(1)));
    let epoch = h.rl().map().epoch;
    let committed = h.rl().records()[&EntityId(1)].state.clone();
    let incarnation = h.server(1).incarnation();
    h.crash_for(1, 1, true);
    for id in 1..=4 {
        assert_eq!(h.authority(EntityId(id)), None, "fenced at once, waiting for the fresh incarnation");
    }
    h.tick();
    assert!(h.server(1).incarnation() > incarnation, "a fresh incarnation");
    for id in 1..=4 {
        assert_eq!(h.holder(EntityId(id)), Some(ServerId(1)), "e{id} back on s1 one tick after the crash");
    }
    assert_eq!(h.server(1).held()[&EntityId(1)].state.position, committed.position, "from the committed state");
    assert_eq!(h.rl().map().epoch, epoch, "the map never changed");
    assert_eq!(h.server(0).stats.adopted + h.server(2).stats.adopted, 0, "nothing went to another server");
}

/// One the host does not bring back in time has its regions given to others once the wait is over.
#[test]
fn a_crashed_server_not_back_in_time_is_replaced_by_others() {
    let mut h = Harness::new(vec![(EntityId(1), at(EntityKind::Npc, 50.0))]);
    assert_eq!(h.holder(EntityId(1)), Some(ServerId(1)));
    // Back in 2 ticks (within the wait) by its host's word, but the host is wrong: the slot is
    // crashed again before it starts, for long.
    h.crash_for(1, 2, true);
    h.tick();
    assert_eq!(h.holder(EntityId(1)), None, "waiting for s1's fresh incarnation");
    let wait_ticks = shardmesh::limits::CRASH_RESTART_WAIT_MAX_US.div_ceil(TICK_DURATION_US);
    let n = h.nodes.len() as u32;
    let now = h.now;
    assert!(h.nodes[(1 % n) as usize].postpone_restart(ServerId(1), now + 1_000 * TICK_DURATION_US));
    for _ in 0..wait_ticks + 2 {
        h.tick();
    }
    let heir = h.holder(EntityId(1)).expect("given to a live server after the wait");
    assert_ne!(heir, ServerId(1));
}

#[test]
fn the_handoff_target_crashing_mid_handoff_loses_nothing() {
    let mut h = Harness::new(ship_with_crew(35.0, 300.0));
    h.hold(true);
    h.tick(); // 10 m into B: s0 hands off, the layer grants to s1, the adoption is held back.
    assert_eq!(h.authority(EntityId(1)), Some(ServerId(1)));
    assert_eq!(h.holder(EntityId(1)), None, "in flight");
    let committed = h.rl().records()[&EntityId(1)].state.clone();
    // s1 dies before it hears of the grant; its supervisor reports it.
    h.take_held_back();
    h.hold(false);
    h.crash(1, true);
    let heir = h.authority(EntityId(1)).expect("reassigned at once, in the same call");
    assert_ne!(heir, ServerId(1));
    h.pump();
    let held = &h.server(heir.0).held()[&EntityId(1)];
    assert_eq!(held.state, committed, "restored from the committed state");
    for id in 1..=4 {
        assert_eq!(h.holder(EntityId(id)), Some(heir));
    }
    assert_eq!(h.rl().records().len(), 4);
}

#[test]
fn a_crash_report_moves_the_regions_and_entities_within_the_tick() {
    let mut h = Harness::new(vec![
        (EntityId(1), at(EntityKind::Npc, 50.0)),
        (EntityId(2), at(EntityKind::Item { capacity: 0 }, 55.0)),
    ]);
    assert_eq!(h.holder(EntityId(1)), Some(ServerId(1)));
    h.crash(1, true);
    let adopts: Vec<ToServer> = std::iter::from_fn(|| h.rl_mut().poll_message()).collect();
    let adopted: Vec<EntityId> = adopts
        .iter()
        .filter_map(|m| match &m.body {
            ReplicationMsg::Adopt { entities } => Some(entities.iter().map(|o| o.id).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(adopted, vec![EntityId(1), EntityId(2)], "both re-granted before the next tick");
    assert!(h.rl().map().regions_of(ServerId(1)).next().is_none());
}

#[test]
fn a_region_split_while_a_handoff_into_it_is_in_flight() {
    let mut h = Harness::new(ship_with_crew(35.0, 1200.0)); // 40 m a tick: to x=75, in B's right half
    h.hold(true);
    h.tick();
    assert_eq!(h.authority(EntityId(1)), Some(ServerId(1)), "granted to B's server, not yet adopted");
    // The controller splits B and gives the half the ship is in to s2 while the grant travels.
    let b = region_at(h.rl().map(), 50.0);
    let (_low, high) = h.rl_mut().split_region(b).unwrap();
    h.rl_mut().move_region(high, ServerId(2)).unwrap();
    h.hold(false);
    let now = h.now;
    for m in h.take_held_back() {
        h.server_mut(m.server.0).handle(now, m);
    }
    h.pump();
    assert_eq!(h.holder(EntityId(1)), Some(ServerId(1)), "s1 adopts what it was granted...");
    h.tick();
    for id in 1..=4 {
        assert_eq!(h.holder(EntityId(id)), Some(ServerId(2)), "...and hands it on to the new owner");
    }
    assert!(h.rl().check().is_empty(), "{:?}", h.rl().check());
}

fn deltas(server: &Server, tick: u64, id: EntityId, epoch: Epoch, state: EntityState) -> ToReplication {
    ToReplication {
        server: server.id(),
        incarnation: server.incarnation(),
        body: ServerMsg::Deltas { tick: Tick(tick), entries: vec![Delta::Upsert(Owned { id, epoch, state })] },
    }
}

#[test]
fn duplicated_and_reordered_deltas_never_roll_state_back() {
    let mut h = Harness::new(vec![(EntityId(1), at(EntityKind::Npc, 10.0))]);
    let epoch = h.rl().records()[&EntityId(1)].epoch;
    let mut older = at(EntityKind::Npc, 11.0);
    older.changed_tick = Tick(5);
    let mut newer = at(EntityKind::Npc, 12.0);
    newer.changed_tick = Tick(6);
    let s0 = h.server(0);
    let (m_old, m_new) = (deltas(s0, 5, EntityId(1), epoch, older), deltas(s0, 6, EntityId(1), epoch, newer.clone()));
    h.rl_mut().handle(0, m_new.clone());
    h.rl_mut().handle(0, m_old.clone()); // reordered: the older arrives last
    h.rl_mut().handle(0, m_new.clone()); // duplicated
    h.rl_mut().handle(0, m_old);
    assert_eq!(h.rl().records()[&EntityId(1)].state, newer);
    assert!(h.rl().stats.stale_rejected >= 2);
}

#[test]
fn a_late_write_and_a_late_handoff_from_a_former_owner_are_refused() {
    let mut h = Harness::new(vec![(EntityId(1), at(EntityKind::Npc, 10.0))]);
    let old_epoch = h.rl().records()[&EntityId(1)].epoch;
    let former = (h.server(0).id(), h.server(0).incarnation());
    // s0 dies; the NPC is re-granted to a live server under a new epoch.
    h.crash(0, true);
    h.pump();
    let record = h.rl().records()[&EntityId(1)].clone();
    assert_ne!(record.epoch, old_epoch);
    // Messages the dead incarnation sent before it died now arrive.
    let mut moved = at(EntityKind::Npc, 30.0);
    moved.changed_tick = Tick(1_000);
    let late = ToReplication {
        server: former.0,
        incarnation: former.1,
        body: ServerMsg::Deltas {
            tick: Tick(1_000),
            entries: vec![Delta::Upsert(Owned { id: EntityId(1), epoch: old_epoch, state: moved.clone() })],
        },
    };
    let now = h.now;
    h.rl_mut().handle(now, late);
    let late_handoff = ToReplication {
        server: former.0,
        incarnation: former.1,
        body: ServerMsg::Handoff { entities: vec![Owned { id: EntityId(1), epoch: old_epoch, state: moved }] },
    };
    let now = h.now;
    h.rl_mut().handle(now, late_handoff);
    assert_eq!(h.rl().records()[&EntityId(1)], record, "nothing changed");
    assert_eq!(h.rl().stats.protocol_errors, 0, "stale, not malformed");
    assert!(h.holder(EntityId(1)).is_some());
}

#[test]
fn a_replayed_adoption_is_ignored_not_held_twice() {
    let mut h = Harness::new(vec![(EntityId(1), at(EntityKind::Npc, 10.0))]);
    let record = h.rl().records()[&EntityId(1)].clone();
    let replay = ToServer {
        server: ServerId(0),
        incarnation: h.server(0).incarnation(),
        body: ReplicationMsg::Adopt {
            entities: vec![Owned { id: EntityId(1), epoch: record.epoch, state: record.state.clone() }],
        },
    };
    let now = h.now;
    h.server_mut(0).handle(now, replay.clone());
    let now = h.now;
    h.server_mut(0).handle(now, replay);
    assert_eq!(h.server(0).held().len(), 1);
    assert_eq!(h.server(0).stats.messages_ignored, 2);
}

#[test]
fn a_server_whose_lease_runs_out_stops_acting_before_the_layer_moves_its_entities() {
    let mut h = Harness::new(vec![(EntityId(1), at(EntityKind::Npc, 50.0))]);
    h.tick();
    // s1 is cut off: it ticks, but nothing it sends arrives and nothing comes back.
    h.wire(1).cut_off = Some(ServerId(1));
    let start = h.now;
    let s1 = h.server(1).incarnation();
    let mut s1_stopped_at = None;
    let mut layer_moved_at = None;
    while layer_moved_at.is_none() {
        h.tick();
        let acting = h.servers().any(|s| s.id() == ServerId(1) && s.incarnation() == s1 && s.is_acting(h.now));
        if !acting && s1_stopped_at.is_none() {
            s1_stopped_at = Some(h.now);
        }
        if h.authority(EntityId(1)) != Some(ServerId(1)) {
            layer_moved_at = Some(h.now);
        }
        assert!(h.now - start < 3 * LEASE_DURATION_US, "the layer never moved the entity");
    }
    assert!(s1_stopped_at.unwrap() < layer_moved_at.unwrap(), "the old holder stopped first");
}

/// Overload: the runtime holds every server's tick back for three leases' time (its peer queues
/// are full). The servers simulate nothing, but renew their leases, so the layer fails none of
/// them over; when the ticks resume, each goes on with what it held.
#[test]
fn ticks_held_back_for_longer_than_a_lease_keep_every_server_live() {
    let mut h = Harness::new(vec![(EntityId(1), at(EntityKind::Npc, 50.0)), (EntityId(2), at(EntityKind::Npc, 5.0))]);
    h.tick();
    let end = h.now + 3 * LEASE_DURATION_US;
    h.overloaded = true;
    while h.now < end {
        h.tick();
        assert!(h.servers().all(|s| s.is_acting(h.now)), "a held-back server lost its lease");
    }
    h.overloaded = false;
    assert_eq!(h.rl().stats.servers_declared_dead, 0);
    assert_eq!(h.server(1).stats.ticks, 1, "nothing was simulated while held back");
    assert!(h.nodes[0].stats.ticks_held_back > 0);
    h.tick();
    assert_eq!((h.holder(EntityId(1)), h.holder(EntityId(2))), (Some(ServerId(1)), Some(ServerId(0))));
    assert_eq!(h.server(1).stats.ticks, 2);
}

/// Regression (found by the simulator, seeds 7, 10, 24, 29 and 31 of the first sweep): a player
/// leaves a ship in the very tick both find themselves outside the server's regions. The layer
/// must learn of the disembarking before the ship's handoff, or the two views of the ship's
/// subtree differ.
#[test]
fn a_passenger_leaving_in_the_tick_its_ship_is_handed_off_goes_separately() {
    let mut h = Harness::new(ship_with_crew(20.0, 0.0));
    assert_eq!(h.holder(EntityId(1)), Some(ServerId(0)));
    let a = region_at(h.rl().map(), 20.0);
    h.rl_mut().move_region(a, ServerId(1)).unwrap();
    h.pump();
    h.server_mut(0).handle_input(shardmesh::protocol::Input {
        entity: EntityId(2),
        action: shardmesh::protocol::Action::Disembark,
    });
    h.tick();
    for id in 1..=4 {
        assert_eq!(h.holder(EntityId(id)), Some(ServerId(1)), "e{id} moved with region A");
    }
    assert_eq!(h.rl().records()[&EntityId(2)].state.parent, None, "the player is off the ship");
    assert_eq!(h.rl().records()[&EntityId(4)].state.parent, Some(EntityId(3)), "the coin is still packed");
    assert_eq!(h.rl().stats.handoffs, 2, "ship and player, each with its own subtree");
    assert!(h.rl().check().is_empty(), "{:?}", h.rl().check());
}

#[test]
fn a_non_finite_write_is_refused_and_counted_not_a_panic() {
    let mut h = Harness::new(vec![(EntityId(1), at(EntityKind::Npc, 10.0))]);
    let record = h.rl().records()[&EntityId(1)].clone();
    let mut bad = record.state.clone();
    bad.position = [f32::NAN, 0.0, f32::INFINITY];
    bad.changed_tick = Tick(99);
    let s0 = h.server(0);
    let msg = deltas(s0, 99, EntityId(1), record.epoch, bad.clone());
    let (server, incarnation) = (s0.id(), s0.incarnation());
    let now = h.now;
    h.rl_mut().handle(now, msg);
    let handoff = ToReplication {
        server,
        incarnation,
        body: ServerMsg::Handoff { entities: vec![Owned { id: EntityId(1), epoch: record.epoch, state: bad }] },
    };
    let now = h.now;
    h.rl_mut().handle(now, handoff);
    assert_eq!(h.rl().records()[&EntityId(1)].state, record.state);
    assert_eq!(h.rl().stats.protocol_errors, 2);
    assert_eq!(h.rl().map().owner_at(Vec3::NAN), h.rl().map().owner_at(Vec3::ZERO));
}

/// The layer cut into two slices (cores): s0 and s2 live on slice 0, s1 on slice 1. One tick
/// has run.
fn sliced(entities: Vec<(EntityId, EntityState)>) -> Mesh {
    let mut m = Mesh::new(2, 3, owned_regions(), entities);
    m.tick();
    m
}

#[test]
fn starting_entities_move_to_the_slice_of_their_servers_core() {
    let h = sliced(vec![(EntityId(1), at(EntityKind::Npc, 5.0)), (EntityId(2), at(EntityKind::Npc, 50.0))]);
    assert_eq!(h.slice_of(EntityId(1)), vec![0]);
    assert_eq!(h.slice_of(EntityId(2)), vec![1], "s1 lives on core 1: its entities are recorded there");
    assert_eq!(h.holder(EntityId(2)), Some(ServerId(1)));
    for node in &h.nodes {
        assert!(node.slice().check().is_empty(), "{:?}", node.slice().check());
    }
}

#[test]
fn a_handoff_across_cores_moves_the_record_to_the_receiving_slice() {
    let mut h = sliced(ship_with_crew(25.0, 300.0)); // one tick taken: at x=35, in A
    assert_eq!(h.slice_of(EntityId(1)), vec![0]);
    h.tick(); // to x=45: into B, owned by s1 on core 1
    for id in 1..=4 {
        assert_eq!(h.slice_of(EntityId(id)), vec![1], "e{id} recorded by slice 1 alone");
        assert_eq!(h.holder(EntityId(id)), Some(ServerId(1)));
    }
    assert_eq!(h.slice(0).stats.transfers_out, 1);
    assert_eq!(h.slice(1).stats.transfers_in, 1);
    // Its deltas now go to slice 1 and are committed there.
    h.tick();
    let record = &h.slice(1).records()[&EntityId(1)];
    assert_eq!(record.state, h.server(1).held()[&EntityId(1)].state);
}

#[test]
fn a_crash_on_one_core_is_recovered_by_the_controller_on_another() {
    let mut h = sliced(vec![(EntityId(1), at(EntityKind::Npc, 50.0))]);
    assert_eq!(h.holder(EntityId(1)), Some(ServerId(1)));
    h.crash(1, true);
    h.pump();
    let heir = h.holder(EntityId(1)).expect("re-granted within the same call");
    assert_ne!(heir, ServerId(1));
    assert_eq!(h.slice_of(EntityId(1)), vec![(heir.0 % 2) as usize]);
    assert!(h.slice(0).map().regions_of(ServerId(1)).next().is_none());
    assert_eq!(h.slice(0).map(), h.slice(1).map(), "both slices have the controller's map");
}

/// A client's input for a player another core holds leaves on its own, ahead of the tick's other
/// messages (which wait for the tick's commit), and the slice holding the player routes it to
/// the player's server.
#[test]
fn a_client_input_for_a_player_on_another_core_goes_ahead_alone_and_reaches_its_server() {
    use shardmesh::protocol::{Action, SliceId, SliceMsg};
    let player = EntityId(5);
    let mut entities = ship_with_crew(25.0, 300.0);
    entities.push((player, at(EntityKind::Player, 5.0)));
    let mut h = sliced(entities);
    // The ship crosses into B on core 1 in this tick: the servers have ticked and slice 0 has a
    // transfer for slice 1 queued (stopped mid-tick, before the commit).
    let now = h.now + TICK_DURATION_US;
    for node in &mut h.nodes {
        let mut sent = Vec::new();
        for s in node.servers_mut() {
            s.tick(now);
            sent.extend(std::iter::from_fn(|| s.poll_message()));
        }
        for m in sent {
            node.slice_mut().handle(now, m);
        }
    }
    // Slice 1 routes an input for a player slice 0 holds.
    assert_eq!(h.slice_of(player), vec![0]);
    h.slice_mut(1).route_input(player, 7, Action::Move([1.0, 0.0, 0.0]));
    let Some((to, msg)) = h.slice_mut(1).poll_peer_input() else { panic!("the input is queued to go ahead") };
    assert_eq!(to, SliceId(0));
    assert!(matches!(msg, SliceMsg::Input { entity, seq: 7, .. } if entity == player));
    assert!(h.slice_mut(1).poll_peer_input().is_none(), "one other slice, one copy");
    assert!(h.slice_mut(0).poll_peer_input().is_none(), "the transfer is not an input: it waits for the commit");
    let routed = h.slice(0).stats.inputs_routed;
    h.slice_mut(0).handle_peer(SliceId(1), msg);
    assert_eq!(h.slice(0).stats.inputs_routed, routed + 1, "routed to the player's server");
    // The transfer still goes, with the tick's other messages.
    let mut transfers = 0;
    while let Some((_, m)) = h.slice_mut(0).poll_peer() {
        transfers += matches!(m, SliceMsg::Transfer { .. }) as usize;
    }
    assert_eq!(transfers, 1);
}

/// Regression (found by the live demo with 3,000 players): on a full ship one passenger leaves
/// and another boards in the same tick. The layer must see the leaving before the boarding, or
/// it counts the ship over its capacity and refuses a legal move.
#[test]
fn a_full_ship_swapping_passengers_in_one_tick_stays_within_capacity() {
    let ship = EntityId(1);
    let mut entities = vec![(ship, at(EntityKind::Ship, 10.0))];
    let capacity = EntityKind::Ship.capacity_for(EntityKind::Player) as u64;
    for id in 2..2 + capacity {
        let mut p = at(EntityKind::Player, 10.0);
        p.parent = Some(ship);
        entities.push((EntityId(id), p));
    }
    let newcomer = EntityId(2 + capacity);
    entities.push((newcomer, at(EntityKind::Player, 10.0)));
    let mut h = Harness::new(entities);
    let leaving = EntityId(1 + capacity);
    use shardmesh::protocol::{Action, Input};
    h.server_mut(0).handle_input(Input { entity: leaving, action: Action::Disembark });
    h.server_mut(0).handle_input(Input { entity: newcomer, action: Action::Board });
    h.tick();
    assert_eq!(h.rl().stats.protocol_errors, 0, "{:?}", h.rl().first_protocol_error);
    assert_eq!(h.rl().records()[&newcomer].state.parent, Some(ship));
    assert_eq!(h.rl().records()[&leaving].state.parent, None);
}

#[test]
fn the_controller_moves_load_from_the_busiest_server_to_the_quietest() {
    // 100 NPCs at x=5 and 100 at x=30, all in region A of s0; s1 and s2 hold nothing.
    let entities =
        (0..200u64).map(|i| (EntityId(i + 1), at(EntityKind::Npc, if i < 100 { 5.0 } else { 30.0 }))).collect();
    let mut h = Harness::new(entities);
    assert_eq!(h.server(0).held().len(), 200);
    for _ in 0..4 * shardmesh::limits::ticks_in(
        shardmesh::protocol::replication::BALANCE_PERIOD_US,
        shardmesh::limits::TICK_DURATION_US,
    ) {
        h.tick();
    }
    // First A is split (a single region cannot move without moving the whole load), then one
    // half goes to a quiet server.
    let held: Vec<usize> = h.servers().map(|s| s.held().len()).collect();
    assert_eq!(held.iter().sum::<usize>(), 200);
    assert_eq!(held.iter().filter(|n| **n == 100).count(), 2, "split evenly: {held:?}");
    assert_eq!(h.rl().stats.protocol_errors, 0);
    assert!(h.rl().check().is_empty(), "{:?}", h.rl().check());
}

#[test]
fn a_table_grown_for_a_crowd_is_rebuilt_smaller_once_the_crowd_moves_on() {
    // 5,000 NPCs in region A of s0, half at x=5 and half at x=30: the controller splits A and
    // moves one half to a quiet server, which leaves s0's table three fifths empty.
    let entities =
        (0..5000u64).map(|i| (EntityId(i + 1), at(EntityKind::Npc, if i < 2500 { 5.0 } else { 30.0 }))).collect();
    let mut h = Harness::new(entities);
    let grown = h.server(0).held().capacity();
    assert!(grown >= 5000, "the table grew for the crowd: {grown}");
    assert_eq!(h.server(0).stats.tables_shrunk, 0);
    for _ in 0..4 * shardmesh::limits::ticks_in(
        shardmesh::protocol::replication::BALANCE_PERIOD_US,
        shardmesh::limits::TICK_DURATION_US,
    ) {
        h.tick();
    }
    let held: Vec<usize> = h.servers().map(|s| s.held().len()).collect();
    assert_eq!(held, vec![2500, 2500, 0], "half moved to a quiet server");
    let s0 = h.server(0);
    assert_eq!(s0.stats.tables_shrunk, 1, "rebuilt once, not again while it holds the same");
    let capacity = s0.held().capacity();
    assert!(capacity >= 2500 && capacity < grown, "capacity {capacity} after {grown} for 2,500 entities");
    assert!(
        2500.0 >= shardmesh::limits::ENTITY_TABLE_SHRINK_BELOW * capacity as f64,
        "the rebuilt table is not sparse enough to be rebuilt again"
    );
    assert!(h.rl().check().is_empty(), "{:?}", h.rl().check());
}

/// DESIGN: "a rocket fired on server A at a ship on server B still hits". A target standing
/// within the walker margin of the border is A's to see as a ghost: the path on A's side passes
/// within the hit radius of it, so A hits it and the hit goes to B through the layer.
#[test]
fn a_projectile_on_one_server_hits_an_entity_held_by_another_through_its_ghost() {
    let (shooter, target) = (EntityId(1), EntityId(2));
    let mut h = Harness::new(vec![(shooter, at(EntityKind::Player, 35.0)), (target, at(EntityKind::Npc, 41.0))]);
    assert_eq!(h.holder(target), Some(ServerId(1)));
    h.tick(); // ghosts exchanged: s0 now sees the NPC standing 1 m past the border
    assert!(h.server(0).ghosts().iter().any(|g| g.id == target && g.server == ServerId(1)));
    assert!(!h.server(0).ghosts().iter().any(|g| g.id == EntityId(999)));
    use shardmesh::protocol::{Action, Input};
    h.server_mut(0).handle_input(Input { entity: shooter, action: Action::Fire([1.0, 0.0, 0.0]) });
    h.tick(); // the projectile sweeps 37.5..40 m (A's side) and passes within 1 m of the ghost
    assert_eq!(h.server(0).stats.remote_hits, 1);
    h.tick(); // s1 applies the damage and commits it
    assert_eq!(h.server(1).stats.damage_received, 1);
    assert_eq!(h.rl().records()[&target].state.health, 90);
    assert_eq!(h.holder(target), Some(ServerId(1)), "a ghost is never simulated by the shooter's server");
    assert!(h.servers().all(|s| s.held().values().all(|e| e.state.kind != EntityKind::Projectile)));
}

/// A walker's ghost margin is the hit radius, two ticks of a running player and a metre: 6 m
/// at 20 Hz, 5 m at 30 Hz, 4 m at 60 Hz. Walkers standing 3.5, 4.5, 5.5 and 6.5 m past the
/// border into B's region: A sees those within the margin of its rate as ghosts, and no other.
#[test]
fn a_walkers_ghost_margin_narrows_as_the_tick_rate_rises() {
    let past = [3.5f32, 4.5, 5.5, 6.5];
    for (hz, seen) in [(20u64, 3usize), (30, 2), (60, 1)] {
        let tick_us = 1_000_000 / hz;
        let margin = shardmesh::limits::walker_ghost_margin_m(tick_us);
        let expected_m = 2.0 + 60.0 / hz as f32 + 1.0;
        assert!((margin - expected_m).abs() < 0.01, "{hz} Hz: margin {margin} m, not {expected_m} m");
        let entities =
            past.iter().enumerate().map(|(i, d)| (EntityId(i as u64 + 1), at(EntityKind::Npc, 40.0 + d))).collect();
        let mut m = Mesh::build(1, 3, owned_regions(), entities, None, tick_us);
        m.tick();
        m.tick();
        assert!((1..=4).all(|i| m.servers().find(|s| s.held().contains_key(&EntityId(i))).unwrap().id() == ServerId(1)));
        let mut ghosts: Vec<u64> =
            m.server(0).ghosts().iter().filter(|g| g.server == ServerId(1)).map(|g| g.id.0).collect();
        ghosts.sort();
        assert_eq!(ghosts, (1..=seen as u64).collect::<Vec<_>>(), "{hz} Hz: A sees the walkers within {margin} m");
    }
}

/// The same shot at a target deeper in B's region (8 m past the border, beyond the walker
/// margin, so A sees no ghost of it): A hands the projectile on at the border and B hits its own
/// target. Either way the shot lands, once.
#[test]
fn a_projectile_handed_on_at_a_border_hits_what_stands_beyond_it() {
    let (shooter, target) = (EntityId(1), EntityId(2));
    let mut h = Harness::new(vec![(shooter, at(EntityKind::Player, 35.0)), (target, at(EntityKind::Npc, 48.0))]);
    h.tick();
    assert!(!h.server(0).ghosts().iter().any(|g| g.id == target), "beyond the walker margin");
    use shardmesh::protocol::{Action, Input};
    h.server_mut(0).handle_input(Input { entity: shooter, action: Action::Fire([1.0, 0.0, 0.0]) });
    h.tick(); // A: 37.5..40 m, nothing; handed on
    assert_eq!((h.server(0).stats.hits, h.server(0).stats.shots_handed_on), (0, 1));
    h.tick(); // B: 40..90 m, the NPC at 48 m
    assert_eq!(h.server(1).stats.hits, 1);
    h.tick();
    assert_eq!(h.rl().records()[&target].state.health, 90);
    assert!(h.servers().all(|s| s.held().values().all(|e| e.state.kind != EntityKind::Projectile)));
    assert!(h.rl().check().is_empty(), "{:?}", h.rl().check());
}

/// DESIGN: a rocket fired at a ship on another server hits. Ships are rapier bodies with hulls; a
/// ship near the border is B's, so A has it as a ghost ship in its own rapier world, and A's
/// projectile's path runs into the part of its hull on A's side.
#[test]
fn a_projectile_hits_a_ship_held_by_another_server_through_its_ghost_hull() {
    let (shooter, ship) = (EntityId(1), EntityId(2));
    let mut h = Harness::new(vec![(shooter, at(EntityKind::Player, 35.0)), (ship, at(EntityKind::Ship, 43.0))]);
    assert_eq!(h.holder(ship), Some(ServerId(1)));
    h.tick(); // ghosts exchanged
    use shardmesh::protocol::{Action, Input};
    h.server_mut(0).handle_input(Input { entity: shooter, action: Action::Fire([1.0, 0.0, 0.0]) });
    h.tick(); // the path 37.5..40 m runs into the hull, which reaches back to 39 m
    assert_eq!(h.server(0).stats.remote_hits, 1);
    h.tick();
    assert_eq!(h.server(1).stats.damage_received, 1);
    assert_eq!(h.rl().records()[&ship].state.health, 90);
    assert!(h.servers().all(|s| s.held().values().all(|e| e.state.kind != EntityKind::Projectile)));
}

/// What a projectile hits is the first thing on its path: a ship's hull between the shooter and
/// an NPC takes the shot, though the NPC's id is smaller.
#[test]
fn a_projectile_hits_the_first_thing_on_its_path() {
    let (npc, ship, shooter) = (EntityId(1), EntityId(2), EntityId(3));
    let mut h = Harness::new(vec![
        (npc, at(EntityKind::Npc, 30.0)),
        (ship, at(EntityKind::Ship, 20.0)),
        (shooter, at(EntityKind::Player, 5.0)),
    ]);
    h.tick();
    use shardmesh::protocol::{Action, Input};
    h.server_mut(0).handle_input(Input { entity: shooter, action: Action::Fire([1.0, 0.0, 0.0]) });
    h.tick();
    h.tick();
    assert_eq!(h.rl().records()[&ship].state.health, 90);
    assert_eq!(h.rl().records()[&npc].state.health, 100);
    assert_eq!(h.server(0).stats.hits, 1);
}

/// A projectile handed to another server keeps its trajectory there: its state is its whole
/// motion, and the new server's rapier world moves it on along the same line.
#[test]
fn a_projectile_keeps_its_trajectory_on_the_server_it_is_handed_to() {
    let shooter = EntityId(1);
    let mut h = Harness::new(vec![(shooter, at(EntityKind::Player, 35.0))]);
    use shardmesh::protocol::{Action, Input};
    h.server_mut(0).handle_input(Input { entity: shooter, action: Action::Fire([1.0, 0.0, 0.0]) });
    h.tick(); // fired from 37.5 m: stopped at 40 m, handed to s1
    h.tick(); // s1: 40..90 m, stopped at 80 m, handed to s2
    let (id, state) = h
        .server(2)
        .held()
        .iter()
        .find(|(_, e)| e.state.kind == EntityKind::Projectile)
        .map(|(id, e)| (*id, e.state.clone()))
        .expect("s2 holds the projectile");
    assert!((state.pos() - Vec3::new(80.0, 10.0, 10.0)).length() < 1e-2, "{:?}", state.position);
    h.tick();
    let moved = &h.server(2).held()[&id].state;
    assert!((moved.pos() - Vec3::new(130.0, 10.0, 10.0)).length() < 1e-2, "{:?}", moved.position);
    assert_eq!(moved.velocity, [1500.0, 0.0, 0.0]);
}

/// The checkpoint protocol across a transfer in flight: slice 1 hands a ship to slice 0, and the
/// controller (slice 0) starts a checkpoint before the transfer arrives. The ship is in neither
/// snapshot; slice 1 logged it leaving before its snapshot, and slice 0 logs it arriving after
/// its own, so recovery from this round finds it exactly once. A round completes only when its
/// snapshot is stored and every peer's marker is in, and the next starts only after.
#[test]
fn a_checkpoint_cuts_consistently_across_a_transfer_in_flight() {
    use shardmesh::log::LogOp;
    use shardmesh::node::LogRecord;
    use shardmesh::protocol::JournalOp;
    let ship = EntityId(1);
    let mut h = sliced(ship_with_crew(25.0, 300.0));
    h.tick();
    assert_eq!(h.slice_of(ship), vec![1]);
    for i in 0..2 {
        h.slice_mut(i).enable_journal(0);
    }
    let mut in_flight = false;
    for _ in 0..60 {
        h.tick();
        // Node 1 ticks after node 0: what it sent node 0 waits in node 0's mailbox.
        if h.slice_of(ship).is_empty() {
            in_flight = true;
            break;
        }
    }
    assert!(in_flight, "the ship never left slice 1 for slice 0");
    let logged_out = h.logs[1].iter().any(|r| match r {
        LogRecord::Batch(b) => {
            b.ops.iter().any(|op| matches!(op, LogOp::Out { to: 0, entities } if entities[0].id == ship))
        }
        LogRecord::Checkpoint(_) => false,
    });
    assert!(logged_out, "slice 1 logged the ship leaving in the tick it left");
    // The transfer is sent but not delivered; now the cut.
    assert_eq!(h.slice_mut(0).begin_checkpoint(), Some(1));
    h.pump();
    let j0 = h.slice_mut(0).drain_journal();
    let j1 = h.slice_mut(1).drain_journal();
    let snap_at = |j: &[JournalOp]| j.iter().position(|op| matches!(op, JournalOp::Snapshot(_))).expect("a snapshot");
    let snapshot_has_ship = |j: &[JournalOp]| match &j[snap_at(j)] {
        JournalOp::Snapshot(s) => s.entities.iter().any(|c| c.id == ship),
        _ => unreachable!(),
    };
    assert!(!snapshot_has_ship(&j0) && !snapshot_has_ship(&j1), "in flight at the cut: in no snapshot");
    let put_after = j0[snap_at(&j0)..].contains(&JournalOp::Put(ship));
    assert!(put_after, "slice 0 logs the ship's arrival after its snapshot: {j0:?}");
    assert!(!j1.iter().any(|op| matches!(op, JournalOp::Out { .. })), "nothing left slice 1 after its snapshot");
    assert!(!j0.iter().chain(&j1).any(|op| matches!(op, JournalOp::RoundDone(_))), "no snapshot is stored yet");
    assert_eq!(h.slice_mut(0).begin_checkpoint(), None, "round 1 is not complete");

    h.slice_mut(1).snapshot_stored(1);
    h.pump();
    assert_eq!(h.slice_mut(1).drain_journal(), vec![JournalOp::RoundDone(1)]);
    assert_eq!(h.slice_mut(0).begin_checkpoint(), None, "slice 0's part is not complete");
    h.slice_mut(0).snapshot_stored(1);
    assert!(h.slice_mut(0).drain_journal().contains(&JournalOp::RoundDone(1)));
    assert_eq!(h.slice(0).checkpoint_done(), 1);
    // Round 2 would let the slices drop round 0's files: not before every slice's record that
    // round 1 is complete is durable, or a power loss now could leave no whole round.
    assert_eq!(h.slice_mut(0).begin_checkpoint(), None, "round 1's completion is not durable yet");
    h.slice_mut(0).round_done_durable(1);
    h.pump();
    assert_eq!(h.slice_mut(0).begin_checkpoint(), None, "slice 1's completion is not durable yet");
    h.slice_mut(1).round_done_durable(1);
    h.pump();
    assert_eq!(h.slice_mut(0).begin_checkpoint(), Some(2));
    assert_eq!(h.slice_of(ship), vec![0]);
}

/// Container streaming, end to end on two cores: a world of many rooms and one player. The
/// servers hold only the items of the containers near the player; as the player walks to a far
/// room, its items are loaded before the player can reach them, one is picked up, and when the
/// player walks on they are unloaded again, every item still recorded exactly once.
#[test]
fn containers_load_as_a_player_comes_near_and_unload_once_no_player_is() {
    use shardmesh::protocol::{Action, Input};
    use shardmesh::world::stream::{STREAM_LOAD_RADIUS_M, STREAM_UNLOAD_RADIUS_M};
    use shardmesh::world::{is_streamed, populate, ContainerTree, Population};

    let tree = ContainerTree::generate(11, 3, 3, 4);
    let index = Arc::new(StreamIndex::new(tree.clone()));
    let mut entities = populate(&tree, 11, Population { players: 0, npcs: 0, items: 400, ships: 0 });
    let items = entities.len();
    let player = EntityId::new(0, 100_000);
    // The player starts in the room of the first item.
    let corner = entities[0].1.pos();
    entities.push((player, EntityState::new(EntityKind::Player, corner)));

    let map = RegionMap::kd_split(tree.bounds(), 2);
    let mut m = Mesh::with_streaming(2, 2, map, entities, index.clone());
    let run = |m: &mut Mesh, ticks: usize| {
        for _ in 0..ticks {
            m.tick();
            for node in &m.nodes {
                assert!(node.slice().check().is_empty(), "{:?}", node.slice().check());
            }
        }
    };
    run(&mut m, 10);

    let where_is = |m: &Mesh, id: EntityId| -> Vec3 { m.committed_position(id).expect("recorded") };
    let held_items =
        |m: &Mesh| -> usize { m.servers().flat_map(|s| s.held().values()).filter(|h| h.state.kind.is_item()).count() };
    let audit = |m: &Mesh| {
        let recorded: usize = m.nodes.iter().map(|n| n.slice().records().len()).sum::<usize>() + m.in_transit().len();
        assert_eq!(recorded, items + 1, "every entity recorded once (or on its way between slices)");
        let resting: usize = m.nodes.iter().map(|n| n.slice().dormant_entities()).sum();
        let held: usize = m.servers().map(|s| s.held().len()).sum();
        assert_eq!(held + resting, items + 1, "each entity is held by one server or at rest");
    };
    // What a server holds is what lies in containers near the player, not the world.
    let near_items = |m: &Mesh, at: Vec3| -> usize {
        m.nodes
            .iter()
            .flat_map(|n| n.slice().records().values())
            .filter(|r| is_streamed(&r.state) && index.is_near(index.locate(r.state.pos()), at, STREAM_UNLOAD_RADIUS_M))
            .count()
    };
    // An input for the player, once a server holds it (while it crosses from one core to the
    // other, for a tick, none does).
    let input = |m: &mut Mesh, action: Action| {
        for _ in 0..3 {
            if let Some(holder) = m.holder(player) {
                m.server_mut(holder.0).handle_input(Input { entity: player, action });
                return;
            }
            m.tick();
        }
        panic!("the player is held by no server for three ticks");
    };
    audit(&m);
    let start_held = held_items(&m);
    assert!(start_held <= near_items(&m, corner), "{start_held} items held at the start");
    assert!(start_held > 0 && start_held < items / 4, "{start_held} of {items} items held at the start");

    // Walk to the room whose items are farthest from the corner.
    let far_item = m
        .slice(0)
        .records()
        .iter()
        .filter(|(_, r)| is_streamed(&r.state))
        .max_by(|a, b| a.1.state.pos().distance(corner).total_cmp(&b.1.state.pos().distance(corner)))
        .map(|(id, r)| (*id, r.state.pos()))
        .expect("items exist");
    assert!(m.servers().all(|s| !s.held().contains_key(&far_item.0)), "the far room starts unloaded");
    let mut arrived = false;
    // The controller may move a region while the player walks: its items follow their new
    // owner by handoff within a few ticks, loaded all the while.
    let (mut epoch, mut stable) = (m.slice(0).map().epoch, 0u64);
    let settle = shardmesh::limits::ticks_in(shardmesh::limits::STREAM_HOLD_AFTER_MAP_US, TICK_DURATION_US) + 3;
    for _ in 0..3000 {
        let here = where_is(&m, player);
        let to = far_item.1 - here;
        let flat = Vec3::new(to.x, to.y, 0.0);
        if flat.length() < 2.0 {
            arrived = true;
            break;
        }
        input(&mut m, Action::Move(flat.normalize().to_array()));
        run(&mut m, 1);
        let now = m.slice(0).map().epoch;
        stable = if now == epoch { stable + 1 } else { 0 };
        epoch = now;
        // Every item near enough to matter is loaded, and once the map has stood a while (the
        // new owner has heard where the player is and loaded the container), on the server that
        // owns its region.
        let here = where_is(&m, player);
        for s in m.nodes.iter().map(|n| n.slice()) {
            for (id, r) in s.records().iter().filter(|(_, r)| is_streamed(&r.state)) {
                let distance = r.state.pos().distance(here);
                if distance < STREAM_LOAD_RADIUS_M - 12.0 {
                    let holders: Vec<ServerId> =
                        m.servers().filter(|v| v.held().contains_key(id)).map(|v| v.id()).collect();
                    assert_eq!(holders.len(), 1, "{id} is {distance:.1} m from the player, held by {holders:?}");
                    let owner = s.map().owner_at(r.state.pos()).expect("owned");
                    assert!(
                        stable < settle || holders[0] == owner,
                        "{id} is {distance:.1} m from the player, held by {holders:?}, not by the owner {owner:?} \
                         of its region {stable} ticks after the map changed"
                    );
                }
            }
        }
        audit(&m);
    }
    assert!(arrived, "the player reached the far room");
    input(&mut m, Action::Move([0.0; 3]));
    input(&mut m, Action::PickUp);
    run(&mut m, 2);
    let carried: Vec<EntityId> = m
        .nodes
        .iter()
        .flat_map(|n| n.slice().records().iter())
        .filter(|(_, r)| r.state.parent == Some(player))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(carried.len(), 1, "the player picked up an item of the room it walked to");

    // Walk back to the start: the far room unloads; what the player carries goes with it.
    for _ in 0..3000 {
        let here = where_is(&m, player);
        let to = corner - here;
        if Vec3::new(to.x, to.y, 0.0).length() < 2.0 {
            break;
        }
        input(&mut m, Action::Move(Vec3::new(to.x, to.y, 0.0).normalize().to_array()));
        run(&mut m, 1);
    }
    run(&mut m, 6);
    audit(&m);
    let far_room = index.locate(far_item.1);
    let far_room_items: Vec<EntityId> = m
        .nodes
        .iter()
        .flat_map(|n| n.slice().records().iter())
        .filter(|(_, r)| is_streamed(&r.state) && index.locate(r.state.pos()) == far_room)
        .map(|(id, _)| *id)
        .collect();
    assert!(!far_room_items.is_empty());
    for id in &far_room_items {
        assert!(m.servers().all(|s| !s.held().contains_key(id)), "{id} of the far room is still loaded");
    }
    let end_held = held_items(&m);
    assert!(end_held <= near_items(&m, corner) + 1, "{end_held} items held back at the start");
    assert!(m.servers().any(|s| s.held().contains_key(&carried[0])), "the carried item stayed loaded");
    let (parked, woken): (u64, u64) = m
        .nodes
        .iter()
        .map(|n| (n.slice().stats.parked, n.slice().stats.woken))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));

    assert!(parked > 0 && woken > 0, "parked {parked}, woken {woken}");
}

/// Ships are rapier bodies, and their hulls collide: a pile-up may slow a ship or turn it, but
/// never push it faster than a ship flies (the clients' check for teleports relies on it).
#[test]
fn a_collision_never_pushes_a_ship_past_its_top_speed() {
    use shardmesh::protocol::server::speed_of;
    let top = speed_of(EntityKind::Ship);
    let ship = |x: f32, y: f32, z: f32, v: [f32; 3]| {
        let mut s = EntityState::new(EntityKind::Ship, Vec3::new(x, y, z));
        s.velocity = v;
        s
    };
    let ships = vec![
        (EntityId(1), ship(100.0, 10.0, 10.0, [top, 0.0, 0.0])),
        (EntityId(2), ship(120.0, 10.5, 10.0, [-top, 0.0, 0.0])),
        (EntityId(3), ship(110.0, 9.5, 10.5, [0.0, 0.0, 0.0])),
        (EntityId(4), ship(110.0, 10.0, 14.0, [0.0, 0.0, -top])),
        (EntityId(5), ship(104.0, 14.0, 10.0, [top * 0.6, -top * 0.8, 0.0])),
    ];
    let mut h = Harness::new(ships);
    let dt = TICK_DURATION_US as f32 / 1e6;
    let state =
        |h: &Harness, id: EntityId| h.servers().find_map(|s| s.held().get(&id).map(|e| e.state.clone())).expect("held");
    let mut last: Vec<Vec3> = (1..=5).map(|i| state(&h, EntityId(i)).pos()).collect();
    let (mut fastest, mut furthest) = (0.0f32, 0.0f32);
    for _ in 0..30 {
        h.tick();
        for i in 1..=5u64 {
            let s = state(&h, EntityId(i));
            fastest = fastest.max(s.vel().length());
            furthest = furthest.max(s.pos().distance(last[i as usize - 1]));
            last[i as usize - 1] = s.pos();
        }
    }
    assert!(fastest <= top * 1.0001, "a ship at {fastest} m/s");
    assert!(furthest <= top * dt * 1.0001, "a ship moved {furthest} m in a tick");
}

/// The tick rate sets how often the world is simulated, not how fast it moves: a second of game
/// time at 30 Hz and at 60 Hz moves a walker, a ship and a projectile the same distance, and a
/// projectile lives as long.
#[test]
fn a_tick_rate_changes_how_often_the_world_moves_not_how_fast() {
    use shardmesh::protocol::{Action, Input};
    let run = |tick_us: u64| {
        // Out of the shot's line (y = 10), so it flies its whole course.
        let mut walker = at(EntityKind::Npc, 20.0);
        walker.position[1] = 3.0;
        walker.velocity = [3.0, 0.0, 0.0];
        let mut ship = at(EntityKind::Ship, 110.0);
        ship.position[1] = 17.0;
        ship.velocity = [-20.0, 0.0, 0.0];
        let shooter = at(EntityKind::Player, 5.0);
        let entities = vec![(EntityId(1), walker), (EntityId(2), ship), (EntityId(3), shooter)];
        let mut m = Mesh::build(1, 3, owned_regions(), entities, None, tick_us);
        let ticks_per_second = (1_000_000 / tick_us) as usize;
        let fire = Input { entity: EntityId(3), action: Action::Fire([1.0, 0.0, 0.0]) };
        m.server_mut(0).handle_input(fire);
        m.tick();
        // The projectile's life left after its first tick, in game time.
        let ttl = m
            .servers()
            .flat_map(|s| s.held().values())
            .find(|h| h.state.kind == EntityKind::Projectile)
            .map(|h| h.state.ttl_ticks as f64 * tick_us as f64 / 1e6)
            .expect("the shot is in flight");
        for _ in 1..ticks_per_second {
            m.tick();
        }
        let x = |id: u64| m.servers().find_map(|s| s.held().get(&EntityId(id)).map(|h| h.state.position[0])).unwrap();
        (x(1), x(2), ttl)
    };
    let (walker_30, ship_30, shot_30) = run(TICK_DURATION_US);
    let (walker_60, ship_60, shot_60) = run(TICK_DURATION_US / 2);
    assert!((walker_30 - 23.0).abs() < 0.2, "a walker at 3 m/s for a second at 30 Hz is at {walker_30}");
    assert!((walker_60 - walker_30).abs() < 0.2, "walker: {walker_30} at 30 Hz, {walker_60} at 60 Hz");
    assert!((ship_60 - ship_30).abs() < 0.5, "ship: {ship_30} at 30 Hz, {ship_60} at 60 Hz");
    assert!(
        shot_30 > 0.5 && (shot_60 - shot_30).abs() < 0.05,
        "a shot has {shot_30} s left at 30 Hz, {shot_60} s at 60 Hz"
    );
}

/// Every entity is held by exactly one live server (none lost, none twice).
fn held_once(m: &Mesh, ids: impl Iterator<Item = EntityId>) {
    for id in ids {
        let holders = m.servers().filter(|s| s.held().contains_key(&id)).count();
        assert_eq!(holders, 1, "{id} held by {holders} servers");
    }
}

/// A crowd the servers it has cannot carry starts another: on the core with the most headroom,
/// taking regions (and their entities) from the busiest; nothing is lost or held twice.
#[test]
fn a_crowd_starts_a_server_that_takes_regions_from_the_busiest() {
    use shardmesh::limits::{SERVER_ENTITIES_HIGH_MAX, SERVER_START_AFTER_PERIODS_MIN};
    let world = Aabb::new(Vec3::ZERO, Vec3::new(160.0, 20.0, 20.0));
    let crowd = 2 * SERVER_ENTITIES_HIGH_MAX as usize + 200;
    let entities: Vec<(EntityId, EntityState)> =
        (0..crowd).map(|i| (EntityId(i as u64 + 1), at(EntityKind::Npc, 2.0 + (i % 150) as f32))).collect();
    let ids: Vec<EntityId> = entities.iter().map(|(id, _)| *id).collect();
    let mut m = Mesh::new(2, 2, RegionMap::kd_split(world, 4), entities);
    m.slice_mut(0).set_server_bounds(1, 4);
    let period = shardmesh::limits::ticks_in(shardmesh::limits::BALANCE_PERIOD_US, TICK_DURATION_US);
    for _ in 0..period * (SERVER_START_AFTER_PERIODS_MIN as u64 + 2) {
        m.tick();
    }
    assert_eq!(m.slice(0).stats.servers_started, 1, "{crowd} entities on 2 servers start a third");
    let started = m.servers().map(|s| s.id()).find(|s| s.0 >= 2).expect("a third server runs");
    for _ in 0..period * 3 {
        m.tick();
    }
    assert!(m.slice(0).map().regions_of(started).next().is_some(), "it took regions");
    assert!(m.servers().find(|s| s.id() == started).unwrap().held().len() > 100, "and their entities");
    held_once(&m, ids.iter().copied());
}

/// A world `world` wide and deep (20 m high) holding one city from (10, 10) to `city`, one
/// building from (20, 20) to `building`, and in it two rooms split at x = 40: the second is
/// `containers[5]`.
fn two_rooms(world: [f32; 2], city: [f32; 2], building: [f32; 2]) -> shardmesh::world::ContainerTree {
    use shardmesh::world::{Container, ContainerKind, ContainerTree};
    let b = |min: [f32; 2], max: [f32; 2]| Aabb { min: [min[0], min[1], 0.0], max: [max[0], max[1], 20.0] };
    let c = |name: &str, kind, bounds, parent| Container { name: name.into(), kind, bounds, parent };
    ContainerTree {
        containers: vec![
            c("system", ContainerKind::System, b([0.0; 2], world), None),
            c("planet", ContainerKind::Planet, b([0.0; 2], world), Some(0)),
            c("city", ContainerKind::City, b([10.0; 2], city), Some(1)),
            c("building", ContainerKind::Building, b([20.0; 2], building), Some(2)),
            c("room-0", ContainerKind::Room, b([20.0; 2], [40.0, building[1]]), Some(3)),
            c("room-1", ContainerKind::Room, b([40.0, 20.0], building), Some(3)),
        ],
    }
}

/// 400 NPCs standing on a grid of 20 by 20 from `corner`, `dx` and `dy` apart.
fn npcs_on_a_grid(corner: Vec3, dx: f32, dy: f32) -> Vec<(EntityId, EntityState)> {
    (0..400)
        .map(|i| {
            let p = corner + Vec3::new((i % 20) as f32 * dx, (i / 20) as f32 * dy, 0.0);
            (EntityId(i as u64 + 1), EntityState::new(EntityKind::Npc, p))
        })
        .collect()
}

/// A crowd in one room of a region that holds a whole city: the controller cuts along walls
/// (the city's, the building's, between the two rooms) until a region is that room, and only
/// then cuts the room itself; half the crowd then goes to the other server. Nothing is lost.
#[test]
fn a_hot_room_splits_along_its_walls_before_it_is_cut() {
    let tree = two_rooms([160.0, 80.0], [70.0, 70.0], [60.0, 50.0]);
    let room = tree.containers[5].bounds;
    let entities = npcs_on_a_grid(Vec3::new(40.5, 20.5, 1.0), 1.0, 1.5);
    let ids: Vec<EntityId> = entities.iter().map(|(id, _)| *id).collect();
    let mut map = RegionMap::kd_split(tree.bounds(), 2);
    let halves: Vec<RegionId> = map.regions().iter().map(|r| r.id).collect();
    map.assign(halves[0], Some(ServerId(0))).unwrap();
    map.assign(halves[1], Some(ServerId(1))).unwrap();
    let mut m = Mesh::with_streaming(2, 2, map, entities, Arc::new(StreamIndex::new(tree.clone())));
    let period = shardmesh::limits::ticks_in(shardmesh::limits::BALANCE_PERIOD_US, TICK_DURATION_US);
    let mut room_was_a_region = false;
    for _ in 0..period * 20 {
        room_was_a_region |= m.slice(0).map().regions().iter().any(|r| r.bounds == room);
        let before = m.slice(0).stats.rooms_cut;
        m.tick();
        if m.slice(0).stats.rooms_cut > before {
            assert!(room_was_a_region, "the room was cut before walls set it apart");
        }
    }
    let stats = &m.slice(0).stats;
    assert!(room_was_a_region, "walls set the room apart ({} splits)", stats.regions_split);
    assert!(stats.rooms_cut >= 1, "then the room itself was cut ({} splits)", stats.regions_split);
    assert!(stats.regions_split >= 5 + stats.rooms_cut, "along walls first: {} splits", stats.regions_split);
    let held: Vec<usize> = [0, 1].map(|s| m.server(s).held().len()).into();
    assert!(held.iter().all(|n| *n >= 100), "the crowd is shared: {held:?}");
    held_once(&m, ids.iter().copied());
}

/// A crowd in one room of a city in a region far larger than the city: the region's report
/// puts the whole crowd in one or two of its coarse bins, so what a cut between the city's walls
/// leaves on each side is a guess. The controller walls the room off without moving any of the
/// crowd on such a guess (moved whole, it would only change which core is hot, after a second of
/// handoffs), in one balancing period, and shares the crowd only by cutting the room.
#[test]
fn a_crowd_is_walled_off_in_one_period_and_not_moved_whole_on_a_guess() {
    let tree = two_rooms([1000.0, 100.0], [90.0, 90.0], [80.0, 80.0]);
    let room = tree.containers[5].bounds;
    let entities = npcs_on_a_grid(Vec3::new(42.5, 22.5, 1.0), 1.8, 2.8);
    let ids: Vec<EntityId> = entities.iter().map(|(id, _)| *id).collect();
    let mut map = RegionMap::kd_split(tree.bounds(), 2);
    let halves: Vec<RegionId> = map.regions().iter().map(|r| r.id).collect();
    map.assign(halves[0], Some(ServerId(0))).unwrap();
    map.assign(halves[1], Some(ServerId(1))).unwrap();
    let mut m = Mesh::with_streaming(2, 2, map, entities, Arc::new(StreamIndex::new(tree.clone())));
    let period = shardmesh::limits::ticks_in(shardmesh::limits::BALANCE_PERIOD_US, TICK_DURATION_US);
    let mut walled_at = None;
    for tick in 0..period * 12 {
        m.tick();
        if walled_at.is_none() && m.slice(0).map().regions().iter().any(|r| r.bounds == room) {
            walled_at = Some(tick);
        }
        if m.slice(0).stats.rooms_cut == 0 {
            let away = ids.iter().filter(|id| !m.server(0).held().contains_key(id)).count();
            assert_eq!(away, 0, "tick {tick}: {away} of the crowd moved before the room was cut");
        }
    }
    let walled_at = walled_at.expect("walls set the room apart");
    assert!(walled_at < 2 * period, "walled off in the first period, not at tick {walled_at}");
    assert!(m.slice(0).stats.rooms_cut >= 1, "then the room itself was cut");
    let held: Vec<usize> = [0, 1].map(|s| m.server(s).held().len()).into();
    assert!(held.iter().all(|n| *n >= 100), "the crowd is shared: {held:?}");
    held_once(&m, ids.iter().copied());
}

/// A crowd on one side of the border between two servers on two cores: the controller evens
/// it out by moving that border, not by cutting the crowd's region into more (each new border
/// is another strip of ghosts and crossings). The map keeps its two regions; nothing is lost.
#[test]
fn a_crowd_against_a_border_is_evened_out_by_moving_the_border() {
    let world = Aabb::new(Vec3::ZERO, Vec3::new(160.0, 20.0, 20.0));
    let entities: Vec<(EntityId, EntityState)> =
        (0..400).map(|i| (EntityId(i + 1), at(EntityKind::Npc, 10.0 + (i % 136) as f32 / 2.0))).collect();
    let ids: Vec<EntityId> = entities.iter().map(|(id, _)| *id).collect();
    let mut map = RegionMap::kd_split(world, 2);
    let halves: Vec<RegionId> = map.regions().iter().map(|r| r.id).collect();
    map.assign(halves[0], Some(ServerId(0))).unwrap();
    map.assign(halves[1], Some(ServerId(1))).unwrap();
    let mut m = Mesh::new(2, 2, map, entities);
    let period = shardmesh::limits::ticks_in(shardmesh::limits::BALANCE_PERIOD_US, TICK_DURATION_US);
    for _ in 0..period * 6 {
        m.tick();
    }
    let stats = &m.slice(0).stats;
    assert!(stats.regions_moved >= 1, "load moved");
    assert_eq!(stats.regions_split, 0, "without a cut");
    assert_eq!(m.slice(0).map().regions().len(), 2, "the map keeps its two regions");
    let held: Vec<usize> = [0, 1].map(|s| m.server(s).held().len()).into();
    assert!(held.iter().all(|n| (150..=250).contains(n)), "the crowd is shared: {held:?}");
    held_once(&m, ids.iter().copied());
}

/// A hundred NPCs in a row over a 160 m world of four regions, two slices, two servers, which
/// the controller may run up to `servers_max` of; and the ticks of a balancing period.
fn measured_mesh(servers_max: usize) -> (Mesh, Vec<EntityId>, u64) {
    measured_mesh_of(servers_max, 100, 4)
}

/// `measured_mesh` with `npcs` NPCs evenly over the row and `regions` regions.
fn measured_mesh_of(servers_max: usize, npcs: u64, regions: usize) -> (Mesh, Vec<EntityId>, u64) {
    let world = Aabb::new(Vec3::ZERO, Vec3::new(160.0, 20.0, 20.0));
    let step = 150.0 / npcs as f32;
    let entities: Vec<(EntityId, EntityState)> =
        (0..npcs).map(|i| (EntityId(i + 1), at(EntityKind::Npc, 1.0 + step * i as f32))).collect();
    let ids: Vec<EntityId> = entities.iter().map(|(id, _)| *id).collect();
    let mut m = Mesh::new(2, 2, RegionMap::kd_split(world, regions), entities);
    m.slice_mut(0).set_server_bounds(2, servers_max);
    (m, ids, shardmesh::limits::ticks_in(shardmesh::limits::BALANCE_PERIOD_US, TICK_DURATION_US))
}

/// Ticks `ticks` with both cores reporting `fraction` of a tick's work each tick.
fn tick_at_work(m: &mut Mesh, ticks: u64, fraction: f64) {
    for _ in 0..ticks {
        for node in 0..2 {
            m.slice_mut(node).note_work((TICK_DURATION_US as f64 * fraction) as u64);
        }
        m.tick();
    }
}

/// Where the cores measure their work (the runtime does), that is what starts and retires
/// servers: a crowd costs far more than its count. A hundred entities are too few for the count
/// rule to start anything, but cores working 80% of a tick start a server; once they work 10%
/// for a while, a server retires again, down to the lower bound. Nothing is lost.
#[test]
fn measured_work_starts_a_server_and_quiet_retires_it() {
    use shardmesh::limits::{SERVER_RETIRE_AFTER_PERIODS_MIN, SERVER_START_AFTER_PERIODS_MIN};
    let (mut m, ids, period) = measured_mesh(4);
    let run = |m: &mut Mesh, periods: u64, fraction: f64| tick_at_work(m, period * periods, fraction);
    run(&mut m, SERVER_START_AFTER_PERIODS_MIN as u64 + 3, 0.8);
    assert!(m.slice(0).stats.servers_started >= 1, "busy cores start a server");
    assert_eq!(m.slice(0).stats.servers_retired, 0);
    assert!(m.servers().count() >= 3);
    run(&mut m, 2 * SERVER_RETIRE_AFTER_PERIODS_MIN as u64 + 6, 0.1);
    assert!(m.slice(0).stats.servers_retired >= 1, "quiet cores retire one");
    assert_eq!(m.servers().count(), 2, "down to the lower bound, no further");
    held_once(&m, ids.iter().copied());
}

/// Servers started for a crowd retire once it has gone even while the cores stay busy: between
/// the start mark and the surplus mark (half a tick) those that sit idle retire, under it every
/// one beyond the starting number does, each into a sibling on its own core, so no core's work
/// grows and nothing starts again.
#[test]
fn servers_started_for_a_crowd_retire_into_their_cores_once_it_has_gone() {
    use shardmesh::limits::{
        SERVER_RETIRE_AFTER_PERIODS_MIN, SERVER_START_AFTER_PERIODS_MIN, SERVER_WORK_HIGH_FRACTION,
        SERVER_WORK_SURPLUS_FRACTION,
    };
    let (mut m, ids, period) = measured_mesh(6);
    let run = |m: &mut Mesh, periods: u64, fraction: f64| tick_at_work(m, period * periods, fraction);
    run(&mut m, 3 * SERVER_START_AFTER_PERIODS_MIN as u64 + 4, 0.8);
    let started = m.slice(0).stats.servers_started;
    assert!(started >= 2, "busy cores start servers: {started}");
    let running = m.servers().count();
    assert!(running >= 4);
    // Busy, but under the start mark: nothing starts; a started server that sits idle (its share
    // of the world small) retires, one that holds its share stays.
    let between = (SERVER_WORK_HIGH_FRACTION + SERVER_WORK_SURPLUS_FRACTION) / 2.0;
    run(&mut m, 4 * SERVER_RETIRE_AFTER_PERIODS_MIN as u64 + 8, between);
    assert_eq!(m.slice(0).stats.servers_started, started, "under the start mark nothing starts");
    let loads = m.slice(0).region_loads();
    let held = |s: ServerId| -> u32 {
        m.slice(0)
            .map()
            .regions()
            .iter()
            .filter(|r| r.server == Some(s))
            .map(|r| loads.get(&r.id).copied().unwrap_or(0))
            .sum()
    };
    let left: Vec<ServerId> = m.servers().map(|s| s.id()).collect();
    let mean = ids.len() as f64 / left.len() as f64;
    for s in &left {
        let sibling = left.iter().any(|o| o != s && o.0 % 2 == s.0 % 2);
        assert!(
            !sibling || held(*s) as f64 >= shardmesh::limits::SERVER_IDLE_SHARE * mean || left.len() == 2,
            "{s:?} sits idle with {} entities and was not retired ({left:?})",
            held(*s)
        );
    }
    let running = left.len();
    // Under the surplus mark (and above the quiet one): the started ones retire, one at a time.
    let under = (SERVER_WORK_SURPLUS_FRACTION + shardmesh::limits::SERVER_WORK_LOW_FRACTION) / 2.0;
    let retired = m.slice(0).stats.servers_retired;
    run(&mut m, (running as u64 - 1) * (SERVER_RETIRE_AFTER_PERIODS_MIN as u64 + 2), under);
    assert_eq!(m.slice(0).stats.servers_started, started, "a retirement starts nothing again");
    assert_eq!(m.slice(0).stats.servers_retired, retired + running as u64 - 2);
    let left: Vec<ServerId> = m.servers().map(|s| s.id()).collect();
    assert_eq!(left.len(), 2, "down to the starting number: {left:?}");
    // One server a core is left: each retired into its own core.
    assert_ne!(left[0].0 % 2, left[1].0 % 2, "one on each core: {left:?}");
    held_once(&m, ids.iter().copied());
}

/// Ticks `ticks` with core 0 reporting `fractions.0` of a tick's work each tick and core 1
/// `fractions.1`.
fn tick_at_works(m: &mut Mesh, ticks: u64, fractions: (f64, f64)) {
    for _ in 0..ticks {
        m.slice_mut(0).note_work((TICK_DURATION_US as f64 * fractions.0) as u64);
        m.slice_mut(1).note_work((TICK_DURATION_US as f64 * fractions.1) as u64);
        m.tick();
    }
}

/// On one host a start adds a server, not CPU: while the cores work alike, the servers a crowd
/// starts take nothing from anyone (a region taken across cores only loads the other core, and
/// balancing undoes it with another burst of handoffs; one taken on its own core only adds a
/// border there): they stand ready, and once one core works well past the other, load goes from
/// it to a started server on the other core. Nothing is lost.
#[test]
fn servers_started_between_even_cores_stand_ready_until_one_core_is_busier() {
    use shardmesh::limits::SERVER_START_AFTER_PERIODS_MIN;
    let (mut m, ids, period) = measured_mesh_of(6, 400, 8);
    let core = |s: Option<ServerId>| s.map(|s| s.0 % 2);
    let owners = |m: &Mesh| -> Vec<(Aabb, Option<ServerId>)> {
        m.slice(0).map().regions().iter().map(|r| (r.bounds, r.server)).collect()
    };
    let before = owners(&m);
    tick_at_works(&mut m, period * (3 * SERVER_START_AFTER_PERIODS_MIN as u64 + 4), (0.8, 0.8));
    let started = m.slice(0).stats.servers_started;
    assert!(started >= 2, "busy cores start servers: {started}");
    let running: Vec<ServerId> = m.servers().map(|s| s.id()).collect();
    assert!(running.len() >= 4, "{running:?}");
    assert!(running.iter().any(|s| s.0 % 2 == 1 && s.0 >= 2), "one started on core 1: {running:?}");
    assert_eq!(owners(&m), before, "no region changed hands between cores that work alike");
    assert_eq!(m.slice(0).stats.regions_moved, 0);
    // Core 0 works well past core 1: a started server on core 1 takes load from core 0.
    tick_at_works(&mut m, period * 4, (0.9, 0.45));
    let after = owners(&m);
    let map = m.slice(0).map();
    assert!(
        map.regions().iter().any(|r| r.server.is_some_and(|s| s.0 >= 2 && s.0 % 2 == 1)),
        "a started server on core 1 holds a region: {after:?}"
    );
    for (bounds, server) in &after {
        let (_, was) = before.iter().find(|(b, _)| b.contains(bounds.center())).expect("inside the world");
        assert!(
            core(*server) == core(*was) || (core(*was) == Some(0) && core(*server) == Some(1)),
            "{bounds:?} went from {was:?} to {server:?}, not from the busy core to the quiet one"
        );
    }
    held_once(&m, ids.iter().copied());
}

/// Load that stays low retires a server: its regions go to the others, it stops once it holds
/// nothing, and nothing is lost; never below the lower bound.
#[test]
fn a_quiet_mesh_retires_a_server_and_loses_nothing() {
    use shardmesh::limits::SERVER_RETIRE_AFTER_PERIODS_MIN;
    let world = Aabb::new(Vec3::ZERO, Vec3::new(160.0, 20.0, 20.0));
    let entities: Vec<(EntityId, EntityState)> =
        (0..30).map(|i| (EntityId(i + 1), at(EntityKind::Npc, 3.0 + 5.0 * i as f32))).collect();
    let ids: Vec<EntityId> = entities.iter().map(|(id, _)| *id).collect();
    let mut m = Mesh::new(2, 3, RegionMap::kd_split(world, 6), entities);
    m.slice_mut(0).set_server_bounds(2, 4);
    let period = shardmesh::limits::ticks_in(shardmesh::limits::BALANCE_PERIOD_US, TICK_DURATION_US);
    for _ in 0..period * (2 * SERVER_RETIRE_AFTER_PERIODS_MIN as u64 + 4) {
        m.tick();
    }
    assert_eq!(m.slice(0).stats.servers_retired, 1, "one retired, none below the bound of 2");
    let running: Vec<ServerId> = m.servers().map(|s| s.id()).collect();
    assert_eq!(running.len(), 2, "running: {running:?}");
    for r in m.slice(0).map().regions() {
        assert!(r.server.is_some_and(|o| running.contains(&o)), "{:?} has no running server", r.id);
    }
    held_once(&m, ids.iter().copied());
}
