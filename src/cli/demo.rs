//! `canaryd demo`: a whole rollout in the local lab, shown live, ending with a summary in
//! plain words. The lab is a real Kubernetes API (in-process), simulated rollouts and mesh,
//! the real Prometheus, and the real `canaryd run` as a child process.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::analysis::{power_of_ten, sig2};
use crate::api::{Canary, Phase};
use canaryd_lab::harness::{Lab, LabOptions};
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

async fn demo(args: DemoArgs) -> Result<ExitCode, canaryd_lab::harness::LabError> {
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
    println!("lab ready. Watch it yourself with:");
    println!("  export KUBECONFIG={}", lab.kubeconfig().display());
    println!(
        "  kubectl get canaries -n prod -w        # Prometheus: {}",
        lab.prometheus.url()
    );

    let exe = std::env::current_exe().map_err(|e| canaryd_lab::harness::LabError {
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

    println!("releasing {image} to stage (like `helm upgrade --set deployment.tag=...`)");
    lab.release(image).await?;
    let started = Instant::now();
    let bar = spinner("waiting for stage to roll out");
    let mut last_line = String::new();
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
                if line != last_line && s.stage_revision.is_some() {
                    let text = format!(
                        "{:>5.1}s  {:<13} stage {:>3}%  prod {:>3}%  {}",
                        started.elapsed().as_secs_f64(),
                        s.phase.as_str(),
                        s.stage_weight,
                        100 - u32::from(s.stage_weight),
                        s.message
                    );
                    if bar.is_hidden() {
                        println!("{text}");
                    } else {
                        bar.println(text);
                    }
                    last_line = line;
                }
            },
            done,
        )
        .await
        .map_err(|e| daemon.explain(e))?;
    bar.finish_and_clear();
    let took = started.elapsed().as_secs_f64();
    let status = end.status.clone().unwrap_or_default();
    println!();
    let code = match status.phase {
        Phase::Succeeded => {
            let prod = lab.prod_image().await?;
            println!(
                "PROMOTED {image} in {took:.0} s: stage passed every step {:?} compared with prod, \
                 then prod was updated and took all traffic back. prod now runs {prod}.",
                end.spec.steps
            );
            if args.scenario.should_promote() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
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
                println!(
                    "  {:<14} evidence {} (rollback at {}), stage at least {}x prod's rate",
                    m.name,
                    power_of_ten(m.e_value),
                    power_of_ten(m.rollback_threshold),
                    sig2(m.ratio_lower)
                );
            }
            let rolled_back = |alerts: &[serde_json::Value]| {
                alerts
                    .iter()
                    .any(|a| a["labels"]["alertname"] == "CanaryRolledBack")
            };
            match lab.alerts_when(Duration::from_secs(20), rolled_back).await {
                Some(alerts) => {
                    for a in alerts.iter().filter(|a| rolled_back(std::slice::from_ref(a))) {
                        println!(
                            "Alertmanager ({}) received {} [severity {}]: {}",
                            lab.alertmanager.as_ref().map(|am| am.url()).unwrap_or_default(),
                            a["labels"]["alertname"].as_str().unwrap_or(""),
                            a["labels"]["severity"].as_str().unwrap_or(""),
                            a["annotations"]["summary"].as_str().unwrap_or("")
                        );
                    }
                    if !alerts.iter().any(|a| rolled_back(std::slice::from_ref(a))) {
                        println!("Alertmanager received no alert within 20 s (see canaryd's log)");
                    }
                }
                None => println!(
                    "(Alertmanager is not installed, so no alert was sent: apt-get install -y prometheus-alertmanager)"
                ),
            }
            if args.scenario.should_promote() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            println!("PAUSED after {took:.0} s: {}", status.message);
            ExitCode::FAILURE
        }
    };
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

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}
