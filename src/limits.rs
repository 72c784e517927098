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

/// Regions in one region map. A k-d split of a 4 km world down to 16 m cells stays far below it;
/// the map is sent whole on every change, so it must stay small.
pub const REGION_COUNT_MAX: usize = 1024;

/// A region is never split below this edge length: handoffs would outnumber ticks.
pub const REGION_EDGE_MIN_M: f32 = 8.0;

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

/// Lifetime of a projectile.
pub const PROJECTILE_TTL_TICKS: u16 = 24;

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

/// Subtrees one server hands off in one tick. When a region moves, thousands of entities leave
/// at once; handing them off over a few ticks keeps both cores' ticks even (the old server keeps
/// simulating what waits, since it still holds their authority).
pub const HANDOFFS_PER_TICK_MAX: usize = 256;

/// Entities this close to the edge of their region are shown to neighbouring servers as ghosts:
/// more than a projectile travels in a tick (50 m), so a shot from across a border finds them.
pub const GHOST_MARGIN_M: f32 = 60.0;

/// Damage one projectile does.
pub const PROJECTILE_DAMAGE: u16 = 10;

/// A ship slower than this is at rest, and one at rest that the physics moves less than this in
/// a tick stays put: contacts leave hulls with speeds that decay toward zero without reaching it
/// (1e-10 m/s after a bump) and the solver nudges hulls resting against each other apart by a
/// hair every tick, and a state that changes every tick is written every tick, so a world with
/// nothing moving would never settle. A millimetre a second is below what any client sees
/// (positions are centimetres).
pub const REST_SPEED_M_S: f32 = 1e-3;
