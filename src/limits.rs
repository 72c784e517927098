//! Every limit of the mesh, named in one place with the reason for its value.
//!
//! Names carry their unit last (`_us`, `_ticks`, `_m`, `_count`), so a reader never has to guess.

/// Default simulation rate: 30 Hz, the rate most shared-world games tick their servers at.
pub const TICK_DURATION_US: u64 = 33_333;

/// How long a server's authority lease lasts after the heartbeat that earned it. A server that
/// has not had a heartbeat acknowledged for this long stops acting; the replication layer waits
/// at least this long after the last heartbeat it received before it gives the server's regions
/// and entities to others. One second rides out several round trips of a slow, lossy network
/// without a false alarm. A crash the host's supervisor sees is acted on at once instead.
pub const LEASE_DURATION_US: u64 = 30 * TICK_DURATION_US;

/// A slice keeps a crashed server's regions for its fresh incarnation when the host restarts it
/// within this long (a server whose code panicked restarts the next tick): the new incarnation
/// adopts the committed state on the same core, a failover of about a tick with no map change and
/// no entity crossing cores. A server that is not back by then has its regions given to others
/// by the controller. Three ticks at 30 Hz.
pub const CRASH_RESTART_WAIT_MAX_US: u64 = 100_000;

/// Regions in one region map. A k-d split of a 4 km world down to 16 m cells stays far below it;
/// the map is sent whole on every change, so it must stay small.
pub const REGION_COUNT_MAX: usize = 1024;

/// A region is never split below this edge length: handoffs would outnumber ticks.
pub const REGION_EDGE_MIN_M: f32 = 8.0;

/// Bins per axis in a region's load report: fine enough to find a crowd's middle in a 40 m room
/// to a few metres (a bin of a 140 m city is under 9 m, about a room's half), small enough that a
/// report of every region stays a few hundred kilobytes at `REGION_COUNT_MAX`.
pub const LOAD_BINS: usize = 16;

/// Items a player or NPC carries in hand.
pub const HANDS_CAPACITY_COUNT: usize = 8;

/// Passengers and cargo one ship holds.
pub const SHIP_CAPACITY_COUNT: usize = 12;

/// Depth of the entity graph (ship > player > backpack > item is 4). A bound on every walk up
/// the graph, so a corrupt parent chain cannot loop forever.
pub const GRAPH_DEPTH_MAX: usize = 8;

/// How far a player reaches to pick up an item.
pub const REACH_M: f32 = 6.0;

/// How far a player reaches to board a ship: a player boarding jumps to it, and what it carries
/// with it.
pub const BOARD_REACH_M: f32 = 3.0 * REACH_M;

/// Distance at which a projectile hits.
pub const HIT_RADIUS_M: f32 = 2.0;

/// Lifetime of a projectile, in game time: 0.8 s, 1.2 km at its speed (24 ticks at 30 Hz).
pub const PROJECTILE_TTL_US: u64 = 800_000;

/// Messages a link holds unacknowledged before it declares the peer unreachable. A server sends
/// about three messages a tick, so this is far beyond one lease of traffic.
pub const LINK_UNACKED_MAX: usize = 4096;

/// Out-of-order messages a link buffers ahead of the next one it expects.
pub const LINK_REORDER_WINDOW_COUNT: u64 = 4096;

/// Messages carried in one link packet; more wait for the next.
pub const LINK_PACKET_MESSAGES_MAX: usize = 64;

/// A link resends an unacknowledged message after this long.
pub const LINK_RETRANSMIT_US: u64 = 3 * TICK_DURATION_US;

/// Bytes one encoded packet may take: anything larger is refused on decode as corrupt.
pub const PACKET_BYTES_MAX: usize = 1 << 20;

/// Entities one server may hold; beyond it adoptions are still taken (dropping one would lose
/// it) but the overflow is counted so the controller can split the region.
pub const SERVER_ENTITY_COUNT_SOFT_MAX: usize = 65_536;

