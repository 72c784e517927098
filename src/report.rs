//! `shardmesh report`: every benchmark's JSON rendered as SVG plots and Markdown tables.
//!
//! The benches write `target/bench-NAME.json`, each an object with a `bench` name, a `command`
//! that reproduces it, its settings as scalars, and its results as lists of objects (trials,
//! samples over time, runs). The report knows no benchmark by name; it reads the shape:
//!
//! - the top level's scalars are a table of settings and results;
//! - objects one level down (a run's summary, the static and the dynamic mesh's) are one table,
//!   a column each;
//! - every list of objects, wherever it is, is a table, and plots: each numeric quantity against
//!   the first of `X_KEYS` the rows vary in (players, time, the quantile, ...), one line per group
//!   of `GROUP_KEYS` (mode, cores, build, ...) and per object it came from. Lists of one name
//!   under sibling objects (`dynamic.timeline`, `static.timeline`) share their plots. A list
//!   with no such x is drawn as bars, one a row.
//!
//! So a new benchmark is in the report as soon as it writes its JSON in that shape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::limits::{REPORT_FILE_BYTES_MAX, REPORT_PLOTS_PER_LIST_MAX, REPORT_SERIES_MAX, REPORT_TABLE_ROWS_MAX};

/// What a list's rows are plotted against, the first that varies: a distribution's quantile, time,
/// then the sizes benchmarks sweep.
pub const X_KEYS: &[&str] = &[
    "quantile", "t_s", "second", "failover", "crash", "run", "round", "players", "runners", "bots", "clients",
    "entities", "bytes", "threads", "seeds", "cores",
];

/// What tells a list's rows apart into lines: the mode, the build, the writer, the core count.
pub const GROUP_KEYS: &[&str] =
    &["mode", "writer", "channel", "payload", "durability", "build", "binary", "scenario", "cores", "threads", "bots"];

/// The report of one run of `render`.
#[derive(Debug, Default)]
pub struct Rendered {
    /// Each benchmark rendered: its name, plots and tables.
    pub benches: Vec<(String, usize, usize)>,
    /// The Markdown file written.
    pub markdown: PathBuf,
    /// Files that could not be read or were not a benchmark's JSON, each with why.
    pub errors: Vec<String>,
}

impl Rendered {
    pub fn plots(&self) -> usize {
        self.benches.iter().map(|b| b.1).sum()
    }
}

/// The benchmark JSON files in `dir`: `bench-*.json`, by name.
pub fn bench_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("bench-") && name.ends_with(".json")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Renders each file into `out` (created): an SVG per plot and `REPORT.md` with every table
/// and a link to every plot. A file that cannot be read is named in `errors` and the rest are
/// rendered.
pub fn render(files: &[PathBuf], out: &Path) -> Result<Rendered, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut md = String::from("# Benchmark report\n\n");
    let _ = writeln!(md, "Rendered by `shardmesh report` from {} benchmark JSON file(s).\n", files.len());
    let mut rendered = Rendered { markdown: out.join("REPORT.md"), ..Default::default() };
    let mut used_names = BTreeMap::new();
    for file in files {
        let value = match read(file) {
            Ok(v) => v,
            Err(e) => {
                rendered.errors.push(e);
                continue;
            }
        };
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("bench");
        let name = value.get("bench").and_then(Value::as_str).unwrap_or(stem.trim_start_matches("bench-"));
        // Two files naming one bench (a side-by-side run kept beside a search) get apart.
        let mut slug = slug(name);
        let n = used_names.entry(slug.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            slug = format!("{slug}-{n}");
        }
        let mut bench =
            Bench { name: name.to_string(), slug, out, md: String::new(), plots: 0, tables: 0, errors: Vec::new() };
        bench.render(name, file, &value);
        md += &bench.md;
        rendered.errors.extend(bench.errors);
        rendered.benches.push((name.to_string(), bench.plots, bench.tables));
    }
    if !rendered.errors.is_empty() {
        md += "## Not rendered\n\n";
        for e in &rendered.errors {
            let _ = writeln!(md, "- {}", cell_text(e));
        }
    }
    std::fs::write(&rendered.markdown, md).map_err(|e| format!("{}: {e}", rendered.markdown.display()))?;
    Ok(rendered)
}

