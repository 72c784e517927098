//! `--metrics ADDR`: the mesh's counters as Prometheus text (OpenMetrics), served over HTTP at
//! `/metrics` by a thread of its own, read from the shards' gauges at each scrape.
//!
//! Names follow Prometheus' conventions: the `shardmesh_` prefix, base units (seconds, bytes),
//! `_total` for counters, and labels of low cardinality only (the core, the kind of bad packet).
//! The tick duration is a histogram per core whose buckets lie around the tick's budget, so a
//! query can tell what share of ticks kept it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::shard::ShardGauges;
use crate::limits::{METRICS_REQUEST_BYTES_MAX, METRICS_TIMEOUT};

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, TickBuckets>;

/// Makes each core's tick histogram, its buckets around the tick's budget (in seconds).
#[derive(Clone, Copy)]
struct TickBuckets(f64);

impl MetricConstructor<Histogram> for TickBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(TICK_BUCKETS_OF_BUDGET.iter().map(|f| f * self.0))
    }
}

/// The tick-duration buckets, as fractions of the tick's budget.
const TICK_BUCKETS_OF_BUDGET: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 10.0];

/// The registry and the metrics the scrapes refresh from the shards' gauges.
pub struct Metrics {
    registry: Registry,
    gauges: Vec<Arc<ShardGauges>>,
    tick_seconds: Histograms,
    per_core: Family<Labels, Gauge>,
    held: Family<Labels, Gauge>,
    gauges_mesh: MeshGauges,
    counters: MeshCounters,
    bad_packets: Family<Labels, Counter>,
}

#[derive(Default)]
struct MeshGauges {
    players: Gauge,
    entities: Gauge,
    servers: Gauge,
    regions: Gauge,
    clients: Gauge,
    durable_tick: Gauge,
    time_dilation: Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Default)]
struct MeshCounters {
    ticks: Counter,
    handoffs: Counter,
    transfers: Counter,
    failovers: Counter,
    server_panics: Counter,
    servers_started: Counter,
    servers_retired: Counter,
    regions_split: Counter,
    regions_merged: Counter,
    log_bytes: Counter,
    sent_bytes: Counter,
    logins: Counter,
    ticks_held_back: Counter,
}

/// Sets a counter to a cumulative count read elsewhere (it only goes up).
fn set_counter(c: &Counter, to: u64) {
    c.inc_by(to.saturating_sub(c.get()));
}

impl Metrics {
    /// Metrics of the shards whose gauges are `gauges`, for ticks of `tick_budget`.
    pub fn new(gauges: Vec<Arc<ShardGauges>>, tick_budget: Duration) -> Self {
        let mut registry = Registry::with_prefix("shardmesh");
        let budget = tick_budget.as_secs_f64().max(1e-6);
        let tick_seconds = Family::new_with_constructor(TickBuckets(budget));
        registry.register_with_unit(
            "tick_duration",
            "Wall time of each tick, per core (the budget is one tick of the configured rate)",
            Unit::Seconds,
            tick_seconds.clone(),
        );
        let per_core = Family::<Labels, Gauge>::default();
        registry.register("core_servers", "Logical servers hosted on each core", per_core.clone());
        let held = Family::<Labels, Gauge>::default();
        registry.register("core_entities", "Entities simulated by each core's servers", held.clone());
        let g = MeshGauges::default();
        registry.register(
            "players",
            "Players simulated now (logged-out accounts' are parked, not counted)",
            g.players.clone(),
        );
        registry.register("entities", "Entities simulated by servers now", g.entities.clone());
        registry.register("servers", "Logical servers running now", g.servers.clone());
        registry.register("regions", "Regions in the map now", g.regions.clone());
        registry.register("clients_connected", "Clients connected to the gateways now", g.clients.clone());
        registry.register(
            "durable_tick",
            "The newest tick every core's log holds durably (0: no log)",
            g.durable_tick.clone(),
        );
        registry.register(
            "time_dilation_ratio",
            "The world's speed against real time over the last window (1: on schedule)",
            g.time_dilation.clone(),
        );
        let c = MeshCounters::default();
        registry.register("ticks", "Ticks run, summed over cores", c.ticks.clone());
        registry.register("handoffs", "Subtrees handed from one server to another", c.handoffs.clone());
        registry.register("transfers", "Subtrees moved between cores' slices", c.transfers.clone());
        registry.register(
            "failovers",
            "Servers declared dead whose regions and entities others took over",
            c.failovers.clone(),
        );
        registry.register(
            "server_panics",
            "Servers whose code panicked (each a crash, replaced)",
            c.server_panics.clone(),
        );
        registry.register("servers_started", "Logical servers the controller started", c.servers_started.clone());
        registry.register("servers_retired", "Logical servers the controller retired", c.servers_retired.clone());
        registry.register("regions_split", "Regions the controller split", c.regions_split.clone());
        registry.register("regions_merged", "Regions the controller merged", c.regions_merged.clone());
        registry.register_with_unit(
            "log_synced",
            "Bytes of replication log synced to disk",
            Unit::Bytes,
            c.log_bytes.clone(),
        );
        registry.register_with_unit("sent", "Bytes of updates sent to clients", Unit::Bytes, c.sent_bytes.clone());
        registry.register("logins", "Accounts logged in at the gateways", c.logins.clone());
        registry.register(
            "ticks_held_back",
            "Ticks whose simulation was held back under overload",
            c.ticks_held_back.clone(),
        );
        let bad_packets = Family::<Labels, Counter>::default();
        registry.register("bad_packets", "Datagrams and messages from clients dropped, by kind", bad_packets.clone());
        Self { registry, gauges, tick_seconds, per_core, held, gauges_mesh: g, counters: c, bad_packets }
    }

