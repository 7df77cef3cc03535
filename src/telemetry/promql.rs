//! PromQL text: the batched queries of the mesh presets, the custom `bad`/`total` templates,
//! and the escaping that keeps values taken from a Canary spec inside their string literal.
//! Pure string building; nothing here talks to Prometheus.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::MeshPreset;

/// Label that marks 5xx series in the traffic query (`canaryd_class="error"`).
pub const CLASS_LABEL: &str = "canaryd_class";
pub const ERROR_CLASS: &str = "error";
/// Label that tells the four series of a custom ratio query apart.
pub const SERIES_LABEL: &str = "canaryd_series";
/// Label holding the host extracted from an Envoy cluster name.
const ENVOY_HOST_LABEL: &str = "canaryd_host";
/// An Envoy cluster name is either the host itself or Istio's `outbound|<port>|<subset>|<host>`.
const ENVOY_CLUSTER_PREFIX: &str = r"(?:outbound\|[0-9]+\|[^|]*\|)?";

/// How the series of one arm are told apart from the others: by which labels, and which
/// label values identify one arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Grouping {
    /// Istio, by `destination_service` (the hosts of the Canary spec).
    IstioHost,
    /// Istio, by `destination_workload_namespace` and `destination_workload`.
    IstioWorkload,
    /// Envoy cluster statistics, by the host in `envoy_cluster_name`.
    EnvoyCluster,
}

impl Grouping {
    pub fn new(mesh: MeshPreset, select_by: SelectBy) -> Self {
        match (mesh, select_by) {
            (MeshPreset::Istio, SelectBy::Host) => Grouping::IstioHost,
            (MeshPreset::Istio, SelectBy::Workload) => Grouping::IstioWorkload,
            // Envoy's cluster statistics name the upstream cluster, never the workload.
            (MeshPreset::Envoy, _) => Grouping::EnvoyCluster,
        }
    }

    /// The labels whose values identify one arm in a result, in the order of an [`ArmKey`].
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Grouping::IstioHost => &["destination_service"],
            Grouping::IstioWorkload => &["destination_workload_namespace", "destination_workload"],
            Grouping::EnvoyCluster => &[ENVOY_HOST_LABEL],
        }
    }

    /// The key of an arm under this grouping.
    pub fn key(self, arm: &ArmVars) -> ArmKey {
        match self {
            Grouping::IstioHost | Grouping::EnvoyCluster => ArmKey(vec![arm.host.clone()]),
            Grouping::IstioWorkload => ArmKey(vec![arm.namespace.clone(), arm.workload.clone()]),
        }
    }

    /// The key of a result series, or `None` when it lacks a grouping label.
    pub fn series_key(self, labels: &std::collections::HashMap<String, String>) -> Option<ArmKey> {
        self.labels()
            .iter()
            .map(|l| labels.get(*l).cloned())
            .collect::<Option<Vec<_>>>()
            .map(ArmKey)
    }

    /// The exact count of each counter series over `(t - window, t]`, with the series
    /// relabelled so that `sum by (self.labels())` groups them by arm (see [`exact_count`]).
    fn counts(self, metric: Metric, keys: &[&ArmKey], window: Duration) -> String {
        let name = metric.name(self);
        match self {
            Grouping::IstioHost => exact_count(
                &format!(
                    "{name}{{reporter=\"destination\", destination_service=~{}}}",
                    string_literal(&alternation(keys.iter().map(|k| k.0[0].as_str())))
                ),
                window,
            ),
            Grouping::IstioWorkload => exact_count(
                &format!(
                    "{name}{{reporter=\"destination\", destination_workload_namespace=~{}, destination_workload=~{}}}",
                    string_literal(&alternation(keys.iter().map(|k| k.0[0].as_str()))),
                    string_literal(&alternation(keys.iter().map(|k| k.0[1].as_str())))
                ),
                window,
            ),
            Grouping::EnvoyCluster => {
                let hosts = alternation(keys.iter().map(|k| k.0[0].as_str()));
                let cluster = format!("{ENVOY_CLUSTER_PREFIX}({hosts})");
                format!(
                    "label_replace({}, \"{ENVOY_HOST_LABEL}\", \"$1\", \"envoy_cluster_name\", {})",
                    exact_count(
                        &format!("{name}{{envoy_cluster_name=~{}}}", string_literal(&cluster)),
                        window
                    ),
                    string_literal(&format!("{ENVOY_CLUSTER_PREFIX}(.*)"))
                )
            }
        }
    }

    fn response_code_label(self) -> &'static str {
        match self {
            Grouping::IstioHost | Grouping::IstioWorkload => "response_code",
            Grouping::EnvoyCluster => "envoy_response_code",
        }
    }
}

/// Whether Istio series are selected by the hosts or by the workloads of the Canary spec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SelectBy {
    #[default]
    Host,
    Workload,
}

#[derive(Clone, Copy)]
enum Metric {
    Requests,
    DurationBuckets,
}

