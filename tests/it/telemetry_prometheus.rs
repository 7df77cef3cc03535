//! Telemetry against the real Prometheus: the counts canaryd reads back are exactly the ones
//! the exporter served, for both mesh presets and custom queries, and the failure modes
//! (Prometheus down, no data, bad PromQL) are told apart.

use std::time::{Duration, Instant};

use crate::telemetry_common::*;
use canaryd::analysis::{ArmCounts, LookCounts, RatioCounts};
use canaryd::api::canary::CanarySpec;
use canaryd::config::MeshPreset;
use canaryd::telemetry::{QueryTarget, SelectBy, TelemetryError};

/// Prod and stage of flaskapp and of checkout.
fn two_apps() -> [Arm; 4] {
    [
        flaskapp_prod(),
        flaskapp_stage(),
        checkout_prod(),
        checkout_stage(),
    ]
}

#[tokio::test]
async fn istio_preset_reads_exact_counts_of_many_canaries_in_three_queries() {
    let arms = two_apps();
    let lab = Lab::start(&arms).await;
    let flaskapp = canary(&arms[1], &arms[0], THREE_METRICS);
    let checkout = canary(&arms[3], &arms[2], "[{name: errors, kind: errorRate}]");
    let targets = [
        QueryTarget {
            key: "prod/flaskapp",
            spec: &flaskapp,
            namespace: "prod",
        },
        QueryTarget {
            key: "prod/checkout",
            spec: &checkout,
            namespace: "prod",
        },
    ];
    let expected_flaskapp = LookCounts {
        stage: arms[1].expected(true, Some("orders")),
        prod: arms[0].expected(true, Some("orders")),
    };
    let expected_checkout = LookCounts {
        stage: arms[3].expected(false, None),
        prod: arms[2].expected(false, None),
    };
    assert_eq!(expected_flaskapp.stage.errors, 10.0);
    assert_eq!(expected_flaskapp.prod.requests, 1000.0);

    for select_by in [SelectBy::Host, SelectBy::Workload] {
        let telemetry = lab.telemetry(MeshPreset::Istio, select_by);
        // Traffic and latency batched over both Canaries, plus flaskapp's custom ratio.
        assert_eq!(telemetry.queries(&targets, WINDOW).len(), 3);
        let looks = telemetry.fetch(&targets, lab.window_end, WINDOW).await;
        assert_eq!(looks.len(), 2);
        assert_eq!(
            looks["prod/flaskapp"].as_ref().unwrap(),
            &expected_flaskapp,
            "{select_by:?}"
        );
        assert_eq!(
            looks["prod/checkout"].as_ref().unwrap(),
            &expected_checkout,
            "{select_by:?}"
        );
    }

    // The time of one evaluation of one Canary with three metrics (3 queries).
    let telemetry = lab.telemetry(MeshPreset::Istio, SelectBy::Host);
    let one = &targets[..1];
    for q in telemetry.queries(one, Duration::from_secs(30)) {
        eprintln!("query: {q}");
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let looks = telemetry.fetch(one, lab.window_end, WINDOW).await;
        times.push(started.elapsed());
        assert!(looks["prod/flaskapp"].is_ok());
    }
    times.sort();
    eprintln!(
        "one evaluation (1 Canary, 3 metrics, 3 queries): median {:?}, max {:?} over {} runs",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );

    // A tick with 1,000 Canaries due: the batched queries grow with chunks, not Canaries.
    let idle: Vec<CanarySpec> = (0..998)
        .map(|i| {
            serde_yaml_ng::from_str(&format!(
                "{{virtualService: {{name: vs}}, prod: {{host: svc{i}.prod, deployment: {{name: svc{i}}}}}, stage: {{host: svc{i}.stage, deployment: {{name: svc{i}}}}}, analysis: {{metrics: [{{name: errors, kind: errorRate}}]}}}}"
            ))
            .unwrap()
        })
        .collect();
    let mut many: Vec<QueryTarget<'_, String>> = idle
        .iter()
        .enumerate()
        .map(|(i, spec)| QueryTarget {
            key: format!("svc{i}"),
            spec,
            namespace: "prod",
        })
        .collect();
    many.push(QueryTarget {
        key: "prod/flaskapp".into(),
        spec: &flaskapp,
        namespace: "prod",
    });
    let queries = telemetry.queries(&many, WINDOW).len();
    let started = Instant::now();
    let looks = telemetry.fetch(&many, lab.window_end, WINDOW).await;
    eprintln!(
        "one tick of {} Canaries: {queries} queries, {:?}",
        many.len(),
        started.elapsed()
    );
    assert_eq!(queries, 2000 / canaryd::telemetry::MAX_ARMS_PER_QUERY + 2);
    assert_eq!(looks["prod/flaskapp"].as_ref().unwrap(), &expected_flaskapp);
    assert_eq!(looks["svc7"].as_ref().unwrap(), &LookCounts::default());
}

