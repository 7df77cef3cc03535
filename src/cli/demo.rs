//! `canaryd demo`: a whole rollout in the local lab, shown live, ending with a summary in
//! plain words. The lab is a real Kubernetes API (in-process), simulated rollouts and mesh,
//! the real Prometheus, and the real `canaryd run` as a child process.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::analysis::{power_of_ten, sig2};
use crate::api::{Canary, CanaryStatus, HistoryEntry, Phase, Verdict};
use canaryd_lab::harness::{Lab, LabError, LabOptions, ALERTMANAGER_NOTIFIER};
use canaryd_lab::scenario::{Scenario, BASELINE_IMAGE};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Which release stage gets: good (v2), bad-errors (v3: 5 % errors), bad-latency (v4: 60 % slower).
    #[arg(long, value_enum, default_value_t = Scenario::Good)]
    pub scenario: Scenario,
    /// How many times faster than real time the rollout runs (intervals and step durations
    /// are divided by it; the statistics are the same).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=120))]
    pub speed: u32,
    /// Requests per second the simulated users send.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Keep the lab running after the rollout, until Ctrl-C (to look around with kubectl).
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: DemoArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = demo(args) => outcome,
            // Dropping the demo stops the lab: its servers and the daemon are killed.
            signal = stop_signal() => {
                eprintln!("canaryd demo: {signal}; stopping the lab");
                Ok(ExitCode::from(130))
            }
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("canaryd demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or SIGTERM (what `kill`, systemd and CI runners send), whichever comes first.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(message.to_string());
    bar
}

async fn demo(args: DemoArgs) -> Result<ExitCode, LabError> {
    let image = args.scenario.release_image();
    println!(
        "canaryd demo: scenario {} (stage gets {image}; prod runs {BASELINE_IMAGE}), time {}x faster, {} requests/s",
        args.scenario, args.speed, args.rate
    );
    let bar = spinner("starting the lab: Kubernetes API, simulated mesh and rollouts, Prometheus");
    let lab = Lab::start(LabOptions {
        speed: args.speed,
        requests_per_second: args.rate,
        ..Default::default()
    })
    .await?;
    bar.finish_and_clear();
    let canary = lab.canaries().get("flaskapp").await.map_err(|e| LabError {
        what: "Canary",
        message: e.to_string(),
    })?;
    println!("lab ready. Watch it yourself with:");
    println!("  export KUBECONFIG={}", lab.kubeconfig().display());
    println!(
        "  kubectl get canaries -n prod -w        # Prometheus: {}",
        lab.prometheus.url()
    );
    describe_canary(&lab, &canary);

    let exe = std::env::current_exe().map_err(|e| LabError {
        what: "canaryd",
        message: e.to_string(),
    })?;
    let daemon = lab.spawn_daemon(&exe, "canaryd-0")?;
    let bar = spinner("starting canaryd and waiting for it to take the Canary");
    lab.follow(
        Duration::from_secs(60),
        |_| {},
        |c| c.status.as_ref().is_some_and(|s| !s.conditions.is_empty()),
    )
    .await
    .map_err(|e| daemon.explain(e))?;
    bar.finish_and_clear();
    if let Some(admin) = daemon.admin {
        println!(
            "canaryd runs (log: {}); its admin server: http://{admin} (/metrics, /healthz)",
            daemon.log.display()
        );
        println!(
            "rollout page (live, open it in a browser): http://{admin}/rollouts/prod/flaskapp"
        );
    }

    println!("releasing {image} to stage (like `helm upgrade --set deployment.tag=...`)");
    lab.release(image).await?;
    let started = Instant::now();
    let end = follow_rollout(&lab, started)
        .await
        .map_err(|e| daemon.explain(e))?;
    let took = started.elapsed().as_secs_f64();
    println!();
    let code = report(&lab, &args, &end, took).await?;
    println!();
    println!("What each step did (from the Canary's status history):");
    for line in steps_summary(&end) {
        println!("  {line}");
    }
    println!(
        "The VirtualService routes {} % to stage. Details: `canaryd status flaskapp -n prod` (with KUBECONFIG above).",
        lab.stage_weight().await?
    );
    if args.keep {
        println!("The lab keeps running; Ctrl-C (or SIGTERM) stops it.");
        std::future::pending::<()>().await;
    }
    drop(daemon);
    Ok(code)
}