impl Metric {
    fn name(self, grouping: Grouping) -> &'static str {
        match (self, grouping) {
            (Metric::Requests, Grouping::EnvoyCluster) => "envoy_cluster_upstream_rq",
            (Metric::Requests, _) => "istio_requests_total",
            (Metric::DurationBuckets, Grouping::EnvoyCluster) => {
                "envoy_cluster_upstream_rq_time_bucket"
            }
            (Metric::DurationBuckets, _) => "istio_request_duration_milliseconds_bucket",
        }
    }
}

/// Label values that identify one arm in a batched result.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArmKey(pub Vec<String>);

/// What the placeholders of a custom query stand for, for one arm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArmVars {
    pub host: String,
    pub namespace: String,
    pub workload: String,
}

/// Requests and 5xx responses of every given arm in one query: each series is summed by
/// arm and by `canaryd_class` (`"error"` for 5xx, absent otherwise), so requests are the
/// sum over both classes and errors the `"error"` series.
pub fn traffic_query(grouping: Grouping, keys: &[&ArmKey], window: Duration) -> String {
    let by = grouping.labels().join(", ");
    format!(
        "sum by ({by}, {CLASS_LABEL}) (label_replace({}, \"{CLASS_LABEL}\", \"{ERROR_CLASS}\", \"{}\", \"5..\"))",
        grouping.counts(Metric::Requests, keys, window),
        grouping.response_code_label()
    )
}

/// The cumulative latency histogram (milliseconds) of every given arm in one query.
pub fn latency_query(grouping: Grouping, keys: &[&ArmKey], window: Duration) -> String {
    let by = grouping.labels().join(", ");
    format!(
        "sum by ({by}, le) ({})",
        grouping.counts(Metric::DurationBuckets, keys, window)
    )
}

/// One custom ratio metric for both arms in one query: the four sums (`bad` and `total` of
/// stage and prod), told apart by `canaryd_series` = `stage_bad`, `stage_total`, ...
pub fn ratio_query(
    bad: &str,
    total: &str,
    stage: &ArmVars,
    prod: &ArmVars,
    window: Duration,
) -> Result<String, String> {
    let mut parts = Vec::with_capacity(4);
    for (arm, vars) in [("stage", stage), ("prod", prod)] {
        for (part, template) in [("bad", bad), ("total", total)] {
            let query = render(template, vars, window).map_err(|e| format!("{part}: {e}"))?;
            parts.push(format!(
                "label_replace(sum({query}), \"{SERIES_LABEL}\", \"{arm}_{part}\", \"\", \"\")"
            ));
        }
    }
    Ok(parts.join(" or "))
}