/// Subtrees one server hands off in one tick, the farthest past its regions first. When a region
/// moves, thousands of entities leave at once; handing them off over a few ticks keeps both
/// cores' ticks even (the old server keeps simulating what waits, since it still holds their
/// authority). A crowd milling across a cut can send more than this over it (60,000 players in
/// the tavern cut in two, about 470 a tick each way): those just past the cut then wait, held
/// and shown to the neighbour as ghosts, while what is deep in another's region goes. At 1,024
/// the tavern handed off twice as often, with a quarter fewer ghosts, and did no less work a
/// tick (BENCHMARKS.md, the tavern).
pub const HANDOFFS_PER_TICK_MAX: usize = 256;

/// A server's entity table grown for a crowd that has since gone (handed off to the servers a
/// room was cut between) is rebuilt at the size of what it holds once it is under this share of
/// its capacity: every pass of a tick walks the whole table, and in one three fifths empty the
/// passes cost 2-3 times what they cost in a full one (a 36,000-player tavern cut in two: 22,000
/// entities in a table of 65,536 buckets). Tables smaller than `ENTITY_TABLE_SHRINK_MIN` stay.
pub const ENTITY_TABLE_SHRINK_BELOW: f64 = 0.4;

/// Room a rebuilt entity table keeps over what it holds, so a few arrivals do not grow it again
/// at once (it grows at twice its size; it shrinks again only under `ENTITY_TABLE_SHRINK_BELOW`).
pub const ENTITY_TABLE_SLACK: f64 = 0.25;

/// Entity tables with room for fewer than this are never rebuilt smaller.
pub const ENTITY_TABLE_SHRINK_MIN: usize = 4096;

/// Ships this close to the edge of their region are shown to neighbouring servers as ghost
/// hulls: more than a ship travels in a tick at the slowest rate (150 m/s at 20 Hz) with room to
/// spare for its hull, so hulls on either side of a border collide.
pub const GHOST_MARGIN_M: f32 = 60.0;

/// A running player's top speed.
pub const PLAYER_SPEED_M_S: f32 = 30.0;

/// Ticks old a ghost may be when a neighbour meets it: shown the tick after it was seen, and a
/// tick later where its core waited on a ring.
pub const GHOST_AGE_TICKS: u64 = 2;

/// Room a walker's ghost margin keeps past what a running player covers while its ghost ages.
pub const GHOST_SPARE_M: f32 = 1.0;

/// Players and NPCs this close to the edge of their region are shown to neighbouring servers as
/// ghosts. A projectile is handed on where its path leaves its server's regions (it finds only
/// what stands within `HIT_RADIUS_M` of its path on its own server's side), so a walker matters
/// to a neighbour within that of the border; the rest covers `GHOST_AGE_TICKS` ticks of a
/// running player at the world's rate, and `GHOST_SPARE_M`: 6 m at 20 Hz, 5 m at 30 Hz, 4 m at
/// 60 Hz. A crowd cut into cells shows its neighbours a strip this wide, not the whole crowd; the
/// faster the world ticks, the narrower the strip.
pub fn walker_ghost_margin_m(tick_us: u64) -> f32 {
    let aged_s = (GHOST_AGE_TICKS * tick_us) as f32 / 1e6;
    HIT_RADIUS_M + PLAYER_SPEED_M_S * aged_s + GHOST_SPARE_M
}

/// Players near a border are shown to the neighbours' streaming as the cells they stand in, a
/// cell's centre for all of them: a crowd is a few dozen points, not thousands. Every player of
/// a cell is within half its diagonal (3.5 m) of the centre, and streaming widens its radii by
/// that for these points, so it loads no later than for the players themselves.
pub const PRESENCE_CELL_M: f32 = 4.0;

/// How far past its server's regions a moving player, NPC or ship may go before it is handed
/// off: a walker milling on a border stays with its server instead of going back and forth
/// (one at rest outside is handed off at once). Its neighbours see it as a ghost meanwhile.
pub const HANDOFF_SLACK_M: f32 = 3.0;

/// Regions one projectile's path is followed through in one tick before it is handed on where
/// it stands (a path a tick long crosses a few at most; this bounds a degenerate map).
pub const PATH_REGIONS_MAX: usize = 64;

/// Damage one projectile does.
pub const PROJECTILE_DAMAGE: u16 = 10;

