//! The local lab used by `canaryd demo` and the end-to-end tests (docs/architecture.md, section 5): an
//! in-process Kubernetes API server, a simulated Istio mesh whose metrics the real Prometheus
//! scrapes, and simulated Deployment rollouts. Nothing here runs in a real cluster, and the
//! product links it only for `canaryd demo` (the default-on `demo` feature).
//!
//! Wiring, given a client of the lab's API server and the demo's Canary:
//!
//! ```no_run
//! # async fn demo(client: kube::Client, canary: canaryd_api::canary::Canary) -> std::io::Result<()> {
//! use std::time::Duration;
//! use canaryd_lab::mesh_server::{AppTraffic, Mesh};
//! use canaryd_lab::scenario::BehaviourTable;
//! use canaryd_lab::workloads;
//!
//! // Rollouts finish 3 s after a Deployment's spec changes.
//! let rollouts = tokio::spawn(workloads::run(client.clone(), Duration::from_secs(3)));
//! let mesh = Mesh::start("127.0.0.1:0".parse().unwrap()).await?;
//! let traffic = mesh.simulate(client, AppTraffic::for_canary(&canary), BehaviourTable::demo());
//! // Prometheus scrapes `mesh.scrape_target()`; the demo then sets stage's image to
//! // `scenario::Scenario::BadErrors.release_image()` (or another scenario's) and canaryd takes over.
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod alertmanager;
pub mod apiserver;
pub mod harness;
pub mod mesh;
pub mod mesh_server;
pub mod process;
pub mod prometheus;
pub mod scenario;
pub mod workloads;

/// A reqwest client builder with ring as rustls' provider: the one provider compiled into
/// canaryd (the product's `tls` module does the same for its clients).
pub(crate) fn http_client() -> reqwest::ClientBuilder {
    // Err only when a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