/// What the Canary checks, compares and notifies, in a few lines.
fn describe_canary(lab: &Lab, canary: &Canary) {
    let spec = &canary.spec;
    println!("the Canary prod/flaskapp: steps {:?}", spec.steps);
    for check in &spec.checks {
        let when = if check.every_step {
            "at 0 % and at every step"
        } else {
            "at 0 %"
        };
        println!(
            "  check {}: {} x {} {} -> {}{}, {when}",
            check.name,
            check.count,
            check.method,
            check.url.replace("{{ host }}", &spec.stage.host),
            check.expect_status,
            check
                .body_contains
                .as_ref()
                .map(|b| format!(" containing {b:?}"))
                .unwrap_or_default()
        );
    }
    let metrics: Vec<&str> = spec
        .analysis
        .metrics
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    println!(
        "  compares stage with prod on {} at every step (alpha {})",
        metrics.join(" and "),
        spec.analysis.alpha
    );
    if let Some(slo) = &spec.analysis.slo {
        if let Some(max) = slo.max_error_rate {
            println!(
                "  SLO guardrail: stage's error rate at most {} % at any step",
                max * 100.0
            );
        }
    }
    for route in &spec.notifications {
        let to = match (&lab.alertmanager, route.notifier.as_str()) {
            (Some(am), ALERTMANAGER_NOTIFIER) => format!("Alertmanager at {}", am.url()),
            (_, name) => format!("notifier {name}"),
        };
        let events: Vec<String> = route.events.iter().map(|e| format!("{e:?}")).collect();
        println!("  notifies {to} of {}", events.join(" and "));
    }
}

/// Follows the rollout until it ends, showing each status message once, under a heading per
/// step; returns the Canary at its end.
async fn follow_rollout(lab: &Lab, started: Instant) -> Result<Canary, LabError> {
    let bar = spinner("waiting for stage to roll out");
    let mut last_line = String::new();
    let mut section = None;
    let done = |c: &Canary| {
        c.status.as_ref().is_some_and(|s| {
            matches!(
                s.phase,
                Phase::Succeeded | Phase::RolledBack | Phase::Paused
            ) && s.stage_revision.is_some()
                // The weights of that decision are on the route (see `trafficIntent`).
                && s.traffic_intent.is_none()
        })
    };
    let end = lab
        .follow(
            Duration::from_secs(600),
            |c| {
                let Some(s) = &c.status else { return };
                bar.set_message(format!(
                    "{:<13} stage {:>3}%  prod {:>3}%  {}",
                    s.phase.as_str(),
                    s.stage_weight,
                    100 - u32::from(s.stage_weight),
                    short(&s.message, 90)
                ));
                let line = format!("{} {} {}", s.phase, s.stage_weight, s.message);
                if line == last_line || s.stage_revision.is_none() {
                    return;
                }
                last_line = line;
                let steps = c.spec.steps.len().saturating_sub(1);
                let heading = section_heading(s, steps);
                let at = format!("  {:>6.1}s  ", started.elapsed().as_secs_f64());
                let mut out = Vec::new();
                let mut text = in_step(s, steps);
                if section.as_ref() != Some(&heading) {
                    // Why the last step ended belongs under it.
                    if let Some(why) = advance_reason(s.step, s.stage_weight, &s.message) {
                        out.push(format!("{at}{why}"));
                        text = "";
                    } else if let Some(why) = promoted_because(s) {
                        out.push(format!("{at}{why}"));
                    }
                    out.push(heading.clone());
                    section = Some(heading);
                }
                if !text.is_empty() {
                    out.push(format!("{at}{text}"));
                }
                for text in out {
                    if bar.is_hidden() {
                        println!("{text}");
                    } else {
                        bar.println(text);
                    }
                }
            },
            done,
        )
        .await;
    bar.finish_and_clear();
    end
}

