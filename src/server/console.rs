//! The console at `/` on the node's HTTP listener: the reform's figures for
//! the reform office, auditors and department liaison officers, read-only,
//! aggregates only (no ID number, pseudonym, name or application id is ever
//! rendered: [`ConsoleFigures`] holds none). Server-rendered HTML (maud)
//! with inline SVG charts, bilingual labels; a small inline script fetches
//! `console/figures.json` every few seconds and swaps in the new figures and
//! the re-rendered fragments. Every figure comes from
//! [`Operations::console_figures`], built on the same
//! [`Operations::statistics`] as GetStatistics and `proofgate stats`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use tracing::warn;

use crate::metrics::Metrics;
use crate::operations::figures::{ConsoleFigures, JINHUA, JINHUA_CERTIFICATES_SAVED, MODES};
use crate::operations::{stats, Operations};
use crate::pb::{ApplicationStatus, ProofMode};
use crate::policy::Mode;

/// How often the page fetches new figures.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Figures younger than this are served again instead of folding the log
/// once more: many open consoles cost one fold per interval, not one each.
const REUSE_FOR: Duration = Duration::from_secs(2);
/// Days the per-day chart shows (the most recent with applications).
const CHART_DAYS: usize = 14;
/// Where each status's legend entry starts in the per-day chart.
const LEGEND_X: [f64; 4] = [0.0, 120.0, 235.0, 450.0];
/// Matters the top-matters table shows.
const TOP_MATTERS: usize = 10;

/// The console of one node.
pub struct Console {
    operations: Operations,
    metrics: Metrics,
    cache: tokio::sync::Mutex<Option<(Instant, Arc<ConsoleFigures>)>>,
}

impl Console {
    pub fn new(operations: Operations, metrics: Metrics) -> Self {
        Self {
            operations,
            metrics,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The figures now (or from the last [`REUSE_FOR`]).
    async fn figures(&self) -> Result<Arc<ConsoleFigures>, String> {
        // Held while folding, so concurrent pages wait for one fold.
        let mut cache = self.cache.lock().await;
        if let Some((at, figures)) = cache.as_ref() {
            if at.elapsed() < REUSE_FOR {
                return Ok(Arc::clone(figures));
            }
        }
        let figures = Arc::new(
            self.operations
                .console_figures(&self.metrics)
                .await
                .map_err(|e| e.to_string())?,
        );
        *cache = Some((Instant::now(), Arc::clone(&figures)));
        Ok(figures)
    }
}

/// GET / and GET /console/figures.json.
pub fn routes(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/console/figures.json", get(figures_json))
        .with_state(console)
}

fn unavailable(problem: &str) -> Response {
    warn!(%problem, "console figures not computed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("数据暂不可用 The figures are not available: {problem}\n"),
    )
        .into_response()
}

async fn page(State(console): State<Arc<Console>>) -> Response {
    match console.figures().await {
        Ok(figures) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            render_page(&figures).into_string(),
        )
            .into_response(),
        Err(problem) => unavailable(&problem),
    }
}

async fn figures_json(State(console): State<Arc<Console>>) -> Response {
    match console.figures().await {
        Ok(figures) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            to_json(&figures).to_string(),
        )
            .into_response(),
        Err(problem) => unavailable(&problem),
    }
}

/// The JSON the page's script reads: `figures` (element `data-figure` key →
/// text), `html` (element id → its new inner HTML) and `statistics` (the
/// same JSON as `proofgate stats --json`).
pub fn to_json(figures: &ConsoleFigures) -> serde_json::Value {
    let html: BTreeMap<&str, String> = fragments(figures)
        .into_iter()
        .map(|(id, markup)| (id, markup.into_string()))
        .collect();
    serde_json::json!({
        "figures": figure_texts(figures),
        "html": html,
        "statistics": stats::to_json(&figures.statistics),
    })
}

/// Chinese and English names of a mode.
pub fn mode_labels(mode: Mode) -> (&'static str, &'static str) {
    match mode {
        Mode::Abolished => ("直接取消", "Abolished"),
        Mode::Commitment => ("告知承诺", "Commitment"),
        Mode::DataQuery => ("数据查询", "Data query"),
        Mode::DepartmentVerification => ("部门核验", "Department verification"),
    }
}

