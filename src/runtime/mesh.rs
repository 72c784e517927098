//! The live static mesh on this machine's cores: a generated world, one shard per core (a pinned
//! glommio executor with its replication slice and its servers), a shared-memory ring for each
//! ordered pair of cores, bots playing, a status line each second, and at the end an audit of
//! every entity: nothing lost, nothing held twice, the same items as at the start.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

use super::ring::Ring;
use super::shard::{self, ShardGauges, ShardReport, ShardSetup};
pub use crate::limits::{IO_MEMORY_BYTES, RING_BYTES};
use crate::limits::{PREFAULT_BYTES_MAX, PREFAULT_BYTES_PER_ENTITY, SERVERS_MAX, WORLD_PLAYERS_MAX};
use crate::node::Checker;
use crate::protocol::{Committed, Replication, Server, SliceId};
use crate::world::{
    populate, Aabb, ContainerKind, ContainerTree, EntityId, EntityKind, EntityState, Population, RegionId, RegionMap,
    ServerId, StreamIndex,
};

#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub cores: usize,
    pub players: usize,
    pub duration: Duration,
    /// Ticks in the first part of the run are not counted in the tick-time figures: the whole
    /// world is being placed then.
    pub warmup: Duration,
    /// Wall time between ticks; zero runs ticks back to back, each one tick of game time (the
    /// benchmarks' free-running mode).
    pub tick: Duration,
    pub servers_per_core: usize,
    pub seed: u64,
    /// Bot activity, 1.0 being the simulator's stress level.
    pub bot_activity: f64,
    /// Print a status line every second.
    pub status: bool,
    pub scenario: Scenario,
    /// Subtrees a server hands off per tick at most (`None`: the default limit).
    pub handoffs_per_tick_max: Option<usize>,
    /// Keep the world in a replication log in this directory (`None`: the world lives only as
    /// long as the run).
    pub persist: Option<PersistConfig>,
    /// Stop when this is set (by a signal handler), as well as at the end of `duration`.
    pub stop_signal: Option<Arc<AtomicBool>>,
    /// Accept clients over UDP (`None`: bots only).
    pub gateway: Option<GatewayConfig>,
    /// Serve Prometheus metrics over HTTP on this address (`None`: none).
    pub metrics: Option<std::net::SocketAddr>,
    /// Serve the live map over HTTP on this address (`None`: none).
    pub http: Option<std::net::SocketAddr>,
    /// A panic to inject, for tests and drills (`None` in any real run).
    pub inject_panic: Option<super::panics::InjectPanic>,
    /// Bytes of each core-to-core ring (a power of two), and of the messages queued for a peer
    /// whose ring is full before the core holds its servers' ticks back.
    pub ring_bytes: usize,
    pub pending_bytes_per_peer_max: usize,
    /// Logical servers the controller may run at most: it starts one (on the core with the most
    /// headroom) when load cannot be evened out among those it has, and retires one when load
    /// stays low, never below `servers_per_core` a core. Equal to the starting number (the
    /// default): a fixed set. `static_mesh` turns every dynamic action off.
    pub servers_max: Option<usize>,
    /// No balancing, no splits or merges, no servers started or retired: regions and servers
    /// stay as configured (for comparison with the dynamic mesh).
    pub static_mesh: bool,
    /// `Scenario::Rush` only: this share of the players (0 to 1) are accounts that log out when
    /// the rush ends, as a crowd leaves the game after an event (their players parked by the
    /// replication layer, costing nothing); the rest scatter. 0: nobody leaves.
    pub leave_after_rush: f64,
    /// Crash a random server every this long (its code panics halfway through a tick), to show
    /// failover under load (`None`: no drills).
    pub chaos_crash_every: Option<Duration>,
}

impl MeshConfig {
    /// A run of `players` bots on `cores` cores for `duration` at 30 Hz, two servers a core, the
    /// demo's bot activity, no status line, log or gateway: what callers change from.
    pub fn bots(cores: usize, players: usize, duration: Duration) -> Self {
        Self {
            cores,
            players,
            duration,
            warmup: (duration / 5).min(Duration::from_secs(2)),
            tick: Duration::from_micros(crate::limits::TICK_DURATION_US),
            servers_per_core: 2,
            seed: 1,
            bot_activity: 0.25,
            status: false,
            scenario: Scenario::Bots,
            handoffs_per_tick_max: None,
            persist: None,
            stop_signal: None,
            gateway: None,
            metrics: None,
            http: None,
            inject_panic: None,
            ring_bytes: RING_BYTES,
            pending_bytes_per_peer_max: shard::PENDING_BYTES_PER_PEER_MAX,
            chaos_crash_every: None,
            servers_max: None,
            static_mesh: false,
            leave_after_rush: 0.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub listen: std::net::SocketAddr,
    pub key: crate::net::key::Key,
    /// Accept clients without a connect token: development only.
    pub insecure: bool,
    /// Netcode endpoints (sockets on the one port) per core; each holds up to 1,024 clients.
    pub endpoints_per_core: usize,
    /// Update bytes a second each client is sent at most.
    pub client_bytes_per_s: u32,
}

#[derive(Clone, Debug)]
pub struct PersistConfig {
    pub dir: std::path::PathBuf,
    pub durability: crate::log::Durability,
    pub checkpoint_every: Duration,
    pub segment_bytes: usize,
    /// Cut a corrupt log at the first bad record instead of refusing to start.
    pub salvage: bool,
}

/// What a persistent world was generated from, kept beside its log so that every start lays out
/// the same containers (the bots' destinations) around the entities the log holds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct WorldMeta {
    seed: u64,
    players: usize,
}

impl WorldMeta {
    const FILE: &'static str = "world.json";