/// A benchmark's JSON: an object, read whole if it is not too large.
fn read(file: &Path) -> Result<Map<String, Value>, String> {
    let size = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?.len();
    if size > REPORT_FILE_BYTES_MAX {
        return Err(format!("{}: {size} bytes, over the {REPORT_FILE_BYTES_MAX} a report reads", file.display()));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{}: not a JSON object (a benchmark writes one)", file.display())),
        Err(e) => Err(format!("{}: not JSON: {e}", file.display())),
    }
}

/// A name fit for a file name: letters, digits, `-` and `_`.
fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '_' })
        .take(48)
        .collect();
    if s.is_empty() {
        "bench".into()
    } else {
        s
    }
}

/// A list of rows found in a benchmark's JSON, under its name, with the row's origin (the path of
/// the object it was found in, "" at the top).
struct List<'a> {
    name: String,
    rows: Vec<(String, &'a Map<String, Value>)>,
}

struct Bench<'o> {
    name: String,
    slug: String,
    out: &'o Path,
    md: String,
    plots: usize,
    tables: usize,
    errors: Vec<String>,
}

impl Bench<'_> {
    fn render(&mut self, name: &str, file: &Path, v: &Map<String, Value>) {
        let _ = writeln!(self.md, "## {}\n", cell_text(name));
        let _ = writeln!(self.md, "From `{}`.", file.display());
        if let Some(command) = v.get("command").and_then(Value::as_str) {
            let _ = writeln!(self.md, "Reproduce: `{}`", command.replace('`', "'"));
        }
        self.md.push('\n');
        // The top level's scalars.
        let scalars: Vec<(&String, &Value)> =
            v.iter().filter(|(k, x)| is_scalarish(x) && !matches!(k.as_str(), "bench" | "command")).collect();
        if !scalars.is_empty() {
            self.md += "| setting or result | value |\n|---|---|\n";
            for (k, x) in scalars {
                let _ = writeln!(self.md, "| {} | {} |", cell_text(k), cell(x));
            }
            self.md.push('\n');
            self.tables += 1;
        }
        // Objects one level down, side by side.
        let objects: Vec<(&String, &Map<String, Value>)> =
            v.iter().filter_map(|(k, x)| x.as_object().map(|o| (k, o))).collect();
        if !objects.is_empty() {
            let mut keys: Vec<&String> = Vec::new();
            for (_, o) in &objects {
                for (k, x) in o.iter() {
                    if is_scalarish(x) && !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
            if !keys.is_empty() {
                let _ = write!(self.md, "| |");
                for (name, _) in &objects {
                    let _ = write!(self.md, " {} |", cell_text(name));
                }
                self.md += "\n|---|";
                self.md += &"---|".repeat(objects.len());
                self.md.push('\n');
                for k in keys {
                    let _ = write!(self.md, "| {} |", cell_text(k));
                    for (_, o) in &objects {
                        let _ = write!(self.md, " {} |", o.get(k.as_str()).map_or("–".to_string(), cell));
                    }
                    self.md.push('\n');
                }
                self.md.push('\n');
                self.tables += 1;
            }
        }
        // Every list of objects, merged by name.
        let mut lists: Vec<List> = Vec::new();
        collect_lists(v, "", 0, &mut lists);
        for list in &lists {
            self.list(list);
        }
    }

    fn list(&mut self, list: &List) {
        let rows = &list.rows;
        let _ = writeln!(self.md, "### {} ({} rows)\n", cell_text(&list.name), rows.len());
        // The columns: the origin when rows came from more than one object, then every scalar.
        let origins = rows.iter().map(|r| r.0.as_str()).collect::<std::collections::BTreeSet<_>>();
        let mut columns: Vec<&str> = Vec::new();
        for (_, r) in rows {
            for (k, x) in r.iter() {
                if is_scalarish(x) && !columns.contains(&k.as_str()) {
                    columns.push(k);
                }
            }
        }
        let x = X_KEYS.iter().copied().find(|k| distinct_numbers(rows, k) >= 2);
        // A group key that is the same in every row tells no line apart.
        let groups: Vec<&str> =
            GROUP_KEYS.iter().copied().filter(|g| Some(*g) != x && distinct_values(rows, g) >= 2).collect();
        let label = |origin: &str, r: &Map<String, Value>| {
            let mut parts: Vec<String> = Vec::new();
            if origins.len() > 1 {
                parts.push(origin.to_string());
            }
            for g in &groups {
                if let Some(v) = r.get(*g) {
                    parts.push(format!("{g}={}", plain(v)));
                }
            }
            parts.join(", ")
        };
        // Quantities: numeric, neither the x nor a group key; those that vary, or every one where
        // none does (each failover took one tick); tick p99s and rates first.
        let numeric: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|k| Some(*k) != x && !GROUP_KEYS.contains(k) && distinct_numbers(rows, k) >= 1)
            .collect();
        let varying: Vec<&str> = numeric.iter().copied().filter(|k| distinct_numbers(rows, k) >= 2).collect();
        let mut quantities = if varying.is_empty() { numeric } else { varying };
        quantities.sort_by_key(|k| !(k.contains("p99") || k.contains("per_s") || k.ends_with("_players")));
        let drawn = quantities.len().min(REPORT_PLOTS_PER_LIST_MAX);
        for q in &quantities[..drawn] {
            let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
            for (i, (origin, r)) in rows.iter().enumerate() {
                let Some(y) = r.get(*q).and_then(Value::as_f64).filter(|y| y.is_finite()) else { continue };
                let at = match x {
                    Some(x) => match r.get(x).and_then(Value::as_f64).filter(|v| v.is_finite()) {
                        Some(v) => v,
                        None => continue,
                    },
                    None => i as f64,
                };
                let name = if x.is_none() {
                    let l = label(origin, r);
                    if l.is_empty() {
                        format!("row {i}")
                    } else {
                        l
                    }
                } else {
                    label(origin, r)
                };
                match series.iter_mut().find(|s| s.0 == name) {
                    Some(s) => s.1.push((at, y)),
                    None => series.push((name, vec![(at, y)])),
                }
            }
            if series.is_empty() {
                continue;
            }
            let title = match x {
                Some(x) => format!("{}: {} — {q} against {x}", self.name, list.name),
                None => format!("{}: {} — {q}", self.name, list.name),
            };
            let svg = match x {
                Some(x) => line_chart(&title, x, q, &series),
                None => bar_chart(&title, q, &series),
            };
            let file = format!("{}-{}-{}.svg", self.slug, slug(&list.name), slug(q));
            match std::fs::write(self.out.join(&file), svg) {
                Ok(()) => {
                    let _ = writeln!(self.md, "![{}]({file})\n", cell_text(&title));
                    self.plots += 1;
                }
                Err(e) => self.errors.push(format!("{file}: {e}")),
            }
        }
        if quantities.len() > drawn {
            let _ = writeln!(self.md, "{} more quantities are in the table, not plotted.\n", quantities.len() - drawn);
        }
        // The table.
        let _ = write!(self.md, "|");
        if origins.len() > 1 {
            self.md += " of |";
        }
        for c in &columns {
            let _ = write!(self.md, " {} |", cell_text(c));
        }
        self.md += "\n|";
        self.md += &"---|".repeat(columns.len() + usize::from(origins.len() > 1));
        self.md.push('\n');
        for (origin, r) in rows.iter().take(REPORT_TABLE_ROWS_MAX) {
            let _ = write!(self.md, "|");
            if origins.len() > 1 {
                let _ = write!(self.md, " {} |", cell_text(origin));
            }
            for c in &columns {
                let _ = write!(self.md, " {} |", r.get(*c).map_or("–".to_string(), cell));
            }
            self.md.push('\n');
        }
        if rows.len() > REPORT_TABLE_ROWS_MAX {
            let _ = writeln!(self.md, "\n{} more rows are in the JSON.", rows.len() - REPORT_TABLE_ROWS_MAX);
        }
        self.md.push('\n');
        self.tables += 1;
    }
}