fn mode_key(mode: Mode) -> &'static str {
    match mode {
        Mode::Abolished => "abolished",
        Mode::Commitment => "commitment",
        Mode::DataQuery => "data_query",
        Mode::DepartmentVerification => "department_verification",
    }
}

const MODE_COLOURS: [&str; 4] = ["#2a9d8f", "#e9c46a", "#457b9d", "#e76f51"];

/// Statuses in chart order, with their labels and colours.
const STATUSES: [(ApplicationStatus, &str, &str, &str); 4] = [
    (ApplicationStatus::Complete, "已办结", "Complete", "#2a9d8f"),
    (ApplicationStatus::Pending, "核验中", "Pending", "#e9c46a"),
    (
        ApplicationStatus::NeedsApplicantAction,
        "需补正",
        "Needs applicant action",
        "#f4a261",
    ),
    (ApplicationStatus::Rejected, "未通过", "Rejected", "#c0392b"),
];

fn circuit_label(circuit: &str) -> &'static str {
    match circuit {
        "closed" => "闭合 closed",
        "half-open" => "半开 half-open",
        "open" => "断开 open",
        _ => "未注册 unregistered",
    }
}

/// `n` with thousands separators.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn settled(figures: &ConsoleFigures) -> [u64; 4] {
    let nb = figures.statistics.not_brought.unwrap_or_default();
    [
        nb.abolished,
        nb.commitment,
        nb.data_query,
        nb.department_verification,
    ]
}

/// The texts of every `data-figure` element.
fn figure_texts(figures: &ConsoleFigures) -> BTreeMap<String, String> {
    let s = &figures.statistics;
    let nb = s.not_brought.unwrap_or_default();
    let mut out = BTreeMap::new();
    for (mode, n) in MODES.iter().zip(settled(figures)) {
        out.insert(format!("not_brought.{}", mode_key(*mode)), grouped(n));
        out.insert(
            format!("share.{}", mode_key(*mode)),
            format!("{:.1} %", percent(n, nb.total)),
        );
    }
    out.insert("not_brought.total".into(), grouped(nb.total));
    out.insert("applications".into(), grouped(s.applications));
    out.insert("entries".into(), grouped(s.entries));
    out.insert(
        "pending_verifications".into(),
        grouped(s.pending_verifications),
    );
    out.insert(
        "overdue_verifications".into(),
        grouped(s.overdue_verifications),
    );
    out.insert("spot_checks_sampled".into(), grouped(s.spot_checks_sampled));
    out.insert("spot_checks_false".into(), grouped(s.spot_checks_false));
    out.insert("log.tree_size".into(), grouped(figures.log.tree_size));
    out.insert("policy_version".into(), s.policy_version.clone());
    out
}

/// The parts of the page the script replaces, by element id.
fn fragments(figures: &ConsoleFigures) -> Vec<(&'static str, Markup)> {
    vec![
        ("chart-catalog", catalog_chart(figures)),
        ("chart-settled", settled_chart(figures)),
        ("chart-days", days_chart(figures)),
        ("table-matters", matters_table(figures)),
        ("table-departments", departments_table(figures)),
        ("log-details", log_details(figures)),
    ]
}

