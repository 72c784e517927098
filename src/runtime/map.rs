//! `--http ADDR`: a live map of the world from above, as a small web page (`/`) that redraws from
//! a JSON endpoint (`/map.json`) twice a second: the containers (planets, cities, buildings,
//! rooms), the regions coloured by the server that holds them, each core's servers with what
//! they hold and the core's load, and the players as dots, so crowds and the servers that follow
//! them can be watched. Each shard posts its part (`CoreMap`) every `MAP_PERIOD`; a request reads
//! the newest of each.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::shard::ShardGauges;
use crate::world::{Aabb, ContainerKind, Tick};

/// The page: a canvas and the script that draws `/map.json` on it.
pub const PAGE: &str = include_str!("map.html");

/// One core's part of the map, as its shard last posted it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CoreMap {
    pub tick: Tick,
    pub servers: Vec<MapServer>,
    /// Players' positions (x, y), every one up to `MAP_PLAYERS_PER_CORE_MAX`, evenly thinned past it.
    pub players: Vec<[f32; 2]>,
    pub players_total: usize,
    /// The region map (the controller's core posts it).
    pub regions: Vec<MapRegion>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MapServer {
    pub id: u32,
    pub entities: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct MapRegion {
    pub id: u32,
    pub min: [f32; 2],
    pub max: [f32; 2],
    pub server: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
struct MapContainer {
    kind: &'static str,
    name: String,
    min: [f32; 2],
    max: [f32; 2],
}

/// What every shard posts to and every request reads.
pub struct MapBoard {
    pub cores: Vec<Mutex<CoreMap>>,
    world: Aabb,
    containers: Vec<MapContainer>,
}

#[derive(Serialize)]
struct MapCore<'a> {
    core: usize,
    /// The core's servers and slice at work over the last second, as a share of the tick.
    work: f64,
    tick_p99_ms: f64,
    #[serde(flatten)]
    map: &'a CoreMap,
}

#[derive(Serialize)]
struct MapJson<'a> {
    world: [[f32; 2]; 2],
    containers: &'a [MapContainer],
    regions: &'a [MapRegion],
    cores: Vec<MapCore<'a>>,
}

pub fn xy(p: glam::Vec3) -> [f32; 2] {
    [p.x, p.y]
}

impl MapBoard {
    pub fn new(cores: usize, world: Aabb, containers: impl IntoIterator<Item = (ContainerKind, String, Aabb)>) -> Self {
        let kind = |k: ContainerKind| match k {
            ContainerKind::System => "system",
            ContainerKind::Planet => "planet",
            ContainerKind::City => "city",
            ContainerKind::Building => "building",
            ContainerKind::Room => "room",
        };
        let containers = containers
            .into_iter()
            .filter(|(k, _, _)| *k != ContainerKind::System)
            .map(|(k, name, b)| MapContainer { kind: kind(k), name, min: xy(b.min()), max: xy(b.max()) })
            .collect();
        Self { cores: (0..cores).map(|_| Mutex::new(CoreMap::default())).collect(), world, containers }
    }

    /// The map as JSON, with each core's load from its gauges.
    pub fn json(&self, gauges: &[Arc<ShardGauges>]) -> String {
        let maps: Vec<CoreMap> =
            self.cores.iter().map(|c| c.lock().expect("no shard panics holding it").clone()).collect();
        let regions = maps.first().map_or(&[][..], |m| &m.regions[..]);
        let cores = maps
            .iter()
            .enumerate()
            .map(|(core, map)| {
                let g = gauges.get(core);
                let load = |f: fn(&ShardGauges) -> &std::sync::atomic::AtomicU64| {
                    g.map_or(0, |g| f(g).load(Ordering::Relaxed))
                };
                MapCore {
                    core,
                    work: load(|g| &g.work_share_ppm) as f64 / 1e6,
                    tick_p99_ms: load(|g| &g.p99_us) as f64 / 1e3,
                    map,
                }
            })
            .collect();
        let json = MapJson {
            world: [xy(self.world.min()), xy(self.world.max())],
            containers: &self.containers,
            regions,
            cores,
        };
        serde_json::to_string(&json).expect("the map serializes")
    }
}