/// A ship slower than this is at rest, and one at rest that the physics moves less than this in
/// a tick stays put: contacts leave hulls with speeds that decay toward zero without reaching it
/// (1e-10 m/s after a bump) and the solver nudges hulls resting against each other apart by a
/// hair every tick, and a state that changes every tick is written every tick, so a world with
/// nothing moving would never settle. A millimetre a second is below what any client sees
/// (positions are centimetres).
pub const REST_SPEED_M_S: f32 = 1e-3;

// ---- Shards (src/runtime/shard.rs)

/// Bytes of messages held back per destination while its ring is full; past this the shard
/// holds its servers' ticks back (they keep their leases, and simulate nothing) until the ring
/// drains: the world slows, no server fails over, and the queue stops growing (what fills it
/// comes from the servers' ticks).
pub const PENDING_BYTES_PER_PEER_MAX: usize = 64 << 20;

/// Ring frames one tick takes from each peer before moving on (the rest wait a tick).
pub const FRAMES_PER_PEER_PER_TICK_MAX: usize = 65_536;

/// How long a stopping shard keeps moving messages between cores.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(150);

/// Samples of the status line a run's summary keeps (`timeline`): an hour a second at a time;
/// a longer run keeps every other, then every fourth, so a world served for days costs the same.
pub const TIMELINE_SAMPLES_MAX: usize = 3_600;

/// How often a core looks again whether every other core finished the tick before its next (a
/// timed run; a free-running one spins): well under a tick, far above a wake-up's cost.
pub const LOCKSTEP_POLL: std::time::Duration = std::time::Duration::from_micros(100);

/// The window over which the world's speed against real time (time dilation) is measured: long
/// enough that one late tick made up at once does not read as a slowdown.
pub const TIME_DILATION_WINDOW_US: u64 = 1_000_000;

/// How often a core reads its gateway's sockets while it waits for its next tick.
pub const GATEWAY_DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(2);

/// How long a gateway waits for the other cores' view of its tick before it sends what it has.
pub const VIEW_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(15);

/// How long a core waits for the other cores' clients' inputs of its tick before its servers tick
/// without them (those late wait for the next tick).
pub const INPUT_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(3);

// ---- The mesh (src/runtime/mesh.rs)

/// Bytes of each core-to-core ring: a burst of transfers (the whole world placed at start) fits.
pub const RING_BYTES: usize = 16 << 20;

/// io_uring buffer memory per executor; the shards do no file or socket I/O yet, and the
/// machine's locked-memory limit is shared by all executors.
pub const IO_MEMORY_BYTES: usize = 512 << 10;

/// The most players a persistent world's `world.json` may name: its containers are generated
/// from it at every start, so a damaged file must not ask for more than a host could hold.
pub const WORLD_PLAYERS_MAX: usize = 10_000_000;

// ---- Rings between cores (src/runtime/ring.rs)

/// The smallest and largest rings: below 4 KiB a 1 KiB message hardly fits twice; above 1 GiB is
/// a configuration mistake.
pub const RING_CAPACITY_MIN_BYTES: usize = 4 << 10;
/// See `RING_CAPACITY_MIN_BYTES`.
pub const RING_CAPACITY_MAX_BYTES: usize = 1 << 30;

// ---- The replication log writer (src/log/writer.rs)

/// Bytes of a new segment: large enough that a busy slice rolls over every few seconds, small
/// enough that reclaiming one frees memory and disk soon.
pub const SEGMENT_BYTES: usize = 64 << 20;

/// How far ahead of the writer the flusher gets a segment's pages ready: over a hundred ticks of
/// a slice committing a thousand writes a tick, so a writer running flat out (the append bench)
/// stays behind it; the zeros it dirties early are written back at most once.
pub const PREFAULT_AHEAD_BYTES: usize = 16 << 20;

/// Pages the flusher prepares in one pass of its loop: about a millisecond of work.
pub const PREFAULT_STEP_BYTES: usize = 2 << 20;

/// The flusher never prepares pages closer than this to the writer's end: a page being prepared
/// is locked (with the readahead batch around it), and a writer that stores into it waits for
/// the whole batch. A writer that has caught up faults the gap's pages itself, a microsecond or
/// two each, instead of queueing behind the flusher on the same pages.
pub const PREFAULT_GAP_BYTES: usize = 1 << 20;

