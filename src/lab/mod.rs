//! The local lab used by `canaryd demo` and the end-to-end tests (DESIGN.md section 5): an
//! in-process Kubernetes API server, a simulated Istio mesh whose metrics the real Prometheus
//! scrapes, and simulated Deployment rollouts. Nothing here runs in a real cluster.
//!
//! Wiring, given a client of the lab's API server and the demo's Canary:
//!
//! ```no_run
//! # async fn demo(client: kube::Client, canary: canaryd::api::canary::Canary) -> std::io::Result<()> {
//! use std::time::Duration;
//! use canaryd::lab::mesh_server::{AppTraffic, Mesh};
//! use canaryd::lab::scenario::BehaviourTable;
//! use canaryd::lab::workloads;
//!
//! // Rollouts finish 3 s after a Deployment's spec changes.
//! let rollouts = tokio::spawn(workloads::run(client.clone(), Duration::from_secs(3)));
//! let mesh = Mesh::start("127.0.0.1:0".parse().unwrap()).await?;
//! let traffic = mesh.simulate(client, AppTraffic::for_canary(&canary), BehaviourTable::demo());
//! // Prometheus scrapes `mesh.scrape_target()`; the demo then sets stage's image to
//! // `scenario::Scenario::BadErrors.release_image()` (or another scenario's) and canaryd takes over.
//! # Ok(()) }
//! ```

pub mod alertmanager;
pub mod apiserver;
pub mod harness;
pub mod mesh;
pub mod mesh_server;
pub mod process;
pub mod prometheus;
pub mod scenario;
pub mod workloads;