#[tokio::test]
async fn envoy_preset_reads_cluster_statistics_by_host() {
    let arms = [flaskapp_prod(), flaskapp_stage()];
    let lab = Lab::start(&arms).await;
    let spec = canary(
        &arms[1],
        &arms[0],
        "[{name: errors, kind: errorRate}, {name: latency, kind: latency, thresholdsMs: [100]}]",
    );
    let targets = [QueryTarget {
        key: 1,
        spec: &spec,
        namespace: "prod",
    }];
    let telemetry = lab.telemetry(MeshPreset::Envoy, SelectBy::Host);
    let looks = telemetry.fetch(&targets, lab.window_end, WINDOW).await;
    // Requests of both outbound ports are summed; the inbound cluster names no host.
    assert_eq!(
        looks[&1].as_ref().unwrap(),
        &LookCounts {
            stage: arms[1].expected(true, None),
            prod: arms[0].expected(true, None),
        }
    );
}

#[tokio::test]
async fn label_values_that_need_escaping_are_matched_exactly_and_cannot_inject() {
    let weird_stage = Arm {
        host: r#"we"ird\host|x.stage"#,
        namespace: r#"st"age"#,
        workload: r"app\1",
        ..flaskapp_stage()
    };
    // Would also match `we"ird\host|x.stage` if the `|` and `.` were not escaped.
    let weird_prod = Arm {
        host: "we",
        namespace: "prod",
        workload: "app",
        ..flaskapp_prod()
    };
    let arms = [weird_prod.clone(), weird_stage.clone()];
    let lab = Lab::start(&arms).await;
    let spec = canary(&weird_stage, &weird_prod, THREE_METRICS);
    let targets = [QueryTarget {
        key: "weird",
        spec: &spec,
        namespace: "prod",
    }];
    for select_by in [SelectBy::Host, SelectBy::Workload] {
        let looks = lab
            .telemetry(MeshPreset::Istio, select_by)
            .fetch(&targets, lab.window_end, WINDOW)
            .await;
        assert_eq!(
            looks["weird"].as_ref().unwrap(),
            &LookCounts {
                stage: weird_stage.expected(true, Some("orders")),
                prod: weird_prod.expected(true, Some("orders")),
            },
            "{select_by:?}"
        );
    }

    // A namespace crafted to close the string literal and add series reads no data, and is
    // not a syntax error either: it stays a label value.
    let crafted = Arm {
        namespace: r#"stage"} or vector(1000) or {__name__="x"#,
        ..weird_stage.clone()
    };
    let spec = canary(&crafted, &weird_prod, THREE_METRICS);
    let targets = [QueryTarget {
        key: "crafted",
        spec: &spec,
        namespace: "prod",
    }];
    let looks = lab
        .telemetry(MeshPreset::Istio, SelectBy::Host)
        .fetch(&targets, lab.window_end, WINDOW)
        .await;
    let look = looks["crafted"].as_ref().unwrap();
    assert_eq!(look.stage.ratios["orders"], RatioCounts::default());
    assert_eq!(look.prod.ratios["orders"].total, 500.0);
}