// ---- The replication log format (src/log/format.rs)

/// A frame claiming more than this is corrupt: one tick of one slice never writes that much.
pub const FRAME_PAYLOAD_MAX: usize = 1 << 30;

// ---- The gateway (src/net/gateway.rs)

/// A client sees what is this near its player. Less than the container streaming radius, so
/// everything in a bubble is loaded on its server.
pub const BUBBLE_RADIUS_M: f32 = 40.0;

/// Entities in one update at most, nearest first: about 1.5 KB.
pub const SEEN_PER_UPDATE_MAX: usize = 48;

/// How long an entity handed off and not yet adopted is still shown where it left: a handoff
/// between cores takes a tick or two, longer while the whole world is being placed at start.
/// (An entity that leaves every view otherwise, destroyed or unloaded, is gone at once.)
pub const HANDOFF_HOLD_US: u64 = 2_000_000;

/// Update bytes a second a client is sent by default: about 530 a tick at 30 Hz, room for every
/// entity of a busy bubble that strayed from its prediction, or for ten that enter it at once.
pub const CLIENT_BYTES_PER_S_DEFAULT: u32 = 16_000;

/// How much of its byte rate a client may save up, in game time: what a tick's update leaves
/// unused goes to the next ones, so at a high tick rate (or a low byte rate) an entity too large
/// for one tick's share still goes, a tick or two later.
pub const CLIENT_BYTES_SAVED_US: u64 = 133_333;

/// Updates the gateway keeps per client, as baselines for later ones: half a second at most (it
/// keeps none older than the one the client last acknowledged).
pub const SENT_KEPT: usize = 16;

/// A client's prediction of an entity is good enough while it is this close (on each axis), with
/// the same velocity: about the error velocity quantization makes in a second.
pub const PREDICTION_TOLERANCE_CM: i32 = 10;

/// Clients one netcode endpoint holds (renetcode's own limit).
pub const CLIENTS_PER_ENDPOINT_MAX: usize = 1024;

/// Messages read from one client in one tick at most; the rest of a flood is dropped unread. At a
/// slow tick rate the cap is the share of `CLIENT_INPUTS_PER_S_MAX` a tick is, twice (an input
/// and an acknowledgement each), if that is more.
pub const MESSAGES_PER_CLIENT_PER_TICK_MAX: usize = 8;

/// Datagrams taken from one address in one tick at most (a client sends two or three): the rest
/// of a flood is dropped before any decryption is spent on it.
pub const PACKETS_PER_ADDRESS_PER_TICK_MAX: u32 = 32;

/// Keep-alives and disconnects taken from one client's address in one tick at most (a client
/// sends one keep-alive every 250 ms): they are counted before authentication, so junk spoofed
/// from the address costs one decryption each up to here and nothing after.
pub const CONTROL_PACKETS_PER_CLIENT_PER_TICK_MAX: u32 = 4;

/// Datagrams read from one endpoint's socket in one read at most, so a flood cannot hold a core.
pub const PACKETS_PER_ENDPOINT_PER_TICK_MAX: usize = 16_384;

/// Bytes a gateway socket's receive queue holds: a tick and more of a flood of small datagrams
/// from one address at full speed on loopback (each costs the kernel about 1 KB of queue), so the
/// gateway reads the flood and drops it itself instead of the kernel dropping clients' packets.
pub const RECEIVE_BUFFER_BYTES: usize = 32 << 20;

/// Views each core keeps: a core may run this many ticks ahead of the slowest before a gateway
/// reading the slowest's tick finds the fast one's view of it gone. A second: a core stalled for
/// a few hundred milliseconds (a loaded machine deschedules it) has been seen 8 ticks behind.
pub const VIEWS_KEPT: usize = 32;

// ---- What clients are sent (src/net/wire.rs)

/// A message is refused unread past this size: an update is a few kilobytes, an input a few
/// dozen bytes.
pub const MESSAGE_BYTES_MAX: usize = 16 << 10;

