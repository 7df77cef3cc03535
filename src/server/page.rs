//! The rollout page: server-rendered HTML and SVG, no script but a few lines that fetch the
//! page's main part again every two seconds (the page works, unrefreshed, without them).
//!
//! - `/` lists every Canary: phase, step, weight, revisions, the last decision.
//! - `/rollouts/{namespace}/{name}` draws one rollout: the weight routed to stage over time
//!   (from the status's history) with every look on it, each look's evidence that stage is
//!   worse against the rollback threshold, the stage/prod ratio's confidence bounds against
//!   the margin, and every decision with its reason.
//!
//! `?fragment=1` answers only the inside of `<main>`, which the script swaps in. Everything
//! a Canary's author wrote (names, messages) is escaped by the templates.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use super::board::{Look, Looks};
use super::Admin;
use crate::analysis::{power_of_ten, series_words, sig2};
use crate::api::{CanarySpec, CanaryStatus, HistoryEntry, Phase};
use crate::cluster::decode;
use kube::api::DynamicObject;

/// How often the page fetches its main part again.
const REFRESH_MS: u32 = 2000;

#[derive(Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    fragment: Option<String>,
}

/// One Canary as the page reads it from the controller's cache.
struct Entry {
    namespace: String,
    name: String,
    spec: Result<CanarySpec, String>,
    status: CanaryStatus,
}

impl Entry {
    fn decode(obj: &DynamicObject) -> Self {
        Entry {
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
            spec: decode::spec(obj),
            status: decode::status(obj).ok().flatten().unwrap_or_default(),
        }
    }
}

/// What the list shows of a Canary's status, read without the rest: the packed analysis
/// state and the last decision's packed reports are never inflated, so a list of the whole
/// fleet costs a few fields per Canary.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Listed {
    phase: Phase,
    step: u32,
    stage_weight: u8,
    stage_revision: Option<String>,
    prod_revision: Option<String>,
    message: String,
    last_decision: Option<ListedDecision>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListedDecision {
    reason: String,
}

/// One row of the list.
struct Row {
    namespace: String,
    name: String,
    /// The number of steps, when the spec is readable.
    steps: Option<usize>,
    status: Listed,
}

fn rows(admin: &Admin) -> Vec<Row> {
    let mut all: Vec<Row> = admin
        .board
        .canaries()
        .iter()
        .map(|obj| Row {
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
            steps: decode::spec(obj).ok().map(|s| s.steps.len()),
            status: obj
                .data
                .get("status")
                .and_then(|s| Listed::deserialize(s).ok())
                .unwrap_or_default(),
        })
        .collect();
    all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    all
}

pub async fn list(State(admin): State<Admin>, Query(q): Query<PageQuery>) -> Response {
    let now = Timestamp::now();
    let main = list_main(&rows(&admin), now);
    respond("canaryd: rollouts", main, q.fragment.is_some())
}

pub async fn rollout(
    State(admin): State<Admin>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Response {
    let found = admin
        .board
        .canaries()
        .iter()
        .find(|o| {
            o.metadata.namespace.as_deref() == Some(namespace.as_str())
                && o.metadata.name.as_deref() == Some(name.as_str())
        })
        .map(|o| Entry::decode(o));
    let Some(entry) = found else {
        let main = html! {
            p { "No Canary " (namespace) "/" (name) " in the cache. " a href="/" { "All rollouts" } }
        };
        let mut response = respond("canaryd: not found", main, q.fragment.is_some());
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    let looks = admin.board.looks(&namespace, &name);
    let main = rollout_main(&entry, &looks, Timestamp::now());
    respond(
        &format!("canaryd: {namespace}/{name}"),
        main,
        q.fragment.is_some(),
    )
}

fn respond(title: &str, main: Markup, fragment: bool) -> Response {
    let body = if fragment {
        main
    } else {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    header { a href="/" { "canaryd" } " · rollouts" span #live { "live" } }
                    main data-refreshes="0" { (main) }
                    script { (PreEscaped(script())) }
                }
            }
        }
    };
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::response::Html(body.into_string()),
    )
        .into_response()
}