/// Depth below which the report looks for no more lists: a benchmark's JSON is a few levels deep.
const LIST_DEPTH: usize = 4;

/// Every non-empty list of objects under `v`, merged with others of its name.
fn collect_lists<'a>(v: &'a Map<String, Value>, path: &str, depth: usize, lists: &mut Vec<List<'a>>) {
    if depth > LIST_DEPTH {
        return;
    }
    for (k, x) in v {
        match x {
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
                let rows = items.iter().filter_map(Value::as_object).map(|o| (path.to_string(), o));
                match lists.iter_mut().find(|l| &l.name == k) {
                    Some(l) => l.rows.extend(rows),
                    None => lists.push(List { name: k.clone(), rows: rows.collect() }),
                }
            }
            Value::Object(o) => {
                let inner = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                collect_lists(o, &inner, depth + 1, lists);
            }
            _ => {}
        }
    }
}

fn distinct_values(rows: &[(String, &Map<String, Value>)], key: &str) -> usize {
    let mut seen: Vec<String> = rows.iter().filter_map(|r| r.1.get(key)).map(plain).collect();
    seen.sort();
    seen.dedup();
    seen.len()
}

fn distinct_numbers(rows: &[(String, &Map<String, Value>)], key: &str) -> usize {
    let mut seen: Vec<f64> = rows.iter().filter_map(|r| r.1.get(key)?.as_f64()).filter(|v| v.is_finite()).collect();
    seen.sort_by(f64::total_cmp);
    seen.dedup();
    seen.len()
}