/// The heading of the part of the rollout the status is in: a step, the promotion, the end.
fn section_heading(s: &CanaryStatus, steps: usize) -> String {
    match s.phase {
        Phase::Testing => format!("step 0/{steps}: stage at 0 %, checked before any traffic"),
        Phase::Progressing if s.stage_weight == 100 => format!(
            "step {}/{steps}: all traffic to stage, none to compare with: the SLO guards it",
            s.step
        ),
        Phase::Progressing => format!(
            "step {}/{steps}: {} % to stage, {} % to prod, compared",
            s.step,
            s.stage_weight,
            100 - u32::from(s.stage_weight)
        ),
        Phase::Promoting => "promotion: stage holds all traffic while prod is updated".into(),
        Phase::SwitchingBack => {
            "switching back: prod runs the release and takes all traffic".into()
        }
        phase => phase.as_str().to_string(),
    }
}

/// The status message without the step and weight its heading shows already.
fn in_step(s: &CanaryStatus, steps: usize) -> &str {
    let prefix = format!("step {}/{steps} · {} % to stage · ", s.step, s.stage_weight);
    s.message.strip_prefix(&prefix).unwrap_or(&s.message)
}

/// Why stage advanced to `step` at `weight`, from the message of the advance (`30 % to stage
/// (step 1): why`): `advanced: why`, or just `why` for the checks at 0 % (which say so).
fn advance_reason(step: u32, weight: u8, message: &str) -> Option<String> {
    let why = message.strip_prefix(&format!("{weight} % to stage (step {step}): "))?;
    Some(if step == 1 {
        why.to_string()
    } else {
        format!("advanced: {why}")
    })
}

/// Why the last step ended in promotion, while the decision is the last one.
fn promoted_because(s: &CanaryStatus) -> Option<String> {
    let decision = s.last_decision.as_ref()?;
    (s.phase == Phase::Promoting && decision.step == s.step && decision.verdict == Verdict::Advance)
        .then(|| format!("promoted: {}", decision.reason))
}