    fn read_or_create(dir: &std::path::Path, seed: u64, players: usize) -> Result<Self, MeshError> {
        let path = dir.join(Self::FILE);
        let io = |e: std::io::Error| MeshError::Log(format!("{}: {e}", path.display()));
        match std::fs::read(&path) {
            Ok(bytes) => {
                let meta: Self =
                    serde_json::from_slice(&bytes).map_err(|e| MeshError::Log(format!("{}: {e}", path.display())))?;
                if meta.players > WORLD_PLAYERS_MAX {
                    return Err(MeshError::Log(format!(
                        "{}: a world of {} players, more than {WORLD_PLAYERS_MAX}: the file is damaged",
                        path.display(),
                        meta.players
                    )));
                }
                Ok(meta)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io)?;
                let meta = WorldMeta { seed, players };
                let tmp = dir.join("world.json.tmp");
                std::fs::write(&tmp, serde_json::to_vec(&meta).expect("serializes")).map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
                Ok(meta)
            }
            Err(e) => Err(io(e)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A generated world of planets and cities, with bots that wander, pick up and fight.
    Bots,
    /// A corridor of 64 regions, 50 m each, owned in turn by servers on different cores, and
    /// `players` NPCs flying along it at 1,500 m/s with no bots: every entity crosses into
    /// another core's region every tick. The handoff benchmark.
    BorderRun,
    /// The bots world, with every player in one room (a tavern in the first city), milling
    /// about, fighting and trading items there: a crowd no split of space between cities helps.
    Tavern,
    /// The bots world on two planets: the players go about as in `Bots`, then (from a fifth of
    /// the run to three fifths) every player rushes the tavern and mills about there, then they
    /// scatter again: a crowd that comes and goes.
    Rush,
}

/// Every player not aboard anything goes into `room`, spread over its floor (inside the outer
/// tenth on either side), with what it carries.
fn crowd_into(entities: &mut [(EntityId, EntityState)], room: crate::world::Aabb, seed: u64) {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x7a7e);
    let mut moved: rustc_hash::FxHashMap<EntityId, [f32; 3]> = rustc_hash::FxHashMap::default();
    let (centre, half) = (room.center(), room.size() / 2.0);
    for (id, state) in entities.iter_mut() {
        if state.kind == EntityKind::Player && state.parent.is_none() {
            let (x, y) = (rng.random_range(-0.8f32..0.8), rng.random_range(-0.8f32..0.8));
            let p = glam::Vec3::new(centre.x + x * half.x, centre.y + y * half.y, centre.z);
            state.position = p.to_array();
            state.velocity = [0.0; 3];
            moved.insert(*id, state.position);
        }
    }
    // What they carry is where they are (parents before children, a few levels deep).
    for _ in 0..crate::limits::GRAPH_DEPTH_MAX {
        for (id, state) in entities.iter_mut() {
            if let Some(p) = state.parent.and_then(|p| moved.get(&p).copied()) {
                state.position = p;
                moved.insert(*id, p);
            }
        }
    }
}

/// The corridor of `Scenario::BorderRun`: regions, their owners in turn, and the runners.
fn border_run(runners: usize, servers: usize, seed: u64) -> (RegionMap, Vec<(EntityId, EntityState)>) {
    use rand::{RngExt, SeedableRng};
    let regions = 64;
    let world = Aabb::new(glam::Vec3::ZERO, glam::Vec3::new(50.0 * regions as f32, 20.0, 20.0));
    let mut map = RegionMap::kd_split(world, regions);
    let mut by_x: Vec<(f32, RegionId)> = map.regions().iter().map(|r| (r.bounds.min[0], r.id)).collect();
    by_x.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (i, (_, id)) in by_x.into_iter().enumerate() {
        map.assign(id, Some(ServerId((i % servers) as u32))).expect("region exists");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let entities = (0..runners)
        .map(|i| {
            let x = rng.random_range(0.0..world.max[0]);
            let mut state = EntityState::new(EntityKind::Npc, glam::Vec3::new(x, 10.0, 10.0));
            state.velocity = [if i % 2 == 0 { 1500.0 } else { -1500.0 }, 0.0, 0.0];
            (EntityId::new(0, i as u32), state)
        })
        .collect();
    (map, entities)
}

/// The mesh a second at a time, as the status line shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub players: u64,
    pub servers: u64,
    pub servers_started: u64,
    pub servers_retired: u64,
    pub regions: u64,
    pub regions_split: u64,
    pub regions_merged: u64,
    pub regions_moved: u64,
    /// The slowest core's tick percentiles over its last second.
    pub tick_p50_ms: f64,
    pub tick_p99_ms: f64,
    pub handoffs_per_s: f64,
    /// The slowest core's last window (`None`: none closed yet, or a free-running run).
    pub time_dilation: Option<f64>,
    /// The busiest core's servers and slice at work over the last second, as a share of the
    /// ticks' budget (`None` for a free-running run, or a second without a tick).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work: Option<f64>,
}

/// The samples of a run, bounded: once `TIMELINE_SAMPLES_MAX` are kept, every other one goes and
/// samples are kept half as often, so a world served for days keeps its whole run, coarser.
#[derive(Debug, Default)]
struct Timeline {
    samples: Vec<Sample>,
    /// Keep one sample in this many (a power of two), and the samples seen.
    every: u64,
    seen: u64,
}

impl Timeline {
    fn record(&mut self, sample: Sample) {
        let every = self.every.max(1);
        self.seen += 1;
        if (self.seen - 1) % every != 0 {
            return;
        }
        if self.samples.len() >= crate::limits::TIMELINE_SAMPLES_MAX {
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.every = every * 2;
            if (self.seen - 1) % self.every != 0 {
                return;
            }
        }
        self.samples.push(sample);
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MeshSummary {
    /// The world's players at the end: its own (the bots') and every account's that ever joined.
    pub players: usize,
    /// Of those, accounts' players parked at the end, logged out; and those made this run (first
    /// logins).
    pub players_offline: usize,
    pub players_created: u64,
    pub servers: usize,
    pub cores: usize,
    pub duration_s: f64,
    pub ticks: u64,
    pub tick_p50_ms: f64,
    pub tick_p99_ms: f64,
    pub tick_max_ms: f64,
    pub ticks_over_budget: u64,
    /// Entities each core held at the end, and each core's tick p99: where the load sat.
    pub held_per_core: Vec<usize>,
    /// Entities at rest at the end: in containers no player was near, held by no server (they
    /// are in the replication layer and its log).
    pub entities_at_rest: usize,
    pub tick_p99_ms_per_core: Vec<f64>,
    /// Where each core's ticks went after the warm-up: the mean wall time of a tick in each of
    /// `shard::STAGES` (receive, inputs, servers, slice, send, clients), in ms. A profile of the
    /// run that costs nothing: which part of the tick a split mesh pays for. Empty for a core
    /// that ticked no more after the warm-up.
    pub stage_ms_per_core: Vec<Vec<f64>>,
    pub handoffs: u64,
    pub transfers: u64,
    pub entities_start: usize,
    pub entities_end: usize,
    pub items_start: usize,
    pub items_end: usize,
    pub lost_entities: usize,
    pub duplicate_entities: usize,
    pub server_restarts: u64,
    /// Servers whose code panicked: each was a crash, its slice took back what it held, and a
    /// fresh incarnation replaced it.
    pub server_panics: u64,
    /// Ticks (summed over cores) whose simulation was held back under overload: the world ran
    /// slower, and no server was failed over for it.
    pub ticks_held_back: u64,
    /// Servers their slices declared dead (a silent lease, a crash report).
    pub servers_declared_dead: u64,
    /// The controller's lifecycle and region operations: servers started and retired, the most
    /// it may run, regions split and merged.
    pub servers_started: u64,
    pub servers_retired: u64,
    pub servers_max: usize,
    pub regions_split: u64,
    pub regions_merged: u64,
    pub regions_moved: u64,
    /// Splits that cut through a room (the others ran along walls or through open space).
    pub rooms_cut: u64,
    /// Border ghosts the slices gave their servers, and sent to other cores, over the run.
    pub ghosts_to_servers: u64,
    pub ghosts_to_cores: u64,
    /// The same a tick, over the ticks after the warm-up (those `ticks` counts); 0.0 when no
    /// tick came after it.
    pub ghosts_to_servers_per_tick: f64,
    pub ghosts_to_cores_per_tick: f64,
    /// The world's lowest speed against real time over a window after the warm-up, on any core
    /// (EVE Online's time dilation): 1.0 when the world never slowed; `None` for a free-running
    /// run (it keeps no real time) or one too short for a window.
    pub time_dilation_min: Option<f64>,
    /// The run a second at a time (coarser for a run longer than `TIMELINE_SAMPLES_MAX` seconds).
    pub timeline: Vec<Sample>,
    /// The region map's epoch at the start and at the end (equal: the map never changed).
    pub map_epoch_start: u64,
    pub map_epoch_end: u64,
    /// Crashes of a server's code (drills included): each a failover, measured in ticks from the
    /// crash to every entity the server held being held by a live server again.
    pub server_crashes: u64,
    pub failover_ticks_p50: Option<u64>,
    pub failover_ticks_p99: Option<u64>,
    pub failover_ticks_max: Option<u64>,
    /// Every finished failover's ticks, in the order they finished (the report plots them).
    pub failover_ticks: Vec<u64>,
    /// Failovers not finished when the run ended (server, crash tick, entities still waiting).
    pub failovers_unfinished: Vec<(u32, crate::world::Tick, usize)>,
    /// Crash drills asked for (`--chaos-crash-every`), and those that reached a running server.
    pub chaos_drills: u32,
    pub chaos_drills_carried_out: u32,
    pub ring_errors: u64,
    /// With a replication log: the tick every slice had committed durably at the end, and the
    /// last checkpoint round every slice completed.
    pub committed_tick: Option<u64>,
    pub checkpoint_round: Option<u64>,
    /// Why the replication log stopped taking commits, if it did.
    pub log_error: Option<String>,
    /// The first broken invariant the audit found, if any.
    pub audit_error: Option<String>,
    /// With a gateway: where it listened, and what it counted.
    pub listen: Option<String>,
    pub gateway: Option<crate::net::GatewayStats>,
    pub stall_reports: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("could not start the shard for core {core}: {source}")]
    Executor { core: usize, source: glommio::GlommioError<()> },
    #[error("the shard for core {core} panicked: {what} (the other slices committed what they could; restart to recover from the log)")]
    ShardPanicked { core: usize, what: String },
    #[error("ring: {0}")]
    Ring(#[from] super::ring::RingError),
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("replication log: {0}")]
    Log(String),
}

fn world_for(players: usize, seed: u64) -> ContainerTree {
    // About 1,500 players to a 400 m planet keeps crowds without piling everyone on one spot.
    let planets = players.div_ceil(1500).max(2);
    ContainerTree::generate(seed, planets, 2, 2)
}

pub fn run(cfg: MeshConfig) -> Result<MeshSummary, MeshError> {
    if cfg.cores == 0 || cfg.cores > 256 || cfg.servers_per_core == 0 {
        return Err(MeshError::Config(format!("{} cores with {} servers each", cfg.cores, cfg.servers_per_core)));
    }
    let cores = cfg.cores;
    super::alloc::keep_freed_memory();
    if cfg.leave_after_rush != 0.0
        && (cfg.scenario != Scenario::Rush
            || !(0.0..=1.0).contains(&cfg.leave_after_rush)
            || cfg.persist.is_some()
            || cfg.gateway.is_some())
    {
        return Err(MeshError::Config(format!(
            "--leave {}: a share from 0 to 1, with --scenario rush, and no --data or --listen (its leavers are scripted accounts)",
            cfg.leave_after_rush
        )));
    }
    // The server bounds as asked, or an error: a mesh that quietly ran more servers than its
    // bound, or another bound than the one asked for, would misreport every run it made.
    let Some(servers) = cores.checked_mul(cfg.servers_per_core).filter(|n| *n <= SERVERS_MAX) else {
        return Err(MeshError::Config(format!(
            "{cores} cores with {} servers each: more than the {SERVERS_MAX} servers a mesh runs",
            cfg.servers_per_core
        )));
    };
    if let Some(max) = cfg.servers_max.filter(|max| !(servers..=SERVERS_MAX).contains(max)) {
        return Err(MeshError::Config(format!(
            "--servers-max {max}: from the {servers} servers the mesh starts with ({cores} cores with {} each) to {SERVERS_MAX}",
            cfg.servers_per_core
        )));
    }
    let mut places = crate::bots::Places::default();
    let meta = match &cfg.persist {
        Some(p) if cfg.scenario != Scenario::BorderRun => WorldMeta::read_or_create(&p.dir, cfg.seed, cfg.players)?,
        Some(_) => return Err(MeshError::Config("only the bots scenario keeps a persistent world".into())),
        None => WorldMeta { seed: cfg.seed, players: cfg.players },
    };
    let mut streaming = None;
    // What the live map draws: the world's bounds and containers.
    let mut containers: Vec<(ContainerKind, String, Aabb)> = Vec::new();
    let mut world_bounds = Aabb::new(glam::Vec3::ZERO, glam::Vec3::ONE);
    let (map, entities) = match cfg.scenario {
        Scenario::Bots | Scenario::Tavern | Scenario::Rush => {
            // A rush must reach the tavern within the run: a world a player crosses in 30 s.
            let tree = if cfg.scenario == Scenario::Rush {
                ContainerTree::generate(meta.seed, 2, 2, 2)
            } else {
                world_for(meta.players, meta.seed)
            };
            streaming = Some(Arc::new(StreamIndex::new(tree.clone())));
            world_bounds = tree.bounds();
            containers = tree.containers.iter().map(|c| (c.kind, c.name.clone(), c.bounds)).collect();
            places.cities = tree.of_kind(ContainerKind::City).map(|c| c.bounds.center()).collect();
            places.rally = places.cities.first().copied().unwrap_or_else(|| tree.bounds().center());
            let mut counts = Population {
                players: meta.players,
                npcs: meta.players / 10,
                items: meta.players / 2,
                ships: 1 + meta.players / 50,
            };
            if cfg.persist.is_some() {
                // A persistent world has things in it even before anyone plays.
                counts.npcs = counts.npcs.max(20);
                counts.items = counts.items.max(200);
            }
            // Two regions a server, given out in turn: the configured layout, which the
            // controller changes only when it balances (never under `static_mesh`).
            let mut map = RegionMap::kd_split(tree.bounds(), servers * 2);
            let ids: Vec<RegionId> = map.regions().iter().map(|r| r.id).collect();
            for (i, id) in ids.into_iter().enumerate() {
                map.assign(id, Some(ServerId((i % servers) as u32))).expect("region exists");
            }
            let mut entities = populate(&tree, meta.seed, counts);
            if matches!(cfg.scenario, Scenario::Tavern | Scenario::Rush) {
                let room = tree
                    .of_kind(ContainerKind::Room)
                    .min_by(|a, b| {
                        a.bounds.center().distance(places.rally).total_cmp(&b.bounds.center().distance(places.rally))
                    })
                    .map(|r| r.bounds)
                    .unwrap_or_else(|| tree.bounds());
                places.crowd = Some(room);
                if cfg.scenario == Scenario::Tavern {
                    crowd_into(&mut entities, room, meta.seed);
                }
            }
            (map, entities)
        }
        Scenario::BorderRun => border_run(cfg.players, servers, cfg.seed),
    };
    let (entities, leaving) = leavers(entities, cfg.leave_after_rush);
    let initial: Vec<Committed> =
        entities.into_iter().map(|(id, state)| Committed { id, state, commit_seq: 1 }).collect();
    let (map, initial, logs, round, incarnation_floor, clock_offset_us) = match &cfg.persist {
        None => (map, initial, Vec::new(), 0, 1, 0),
        Some(p) => {
            let OpenedWorld(map, initial, logs, round, floor, offset) =
                open_log(p, cores, map, initial, shard::game_tick_us(cfg.tick))?;
            (map, initial, logs, round, floor, offset)
        }
    };
    // What the world will grow into, faulted in before its first tick.
    super::alloc::prefault(initial.len().saturating_mul(PREFAULT_BYTES_PER_ENTITY).min(PREFAULT_BYTES_MAX));
    if cfg.scenario == Scenario::Rush {
        // Game time: the run's ticks, on from where a world read back left off.
        let at = |f: f64| clock_offset_us + (cfg.duration.as_micros() as f64 * f) as u64;
        places.crowd_during = Some((at(0.2), at(0.6)));
    }
    // The players who leave after the rush log in at the start and out as it ends (core 0's
    // shard says so; every slice hears it).
    let mut script = (!leaving.is_empty())
        .then(|| shard::SessionScript::new(leaving, clock_offset_us + (cfg.duration.as_micros() as f64 * 0.6) as u64));
    let places = Arc::new(places);
    let entities_start = initial.len();
    let mut gateways = match &cfg.gateway {
        None => Vec::new(),
        Some(g) => open_gateways(g, cores, &initial, shard::game_tick_us(cfg.tick))?,
    };
    let listen = gateways.first().map(|(addr, _)| addr.to_string());
    let mut initial = Some(initial);
    let slices: Vec<Replication> = (0..cores)
        .map(|i| {
            let mut slice = Replication::restore_slice(
                SliceId(i as u16),
                cores as u16,
                map.clone(),
                initial.take().unwrap_or_default(),
            );
            slice.balancing = cfg.scenario != Scenario::BorderRun && !cfg.static_mesh;
            if i == 0 && slice.balancing {
                let max = cfg.servers_max.unwrap_or(servers);
                slice.set_server_bounds(servers, if max > servers { max } else { 0 });
            }
            if let Some(index) = &streaming {
                slice = slice.with_streaming(index.clone());
            }
            if cfg.persist.is_some() {
                slice.enable_journal(round);
            }
            slice
        })
        .collect();
    let mut checker = Checker::new(&slices.iter().collect::<Vec<_>>());
    let map_epoch_start = map.epoch;
    let items_start = checker.item_count();

    let mut producers: Vec<Vec<Option<super::ring::Producer>>> =
        (0..cores).map(|_| (0..cores).map(|_| None).collect()).collect();
    let mut consumers: Vec<Vec<Option<super::ring::Consumer>>> =
        (0..cores).map(|_| (0..cores).map(|_| None).collect()).collect();
    for a in 0..cores {
        for b in 0..cores {
            if a != b {
                let (tx, rx) = Ring::anonymous(cfg.ring_bytes)?.split();
                producers[a][b] = Some(tx);
                consumers[b][a] = Some(rx);
            }
        }
    }
    let cpus: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().iter().map(|c| c.id).collect();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    super::panics::install_hook();
    let fatal = Arc::new(super::panics::Fatal::default());
    let incarnations = Arc::new(AtomicU32::new(incarnation_floor));
    let mut logs = logs.into_iter().map(Some).collect::<Vec<_>>();
    let gauges: Vec<Arc<ShardGauges>> = (0..cores).map(|_| Arc::new(ShardGauges::default())).collect();
    let metrics = cfg.metrics.map(|_| super::metrics::Metrics::new(gauges.clone(), cfg.tick));
    let tick_histograms: Vec<Option<prometheus_client::metrics::histogram::Histogram>> =
        (0..cores).map(|i| metrics.as_ref().map(|m| m.tick_histogram(i))).collect();
    if let (Some(addr), Some(metrics)) = (cfg.metrics, metrics) {
        let served = super::metrics::serve(addr, super::metrics::routes(metrics), stop.clone())
            .map_err(|e| MeshError::Config(format!("metrics on {addr}: {e}")))?;
        eprintln!("metrics on http://{served}/metrics (prometheus)");
    }
    let map_board = cfg.http.map(|_| Arc::new(super::map::MapBoard::new(cores, world_bounds, containers.clone())));
    if let (Some(addr), Some(board)) = (cfg.http, map_board.clone()) {
        let gauges = gauges.clone();
        let routes: super::metrics::Routes = Arc::new(move |path| match path {
            "/" | "/index.html" => Some(("text/html; charset=utf-8", super::map::PAGE.to_string())),
            "/map.json" => Some(("application/json", board.json(&gauges))),
            _ => None,
        });
        let served = super::metrics::serve(addr, routes, stop.clone())
            .map_err(|e| MeshError::Config(format!("http on {addr}: {e}")))?;
        eprintln!("live map on http://{served}/ (its data at /map.json)");
    }
    let mut handles = Vec::new();
    let first_tick = clock_offset_us / shard::game_tick_us(cfg.tick);
    let lockstep = Arc::new((0..cores).map(|_| AtomicU64::new(first_tick)).collect::<Vec<_>>());
    let chaos = cfg.chaos_crash_every.map(|_| Arc::new(super::failover::Chaos::new(cores)));
    let failovers = Arc::new(super::failover::FailoverWatch::default());
    for (i, slice) in slices.into_iter().enumerate() {
        let setup = ShardSetup {
            index: i,
            cores,
            slice,
            // The configured servers, and any the recovered map gives a region (started by the
            // controller in an earlier run).
            servers: (0..servers as u32)
                .map(ServerId)
                .chain(map.regions().iter().filter_map(|r| r.server).filter(|s| s.0 as usize >= servers))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|s| s.0 as usize % cores == i)
                .collect(),
            producers: std::mem::take(&mut producers[i]),
            consumers: std::mem::take(&mut consumers[i]),
            tick: cfg.tick,
            warmup: cfg.warmup,
            bot_activity: if cfg.scenario != Scenario::BorderRun { cfg.bot_activity } else { 0.0 },
            handoffs_per_tick_max: cfg.handoffs_per_tick_max,
            places: places.clone(),
            seed: cfg.seed,
            start,
            stop: stop.clone(),
            incarnations: incarnations.clone(),
            gauges: gauges[i].clone(),
            tick_histogram: tick_histograms[i].clone(),
            map: map_board.clone(),
            clock_offset_us,
            streaming: streaming.clone(),
            gateway: if gateways.is_empty() { None } else { Some(gateways.remove(0).1) },
            fatal: fatal.clone(),
            lockstep: lockstep.clone(),
            inject_panic: cfg.inject_panic,
            chaos: chaos.clone(),
            failovers: failovers.clone(),
            sessions: script.take(),
            pending_bytes_per_peer_max: cfg.pending_bytes_per_peer_max,
            log: logs.get_mut(i).and_then(Option::take).map(|log| shard::ShardLog {
                log,
                checkpoint_every: cfg.persist.as_ref().map(|p| p.checkpoint_every).unwrap_or(Duration::MAX),
            }),
        };
        let placement = match cpus.get(i % cpus.len().max(1)) {
            Some(cpu) => Placement::Fixed(*cpu),
            None => Placement::Unbound,
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{i}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || shard::run(setup))
            .map_err(|e| MeshError::Executor { core: i, source: e })?;
        handles.push(handle);
    }