/// A value a table cell shows: a scalar, or a list of scalars.
fn is_scalarish(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.iter().all(|x| !x.is_object() && !x.is_array()),
        Value::Object(_) => false,
        _ => true,
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let s = if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    };
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A value as plain text.
fn plain(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), number),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Array(a) => {
            let mut s: Vec<String> = a.iter().take(8).map(plain).collect();
            if a.len() > 8 {
                s.push(format!("… {} more", a.len() - 8));
            }
            format!("[{}]", s.join(", "))
        }
        Value::Object(_) => "{…}".into(),
    }
}

/// A value as a Markdown table cell.
fn cell(v: &Value) -> String {
    cell_text(&plain(v))
}

/// Text safe in a Markdown table cell: one line, no bar, not too long.
fn cell_text(s: &str) -> String {
    let mut out: String = s.chars().take(120).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if s.chars().count() > 120 {
        out.push('…');
    }
    out.replace('|', "\\|")
}

fn xml(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 12] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#393b79", "#637939",
];

/// Tick marks for `lo..=hi`: about five, at 1, 2 or 5 times a power of ten.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON * hi.abs().max(1.0));
    let raw = span / 5.0;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|s| span / s <= 6.0).unwrap_or(10.0 * power);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 12 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

/// The y range: from zero when every value is at or above it (a bar's length is its value).
fn y_range(series: &[(String, Vec<(f64, f64)>)]) -> (f64, f64) {
    let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    let lo = if lo >= 0.0 { 0.0 } else { lo };
    if hi <= lo {
        (lo, lo + 1.0)
    } else {
        (lo, hi * if hi > 0.0 { 1.05 } else { 0.95 })
    }
}

fn frame(svg: &mut String, title: &str, x_name: &str, y_name: &str) {
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>
"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        xml(title),
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 10.0,
        xml(x_name),
        (TOP + HEIGHT - BOTTOM) / 2.0,
        (TOP + HEIGHT - BOTTOM) / 2.0,
        xml(y_name)
    );
}