/// How the rollout ended, in words, with the evidence of a rollback and its alert; the exit
/// code says whether it ended as the scenario should.
async fn report(lab: &Lab, args: &DemoArgs, end: &Canary, took: f64) -> Result<ExitCode, LabError> {
    let image = args.scenario.release_image();
    let status = end.status.clone().unwrap_or_default();
    let as_expected = match status.phase {
        Phase::Succeeded => {
            let prod = lab.prod_image().await?;
            println!(
                "PROMOTED {image} in {took:.0} s: stage passed every step {:?} compared with prod, \
                 then prod was updated and took all traffic back. prod now runs {prod}.",
                end.spec.steps
            );
            args.scenario.should_promote()
        }
        Phase::RolledBack => {
            let decision = status.last_decision.clone().unwrap_or_default();
            let requests = decision
                .metrics
                .iter()
                .map(|m| m.stage_requests)
                .max()
                .unwrap_or(0);
            println!(
                "ROLLED BACK {image} at step {} ({} % to stage) after {took:.0} s and {requests} stage requests.\n\
                 Why: {}\nAll traffic is back on prod, which still runs {}.",
                decision.step,
                decision.stage_weight,
                decision.reason,
                lab.prod_image().await?
            );
            for m in &decision.metrics {
                // A guardrail's ratio is stage's rate over its limit.
                let against = if m.name.starts_with("slo:") {
                    "its limit"
                } else {
                    "prod's rate"
                };
                println!(
                    "  {:<16} evidence {} (rollback at {}), stage at least {}x {against}",
                    m.name,
                    power_of_ten(m.e_value),
                    power_of_ten(m.rollback_threshold),
                    sig2(m.ratio_lower)
                );
            }
            report_alert(lab).await;
            !args.scenario.should_promote()
        }
        _ => {
            println!("PAUSED after {took:.0} s: {}", status.message);
            false
        }
    };
    Ok(if as_expected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What Alertmanager received of the rollback (delivery is asynchronous: up to 20 s).
async fn report_alert(lab: &Lab) {
    let rolled_back = |a: &serde_json::Value| a["labels"]["alertname"] == "CanaryRolledBack";
    let Some(alerts) = lab
        .alerts_when(Duration::from_secs(20), |alerts| {
            alerts.iter().any(rolled_back)
        })
        .await
    else {
        println!(
            "(Alertmanager is not installed, so no alert was sent: apt-get install -y prometheus-alertmanager)"
        );
        return;
    };
    let url = lab
        .alertmanager
        .as_ref()
        .map(|am| am.url())
        .unwrap_or_default();
    let received: Vec<_> = alerts.iter().filter(|a| rolled_back(a)).collect();
    for a in &received {
        println!(
            "Alertmanager ({url}) received {} [severity {}]: {}",
            a["labels"]["alertname"].as_str().unwrap_or(""),
            a["labels"]["severity"].as_str().unwrap_or(""),
            a["annotations"]["summary"].as_str().unwrap_or("")
        );
    }
    if received.is_empty() {
        println!("Alertmanager received no alert within 20 s (see canaryd's log)");
    }
}

/// One line per part of the rollout, from the status history: each step with how long it
/// took and how it ended (its checks, the decision that advanced it, the rollback), then the
/// promotion and the end.
fn steps_summary(canary: &Canary) -> Vec<String> {
    let Some(status) = &canary.status else {
        return vec!["(no status)".into()];
    };
    let entries: Vec<&HistoryEntry> = status
        .history
        .iter()
        .filter(|h| status.rollout_started_at.is_none_or(|t| h.at >= t))
        .collect();
    let first_is_start = entries.first().is_some_and(|h| h.phase == Phase::Testing);
    let mut lines = Vec::new();
    if !first_is_start {
        lines.push("(the history kept only the latest entries)".into());
    }
    for (i, entry) in entries.iter().enumerate() {
        let next = entries.get(i + 1);
        let took = next.map(|n| took(entry.at, n.at)).unwrap_or_default();
        let line = match entry.phase {
            Phase::Testing | Phase::Progressing => {
                let name = format!("step {} ({} %)", entry.step, entry.stage_weight);
                match next {
                    None => format!("{name}: still running"),
                    Some(n) => format!("{name}, {took}: {}", step_end(status, entry, n)),
                }
            }
            // The step before says why.
            Phase::RolledBack | Phase::Paused
                if next.is_none()
                    && i > 0
                    && matches!(entries[i - 1].phase, Phase::Testing | Phase::Progressing) =>
            {
                continue
            }
            Phase::Promoting => format!("promotion, {took}: {}", entry.message),
            Phase::SwitchingBack => format!("switching back, {took}: {}", entry.message),
            Phase::Paused if next.is_some() => format!("paused, {took}: {}", entry.message),
            phase => format!("{}: {}", phase.as_str().to_lowercase(), entry.message),
        };
        lines.push(line);
    }
    lines
}

/// How the step that `entry` started ended, from the entry that followed it.
fn step_end(status: &CanaryStatus, entry: &HistoryEntry, next: &HistoryEntry) -> String {
    match next.phase {
        Phase::Progressing if next.step > entry.step => {
            advance_reason(next.step, next.stage_weight, &next.message)
                .unwrap_or_else(|| next.message.clone())
        }
        Phase::Promoting => {
            let why = status
                .last_decision
                .as_ref()
                .filter(|d| d.step == entry.step && d.verdict == Verdict::Advance)
                .map(|d| format!(": {}", d.reason))
                .unwrap_or_default();
            format!("promoted{why}")
        }
        Phase::RolledBack => format!("rolled back: {}", next.message),
        Phase::Paused => format!("paused: {}", next.message),
        _ => next.message.clone(),
    }
}

/// The time between two history entries, in seconds (tenths below 10 s).
fn took(from: jiff::Timestamp, to: jiff::Timestamp) -> String {
    let secs = to.duration_since(from).as_secs_f64().max(0.0);
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else {
        format!("{secs:.0} s")
    }
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DecisionRecord;

    fn entry(secs: i64, phase: Phase, step: u32, stage_weight: u8, message: &str) -> HistoryEntry {
        HistoryEntry {
            at: jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap(),
            phase,
            step,
            stage_weight,
            message: message.into(),
        }
    }

    fn canary(history: Vec<HistoryEntry>, last_decision: Option<DecisionRecord>) -> Canary {
        let mut c = canaryd_lab::harness::lab_canary(30);
        c.status = Some(CanaryStatus {
            rollout_started_at: Some(history[0].at),
            history,
            last_decision,
            ..Default::default()
        });
        c
    }

    #[test]
    fn the_summary_says_what_each_step_did_from_the_history() {
        let history = vec![
            entry(
                0,
                Phase::Testing,
                0,
                0,
                "new stage revision demoapp:v2: testing at 0 %",
            ),
            entry(
                1,
                Phase::Progressing,
                1,
                30,
                "30 % to stage (step 1): pre-traffic checks passed: check health: 5/5 passed",
            ),
            entry(
                30,
                Phase::Progressing,
                2,
                60,
                "60 % to stage (step 2): stage is proven not worse",
            ),
            entry(
                51,
                Phase::Progressing,
                3,
                100,
                "100 % to stage (step 3): stage is proven not worse",
            ),
            entry(56, Phase::Promoting, 3, 100, "promoting prod to demoapp:v2"),
            entry(
                59,
                Phase::SwitchingBack,
                3,
                0,
                "moving all traffic back to prod",
            ),
            entry(
                59,
                Phase::Succeeded,
                3,
                0,
                "prod runs demoapp:v2 with all traffic",
            ),
        ];
        let decision = DecisionRecord {
            verdict: Verdict::Advance,
            step: 3,
            stage_weight: 100,
            reason: "stage held 100 % for 4s".into(),
            ..Default::default()
        };
        assert_eq!(
            steps_summary(&canary(history, Some(decision))),
            [
                "step 0 (0 %), 1.0 s: pre-traffic checks passed: check health: 5/5 passed",
                "step 1 (30 %), 29 s: advanced: stage is proven not worse",
                "step 2 (60 %), 21 s: advanced: stage is proven not worse",
                "step 3 (100 %), 5.0 s: promoted: stage held 100 % for 4s",
                "promotion, 3.0 s: promoting prod to demoapp:v2",
                "switching back, 0.0 s: moving all traffic back to prod",
                "succeeded: prod runs demoapp:v2 with all traffic",
            ]
        );
    }

    #[test]
    fn a_rollback_ends_the_step_it_happened_in_and_an_unfinished_step_says_so() {
        let history = vec![
            entry(0, Phase::Testing, 0, 0, "testing at 0 %"),
            entry(
                1,
                Phase::Progressing,
                1,
                30,
                "30 % to stage (step 1): pre-traffic checks passed: all",
            ),
            entry(
                6,
                Phase::RolledBack,
                1,
                0,
                "rolled back at 30 % to stage: stage is worse",
            ),
        ];
        assert_eq!(
            steps_summary(&canary(history.clone(), None)),
            [
                "step 0 (0 %), 1.0 s: pre-traffic checks passed: all",
                "step 1 (30 %), 5.0 s: rolled back: rolled back at 30 % to stage: stage is worse",
            ]
        );
        assert_eq!(
            steps_summary(&canary(history[..2].to_vec(), None))[1],
            "step 1 (30 %): still running"
        );
        assert_eq!(
            steps_summary(&canary(history[1..].to_vec(), None))[0],
            "(the history kept only the latest entries)"
        );
    }
}