#[tokio::test]
async fn no_data_bad_promql_and_prometheus_down_are_told_apart() {
    let arms = [flaskapp_prod(), flaskapp_stage()];
    let mut lab = Lab::start(&arms).await;
    let telemetry = lab.telemetry(MeshPreset::Istio, SelectBy::Host);

    // Hosts nobody serves and a metric that does not exist: zero counts, not an error.
    let missing = canary(
        &Arm {
            host: "nothing.stage.svc.cluster.local",
            ..flaskapp_stage()
        },
        &Arm {
            host: "nothing.prod.svc.cluster.local",
            ..flaskapp_prod()
        },
        r#"[{name: errors, kind: errorRate}, {name: gone, kind: ratio, bad: "sum(increase(does_not_exist_total[{{ window }}]))", total: "sum(increase(does_not_exist_total[{{ window }}]))"}]"#,
    );
    let targets = [QueryTarget {
        key: "missing",
        spec: &missing,
        namespace: "prod",
    }];
    let looks = telemetry.fetch(&targets, lab.window_end, WINDOW).await;
    let empty = ArmCounts {
        ratios: [("gone".to_string(), RatioCounts::default())].into(),
        ..ArmCounts::default()
    };
    assert_eq!(
        looks["missing"].as_ref().unwrap(),
        &LookCounts {
            stage: empty.clone(),
            prod: empty
        }
    );

    // A custom query with a syntax error: Prometheus's own message, and only that Canary fails.
    let broken = canary(
        &arms[1],
        &arms[0],
        r#"[{name: broken, kind: ratio, bad: "sum(increase(app_orders_total[{{ window }}])", total: "sum(app_orders_total)"}]"#,
    );
    // 0/0 is NaN: an error of its own, neither zero nor a query error.
    let nan = canary(
        &arms[1],
        &arms[0],
        r#"[{name: nan, kind: ratio, bad: "vector(0) / vector(0)", total: "vector(1)"}]"#,
    );
    let good = canary(&arms[1], &arms[0], "[{name: errors, kind: errorRate}]");
    let targets = [
        QueryTarget {
            key: "good",
            spec: &good,
            namespace: "prod",
        },
        QueryTarget {
            key: "broken",
            spec: &broken,
            namespace: "prod",
        },
        QueryTarget {
            key: "nan",
            spec: &nan,
            namespace: "prod",
        },
    ];
    let looks = telemetry.fetch(&targets, lab.window_end, WINDOW).await;
    let err = looks["broken"].as_ref().unwrap_err();
    assert!(
        matches!(err, TelemetryError::Query { error_type, .. } if error_type == "bad_data"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("parse error"), "{message}");
    assert!(!err.is_transient());
    assert_eq!(looks["good"].as_ref().unwrap().stage.errors, 10.0);
    let err = looks["nan"].as_ref().unwrap_err();
    assert!(
        matches!(err, TelemetryError::NotANumber { series, .. } if series == "stage bad"),
        "{err:?}"
    );

    // Prometheus stopped: an error that says so, never zero counts.
    lab.prometheus.stop();
    let looks = telemetry.fetch(&targets[..1], lab.window_end, WINDOW).await;
    let err = looks["good"].as_ref().unwrap_err();
    assert!(
        matches!(err, TelemetryError::Unavailable { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(err.to_string().contains(&lab.prometheus.url()), "{err}");

    // Back up with the same data: the same counts as before.
    lab.prometheus.restart().await.unwrap();
    let looks = telemetry.fetch(&targets[..1], lab.window_end, WINDOW).await;
    assert_eq!(
        looks["good"].as_ref().unwrap(),
        &LookCounts {
            stage: arms[1].expected(false, None),
            prod: arms[0].expected(false, None),
        }
    );
}

/// The counts canaryd reads are exact differences of the raw samples Prometheus stored, and
/// consecutive windows that share their edges tile time: every window's count is an integer
/// and equals what the stored samples say, for a series that grows, a series born midway, a
/// series that ends (a pod gone) and a counter that resets (a restarted container), at
/// window edges that fall between scrapes.
#[tokio::test]
async fn exact_counts_tile_time_across_series_births_and_counter_resets() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use canaryd_lab::prometheus::{LabPrometheus, ScrapeTarget};
    use jiff::Timestamp;

    let scrapes = Arc::new(AtomicU64::new(0));
    let served = scrapes.clone();
    let exporter = Exporter::start_fn(move || {
        let k = served.fetch_add(1, Ordering::SeqCst) + 1;
        let mut body = format!(
            "canaryd_test_scrape {k}\nevents_total{{pod=\"a\"}} {}\n",
            7 * k
        );
        if k >= 5 {
            body += &format!("events_total{{pod=\"b\"}} {}\n", 3 * (k - 4));
        }
        let c = if k < 9 { 5 * k } else { 5 * (k - 9) + 2 };
        body += &format!("events_total{{pod=\"c\"}} {c}\n");
        if (3..=10).contains(&k) {
            body += &format!("events_total{{pod=\"d\"}} {}\n", 11 * k);
        }
        body
    })
    .await;
    let prometheus = LabPrometheus::start(
        &[ScrapeTarget {
            job: "exporter".into(),
            address: exporter.addr,
        }],
        Duration::from_secs(1),
    )
    .await
    .expect("start prometheus");
    let client = test_client(&prometheus.url(), 1);
    // Until Prometheus has stored 16 scrapes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = client
            .instant("canaryd_test_scrape", Timestamp::now())
            .await
            .ok()
            .and_then(|s| s.first().map(|s| s.value))
            .unwrap_or(0.0);
        if seen >= 16.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus scraped {seen} times in 60s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The raw samples Prometheus stored, per pod: (unix ms, value).
    let raw = prometheus_http_query::Client::try_from(prometheus.url().as_str())
        .unwrap()
        .query("events_total[5m]")
        .get()
        .await
        .unwrap();
    let mut samples: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    let prometheus_http_query::response::Data::Matrix(series) = raw.data() else {
        panic!("a range query answers a matrix");
    };
    for s in series {
        let pod = s.metric()["pod"].clone();
        let points = s
            .samples()
            .iter()
            .map(|p| ((p.timestamp() * 1000.0).round() as i64, p.value()))
            .collect();
        samples.insert(pod, points);
    }
    assert_eq!(samples.len(), 4);
    let last_at = |at: i64, pod: &str| {
        samples[pod]
            .iter()
            .take_while(|(t, _)| *t <= at)
            .last()
            .map(|&(_, v)| v)
    };
    // What a window (from, to] counted, by the stored samples.
    let expected = |from: i64, to: i64, pod: &str| -> f64 {
        match (last_at(from, pod), last_at(to, pod)) {
            (_, None) => 0.0,
            (None, Some(v)) => v,
            (Some(before), Some(v)) if v < before => v,
            (Some(before), Some(v)) => v - before,
        }
    };

    // Windows of 2.7 s from before the first sample to the last one: edges between scrapes.
    let first = samples
        .values()
        .flat_map(|s| s.first())
        .map(|p| p.0)
        .min()
        .unwrap();
    let last = samples
        .values()
        .flat_map(|s| s.last())
        .map(|p| p.0)
        .max()
        .unwrap();
    let step = 2_700;
    let mut from = first - 1_300;
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    let mut windows = 0;
    while from < last {
        let to = from + step;
        let query = canaryd::telemetry::promql::exact_count(
            "events_total",
            Duration::from_millis(step as u64),
        );
        let got = client
            .instant(&query, Timestamp::from_millisecond(to).unwrap())
            .await
            .unwrap();
        for pod in samples.keys() {
            let value = got
                .iter()
                .find(|s| s.labels.get("pod") == Some(pod))
                .map_or(0.0, |s| s.value);
            assert_eq!(value, value.round(), "an integer count");
            assert_eq!(
                value,
                expected(from, to, pod),
                "pod {pod}, window ({from}, {to}]"
            );
            *totals.entry(pod.clone()).or_default() += value;
        }
        windows += 1;
        from = to;
    }
    assert!(windows >= 5, "{windows} windows");
    // Every event each counter counted, once: a grew from its first sample, b was born
    // midway and d went away. The window of c's reset counts c's events since the reset; those between the
    // window's start and the reset are lost (as documented).
    let final_value = |pod: &str| samples[pod].last().unwrap().1;
    assert_eq!(totals["a"], final_value("a"));
    assert_eq!(totals["b"], final_value("b"));
    assert_eq!(
        totals["d"],
        final_value("d"),
        "a pod gone counts up to its last sample"
    );
    let before_reset = samples["c"]
        .windows(2)
        .find(|w| w[1].1 < w[0].1)
        .map(|w| w[0].1)
        .expect("c was reset");
    assert!(
        totals["c"] >= final_value("c") && totals["c"] <= before_reset + final_value("c"),
        "{totals:?}"
    );
}

/// The daemon's source of counts: looks of many Canaries due at the same tick (the
/// reconciler aligns their windows) are read with one traffic and one latency query in all.
#[tokio::test]
async fn looks_due_together_are_read_in_one_batch_whatever_the_number_of_canaries() {
    use canaryd::api::Canary;
    use canaryd::telemetry::{Batched, MetricsSource, QueryMetrics};
    use prometheus_client::registry::Registry;

    let arms = two_apps();
    let lab = Lab::start(&arms).await;
    let mut registry = Registry::default();
    let metrics = QueryMetrics::register(&mut registry);
    let batched = Batched::start(
        lab.telemetry(MeshPreset::Istio, SelectBy::Host),
        Some(metrics),
    );
    let errors_and_latency = r#"
    - {name: errors, kind: errorRate}
    - {name: latency, kind: latency, thresholdsMs: [250]}
"#;
    // 40 Canaries in 4 namespaces: even ones on flaskapp's arms with a latency metric, odd
    // ones on checkout's with errors only.
    let canaries: Vec<Canary> = (0..40)
        .map(|i| {
            let spec = if i % 2 == 0 {
                canary(&arms[1], &arms[0], errors_and_latency)
            } else {
                canary(&arms[3], &arms[2], "[{name: errors, kind: errorRate}]")
            };
            let mut c = Canary::new(&format!("app-{i}"), spec);
            c.metadata.namespace = Some(format!("team-{}", i % 4));
            c
        })
        .collect();
    let looks = futures::future::join_all(
        canaries
            .iter()
            .map(|c| batched.counts(c, lab.window_end, WINDOW)),
    )
    .await;
    for (i, look) in looks.iter().enumerate() {
        let expected = if i % 2 == 0 {
            LookCounts {
                stage: arms[1].expected(true, None),
                prod: arms[0].expected(true, None),
            }
        } else {
            LookCounts {
                stage: arms[3].expected(false, None),
                prod: arms[2].expected(false, None),
            }
        };
        assert_eq!(look.as_ref().unwrap(), &expected, "Canary app-{i}");
    }
    let counter = |registry: &Registry, name: &str| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(
        counter(&registry, "canaryd_prometheus_queries_total"),
        2.0,
        "one traffic and one latency query for 40 Canaries"
    );
    assert_eq!(counter(&registry, "canaryd_look_batch_canaries_sum"), 40.0);

    // A look over another window (a step's first, longer one) is another batch, still exact.
    let longer = WINDOW + Duration::from_secs(30);
    let look = batched
        .counts(&canaries[1], lab.window_end, longer)
        .await
        .unwrap();
    assert_eq!(look.stage, arms[3].expected(false, None));
    assert_eq!(counter(&registry, "canaryd_prometheus_queries_total"), 3.0);
}