fn y_axis(svg: &mut String, lo: f64, hi: f64, y: &impl Fn(f64) -> f64) {
    for t in ticks(lo, hi) {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            y(t),
            y(t),
            LEFT - 6.0,
            y(t) + 4.0,
            number(t)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="black"/><line x1="{LEFT}" x2="{}" y1="{}" y2="{}" stroke="black"/>"##,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM
    );
}

fn legend(svg: &mut String, names: &[&str], left_out: usize) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            WIDTH - RIGHT + 12.0,
            y,
            COLOURS[i % COLOURS.len()],
            WIDTH - RIGHT + 30.0,
            y + 10.0,
            xml(&name.chars().take(28).collect::<String>())
        );
    }
    if left_out > 0 {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{left_out} more in the table</text>"#,
            WIDTH - RIGHT + 12.0,
            TOP + 16.0 * names.len() as f64 + 10.0
        );
    }
}

/// One line per series, points marked, x and y axes with ticks.
pub fn line_chart(title: &str, x_name: &str, y_name: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let shown = &series[..series.len().min(REPORT_SERIES_MAX)];
    let xs = shown.iter().flat_map(|s| s.1.iter().map(|p| p.0));
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let (x_lo, x_hi) = if x_hi > x_lo { (x_lo, x_hi) } else { (x_lo - 1.0, x_lo + 1.0) };
    let (y_lo, y_hi) = y_range(shown);
    let x = |v: f64| LEFT + (v - x_lo) / (x_hi - x_lo) * (WIDTH - RIGHT - LEFT);
    let y = |v: f64| HEIGHT - BOTTOM - (v - y_lo) / (y_hi - y_lo) * (HEIGHT - BOTTOM - TOP);
    let mut svg = String::new();
    frame(&mut svg, title, x_name, y_name);
    y_axis(&mut svg, y_lo, y_hi, &y);
    for t in ticks(x_lo, x_hi) {
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{}" y2="{}" stroke="black"/><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(t),
            x(t),
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 5.0,
            x(t),
            HEIGHT - BOTTOM + 18.0,
            number(t)
        );
    }
    for (i, (_, points)) in shown.iter().enumerate() {
        let mut points = points.clone();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
        let _ =
            writeln!(svg, r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#, path.join(" "));
        for p in &points {
            let _ = writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#, x(p.0), y(p.1));
        }
    }
    let names: Vec<&str> = shown.iter().map(|s| if s.0.is_empty() { y_name } else { s.0.as_str() }).collect();
    legend(&mut svg, &names, series.len() - shown.len());
    svg += "</svg>\n";
    svg
}