/// An input message is refused unread past this size (the largest is under 40 bytes).
pub const INPUT_BYTES_MAX: usize = 256;

/// Entities one update describes at most (a place in the baseline is one byte).
pub const KNOWN_MAX: usize = 255;

/// A client extrapolates an entity this far past its last state at most.
pub const EXTRAPOLATE_US_MAX: u64 = 1_000_000;

// ---- The bots load generator (src/net/bots.rs)

/// Distinct reasons kept for bots that never connected.
pub const NEVER_CONNECTED_REASONS_MAX: usize = 8;

/// What a bot knew after each of its last updates, kept as baselines for the next (the gateway
/// uses half as many).
pub const SNAPSHOTS_KEPT: usize = 32;

// ---- The clients' transport (src/net/transport.rs)

/// Game time between two renet acknowledgement packets on one connection.
pub const ACK_EVERY_US: u64 = 1_000_000;

// ---- The replication layer and controller (src/protocol/replication.rs)

/// Game time between load reports and between the controller's balancing moves: slow enough
/// that a move's handoffs settle before the next is judged.
pub const BALANCE_PERIOD_US: u64 = 1_000_000;

/// The controller moves load only when the busiest server holds this many entities more than
/// the quietest (and 10% more): below it, a move costs more handoffs than it saves.
pub const BALANCE_SLACK_ENTITIES: u32 = 64;

/// Where the cores measure their work, load moves between cores only while the busiest works this
/// share of a tick more than the quietest (and past `BALANCE_WORK_FRACTION_MIN`): a tenth of a
/// tick is about what one period's measurement varies by on a shared machine (the crowd benchmark's
/// static mesh, BENCHMARKS.md), so a smaller gap is noise, not load to move.
pub const BALANCE_WORK_GAP_FRACTION: f64 = 0.1;

/// Where the cores measure their work, load moves between cores once the busiest works this share
/// of a tick (a period's mean) and `BALANCE_WORK_GAP_FRACTION` more than the quietest: the mark
/// under which a core is quiet (`SERVER_WORK_LOW_FRACTION`). A crowd's tick p99 runs at about 1.5x
/// its mean, and a move is a second or two of handoffs at `HANDOFFS_PER_TICK_MAX` on top of it:
/// made at half a tick, the move itself pushed the tail past the budget (the tavern benchmark,
/// BENCHMARKS.md); made here, it lands while the core still has room for it.
pub const BALANCE_WORK_FRACTION_MIN: f64 = SERVER_WORK_LOW_FRACTION;

/// Balancing periods the controller only watches after a move by measured work: the period that
/// follows a move still measures part of the work from before it.
pub const BALANCE_REST_PERIODS: u32 = 1;

/// Two neighbouring regions that together hold at most this many entities are merged back into
/// one (a crowd left): below a balancing move's slack, so a merge never undoes what balancing
/// needs, and the map does not keep the fragments of every crowd there ever was.
pub const MERGE_COLD_ENTITIES_MAX: u32 = BALANCE_SLACK_ENTITIES / 2;

/// Cuts the controller makes in one balancing period at most, each of the heavier side of the
/// last while it is still too big to move: enough to wall off a room in a region that holds a
/// stretch of its planet (the planet's and system's edges, four walls of the city, four of the
/// building, the floors, one between rooms: eleven for the tavern), few enough that one period's
/// map change stays small.
pub const CUTS_PER_PERIOD_MAX: usize = 16;

/// Merges the controller makes in one balancing period at most: a crowd's fragments go back in
/// seconds, and one period's map changes stay few.
pub const MERGES_PER_PERIOD_MAX: usize = 4;

/// Memory faulted in before the first tick (`runtime::alloc::prefault`), for each entity the
/// world starts with: about what a loaded mesh's heap grows to. A 30,000-player tavern (48,600
/// entities) peaked at 226 MB resident split across servers and 151 MB static, 3.6 KB an entity
/// over the 50 MB an idle process takes.
pub const PREFAULT_BYTES_PER_ENTITY: usize = 4096;

/// At most this much is faulted in before the first tick: the allocator's first arena (1 GiB)
/// and a few seconds of start-up where pages are slow to fault in.
pub const PREFAULT_BYTES_MAX: usize = 1 << 30;