    /// The tick-duration histogram of `core`, for its shard to observe each tick into.
    pub fn tick_histogram(&self, core: usize) -> Histogram {
        self.tick_seconds.get_or_create(&core_label(core)).clone()
    }

    /// The metrics as Prometheus text, fresh from the gauges.
    pub fn render(&self) -> String {
        let g = &self.gauges;
        let sum = |f: &dyn Fn(&ShardGauges) -> u64| g.iter().map(|g| f(g)).sum::<u64>();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        for (core, shard) in g.iter().enumerate() {
            self.per_core.get_or_create(&core_label(core)).set(load(&shard.servers) as i64);
            self.held.get_or_create(&core_label(core)).set(load(&shard.held) as i64);
        }
        let m = &self.gauges_mesh;
        m.players.set(sum(&|s| load(&s.players)) as i64);
        m.entities.set(sum(&|s| load(&s.held)) as i64);
        m.servers.set(sum(&|s| load(&s.servers)) as i64);
        m.regions.set(g.first().map_or(0, |s| load(&s.regions)) as i64);
        m.clients.set(sum(&|s| load(&s.clients)) as i64);
        m.durable_tick.set(g.iter().map(|s| load(&s.committed_tick)).min().unwrap_or(0) as i64);
        let dilation = g.iter().map(|s| load(&s.time_dilation_ppm)).filter(|p| *p > 0).min().unwrap_or(1_000_000);
        m.time_dilation.set(dilation as f64 / 1e6);
        let c = &self.counters;
        set_counter(&c.ticks, sum(&|s| load(&s.ticks)));
        set_counter(&c.handoffs, sum(&|s| load(&s.handoffs)));
        set_counter(&c.transfers, sum(&|s| load(&s.transfers)));
        set_counter(&c.failovers, sum(&|s| load(&s.failovers)));
        set_counter(&c.server_panics, sum(&|s| load(&s.server_panics)));
        set_counter(&c.servers_started, g.first().map_or(0, |s| load(&s.servers_started)));
        set_counter(&c.servers_retired, g.first().map_or(0, |s| load(&s.servers_retired)));
        set_counter(&c.regions_split, g.first().map_or(0, |s| load(&s.regions_split)));
        set_counter(&c.regions_merged, g.first().map_or(0, |s| load(&s.regions_merged)));
        set_counter(&c.log_bytes, sum(&|s| load(&s.log_bytes)));
        set_counter(&c.ticks_held_back, sum(&|s| load(&s.ticks_held_back)));
        let mut gateway = crate::net::GatewayStats::default();
        for shard in g {
            gateway.add(&shard.gateway.lock().expect("not poisoned"));
        }
        set_counter(&c.sent_bytes, gateway.update_bytes);
        set_counter(&c.logins, gateway.logins);
        let r = &gateway.refused;
        for (kind, count) in [
            ("malformed", gateway.malformed),
            ("oversized_message", gateway.oversized),
            ("flooded_message", gateway.flooded),
            ("replayed", gateway.replayed),
            ("speed_hack", gateway.speed_hacks),
            ("bad_account", gateway.bad_seats),
            ("bad_token", gateway.bad_tokens),
            ("bad_packet", gateway.bad_packets),
            ("oversized_packet", gateway.oversized_packets),
            ("flooded_packet", gateway.flooded_packets),
            ("short", r.short),
            ("unknown_kind", r.unknown_kind),
            ("wrong_peer", r.wrong_peer),
            ("sequence", r.sequence),
            ("wrong_size", r.wrong_size),
            ("renet_kind", r.renet_kind),
        ] {
            set_counter(&self.bad_packets.get_or_create(&vec![("kind".into(), kind.into())]), count);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a string cannot fail");
        out
    }
}

fn core_label(core: usize) -> Labels {
    vec![("core".into(), core.to_string())]
}

/// What a path is answered with: its content type and body (`None`: not found).
pub type Routes = Arc<dyn Fn(&str) -> Option<(&'static str, String)> + Send + Sync>;

/// The routes of `--metrics`: `/metrics`, the metrics as Prometheus text.
pub fn routes(metrics: Metrics) -> Routes {
    let metrics = Mutex::new(metrics);
    Arc::new(move |path| {
        (path == "/metrics").then(|| {
            let text = metrics.lock().expect("no scrape panics holding it").render();
            ("application/openmetrics-text; version=1.0.0; charset=utf-8", text)
        })
    })
}

/// Serves `routes` over HTTP on `addr` until `stop`, from a thread of its own, one request at a
/// time; returns the address it is bound to.
pub fn serve(addr: SocketAddr, routes: Routes, stop: Arc<AtomicBool>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name(format!("http-{}", bound.port())).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    // A client that misbehaves costs its own connection, nothing else.
                    let _ = answer(stream, &routes);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    eprintln!("http on {bound}: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    })?;
    Ok(bound)
}

/// One request: a `GET` of a known path is answered with it, anything else with an error.
fn answer(stream: TcpStream, routes: &Routes) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(METRICS_TIMEOUT))?;
    stream.set_write_timeout(Some(METRICS_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(METRICS_REQUEST_BYTES_MAX as u64);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The headers, to the blank line (bounded by the reader's limit); none is needed.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && line != "\r\n" && line != "\n" {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let text = "text/plain; charset=utf-8";
    let (status, kind, body) = match method {
        "GET" => match routes(path) {
            Some((kind, body)) => ("200 OK", kind, body),
            None => ("404 Not Found", text, format!("nothing at {path}\n")),
        },
        _ => ("405 Method Not Allowed", text, String::from("only GET\n")),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_in_base_units_with_the_ticks_buckets_around_the_budget() {
        let gauges: Vec<Arc<ShardGauges>> = (0..2).map(|_| Arc::new(ShardGauges::default())).collect();
        gauges[1].handoffs.store(7, Ordering::Relaxed);
        gauges[0].gateway.lock().unwrap().malformed = 3;
        let metrics = Metrics::new(gauges, Duration::from_micros(33_333));
        metrics.tick_histogram(1).observe(0.010);
        let text = metrics.render();
        assert!(text.contains("shardmesh_handoffs_total 7"), "{text}");
        assert!(text.contains("shardmesh_bad_packets_total{kind=\"malformed\"} 3"), "{text}");
        // A tenth of a 33 ms budget, 10 ms, is past the quarter mark and within the half.
        assert!(text.contains("shardmesh_tick_duration_seconds_bucket{le=\"0.00833325\",core=\"1\"} 0"), "{text}");
        assert!(text.contains("shardmesh_tick_duration_seconds_bucket{le=\"0.0166665\",core=\"1\"} 1"), "{text}");
        assert!(text.contains("shardmesh_tick_duration_seconds_count{core=\"1\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Read again, counters stay where the gauges are.
        assert!(metrics.render().contains("shardmesh_handoffs_total 7"));
    }
}