/// The catalog's split over the modes beside Jinhua's, as paired bars.
fn catalog_chart(figures: &ConsoleFigures) -> Markup {
    let ours_total: u64 = figures.catalog.iter().sum();
    let jinhua_total: u64 = JINHUA.iter().sum();
    let row_h = 52.0;
    let height = row_h * 4.0 + 30.0;
    let bar = |x: f64| 360.0 * x / 100.0;
    html! {
        svg class="chart" viewBox=(format!("0 0 640 {height}")) role="img"
            aria-label="目录按方式 本节点与金华对比 Catalog by mode, this node beside Jinhua" {
            @for (i, mode) in MODES.iter().enumerate() {
                @let (zh, en) = mode_labels(*mode);
                @let y = 10.0 + row_h * i as f64;
                @let ours = percent(figures.catalog[i], ours_total);
                @let theirs = percent(JINHUA[i], jinhua_total);
                text x="0" y=(y + 14.0) class="label" { (zh) }
                text x="0" y=(y + 32.0) class="label en" { (en) }
                rect x="180" y=(y) width=(bar(ours)) height="18" fill=(MODE_COLOURS[i]) {}
                text x=(186.0 + bar(ours)) y=(y + 14.0) class="value" {
                    (format!("{ours:.1} % ({})", figures.catalog[i]))
                }
                rect x="180" y=(y + 22.0) width=(bar(theirs)) height="18" fill=(MODE_COLOURS[i]) opacity="0.45" {}
                text x=(186.0 + bar(theirs)) y=(y + 36.0) class="value muted" {
                    (format!("{theirs:.1} % ({})", grouped(JINHUA[i])))
                }
            }
            text x="180" y=(height - 4.0) class="legend" {
                "实色 本节点目录 solid: this catalog · 浅色 金华 2019 pale: Jinhua 2019"
            }
        }
    }
}

/// Proofs settled without paper, as one bar split by mode.
fn settled_chart(figures: &ConsoleFigures) -> Markup {
    let counts = settled(figures);
    let total: u64 = counts.iter().sum();
    let mut x = 0.0;
    html! {
        svg class="chart" viewBox="0 0 640 40" role="img"
            aria-label="免提交证明按方式 Proofs settled without paper, by mode" {
            @if total == 0 {
                rect x="0" y="4" width="640" height="28" fill="#e5e7eb" {}
                text x="12" y="23" class="label" { "尚无申请 No applications yet" }
            } @else {
                @for (i, n) in counts.iter().enumerate() {
                    @let w = 640.0 * *n as f64 / total as f64;
                    rect x=(x) y="4" width=(w) height="28" fill=(MODE_COLOURS[i]) {
                        title { (mode_labels(MODES[i]).0) " " (mode_labels(MODES[i]).1) ": " (n) }
                    }
                    ({ x += w; "" })
                }
            }
        }
    }
}

/// Applications per decision day, stacked by their status now.
fn days_chart(figures: &ConsoleFigures) -> Markup {
    let mut days: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
    for d in &figures.statistics.applications_by_day {
        if let Some(i) = STATUSES.iter().position(|s| s.0 as i32 == d.status) {
            days.entry(d.date.as_str()).or_default()[i] += d.count;
        }
    }
    let skip = days.len().saturating_sub(CHART_DAYS);
    let days: Vec<_> = days.into_iter().skip(skip).collect();
    let max = days
        .iter()
        .map(|(_, c)| c.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, plot_h, top) = (640.0, 160.0, 20.0);
    let slot = width / CHART_DAYS as f64;
    html! {
        svg class="chart" viewBox="0 0 640 250" role="img"
            aria-label="每日申请按状态 Applications per day, by status" {
            line x1="0" y1=(top + plot_h) x2=(width) y2=(top + plot_h) stroke="#9ca3af" {}
            text x=(width) y="12" class="legend" text-anchor="end" { "最多 max " (max) }
            @if days.is_empty() {
                text x="12" y="100" class="label" { "尚无申请 No applications yet" }
            }
            @for (i, (day, counts)) in days.iter().enumerate() {
                @let x = slot * i as f64 + 4.0;
                @let mut y = top + plot_h;
                @for (s, n) in counts.iter().enumerate() {
                    @let h = plot_h * *n as f64 / max as f64;
                    @if *n > 0 {
                        rect x=(x) y=(y - h) width=(slot - 8.0) height=(h) fill=(STATUSES[s].3) {
                            title { (day) " " (STATUSES[s].1) " " (STATUSES[s].2) ": " (n) }
                        }
                    }
                    ({ y -= h; "" })
                }
                text x=(x + (slot - 8.0) / 2.0) y=(top + plot_h + 14.0) class="tick" text-anchor="middle" {
                    (day.get(5..).unwrap_or(day))
                }
                text x=(x + (slot - 8.0) / 2.0) y=(y - 3.0) class="tick" text-anchor="middle" {
                    (counts.iter().sum::<u64>())
                }
            }
            @for (s, (_, zh, en, colour)) in STATUSES.iter().enumerate() {
                @let lx = LEGEND_X[s];
                rect x=(lx) y="222" width="12" height="12" fill=(colour) {}
                text x=(lx + 16.0) y="232" class="legend" { (zh) " " (en) }
            }
        }
    }
}