/// Logical servers one mesh runs at most (`--servers-max` is bounded by it): the controller
/// looks at every server's load once a balancing period, and the region map names them.
pub const SERVERS_MAX: usize = 1024;

/// The controller starts a server when the live servers hold more than this many entities each on
/// average (load it cannot even out among them), and retires one when the rest would hold fewer
/// than `SERVER_ENTITIES_LOW_MIN` each. A server at 30 Hz simulates a few thousand entities in a
/// fraction of its tick (players per core, BENCHMARKS.md); 1,500 leaves it room for a crowd.
pub const SERVER_ENTITIES_HIGH_MAX: u32 = 1_500;

/// See `SERVER_ENTITIES_HIGH_MAX`: a fifth of it, so a server started for a crowd is not retired
/// the moment the crowd thins (hysteresis).
pub const SERVER_ENTITIES_LOW_MIN: u32 = 300;

/// Where the cores' drivers measure their work (the runtime does), the controller starts a server
/// when a core's servers and slice work more than this share of a tick, a period's mean: past it
/// a crowd's spikes reach the budget (tick p99 runs at about 1.5x the mean in a crowd,
/// BENCHMARKS.md's tavern).
pub const SERVER_WORK_HIGH_FRACTION: f64 = 0.6;

/// See `SERVER_WORK_HIGH_FRACTION`: every core under this share of a tick is quiet, and a server
/// may retire. Well under the high mark, so the work a retirement moves onto the others does not
/// start one again (hysteresis).
pub const SERVER_WORK_LOW_FRACTION: f64 = 0.35;

/// See `SERVER_WORK_HIGH_FRACTION`: while every core stays under this share of a tick, a server
/// beyond the starting number that has a sibling on its core retires into it. Its core's work
/// stays where it is, so this mark only has to be clear of the high mark: a crowd that thins to
/// just under the start mark does not retire the servers it started.
pub const SERVER_WORK_SURPLUS_FRACTION: f64 = 0.5;

/// See `SERVER_WORK_SURPLUS_FRACTION`: a server beyond the starting number that holds less than
/// this share of the average server's entities while no core is crowded is idle (the crowd it
/// took a part of has gone) and retires into a sibling on its core, however busy the cores stay
/// with the rest of the world (the crowd benchmark's scatter kept them past half a tick).
pub const SERVER_IDLE_SHARE: f64 = 0.25;

/// Balancing periods the average must stay above the high mark before a server starts (2 s), and
/// below the low mark before one retires (10 s): a crowd at a door does not start and stop
/// servers every second.
pub const SERVER_START_AFTER_PERIODS_MIN: u32 = 2;
/// See `SERVER_START_AFTER_PERIODS_MIN`.
pub const SERVER_RETIRE_AFTER_PERIODS_MIN: u32 = 10;

/// Transfers forwarded more than this many times wait as orphans for the next map: two slices'
/// maps disagree for a moment at most.
pub const TRANSFER_HOPS_MAX: u8 = 4;

/// Entities one handoff, transfer or adoption message carries at most: subtrees leaving in one
/// tick travel together (one message, one allocation, one ring frame rather than one per root)
/// up to this many, about 60 KiB archived, far under a ring. A larger subtree goes alone.
pub const BATCH_ENTITIES_MAX: usize = 512;

/// How far back an outbox is searched for the last message to the same destination, to add a
/// subtree to it: far enough to pass the other servers' or cores' batches of the tick, short
/// enough that a long queue of inputs costs nothing.
pub const BATCH_LOOKBACK: usize = 8;

// ---- Accounts in the simulator (src/sim/accounts.rs)

/// The chance a simulated account logs in or out in a tick of the faulty phase: every few
/// simulated seconds, so a seed's accounts log in and out several times, with their players
/// moving, carrying and boarding between.
pub const SIM_ACCOUNT_SWITCH_PER_TICK: f64 = 0.01;

/// The chance a simulated logout is followed at once by a login of the same account (a client
/// that reconnects, perhaps through another core): often enough that seeds race the two.
pub const SIM_ACCOUNT_RECONNECT: f64 = 0.3;