/// Fetches the page's main part again every [`REFRESH_MS`] and swaps it in; counts the
/// refreshes in `main[data-refreshes]` and marks the header when the daemon stops answering.
fn script() -> String {
    format!(
        "(function(){{var m=document.querySelector('main'),l=document.getElementById('live'),n=0;\
setInterval(function(){{fetch(location.pathname+'?fragment=1',{{cache:'no-store'}})\
.then(function(r){{if(!r.ok)throw r.status;return r.text();}})\
.then(function(t){{m.innerHTML=t;m.dataset.refreshes=++n;l.textContent='live';l.className='';}})\
.catch(function(){{l.textContent='not answering';l.className='stale';}});}},{REFRESH_MS});}})();"
    )
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:8px 16px}header a{color:#fff;font-weight:600;text-decoration:none}
#live{float:right;font-size:12px;color:#9fe0a8}#live.stale{color:#ffb4a8}
main{padding:12px 16px;max-width:1100px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{font-weight:600;color:#4b5563;font-size:12px}
.phase{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-size:12px}
.Idle{background:#6b7280}.Testing{background:#7c3aed}.Progressing{background:#2563eb}.Promoting,.SwitchingBack{background:#0d9488}
.Succeeded{background:#16a34a}.RolledBack{background:#dc2626}.Paused{background:#d97706}
section{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:8px 12px;margin:12px 0}
h1{font-size:20px;margin:4px 0}h2{font-size:15px;margin:4px 0 8px}
svg{display:block;max-width:100%}svg text{font:11px system-ui,sans-serif;fill:#4b5563}
.muted{color:#6b7280;font-size:12px}.facts span{margin-right:18px}
.continue{fill:#9ca3af}.advance{fill:#16a34a}.rollback{fill:#dc2626}
";

fn phase_badge(phase: Phase) -> Markup {
    html! { span class={ "phase " (phase.as_str()) } { (phase.as_str()) } }
}

fn clock(t: Timestamp) -> String {
    t.strftime("%H:%M:%S").to_string()
}

fn span_words(seconds: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds.max(0) as u64)).to_string()
}

fn list_main(rows: &[Row], now: Timestamp) -> Markup {
    html! {
        h1 { "Rollouts" }
        p.muted { (rows.len()) " Canaries · " (clock(now)) " UTC" }
        table {
            tr { th { "Canary" } th { "Phase" } th { "Step" } th { "To stage" } th { "Stage runs" } th { "Prod runs" } th { "Last decision" } }
            @for r in rows {
                tr {
                    td { a href={ "/rollouts/" (r.namespace) "/" (r.name) } { (r.namespace) "/" (r.name) } }
                    td { (phase_badge(r.status.phase)) }
                    td { (step_text(r.status.step, r.steps)) }
                    td { (r.status.stage_weight) " %" }
                    td { (r.status.stage_revision.as_deref().unwrap_or("-")) }
                    td { (r.status.prod_revision.as_deref().unwrap_or("-")) }
                    td.muted {
                        (r.status.last_decision.as_ref().map_or(r.status.message.as_str(), |d| d.reason.as_str()))
                    }
                }
            }
        }
    }
}

fn step_text(step: u32, steps: Option<usize>) -> String {
    match steps {
        Some(n) => format!("{step}/{}", n.saturating_sub(1)),
        None => "spec unreadable".into(),
    }
}

/// The stretch of time the charts cover: from the rollout's start to now while it runs, or
/// to its last recorded change once it finished.
fn time_span(
    status: &CanaryStatus,
    history: &[&HistoryEntry],
    looks: &Looks,
    now: Timestamp,
) -> (Timestamp, Timestamp) {
    let start = status
        .rollout_started_at
        .or_else(|| history.first().map(|h| h.at))
        .or_else(|| looks.looks.front().map(|l| l.at))
        .unwrap_or(now);
    let running = status.phase.is_active();
    let last = history
        .last()
        .map(|h| h.at)
        .into_iter()
        .chain(looks.looks.back().map(|l| l.at))
        .max()
        .unwrap_or(start);
    let end = if running { now.max(last) } else { last };
    (start, end.max(start + jiff::SignedDuration::from_secs(10)))
}

fn rollout_main(e: &Entry, looks: &Looks, now: Timestamp) -> Markup {
    let status = &e.status;
    let history: Vec<&HistoryEntry> = status
        .history
        .iter()
        .filter(|h| status.rollout_started_at.is_none_or(|s| h.at >= s))
        .collect();
    let (start, end) = time_span(status, &history, looks, now);
    let steps = e.spec.as_ref().map(|s| s.steps.clone()).unwrap_or_default();
    html! {
        h1 { (e.namespace) "/" (e.name) " " (phase_badge(status.phase)) }
        p { (status.message) }
        p.facts.muted {
            span { "stage runs " b { (status.stage_revision.as_deref().unwrap_or("-")) } }
            span { "prod runs " b { (status.prod_revision.as_deref().unwrap_or("-")) } }
            span { "step " (step_text(status.step, e.spec.as_ref().ok().map(|s| s.steps.len()))) " · " (status.stage_weight) " % to stage" }
            @if let Some(s) = status.rollout_started_at {
                span { "started " (clock(s)) " UTC, " (span_words(end.duration_since(s).as_secs())) " shown" }
            }
            span { "updated " (clock(now)) " UTC" }
        }
        @if let Err(why) = &e.spec {
            p { "The spec does not decode: " (why) }
        }
        section {
            h2 { "Traffic to stage" }
            (weight_chart(&steps, &history, status, looks, start, end))
            p.muted { "Dots are looks: " span style="color:#16a34a" { "advance" } ", " span style="color:#9ca3af" { "keep comparing" } ", " span style="color:#dc2626" { "rollback" } "." }
        }
        @if looks.looks.is_empty() {
            section { p.muted { "No look recorded by this replica for this rollout yet (looks are kept in the memory of the replica that makes them)." } }
        }
        @for (i, name) in looks.names.iter().enumerate() {
            section {
                h2 { (series_title(name)) }
                (evidence_chart(looks, i, start, end))
                (ratio_chart(looks, i, name, start, end))
            }
        }
        @if looks.dropped > 0 {
            p.muted { (looks.dropped) " older looks were dropped to keep the page's memory bounded." }
        }
        @if let Some(d) = &status.last_decision {
            section {
                h2 { "Last decision" @if let Some(at) = d.at { " · " (clock(at)) " UTC" } }
                p { b { (d.verdict.as_str()) } ": " (d.reason) }
                @if !d.metrics.is_empty() {
                    table {
                        tr { th { "Series" } th { "Verdict" } th { "Evidence stage is worse" } th { "Stage/prod ratio" } th { "Stage" } th { "Prod" } }
                        @for m in &d.metrics {
                            tr {
                                td { (series_title(&m.name)) }
                                td { (m.verdict.as_str()) }
                                td { (power_of_ten(m.e_value)) ", rolls back at " (power_of_ten(m.rollback_threshold)) }
                                td { (sig2(m.ratio_lower)) " to " (m.ratio_upper.map_or("unbounded".to_string(), sig2)) ", advances below " (sig2(m.margin)) }
                                td { (rate(m.stage_rate)) " of " (m.stage_requests) }
                                td { (rate(m.prod_rate)) " of " (m.prod_requests) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Decisions" }
            table {
                tr { th { "At (UTC)" } th { "Phase" } th { "Step" } th { "To stage" } th { "Why" } }
                @for h in history.iter().rev() {
                    tr.decision {
                        td { (clock(h.at)) }
                        td { (phase_badge(h.phase)) }
                        td { (h.step) }
                        td { (h.stage_weight) " %" }
                        td { (h.message) }
                    }
                }
            }
        }
    }
}

fn rate(r: Option<f64>) -> String {
    r.map_or("-".into(), |p| format!("{} %", sig2(p * 100.0)))
}

fn series_title(name: &str) -> String {
    match name.strip_prefix("slo:") {
        Some(rest) => format!("guardrail {rest}"),
        None => series_words(name),
    }
}

/// Where a chart's x and y land in the picture.
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    start: Timestamp,
    end: Timestamp,
    y_min: f64,
    y_max: f64,
}

const TOP: f64 = 8.0;
const BOTTOM: f64 = 20.0;

impl Frame {
    fn new(height: f64, start: Timestamp, end: Timestamp, y_min: f64, y_max: f64) -> Self {
        Self {
            width: 1000.0,
            height,
            left: 100.0,
            start,
            end,
            y_min,
            y_max: if y_max > y_min { y_max } else { y_min + 1.0 },
        }
    }

    fn x(&self, t: Timestamp) -> f64 {
        let span = self.end.duration_since(self.start).as_secs_f64().max(1.0);
        let f = (t.duration_since(self.start).as_secs_f64() / span).clamp(0.0, 1.0);
        self.left + f * (self.width - self.left - 10.0)
    }

    fn y(&self, v: f64) -> f64 {
        let f = ((v - self.y_min) / (self.y_max - self.y_min)).clamp(0.0, 1.0);
        TOP + (1.0 - f) * (self.height - TOP - BOTTOM)
    }

    /// The frame, the time axis (a few clock times) and the chart's inside.
    fn svg(&self, label: &str, inside: String) -> Markup {
        let mut axis = String::new();
        let bottom = self.height - BOTTOM;
        for i in 0..=4 {
            let t = self.start + self.end.duration_since(self.start) * i / 4;
            let anchor = match i {
                0 => "start",
                4 => "end",
                _ => "middle",
            };
            let _ = write!(
                axis,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
                self.x(t),
                bottom + 14.0,
                clock(t)
            );
        }
        let _ = write!(
            axis,
            r##"<line x1="{l}" y1="{bottom}" x2="{r}" y2="{bottom}" stroke="#9ca3af"/>"##,
            l = self.left,
            r = self.width - 10.0
        );
        html! {
            svg viewBox={ "0 0 " (self.width) " " (self.height) } role="img" aria-label=(label) {
                (PreEscaped(axis))
                (PreEscaped(inside))
            }
        }
    }

    /// A horizontal reference line with its label on the left.
    fn rule(&self, out: &mut String, v: f64, label: &str, dashed: bool) {
        let y = self.y(v);
        let dash = if dashed {
            r#" stroke-dasharray="5 4""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r##"<line x1="{l}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#9ca3af"{dash}/><text x="{t}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
            l = self.left,
            r = self.width - 10.0,
            t = self.left - 4.0,
            ty = y + 4.0,
            label = escape(label)
        );
    }
}

fn escape(text: &str) -> String {
    maud::html! { (text) }.into_string()
}

/// The weight routed to stage over time: a step line through the history's changes, the
/// planned steps as rules, and every look as a dot coloured by its verdict.
fn weight_chart(
    steps: &[u8],
    history: &[&HistoryEntry],
    status: &CanaryStatus,
    looks: &Looks,
    start: Timestamp,
    end: Timestamp,
) -> Markup {
    let f = Frame::new(180.0, start, end, 0.0, 100.0);
    let mut out = String::new();
    for (k, w) in steps.iter().enumerate() {
        f.rule(&mut out, f64::from(*w), &format!("step {k} · {w} %"), true);
    }
    let mut path = String::new();
    let mut weight = history
        .first()
        .map_or(status.stage_weight, |h| h.stage_weight);
    let _ = write!(path, "M{:.1},{:.1}", f.x(start), f.y(f64::from(weight)));
    // A phase's name where it starts, unless it would overlap the one before.
    let mut labelled = f64::NEG_INFINITY;
    for h in history {
        let x = f.x(h.at);
        let _ = write!(path, " L{x:.1},{:.1}", f.y(f64::from(weight)));
        weight = h.stage_weight;
        let _ = write!(path, " L{x:.1},{:.1}", f.y(f64::from(weight)));
        if x - labelled < 90.0 || x > f.width - 80.0 {
            continue;
        }
        labelled = x;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" class="phase-label">{}</text>"#,
            x + 3.0,
            f.y(f64::from(weight)) - 4.0,
            h.phase.as_str()
        );
    }
    let _ = write!(path, " L{:.1},{:.1}", f.x(end), f.y(f64::from(weight)));
    let _ = write!(
        out,
        r##"<path d="{path}" fill="none" stroke="#2563eb" stroke-width="2.5"/>"##
    );
    for look in &looks.looks {
        dot(&mut out, &f, look, f64::from(look.stage_weight));
    }
    f.svg("weight routed to stage over time", out)
}

fn dot(out: &mut String, f: &Frame, look: &Look, v: f64) {
    let _ = write!(
        out,
        r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" class="look {}"><title>{} UTC: {}</title></circle>"#,
        f.x(look.at),
        f.y(v),
        look.verdict.as_str(),
        clock(look.at),
        look.verdict.as_str()
    );
}

/// log10 of the evidence that stage is worse at every look, against the rollback threshold.
fn evidence_chart(looks: &Looks, series: usize, start: Timestamp, end: Timestamp) -> Markup {
    let points: Vec<(&Look, f64, f64)> = points(looks, series, |m| {
        (f64::from(m.log10_evidence), f64::from(m.log10_threshold))
    });
    let lo = points.iter().map(|p| p.1).fold(0.0_f64, f64::min).max(-6.0);
    let hi = points
        .iter()
        .map(|p| p.1.max(p.2))
        .fold(1.0_f64, f64::max)
        .min(lo + 40.0);
    let f = Frame::new(150.0, start, end, lo.floor(), hi.ceil() + 0.5);
    let mut out = String::new();
    f.rule(&mut out, 0.0, "10^0", false);
    let mut threshold = String::new();
    let mut line = String::new();
    for (i, (look, e, t)) in points.iter().enumerate() {
        let sep = if i == 0 { "M" } else { " L" };
        let _ = write!(threshold, "{sep}{:.1},{:.1}", f.x(look.at), f.y(*t));
        let _ = write!(line, "{sep}{:.1},{:.1}", f.x(look.at), f.y(*e));
    }
    if let Some((_, _, t)) = points.last() {
        let y = f.y(*t);
        let _ = write!(
            out,
            r##"<path d="{threshold}" fill="none" stroke="#dc2626" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#dc2626">rolls back at 10^{t:.1}</text>"##,
            f.width - 12.0,
            y - 4.0
        );
    }
    let _ = write!(
        out,
        r##"<path d="{line}" fill="none" stroke="#1d2430" stroke-width="2"/>"##
    );
    for (look, e, _) in &points {
        dot(&mut out, &f, look, *e);
    }
    let what = if looks.names[series].starts_with("slo:") {
        "Evidence that stage breaks the limit (log scale), at every look"
    } else {
        "Evidence that stage is worse than prod (log scale), at every look"
    };
    html! {
        p.muted { (what) }
        (f.svg("evidence that stage is worse against the rollback threshold", out))
    }
}

/// The stage/prod ratio's confidence bounds over the step at every look, against the margin
/// (a guardrail: stage's rate over its limit, against 1). Log scale from 1/8 to 8.
fn ratio_chart(
    looks: &Looks,
    series: usize,
    name: &str,
    start: Timestamp,
    end: Timestamp,
) -> Markup {
    let points = points(looks, series, |m| (f64::from(m.lower), f64::from(m.upper)));
    let margin = looks
        .looks
        .iter()
        .rev()
        .flat_map(|l| l.metrics.iter())
        .find(|m| usize::from(m.series) == series)
        .map_or(1.0, |m| f64::from(m.margin));
    let guardrail = name.starts_with("slo:");
    let f = Frame::new(150.0, start, end, -3.0, 3.0);
    let log2 = |v: f64| v.max(1e-9).log2().clamp(-3.0, 3.0);
    let mut out = String::new();
    f.rule(&mut out, 0.0, "1x", false);
    for v in [0.25_f64, 4.0] {
        f.rule(&mut out, v.log2(), &format!("{}x", sig2(v)), true);
    }
    let (reference, label) = if guardrail {
        (1.0, "limit".to_string())
    } else {
        (margin, format!("margin {}x", sig2(margin)))
    };
    let y = f.y(log2(reference));
    let _ = write!(
        out,
        r##"<line x1="{l}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#d97706" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{tx}" y="{ty:.1}" text-anchor="end" fill="#d97706">{label}</text>"##,
        l = f.left,
        r = f.width - 10.0,
        tx = f.width - 12.0,
        ty = y - 4.0,
    );
    for (look, lower, upper) in &points {
        let x = f.x(look.at);
        let bounded = upper.is_finite();
        let top = if bounded { log2(*upper) } else { 3.0 };
        let dash = if bounded {
            ""
        } else {
            r#" stroke-dasharray="2 3""#
        };
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#2563eb" stroke-width="3"{dash}><title>{} UTC: {} to {}</title></line>"##,
            f.y(log2(*lower)),
            f.y(top),
            clock(look.at),
            sig2(*lower),
            if bounded {
                sig2(*upper)
            } else {
                "unbounded".into()
            }
        );
    }
    html! {
        p.muted { @if guardrail { "Stage's rate over its limit" } @else { "Stage/prod ratio" } ": confidence bounds over the step at every look (log scale)" }
        (f.svg("ratio confidence bounds against the margin", out))
    }
}

fn points(
    looks: &Looks,
    series: usize,
    pick: impl Fn(&super::board::LookMetric) -> (f64, f64),
) -> Vec<(&Look, f64, f64)> {
    looks
        .looks
        .iter()
        .filter_map(|l| {
            let m = l.metrics.iter().find(|m| usize::from(m.series) == series)?;
            let (a, b) = pick(m);
            Some((l, a, b))
        })
        .collect()
}