/// The matters with the most applications.
fn matters_table(figures: &ConsoleFigures) -> Markup {
    let mut applications: BTreeMap<&str, u64> = BTreeMap::new();
    for m in &figures.statistics.applications_by_matter {
        *applications.entry(m.matter_id.as_str()).or_default() += m.count;
    }
    let mut settled: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
    for m in &figures.statistics.not_brought_by_matter {
        let mode = ProofMode::try_from(m.mode).ok();
        if let Some(i) = MODES.iter().position(|x| Some(x.as_pb()) == mode) {
            settled.entry(m.matter_id.as_str()).or_default()[i] += m.count;
        }
    }
    let mut top: Vec<_> = applications.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    top.truncate(TOP_MATTERS);
    html! {
        table {
            thead {
                tr {
                    th { "事项 " span.en { "Matter" } }
                    th.num { "申请 " span.en { "Applications" } }
                    @for mode in MODES {
                        th.num { (mode_labels(mode).0) " " span.en { (mode_labels(mode).1) } }
                    }
                }
            }
            tbody {
                @if top.is_empty() {
                    tr { td colspan="6" { "尚无申请 No applications yet" } }
                }
                @for (matter, n) in &top {
                    @let by_mode = settled.get(matter).copied().unwrap_or_default();
                    tr {
                        td { (figures.matter_names.get(*matter).map_or(*matter, String::as_str)) }
                        td.num { (grouped(*n)) }
                        @for k in by_mode { td.num { (grouped(k)) } }
                    }
                }
            }
        }
    }
}

fn departments_table(figures: &ConsoleFigures) -> Markup {
    html! {
        table {
            thead {
                tr {
                    th { "部门 " span.en { "Department" } }
                    th.num { "容量/秒 " span.en { "Capacity /s" } }
                    th { "熔断 " span.en { "Circuit" } }
                    th.num { "近一小时应答 " span.en { "Answers, last hour" } }
                    th.num { "P50 ms" }
                    th.num { "P99 ms" }
                    th.num { "待核验 " span.en { "Pending" } }
                    th.num { "逾期 " span.en { "Overdue" } }
                    th.num { "批签名失败 " span.en { "Batch-signature failures" } }
                }
            }
            tbody {
                @if figures.departments.is_empty() {
                    tr { td colspan="9" { "尚无登记的数据源 No data source registered" } }
                }
                @for d in &figures.departments {
                    tr {
                        td { (d.department_id) }
                        td.num { (d.capacity_per_second) }
                        td class=(format!("circuit {}", d.circuit)) { (circuit_label(d.circuit)) }
                        td.num { (grouped(d.answers_last_hour)) }
                        td.num { (d.p50_latency_ms) }
                        td.num { (d.p99_latency_ms) }
                        td.num { (grouped(d.pending_verifications)) }
                        td.num class=[(d.overdue_verifications > 0).then_some("alert")] { (grouped(d.overdue_verifications)) }
                        td.num class=[(d.batch_signature_failures > 0).then_some("alert")] { (grouped(d.batch_signature_failures)) }
                    }
                }
            }
        }
    }
}

fn log_details(figures: &ConsoleFigures) -> Markup {
    html! {
        dl {
            dt { "日志条目 " span.en { "Tree size" } }
            dd { (grouped(figures.log.tree_size)) }
            dt { "签名密钥 " span.en { "Signing key" } }
            dd { code { (figures.log.signing_key) } }
            dt { "最新检查点 " span.en { "Newest checkpoint" } }
            dd {
                @match &figures.log.checkpoint {
                    Some(note) => pre { (note) },
                    None => "尚无检查点 No checkpoint yet",
                }
            }
        }
    }
}