// ---- Metrics (src/runtime/metrics.rs)

/// Bytes of a scrape's request read at most (its request line and headers): a real scraper
/// sends a few hundred; more is not a scraper.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 << 10;

/// How long a scrape may take to send its request and read the answer: the thread serves one
/// scrape at a time, so a client that stalls holds up the next scrape by this long at most.
pub const METRICS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

// ---- The live map (src/runtime/map.rs)

/// Ticks between a core's posts to the live map: the page redraws twice a second, so a post
/// every half second at 30 Hz is as fresh as it can show.
pub const MAP_PERIOD_TICKS: u64 = 15;

/// Players a core shows on the map at most (thinned evenly past it): dots enough to see every
/// crowd, few enough that a page redraws 100,000 players without stutter.
pub const MAP_PLAYERS_PER_CORE_MAX: usize = 5_000;

// ---- Profiling (src/profile.rs)

/// Samples a second for `--flamegraph`: a prime (so the timer does not beat with the 30 Hz tick)
/// high enough that a 10 s run gives thousands of samples, low enough that sampling costs the
/// run about a percent.
pub const FLAMEGRAPH_HZ: i32 = 499;

// ---- Progress of long work (src/progress.rs)

/// How often long work writes a progress line where there is no terminal to draw a bar on: often
/// enough that a CI log shows it is alive, rarely enough that a long sweep's log stays short.
pub const PROGRESS_LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

// ---- Benchmark reports (src/report.rs)

/// Plots drawn for one list of a benchmark's results: a list of trials has a dozen numeric
/// quantities, and the ones past the first eight (tick p99 and throughputs come first) are in
/// its table.
pub const REPORT_PLOTS_PER_LIST_MAX: usize = 8;

/// Rows of a list's table in the report: a minute's timeline, or a search's trials, fits; a
/// longer list is in the JSON, and the table says how many rows it left out.
pub const REPORT_TABLE_ROWS_MAX: usize = 60;

/// Lines drawn in one plot: more than a dozen colours cannot be told apart; the rest are in the
/// table, and the legend says how many it left out.
pub const REPORT_SERIES_MAX: usize = 12;

/// The largest benchmark JSON file the report reads: a long run's timeline is a few hundred
/// kilobytes; a file past this is refused by name rather than read into memory.
pub const REPORT_FILE_BYTES_MAX: u64 = 64 << 20;

// ---- Connect tokens (src/net/key.rs)

/// Seconds a connected client may stay silent before the gateway drops it, as its token says.
pub const TOKEN_TIMEOUT_SECS: i32 = 15;

/// Seconds a connect token from `shardmesh token` is good for unless asked otherwise: long
/// enough to start a client, short enough that a leaked one soon expires.
pub const TOKEN_EXPIRE_SECS_DEFAULT: u64 = 300;

// ---- Game servers (src/protocol/server.rs)

/// Grid cell edge: a few reaches wide, so a reach query touches at most 8 cells.
pub const GRID_CELL_M: f32 = 16.0;

/// Cell edge of the grids a projectile's path is searched in (targets, ghosts): twice the hit
/// radius. The path is walked from the muzzle a cell at a time and the search stops at the first
/// hit, so in a crowd (a tavern packs a few hundred players into a cell this size) a shot looks
/// at a cell or two, not at everyone in its path's bounding box; a path through empty space
/// costs a dozen cell lookups more than with the wider cells.
pub const HIT_GRID_CELL_M: f32 = 2.0 * HIT_RADIUS_M;

/// The most cells a grid lays out as one array over the box its entries fill (4 MiB of
/// offsets); entries spread wider are found by a map keyed by cell.
pub const GRID_DENSE_CELLS_MAX: usize = 1 << 20;

/// A segment searched in a grid is walked in at most this many pieces: a projectile's path is a
/// dozen cells long; a longer one (a corrupt velocity) is walked in longer pieces, never more.
pub const SEGMENT_PIECES_MAX: u32 = 1024;