    let mut last = (0u64, 0u64, Instant::now());
    // Each core's ticks and work at the last sample.
    let mut last_work = vec![(0u64, 0u64); cores];
    let end = start.checked_add(cfg.duration).unwrap_or(start + Duration::from_secs(u32::MAX as u64));
    let stop_asked = || cfg.stop_signal.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
    let mut next_status = start + Duration::from_secs(1);
    let mut timeline = Timeline::default();
    let mut announced = listen.is_none();
    let mut drills = cfg.chaos_crash_every.map(|every| {
        (
            every,
            start + cfg.warmup + every,
            <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(cfg.seed ^ 0xc4a05),
        )
    });
    while Instant::now() < end && !stop_asked() && !stop.load(Ordering::Relaxed) {
        let nap = Duration::from_millis(if drills.is_some() { 5 } else { 50 });
        std::thread::sleep(nap.min(end.saturating_duration_since(Instant::now())));
        if let (Some((every, next, rng)), Some(chaos)) = (drills.as_mut(), chaos.as_ref()) {
            if Instant::now() >= *next {
                *next += *every;
                let victim = ServerId(rand::RngExt::random_range(rng, 0..servers as u32));
                chaos.ask(crate::protocol::replication::home_slice(victim, cores as u16).0 as usize, victim);
            }
        }
        if !announced && start.elapsed() >= cfg.warmup {
            announced = true;
            eprintln!("listening for clients on {} (udp, netcode)", listen.as_deref().unwrap_or(""));
        }
        if Instant::now() < next_status {
            continue;
        }
        next_status += Duration::from_secs(1);
        let sum = |f: &dyn Fn(&ShardGauges) -> u64| gauges.iter().map(|g| f(g)).sum::<u64>();
        let ticks = sum(&|g| g.ticks.load(Ordering::Relaxed));
        let handoffs = sum(&|g| g.handoffs.load(Ordering::Relaxed));
        let worst = gauges.iter().map(|g| g.worst_tick_us.swap(0, Ordering::Relaxed)).max().unwrap_or(0);
        let p50 = gauges.iter().map(|g| g.p50_us.load(Ordering::Relaxed)).max().unwrap_or(0);
        let p99 = gauges.iter().map(|g| g.p99_us.load(Ordering::Relaxed)).max().unwrap_or(0);
        let secs = last.2.elapsed().as_secs_f64();
        // The slowest core's last window (every core waits for the others, so they agree).
        let dilation = match gauges.iter().map(|g| g.time_dilation_ppm.load(Ordering::Relaxed)).min() {
            Some(ppm) if ppm > 0 && !cfg.tick.is_zero() => Some(ppm as f64 / 1e6),
            _ => None,
        };
        let budget_us = cfg.tick.as_micros() as f64;
        let mut work: Option<f64> = None;
        for (g, last) in gauges.iter().zip(last_work.iter_mut()) {
            let now = (g.ticks.load(Ordering::Relaxed), g.work_us.load(Ordering::Relaxed));
            let ticks = now.0 - last.0;
            if ticks > 0 && budget_us > 0.0 {
                let share = (now.1 - last.1) as f64 / (ticks as f64 * budget_us);
                work = Some(work.map_or(share, |w: f64| w.max(share)));
            }
            *last = now;
        }
        let sample = Sample {
            t_s: start.elapsed().as_secs_f64(),
            players: sum(&|g| g.players.load(Ordering::Relaxed)),
            servers: sum(&|g| g.servers.load(Ordering::Relaxed)),
            servers_started: gauges[0].servers_started.load(Ordering::Relaxed),
            servers_retired: gauges[0].servers_retired.load(Ordering::Relaxed),
            regions: gauges[0].regions.load(Ordering::Relaxed),
            regions_split: gauges[0].regions_split.load(Ordering::Relaxed),
            regions_merged: gauges[0].regions_merged.load(Ordering::Relaxed),
            regions_moved: gauges[0].regions_moved.load(Ordering::Relaxed),
            tick_p50_ms: p50 as f64 / 1e3,
            tick_p99_ms: p99 as f64 / 1e3,
            handoffs_per_s: (handoffs - last.1) as f64 / secs,
            time_dilation: dilation,
            work,
        };
        if cfg.status {
            let committed = match &cfg.persist {
                Some(_) => format!(
                    " committed_tick={} checkpoint={}",
                    gauges.iter().map(|g| g.committed_tick.load(Ordering::Relaxed)).min().unwrap_or(0),
                    gauges.iter().map(|g| g.checkpoint_round.load(Ordering::Relaxed)).min().unwrap_or(0),
                ),
                None => String::new(),
            };
            let tidi = dilation.map_or(String::new(), |d| format!(" time_dilation={d:.2}"));
            let work = work.map_or(String::new(), |w| format!(" work={w:.2}"));
            eprintln!(
                "t={:>5.1}s players={} held={} servers={} cores={cores} ticks/s={:.1} tick_p50={:.2}ms tick_p99={:.2}ms worst={:.2}ms handoffs/s={:.0} stalls={} held_back={} server_panics={} started={} retired={} regions={} splits={} merges={} moves={}{work}{tidi}{committed}",
                sample.t_s,
                sample.players,
                sum(&|g| g.held.load(Ordering::Relaxed)),
                sample.servers,
                (ticks - last.0) as f64 / secs / cores as f64,
                sample.tick_p50_ms,
                sample.tick_p99_ms,
                worst as f64 / 1e3,
                sample.handoffs_per_s,
                sum(&|g| g.stalls.load(Ordering::Relaxed)),
                sum(&|g| g.ticks_held_back.load(Ordering::Relaxed)),
                sum(&|g| g.server_panics.load(Ordering::Relaxed)),
                sample.servers_started,
                sample.servers_retired,
                sample.regions,
                sample.regions_split,
                sample.regions_merged,
                sample.regions_moved,
            );
        }
        timeline.record(sample);
        last = (ticks, handoffs, Instant::now());
    }
    stop.store(true, Ordering::Relaxed);
    let duration_s = start.elapsed().as_secs_f64();
    let mut reports: Vec<ShardReport> = Vec::new();
    let mut panicked = None;
    for (i, h) in handles.into_iter().enumerate() {
        // Every shard is joined (each commits and closes its log as it stops) before a panic is
        // reported.
        match h.join() {
            Ok(report) => reports.push(report),
            Err(_) => {
                panicked.get_or_insert(fatal.first().unwrap_or((i, "a panic with no message".into())));
            }
        }
    }
    if let Some((core, what)) = panicked {
        return Err(MeshError::ShardPanicked { core, what });
    }
    reports.sort_by_key(|r| r.index);
    let persisted = cfg.persist.is_some().then(|| {
        let committed = gauges.iter().map(|g| g.committed_tick.load(Ordering::Relaxed)).min().unwrap_or(0);
        let round = reports.iter().map(|r| r.slice.checkpoint_done()).min().unwrap_or(0);
        (committed, round)
    });
    let log_error = reports.iter().find_map(|r| r.log_error.clone());
    let mut summary = audit(&mut checker, reports, &cfg, servers, duration_s, start, entities_start, items_start);
    summary.committed_tick = persisted.map(|p| p.0);
    summary.checkpoint_round = persisted.map(|p| p.1);
    summary.log_error = log_error;
    summary.listen = listen;
    summary.map_epoch_start = map_epoch_start;
    if cfg.scenario != Scenario::BorderRun && !cfg.static_mesh {
        summary.servers_max = cfg.servers_max.unwrap_or(servers);
    }
    let failover = failovers.report();
    summary.server_crashes = failover.crashes;
    summary.failover_ticks_p50 = failover.quantile(0.5);
    summary.failover_ticks_p99 = failover.quantile(0.99);
    summary.failover_ticks_max = failover.quantile(1.0);
    summary.failover_ticks = failover.ticks.clone();
    summary.failovers_unfinished = failover.unfinished;
    (summary.chaos_drills, summary.chaos_drills_carried_out) = chaos.map_or((0, 0), |c| c.counts());
    summary.timeline = timeline.samples;
    Ok(summary)
}

/// One gateway per core on the configured address (SO_REUSEPORT), sharing the seats: the
/// world's own players in id order, and the accounts' players it has.
fn open_gateways(
    g: &GatewayConfig,
    cores: usize,
    initial: &[Committed],
    tick_us: u64,
) -> Result<Vec<(std::net::SocketAddr, shard::ShardGateway)>, MeshError> {
    let per_core = g.endpoints_per_core.max(1);
    let io = |e: std::io::Error| MeshError::Config(format!("gateway on {}: {e}", g.listen));
    let mut sockets = crate::net::gateway::bind_endpoints(g.listen, cores * per_core).map_err(io)?;
    let public = sockets[0].local_addr().map_err(io)?;
    let (accounts, mut players): (Vec<EntityId>, Vec<EntityId>) = initial
        .iter()
        .filter(|c| c.state.kind == EntityKind::Player)
        .map(|c| c.id)
        .partition(|id| id.account().is_some());
    players.sort();
    let seats = Arc::new(crate::net::Seats::with_accounts(players, accounts));
    let views = Arc::new(crate::net::Views::new(cores));
    let mut out = Vec::new();
    for _ in 0..cores {
        let mine: Vec<std::net::UdpSocket> = sockets.drain(..per_core).collect();
        let gateway = crate::net::Gateway::new(mine, public, g.key, g.insecure, g.client_bytes_per_s, seats.clone())
            .map(|gw| gw.with_tick_us(tick_us))
            .map_err(io)?;
        out.push((public, shard::ShardGateway { gateway, seats: seats.clone(), views: views.clone() }));
    }
    Ok(out)
}

/// What a log directory opened for a run gives the mesh.
struct OpenedWorld(RegionMap, Vec<Committed>, Vec<crate::log::SliceLog>, u64, u32, u64);

/// Opens (or creates) the world's log: the world it holds, a writer per core, the checkpoint
/// round it stands at, the first incarnation number to use, and the clock offset that continues
/// the world's ticks.
fn open_log(
    p: &PersistConfig,
    cores: usize,
    map: RegionMap,
    initial: Vec<Committed>,
    tick_us: u64,
) -> Result<OpenedWorld, MeshError> {
    let disk = crate::log::Disk::open(&p.dir).map_err(|e| MeshError::Log(format!("{}: {e}", p.dir.display())))?;
    let opts = crate::log::OpenOptions {
        slices: cores as u16,
        durability: p.durability,
        segment_bytes: p.segment_bytes,
        salvage: p.salvage,
        planted_replay_twice: false,
    };
    let began = Instant::now();
    let opened =
        crate::log::open(Arc::new(disk), &opts, || (map, initial)).map_err(|e| MeshError::Log(e.to_string()))?;
    let r = &opened.report;
    eprintln!(
        "world: {} in {:.0} ms: round {}, entities={} items={} duplicates={} last_committed_tick={}{}{}",
        if opened.created { "created" } else { "recovered" },
        began.elapsed().as_secs_f64() * 1e3,
        opened.round,
        r.entities,
        r.items,
        r.duplicates,
        r.last_committed_tick,
        if r.torn_tails.is_empty() { String::new() } else { format!(" torn_tails={:?}", r.torn_tails) },
        if r.salvaged.is_empty() { String::new() } else { format!(" salvaged={:?}", r.salvaged) },
    );
    for e in &r.errors {
        eprintln!("world: {e}");
    }
    let max_changed = opened.entities.iter().map(|c| c.state.changed_tick).max().unwrap_or_default();
    let offset_us = opened.start_tick.max(max_changed.next()).game_us(tick_us);
    Ok(OpenedWorld(opened.map, opened.entities, opened.logs, opened.round, opened.incarnation_floor, offset_us))
}

#[allow(clippy::too_many_arguments)]
fn audit(
    checker: &mut Checker,
    reports: Vec<ShardReport>,
    cfg: &MeshConfig,
    servers: usize,
    duration_s: f64,
    start: Instant,
    entities_start: usize,
    items_start: usize,
) -> MeshSummary {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    let mut slices = Vec::new();
    let mut all_servers: Vec<Server> = Vec::new();
    let (mut stalls, mut restarts, mut ring_errors, mut in_flight, mut server_panics) = (0, 0, 0, 0, 0);
    let (mut ticks_held_back, mut servers_declared_dead) = (0, 0);
    let mut stall_reports = Vec::new();
    let mut held_per_core = Vec::new();
    let mut tick_p99_ms_per_core = Vec::new();
    let mut stage_ms_per_core = Vec::new();
    let mut gateway: Option<crate::net::GatewayStats> = None;
    let time_dilation_min = if reports.iter().all(|r| r.time_dilation_min.is_some()) {
        reports.iter().filter_map(|r| r.time_dilation_min).reduce(f64::min)
    } else {
        None
    };
    let (mut ghosts_warm_to_servers, mut ghosts_warm_to_cores) = (0u64, 0u64);
    for r in reports {
        ghosts_warm_to_servers += r.ghosts_after_warmup.0;
        ghosts_warm_to_cores += r.ghosts_after_warmup.1;
        if let Some(g) = &r.gateway {
            gateway.get_or_insert_with(Default::default).add(g);
        }
        hist.add(&r.tick_us).expect("same bounds");
        held_per_core.push(r.servers.iter().map(|s| s.held().len()).sum());
        tick_p99_ms_per_core.push(r.tick_us.value_at_quantile(0.99) as f64 / 1e3);
        // A core without a tick after the warm-up has no profile (empty), not one of zeros.
        let mean_ms = |us: u64| (us as f64 / r.stage_ticks as f64).round() / 1e3;
        stage_ms_per_core.push(if r.stage_ticks == 0 {
            Vec::new()
        } else {
            r.stage_us.iter().map(|us| mean_ms(*us)).collect()
        });
        stalls += r.stalls;
        restarts += r.restarts;
        server_panics += r.server_panics;
        ticks_held_back += r.ticks_held_back;
        servers_declared_dead += r.slice.stats.servers_declared_dead;
        ring_errors += r.ring_errors;
        in_flight += r.in_flight;
        stall_reports.extend(r.stall_reports);
        slices.push(r.slice);
        all_servers.extend(r.servers);
    }
    let now = start.elapsed().as_micros() as u64;
    let audit = checker.audit(&slices.iter().collect::<Vec<_>>(), all_servers.iter());
    let mut audit_error = checker.check_step(now, &slices.iter().collect::<Vec<_>>(), &[], all_servers.iter()).err();
    if in_flight > 0 && audit_error.is_none() {
        audit_error = Some(format!("{in_flight} messages still queued between cores at the end"));
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    let warm_ticks = hist.len() / cfg.cores.max(1) as u64;
    let per_warm_tick = |n: u64| if warm_ticks == 0 { 0.0 } else { n as f64 / warm_ticks as f64 };
    let players = slices.iter().flat_map(|s| s.records().values()).filter(|r| r.state.kind == EntityKind::Player);
    MeshSummary {
        // Every player the world has, one per account that ever joined, logged in or not.
        players: players.count(),
        players_offline: slices.iter().map(|s| s.offline().len()).sum(),
        players_created: slices.iter().map(|s| s.stats.players_created).sum(),
        servers,
        cores: cfg.cores,
        duration_s,
        ticks: hist.len() / cfg.cores as u64,
        tick_p50_ms: ms(0.5),
        tick_p99_ms: ms(0.99),
        tick_max_ms: hist.max() as f64 / 1e3,
        ticks_over_budget: stalls,
        held_per_core,
        entities_at_rest: slices.iter().map(|s| s.dormant_entities()).sum(),
        tick_p99_ms_per_core,
        stage_ms_per_core,
        handoffs: slices.iter().map(|s| s.stats.handoffs).sum(),
        transfers: slices.iter().map(|s| s.stats.transfers_out).sum(),
        entities_start,
        entities_end: audit.entities,
        items_start,
        items_end: audit.items,
        lost_entities: audit.lost,
        duplicate_entities: audit.duplicates,
        server_restarts: restarts,
        server_panics,
        ticks_held_back,
        servers_declared_dead,
        servers_started: slices.first().map_or(0, |s| s.stats.servers_started),
        servers_retired: slices.first().map_or(0, |s| s.stats.servers_retired),
        servers_max: servers,
        regions_split: slices.first().map_or(0, |s| s.stats.regions_split),
        regions_merged: slices.first().map_or(0, |s| s.stats.regions_merged),
        regions_moved: slices.first().map_or(0, |s| s.stats.regions_moved),
        rooms_cut: slices.first().map_or(0, |s| s.stats.rooms_cut),
        ghosts_to_servers: slices.iter().map(|s| s.stats.ghosts_to_servers).sum(),
        ghosts_to_cores: slices.iter().map(|s| s.stats.ghosts_to_cores).sum(),
        ghosts_to_servers_per_tick: per_warm_tick(ghosts_warm_to_servers),
        ghosts_to_cores_per_tick: per_warm_tick(ghosts_warm_to_cores),
        time_dilation_min,
        timeline: Vec::new(),
        map_epoch_start: 0,
        map_epoch_end: slices.first().map_or(0, |s| s.map().epoch),
        server_crashes: 0,
        failover_ticks_p50: None,
        failover_ticks_p99: None,
        failover_ticks_max: None,
        failover_ticks: Vec::new(),
        failovers_unfinished: Vec::new(),
        chaos_drills: 0,
        chaos_drills_carried_out: 0,
        ring_errors,
        committed_tick: None,
        checkpoint_round: None,
        log_error: None,
        audit_error,
        listen: None,
        gateway,
        stall_reports,
    }
}

/// Of the world's players, the share `leave` that are accounts (`EntityId::of_account`), to log
/// out when a rush ends: every player whose turn comes up as that share is counted off (spread
/// over the world, not the first ones made). Their ids are renamed, and so are the references
/// of what they carry. Returns the world and the leavers' players.
fn leavers(entities: Vec<(EntityId, EntityState)>, leave: f64) -> (Vec<(EntityId, EntityState)>, Vec<EntityId>) {
    if leave <= 0.0 {
        return (entities, Vec::new());
    }
    let mut renamed: rustc_hash::FxHashMap<EntityId, EntityId> = rustc_hash::FxHashMap::default();
    let mut k = 0u64;
    for (id, state) in &entities {
        if state.kind == EntityKind::Player {
            // Player k leaves when the running share crosses a whole number at it.
            if ((k + 1) as f64 * leave).floor() > (k as f64 * leave).floor() {
                renamed.insert(*id, EntityId::of_account(renamed.len() as u32));
            }
            k += 1;
        }
    }
    let rename = |id: EntityId| renamed.get(&id).copied().unwrap_or(id);
    let world = entities
        .into_iter()
        .map(|(id, mut state)| {
            state.parent = state.parent.map(rename);
            state.source = state.source.map(rename);
            (rename(id), state)
        })
        .collect();
    let mut leaving: Vec<EntityId> = renamed.into_values().collect();
    leaving.sort();
    (world, leaving)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64) -> Sample {
        Sample {
            t_s: t,
            players: 0,
            servers: 0,
            servers_started: 0,
            servers_retired: 0,
            regions: 0,
            regions_split: 0,
            regions_merged: 0,
            regions_moved: 0,
            tick_p50_ms: 0.0,
            tick_p99_ms: 0.0,
            handoffs_per_s: 0.0,
            time_dilation: None,
            work: None,
        }
    }

    /// A run of ten times the bound keeps at most the bound, spread evenly from the start to
    /// near the end.
    #[test]
    fn a_long_runs_timeline_stays_bounded_and_covers_the_run() {
        let mut t = Timeline::default();
        let n = 10 * crate::limits::TIMELINE_SAMPLES_MAX;
        for i in 0..n {
            t.record(sample(i as f64));
        }
        assert!(t.samples.len() <= crate::limits::TIMELINE_SAMPLES_MAX, "{}", t.samples.len());
        assert!(t.samples.len() >= crate::limits::TIMELINE_SAMPLES_MAX / 4, "{}", t.samples.len());
        assert_eq!(t.samples[0].t_s, 0.0);
        assert!(t.samples.last().unwrap().t_s >= (n - 16) as f64, "{}", t.samples.last().unwrap().t_s);
        let gaps: Vec<f64> = t.samples.windows(2).map(|w| w[1].t_s - w[0].t_s).collect();
        assert!(gaps.iter().all(|g| *g == gaps[0]), "evenly spread");
        // A short run keeps every second.
        let mut short = Timeline::default();
        (0..120).for_each(|i| short.record(sample(i as f64)));
        assert_eq!(short.samples.len(), 120);
    }
}