const STYLE: &str = r#"
:root { --ink:#1f2933; --muted:#6b7280; --line:#e5e7eb; --bg:#f8fafc; --card:#fff; --accent:#1d4ed8; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.45 system-ui, "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif; color:var(--ink); background:var(--bg); }
header { background:#0f172a; color:#fff; padding:14px 20px; }
header h1 { margin:0; font-size:1.35rem; }
header p { margin:4px 0 0; color:#cbd5e1; font-size:.85rem; overflow-wrap:anywhere; }
nav a { color:#bfdbfe; margin-right:14px; }
main { max-width:1240px; margin:0 auto; padding:12px 16px 40px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 18px; margin:14px 0; }
h2 { margin:0 0 10px; font-size:1.2rem; }
h3 { margin:18px 0 6px; font-size:1rem; }
.en { color:var(--muted); font-weight:normal; font-size:.85em; }
.headline { display:flex; align-items:baseline; gap:14px; flex-wrap:wrap; }
.headline .big { font-size:2.6rem; font-weight:700; color:var(--accent); }
.cards { display:grid; grid-template-columns:repeat(4, 1fr); gap:10px; margin-top:10px; }
.card { border:1px solid var(--line); border-left:6px solid var(--c); border-radius:6px; padding:8px 10px; }
.card .n { font-size:1.6rem; font-weight:700; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:18px; }
.chart { width:100%; height:auto; display:block; }
.chart .label { font-size:14px; fill:var(--ink); }
.chart .en, .chart .muted { fill:var(--muted); font-size:12px; }
.chart .value { font-size:12px; fill:var(--ink); }
.chart .legend, .chart .tick { font-size:11px; fill:var(--muted); }
table { width:100%; border-collapse:collapse; font-size:.9rem; }
th, td { text-align:left; padding:5px 6px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-weight:600; }
.num { text-align:right; font-variant-numeric:tabular-nums; }
.scroll { overflow-x:auto; }
.circuit.open, .alert { color:#b91c1c; font-weight:600; }
.circuit.half-open { color:#b45309; }
pre { white-space:pre-wrap; overflow-wrap:anywhere; background:var(--bg); padding:8px; border-radius:4px; font-size:.8rem; }
dt { font-weight:600; margin-top:6px; }
dd { margin:2px 0 0; overflow-wrap:anywhere; }
#console-errors:empty { display:none; }
#console-errors { background:#fee2e2; color:#991b1b; padding:8px 12px; margin:12px 16px; border-radius:6px; }
footer { text-align:center; color:var(--muted); font-size:.8rem; padding-bottom:20px; }
@media (max-width: 760px) {
  .cards { grid-template-columns:repeat(2, 1fr); }
  .grid2 { grid-template-columns:1fr; }
  header h1 { font-size:1.1rem; }
  .headline .big { font-size:2rem; }
  main { padding:6px 8px 30px; }
  section { padding:10px; }
}
"#;

/// The refresh script: fetches the figures, swaps texts and fragments in,
/// and writes any script error or failed refresh into #console-errors.
fn script() -> String {
    format!(
        r#"(function () {{
  var errors = document.getElementById('console-errors');
  function report(message) {{
    var p = document.createElement('p');
    p.className = 'script-error';
    p.textContent = message;
    errors.appendChild(p);
  }}
  window.addEventListener('error', function (e) {{ report('脚本错误 script error: ' + e.message); }});
  window.addEventListener('unhandledrejection', function (e) {{ report('脚本错误 script error: ' + e.reason); }});
  function offline(message) {{
    var p = document.getElementById('refresh-error');
    if (!p) {{ p = document.createElement('p'); p.id = 'refresh-error'; errors.appendChild(p); }}
    p.textContent = message;
  }}
  function refresh() {{
    return fetch('console/figures.json', {{ cache: 'no-store' }}).then(function (r) {{
      if (!r.ok) {{ throw new Error('HTTP ' + r.status); }}
      return r.json();
    }}).then(function (data) {{
      Object.keys(data.figures).forEach(function (key) {{
        document.querySelectorAll('[data-figure="' + key + '"]').forEach(function (el) {{
          el.textContent = data.figures[key];
        }});
      }});
      Object.keys(data.html).forEach(function (id) {{
        var el = document.getElementById(id);
        if (el) {{ el.innerHTML = data.html[id]; }}
      }});
      var gone = document.getElementById('refresh-error');
      if (gone) {{ gone.remove(); }}
      document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || '0') + 1);
      document.getElementById('refreshed-at').textContent = new Date().toLocaleTimeString();
    }}).catch(function (e) {{
      offline('刷新失败 refresh failed: ' + e.message);
    }});
  }}
  refresh();
  setInterval(refresh, {every});
}})();"#,
        every = REFRESH_EVERY.as_millis()
    )
}

fn figure(figures: &BTreeMap<String, String>, key: &str) -> Markup {
    html! {
        span data-figure=(key) { (figures.get(key).map_or("", String::as_str)) }
    }
}

/// The whole page.
pub fn render_page(figures: &ConsoleFigures) -> Markup {
    let texts = figure_texts(figures);
    let parts: BTreeMap<&str, Markup> = fragments(figures).into_iter().collect();
    let part = |id: &str| parts.get(id).cloned().unwrap_or_else(|| html! {});
    html! {
        (DOCTYPE)
        html lang="zh-CN" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "无证明城市 · 控制台 proofgate console" }
                style { (PreEscaped(STYLE)) }
            }
            body data-refreshed="0" {
                header {
                    h1 { "无证明城市改革一览 " span.en style="color:#cbd5e1" { "The certificate-free city at a glance" } }
                    p {
                        "策略版本 policy " (figure(&texts, "policy_version"))
                        " · 申请 applications " (figure(&texts, "applications"))
                        " · 日志条目 log entries " (figure(&texts, "entries"))
                        " · 刷新于 refreshed " span #refreshed-at { "—" }
                    }
                    nav {
                        a href="#reform" { "改革成效 Reform" }
                        a href="#departments" { "部门 Departments" }
                        a href="#log" { "日志 Log" }
                    }
                }
                div #console-errors role="alert" {}
                main {
                    section #reform {
                        h2 { "改革成效 " span.en { "The reform" } }
                        div.headline {
                            span.big #headline-total { (figure(&texts, "not_brought.total")) }
                            span {
                                "份证明不再向群众索要 "
                                span.en { "certificates no longer requested since this node started" }
                            }
                        }
                        p.en {
                            "金华 2019 年：减少证明约 137.97 万件 · Jinhua, 2019: "
                            (grouped(JINHUA_CERTIFICATES_SAVED)) " certificates no longer demanded"
                        }
                        div.cards {
                            @for (i, mode) in MODES.iter().enumerate() {
                                @let (zh, en) = mode_labels(*mode);
                                div.card style=(format!("--c:{}", MODE_COLOURS[i])) id=(format!("mode-{}", mode_key(*mode))) {
                                    div { (zh) " " span.en { (en) } }
                                    div.n { (figure(&texts, &format!("not_brought.{}", mode_key(*mode)))) }
                                    div.en { (figure(&texts, &format!("share.{}", mode_key(*mode)))) }
                                }
                            }
                        }
                        div #chart-settled { (part("chart-settled")) }
                        div.grid2 {
                            div {
                                h3 { "目录按方式 " span.en { "The catalog by mode, beside Jinhua's 4,052 proofs" } }
                                div #chart-catalog { (part("chart-catalog")) }
                            }
                            div {
                                h3 { "每日申请 " span.en { "Applications per day, by status now" } }
                                div #chart-days { (part("chart-days")) }
                            }
                        }
                        h3 { "主要事项 " span.en { "Top matters, and proofs settled without paper by mode" } }
                        div.scroll #table-matters { (part("table-matters")) }
                        p.en {
                            "待核验 pending " (figure(&texts, "pending_verifications"))
                            " · 逾期 overdue " (figure(&texts, "overdue_verifications"))
                            " · 承诺抽查 commitments sampled " (figure(&texts, "spot_checks_sampled"))
                            " · 虚假承诺 false " (figure(&texts, "spot_checks_false"))
                        }
                    }
                    section #departments {
                        h2 { "部门与数据源 " span.en { "Departments" } }
                        div.scroll #table-departments { (part("table-departments")) }
                        p.en { "批签名失败为本节点启动以来的计数 Batch-signature failures count since this node started; the other figures come from the log." }
                    }
                    section #log {
                        h2 { "审计日志 " span.en { "The log" } }
                        div #log-details { (part("log-details")) }
                    }
                }
                footer { "proofgate · 只读汇总，不含个人信息 read-only aggregates, no personal data" }
                script { (PreEscaped(script())) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::figures::{DepartmentRow, LogFigures};
    use crate::pb::{
        DayStatusCount, MatterModeCount, MatterStatusCount, ProofsNotBrought, Statistics,
    };

    fn sample() -> ConsoleFigures {
        ConsoleFigures {
            statistics: Statistics {
                entries: 12,
                applications: 5,
                not_brought: Some(ProofsNotBrought {
                    abolished: 3,
                    commitment: 1,
                    data_query: 1200,
                    department_verification: 4,
                    total: 1208,
                }),
                applications_by_matter: vec![MatterStatusCount {
                    matter_id: "elderly-subsidy".into(),
                    status: ApplicationStatus::Complete as i32,
                    count: 5,
                }],
                not_brought_by_matter: vec![MatterModeCount {
                    matter_id: "elderly-subsidy".into(),
                    mode: ProofMode::DataQuery as i32,
                    count: 1200,
                }],
                applications_by_day: vec![DayStatusCount {
                    date: "2026-11-28".into(),
                    status: ApplicationStatus::Complete as i32,
                    count: 5,
                }],
                policy_version: "sha256:abc".into(),
                ..Default::default()
            },
            catalog: [1, 2, 3, 4],
            matter_names: BTreeMap::from([(
                "elderly-subsidy".into(),
                "高龄津贴申领 Elderly subsidy <80+>".into(),
            )]),
            departments: vec![DepartmentRow {
                department_id: "civil-affairs".into(),
                capacity_per_second: 50,
                circuit: "open",
                answers_last_hour: 7,
                answers: 9,
                failures: 0,
                p50_latency_ms: 4,
                p99_latency_ms: 9,
                pending_verifications: 2,
                overdue_verifications: 1,
                batch_signature_failures: 3,
            }],
            log: LogFigures {
                tree_size: 12,
                checkpoint: Some("origin\n12\nroot\n\n— sig".into()),
                signing_key: "node+01020304".into(),
            },
        }
    }

    #[test]
    fn the_page_shows_the_figures_it_is_given() {
        let page = render_page(&sample()).into_string();
        assert!(
            page.contains(r#"<span data-figure="not_brought.data_query">1,200</span>"#),
            "{page}"
        );
        assert!(page.contains(r#"<span data-figure="not_brought.total">1,208</span>"#));
        assert!(page.contains("断开 open"));
        assert!(page.contains("node+01020304"));
        // Names are escaped, never markup.
        assert!(page.contains("Elderly subsidy &lt;80+&gt;"));
        assert!(page.contains(r#"name="viewport""#));
        let json = to_json(&sample());
        assert_eq!(json["figures"]["not_brought.abolished"], "3");
        assert_eq!(json["statistics"]["not_brought"]["data_query"], 1200);
        assert!(json["html"]["table-departments"]
            .as_str()
            .unwrap()
            .contains("civil-affairs"));
    }

    /// A log of known decisions, folded as GetStatistics folds it, gives
    /// known numbers on every part of the page.
    #[test]
    fn a_log_of_known_decisions_gives_known_numbers_on_every_part() {
        use crate::operations::figures::department_rows;
        use crate::operations::stats::StatisticsFold;
        use crate::pb::{
            audit_entry::Event, ApplicationDecided, AuditEntry, DataSource, ProofDecision,
            ProofOutcome, ProofResult, RecordedAnswer,
        };
        use prost::Message;

        let now = 1_764_300_000_000;
        let proof = |id: &str, mode: ProofMode, outcome: ProofOutcome, dept: &str| ProofDecision {
            result: Some(ProofResult {
                proof_id: id.into(),
                mode: mode as i32,
                outcome: outcome as i32,
                department_id: dept.into(),
                ticket: if outcome == ProofOutcome::Pending {
                    "t".into()
                } else {
                    String::new()
                },
                ..Default::default()
            }),
            answers: if dept.is_empty() {
                vec![]
            } else {
                vec![RecordedAnswer {
                    department_id: dept.into(),
                    latency_ms: 12,
                    ..Default::default()
                }]
            },
            commitment: None,
        };
        let mut fold = StatisticsFold::at(now);
        for (i, (id, proofs)) in [
            (
                "app-1",
                vec![
                    proof("p1", ProofMode::Abolished, ProofOutcome::Waived, ""),
                    proof(
                        "p2",
                        ProofMode::DataQuery,
                        ProofOutcome::ConditionMet,
                        "tax",
                    ),
                ],
            ),
            (
                "app-2",
                vec![
                    proof(
                        "p3",
                        ProofMode::Commitment,
                        ProofOutcome::CommitmentRecorded,
                        "",
                    ),
                    proof(
                        "p4",
                        ProofMode::DepartmentVerification,
                        ProofOutcome::Pending,
                        "civil",
                    ),
                ],
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let entry = AuditEntry {
                index: i as u64,
                logged_unix_ms: now,
                node_id: "n".into(),
                event: Some(Event::ApplicationDecided(ApplicationDecided {
                    application_id: id.into(),
                    matter_id: "elderly-subsidy".into(),
                    decision_date: "2025-11-28".into(),
                    decided_unix_ms: now - 1000,
                    proofs,
                    ..Default::default()
                })),
            };
            fold.entry(&entry.encode_to_vec());
        }
        let statistics = fold.finish();
        let sources = [DataSource {
            department_id: "civil".into(),
            capacity_per_second: 77,
            ..Default::default()
        }];
        let figures = ConsoleFigures {
            departments: department_rows(&sources, |_| None, &statistics, |_| 0),
            statistics,
            catalog: [1, 1, 1, 1],
            matter_names: BTreeMap::new(),
            log: LogFigures {
                tree_size: 2,
                checkpoint: None,
                signing_key: "k+00".into(),
            },
        };
        let page = render_page(&figures).into_string();
        for (key, n) in [
            ("not_brought.abolished", 1),
            ("not_brought.commitment", 1),
            ("not_brought.data_query", 1),
            ("not_brought.department_verification", 0),
            ("not_brought.total", 3),
            ("applications", 2),
            ("pending_verifications", 1),
        ] {
            assert!(
                page.contains(&format!(r#"<span data-figure="{key}">{n}</span>"#)),
                "{key} = {n} in {page}"
            );
        }
        // Departments: civil (registered, 1 answer in the last hour, 1 pending)
        // and tax (known to the log only).
        let departments = departments_table(&figures).into_string();
        assert!(
            departments.contains("<td>civil</td><td class=\"num\">77</td>"),
            "{departments}"
        );
        assert!(departments.contains("<td>tax</td>"), "{departments}");
        assert_eq!(figures.departments[0].answers_last_hour, 1);
        assert_eq!(figures.departments[0].pending_verifications, 1);
        // The log part.
        assert!(log_details(&figures).into_string().contains("<dd>2</dd>"));
        // Aggregates only: no application id reaches the page.
        assert!(!page.contains("app-1") && !page.contains("app-2"));
    }

    #[test]
    fn an_empty_node_renders_without_figures() {
        let empty = ConsoleFigures {
            statistics: Statistics::default(),
            catalog: [0; 4],
            matter_names: BTreeMap::new(),
            departments: Vec::new(),
            log: LogFigures::default(),
        };
        let page = render_page(&empty).into_string();
        assert!(page.contains("No applications yet"));
        assert!(page.contains("No checkpoint yet"));
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1_379_700), "1,379,700");
        assert_eq!(grouped(999), "999");
    }
}