/// One bar per series' first value (a list with nothing to plot against: a bar a row).
pub fn bar_chart(title: &str, y_name: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let shown = &series[..series.len().min(REPORT_SERIES_MAX)];
    let (y_lo, y_hi) = y_range(shown);
    let y = |v: f64| HEIGHT - BOTTOM - (v - y_lo) / (y_hi - y_lo) * (HEIGHT - BOTTOM - TOP);
    let mut svg = String::new();
    frame(&mut svg, title, "", y_name);
    y_axis(&mut svg, y_lo, y_hi, &y);
    let slot = (WIDTH - RIGHT - LEFT) / shown.len().max(1) as f64;
    for (i, (_, points)) in shown.iter().enumerate() {
        let Some(&(_, v)) = points.first() else { continue };
        let (top, bottom) = (y(v.max(0.0)), y(v.min(0.0)));
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + slot * (i as f64 + 0.15),
            top,
            slot * 0.7,
            (bottom - top).max(0.5),
            COLOURS[i % COLOURS.len()],
            LEFT + slot * (i as f64 + 0.5),
            top - 4.0,
            number(v)
        );
    }
    let names: Vec<&str> = shown.iter().map(|s| s.0.as_str()).collect();
    legend(&mut svg, &names, series.len() - shown.len());
    svg += "</svg>\n";
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render_one(name: &str, v: &Value) -> (Rendered, String, PathBuf) {
        let dir = std::env::temp_dir().join(format!("shardmesh-report-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bench-x.json");
        std::fs::write(&file, v.to_string()).unwrap();
        let out = dir.join("out");
        let r = render(&[file], &out).unwrap();
        let md = std::fs::read_to_string(&r.markdown).unwrap();
        (r, md, out)
    }

    #[test]
    fn a_list_is_plotted_against_what_it_varies_in_with_a_line_per_group() {
        let trials: Vec<Value> = [(1, 1000, 5.0), (1, 2000, 9.0), (2, 1000, 3.0), (2, 2000, 6.0)]
            .iter()
            .map(|(c, p, t)| json!({"cores": c, "players": p, "tick_p99_ms": t, "seed": 7}))
            .collect();
        let (r, md, out) = render_one("lines", &json!({"bench": "x", "seconds": 5, "trials": trials}));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        // One plot (the seed does not vary), two lines in it; a settings table and the list's.
        assert_eq!(r.benches, vec![("x".to_string(), 1, 2)]);
        let svg = std::fs::read_to_string(out.join("x-trials-tick_p99_ms.svg")).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(svg.contains("cores=1") && svg.contains("cores=2"));
        assert!(md.contains("![x: trials — tick_p99_ms against players](x-trials-tick_p99_ms.svg)"), "{md}");
        assert!(md.contains("| cores | players | seed | tick_p99_ms |"), "{md}");
    }

    #[test]
    fn lists_of_one_name_under_sibling_objects_share_a_plot() {
        let timeline = |k: f64| -> Vec<Value> { (0..5).map(|t| json!({"t_s": t, "servers": k * t as f64})).collect() };
        let v = json!({"bench": "y", "dynamic": {"ticks": 3, "timeline": timeline(2.0)}, "static": {"ticks": 4, "timeline": timeline(0.0)}});
        let (r, md, out) = render_one("siblings", &v);
        assert!(r.errors.is_empty());
        let svg = std::fs::read_to_string(out.join("y-timeline-servers.svg")).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">dynamic<") && svg.contains(">static<"), "{svg}");
        assert!(md.contains("| | dynamic | static |"), "{md}");
    }

    #[test]
    fn a_list_with_nothing_to_plot_against_is_bars() {
        let v = json!({"bench": "z", "latency": [{"durability": "tick", "p99_ms": 2.0}, {"durability": "off", "p99_ms": 0.1}]});
        let (r, _, out) = render_one("bars", &v);
        assert_eq!(r.plots(), 1);
        let svg = std::fs::read_to_string(out.join("z-latency-p99_ms.svg")).unwrap();
        assert_eq!(svg.matches("<rect x=").count(), 4, "two bars and two legend keys: {svg}");
    }

    #[test]
    fn what_is_not_a_benchmarks_json_is_named_and_the_rest_rendered() {
        let dir = std::env::temp_dir().join(format!("shardmesh-report-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let files: Vec<PathBuf> = [
            ("bench-a.json", "{not json"),
            ("bench-b.json", "[1, 2]"),
            ("bench-c.json", r#"{"bench": "c<|>\n", "rows": [{"x": null}, {"players": "a"}, {}], "deep": [[[]]]}"#),
        ]
        .iter()
        .map(|(name, text)| {
            std::fs::write(dir.join(name), text).unwrap();
            dir.join(name)
        })
        .collect();
        let r = render(&files, &dir.join("out")).unwrap();
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert!(r.errors[0].contains("bench-a.json") && r.errors[1].contains("bench-b.json"));
        assert_eq!(r.benches.len(), 1);
        let md = std::fs::read_to_string(&r.markdown).unwrap();
        assert!(md.contains("## c<\\|> "), "{md}");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(0.0, 33.0), vec![0.0, 10.0, 20.0, 30.0]);
        assert!(ticks(5.0, 5.0).len() <= 12);
        assert!(ticks(-1e300, 1e300).len() <= 12);
    }
}