/// Substitutes `{{ host }}`, `{{ namespace }}`, `{{ workload }}` and `{{ window }}`.
///
/// Values from the spec are escaped as string-literal content (`\xHH` for every character
/// but letters, digits and `-._:/`), valid inside `"..."` and `'...'`, so no value can close
/// the literal it is written in and change the query. Inside a regex matcher a `.` still
/// matches any character.
pub fn render(template: &str, vars: &ArmVars, window: Duration) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "a \"{{\" is not closed by \"}}\"".to_string())?;
        let value = match after[..end].trim() {
            "host" => escape_string_content(&vars.host),
            "namespace" => escape_string_content(&vars.namespace),
            "workload" => escape_string_content(&vars.workload),
            "window" => format_window(window),
            other => {
                return Err(format!(
                    "unknown placeholder {{{{ {other} }}}}; use {{{{ host }}}}, {{{{ namespace }}}}, {{{{ workload }}}} or {{{{ window }}}}"
                ))
            }
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The exact number of events each series of the counter `selector` counted over
/// `(t - window, t]`, where `t` is the query's evaluation time: the difference of two raw
/// samples (the last in the window and the last in the 5 minutes up to `t - window`), never
/// `increase()`, which extrapolates to the window's edges and drops the gap before the next
/// window. Consecutive windows that share their edges therefore tile time: every event is
/// counted in exactly one look, as an integer.
///
/// - A series born inside the window (no sample at `t - window`) counts from 0.
/// - A series whose counter went down (a reset: its container restarted) counts its value
///   at `t` in that window, the events since the reset; its events between the window's
///   start and the reset are lost (and a counter that reset and climbed past its old value
///   within one window counts only the difference). Two samples cannot say more; a restart is rare, and it
///   drops requests and bad events of the same pod over the same time together.
/// - A series that ends inside the window (a pod that went away) counts up to its last
///   sample (`last_over_time`).
pub fn exact_count(selector: &str, window: Duration) -> String {
    let w = format_window(window);
    // The last sample in the window, also of a series that ended in it (a pod gone).
    let last = format!("last_over_time({selector}[{w}])");
    // The last sample at or before the window's start, looking back as far as an instant
    // query does (5m) but past stale markers: a scrape that failed just before the start
    // must not make the series look born in this window.
    let before = format!("last_over_time({selector}[5m] offset {w})");
    format!("(({last} - ({before} or {last} * 0)) >= 0 or {last})")
}

/// A PromQL duration: whole seconds when possible, else milliseconds.
pub fn format_window(window: Duration) -> String {
    let ms = window.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A double-quoted PromQL string literal holding exactly `s`.
pub fn string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c if c.is_control() => push_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// String-literal content without quotes that is the same text in `"..."` and `'...'`.
fn escape_string_content(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '/') {
            out.push(c);
        } else {
            push_escaped(&mut out, c);
        }
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    let _ = match c as u32 {
        n @ 0..=0x7f => write!(out, "\\x{n:02x}"),
        n @ 0x80..=0xffff => write!(out, "\\u{n:04x}"),
        n => write!(out, "\\U{n:08x}"),
    };
}

/// Escapes the RE2 metacharacters so the regex matches exactly `s`.
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `a|b|c`: an RE2 alternation matching exactly the given values (sorted, deduplicated);
/// Prometheus anchors it.
fn alternation<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut values: Vec<&str> = values.collect();
    values.sort_unstable();
    values.dedup();
    let escaped: Vec<String> = values.into_iter().map(regex_escape).collect();
    escaped.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(host: &str) -> ArmVars {
        ArmVars {
            host: host.into(),
            namespace: "stage".into(),
            workload: "flaskapp".into(),
        }
    }

    #[test]
    fn istio_traffic_query_batches_hosts_and_counts_each_request_once() {
        let a = ArmKey(vec!["flaskapp.prod.svc.cluster.local".into()]);
        let b = ArmKey(vec!["flaskapp.stage.svc.cluster.local".into()]);
        let q = traffic_query(Grouping::IstioHost, &[&b, &a, &b], Duration::from_secs(30));
        assert_eq!(
            q,
            format!(
                r#"sum by (destination_service, canaryd_class) (label_replace({}, "canaryd_class", "error", "response_code", "5.."))"#,
                exact_count(
                    r#"istio_requests_total{reporter="destination", destination_service=~"flaskapp\\.prod\\.svc\\.cluster\\.local|flaskapp\\.stage\\.svc\\.cluster\\.local"}"#,
                    Duration::from_secs(30)
                )
            )
        );
    }

    #[test]
    fn envoy_queries_match_plain_and_istio_cluster_names() {
        let a = ArmKey(vec!["web".into()]);
        let q = latency_query(Grouping::EnvoyCluster, &[&a], Duration::from_millis(1500));
        assert_eq!(
            q,
            format!(
                r#"sum by (canaryd_host, le) (label_replace({}, "canaryd_host", "$1", "envoy_cluster_name", "(?:outbound\\|[0-9]+\\|[^|]*\\|)?(.*)"))"#,
                exact_count(
                    r#"envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=~"(?:outbound\\|[0-9]+\\|[^|]*\\|)?(web)"}"#,
                    Duration::from_millis(1500)
                )
            )
        );
    }

    #[test]
    fn an_exact_count_is_a_difference_of_raw_samples_with_births_and_resets() {
        assert_eq!(
            exact_count("x{a=\"b\"}", Duration::from_secs(60)),
            r#"((last_over_time(x{a="b"}[60s]) - (last_over_time(x{a="b"}[5m] offset 60s) or last_over_time(x{a="b"}[60s]) * 0)) >= 0 or last_over_time(x{a="b"}[60s]))"#
        );
    }

    #[test]
    fn spec_values_cannot_leave_their_string_literal() {
        let evil = vars(r#"x"} or vector(1000) or {a="\"#);
        let q = render(
            r#"sum(increase(bad_total{host="{{ host }}", ns='{{namespace}}'}[{{ window }}]))"#,
            &evil,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(
            q,
            r#"sum(increase(bad_total{host="x\x22\x7d\x20or\x20vector\x281000\x29\x20or\x20\x7ba\x3d\x22\x5c", ns='stage'}[60s]))"#
        );
    }

    #[test]
    fn regex_and_literal_escaping_round_trip_label_characters() {
        assert_eq!(regex_escape(r"a.b|c\d"), r"a\.b\|c\\d");
        assert_eq!(string_literal("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\x01""#);
    }

    #[test]
    fn unknown_placeholders_and_unclosed_braces_are_named() {
        let e = render("x{{ pod }}", &vars("h"), Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("unknown placeholder {{ pod }}"), "{e}");
        let e = render("x{{ host", &vars("h"), Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("not closed"), "{e}");
    }

    #[test]
    fn ratio_query_labels_the_four_sums() {
        let q = ratio_query(
            "sum(a{ns=\"{{ namespace }}\"})",
            "sum(b)",
            &vars("s"),
            &ArmVars {
                namespace: "prod".into(),
                ..vars("p")
            },
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(
            q,
            r#"label_replace(sum(sum(a{ns="stage"})), "canaryd_series", "stage_bad", "", "") or label_replace(sum(sum(b)), "canaryd_series", "stage_total", "", "") or label_replace(sum(sum(a{ns="prod"})), "canaryd_series", "prod_bad", "", "") or label_replace(sum(sum(b)), "canaryd_series", "prod_total", "", "")"#
        );
    }
}