/// Client inputs applied to one entity in one tick at most (a move, a shot, a pickup and one
/// more); the rest are refused and counted. At a slow tick rate the cap is the share of
/// `CLIENT_INPUTS_PER_S_MAX` a tick is, if that is more (`client_inputs_per_tick`).
pub const CLIENT_INPUTS_PER_TICK_MAX: u32 = 4;

/// Client inputs a second one entity may have applied at most: a client sends one a frame, at
/// up to 60 frames a second, and a few actions besides.
pub const CLIENT_INPUTS_PER_S_MAX: u64 = 120;

/// Client inputs applied to one entity in one tick of `tick_us` at most: a client sends at its
/// own rate, so a world ticking slowly takes more of them a tick.
pub const fn client_inputs_per_tick(tick_us: u64) -> u32 {
    let share = (CLIENT_INPUTS_PER_S_MAX * tick_us).div_ceil(1_000_000);
    if share > CLIENT_INPUTS_PER_TICK_MAX as u64 {
        share as u32
    } else {
        CLIENT_INPUTS_PER_TICK_MAX
    }
}

// ---- World files (src/world/container.rs)

/// A world file has at most this many containers; a bigger one is a mistake or an attack.
pub const CONTAINER_COUNT_MAX: usize = 1 << 20;

// ---- Container streaming (src/world/stream.rs)

/// A player this near a container's bounds has it loaded on the server that owns its region.
/// No more than the ghost margin, so a neighbouring server sees the player whose bubble
/// reaches into its regions.
pub const STREAM_LOAD_RADIUS_M: f32 = 48.0;

/// A loaded container stays loaded while a player is this near.
pub const STREAM_UNLOAD_RADIUS_M: f32 = crate::limits::GHOST_MARGIN_M;

/// Game time between a server's streaming decisions. A ship at 150 m/s covers 15 m in this time
/// and the round trip to load takes two ticks more: well inside the 42 m between the load
/// radius and a player's reach.
pub const STREAM_PERIOD_US: u64 = 100_000;

/// Game time after a server hears a new map during which its streaming gives nothing back and
/// it hands off no loose item (it streams every tick meanwhile): a neighbour's presence cells
/// near a border the map just drew arrive a tick or two later, and the items of a region that
/// moved, handed to a new owner before it loads their container, would rest by a player.
pub const STREAM_HOLD_AFTER_MAP_US: u64 = 2 * STREAM_PERIOD_US;

// ---- The region map (src/world/region.rs)

/// Cells at most in a lookup grid; a map whose boundaries would need more is searched region by
/// region.
pub const LOOKUP_CELLS_MAX: usize = 4096;

// ---- Bot behaviour (src/bots.rs)

/// How long a commuter stays bound for one city before choosing the next.
pub const COMMUTE_LEG_US: u64 = 20_000_000;

// ---- The simulator (src/sim/mod.rs)

/// Segments on the simulated disk: small, so runs roll over from one to the next.
pub const SIM_SEGMENT_BYTES: usize = 256 << 10;

/// Rounds of delivery between nodes before the liveness check; a handoff chain settles in a few.
pub const SETTLE_ROUNDS_MAX: usize = 16;

/// Regions the controller may split up to in a run.
pub const SIM_REGION_COUNT_MAX: usize = 48;

/// Ticks a simulated client's update or acknowledgement may be held on its way, at most: enough
/// to reorder them, as a real network does.
pub const SIM_CLIENT_DELAY_TICKS_MAX: u64 = 3;

// ---- The datagram guard (src/net/guard.rs)

/// The most payload bytes one netcode packet carries (netcode 1.02's limit; renetcode keeps it
/// private).
pub const PAYLOAD_BYTES_MAX: usize = 1300;

/// A sequence number this close to the top of the range is refused: renetcode's replay window
/// adds to it unchecked. A real peer counts up from zero, one a packet.
pub const SEQUENCE_MAX: u64 = u64::MAX >> 8;

/// Whole ticks of `tick_us` in a period of `period_us` of game time, at least one: a period kept
/// in game time lasts as long at any tick rate.
pub const fn ticks_in(period_us: u64, tick_us: u64) -> u64 {
    let ticks = period_us / if tick_us == 0 { 1 } else { tick_us };
    if ticks == 0 {
        1
    } else {
        ticks
    }
}
