//! canaryd's integration tests, one module per area, linked into one test binary. Tests that
//! need Prometheus, Alertmanager or the lab's API server start their own on loopback ports.

mod analyze_aa;
mod analyze_aa_scrapes;
mod analyze_cli;
mod argocd_health;
mod chaos;
mod cli;
mod cli_watch;
mod dashboards_prometheus;
mod demo_signals;
mod deploy_install;
mod e2e_lab;
mod environments;
mod events;
mod kubectl_plugin;
mod lab_api;
mod lenient_decoding;
mod notify_alert_rules;
mod notify_alertmanager;
mod notify_webhook;
mod readyz_restarts;
mod rollout_page;
mod security;
mod telemetry_analyze_live;
mod telemetry_client;
mod telemetry_common;
mod telemetry_prometheus;
mod webhook_signature;
