//! canaryd: fire-and-forget progressive delivery on Kubernetes with Istio.
//!
//! The data flows observe -> decide -> act (docs/architecture.md, section 2). `api` (the
//! `canaryd-api` crate) holds the resource types, `analysis` and `rollout` the pure core,
//! `cli` the commands; only `telemetry`, `cluster` and `notify` talk to the network, and
//! `egress` rules what the requests a Canary's author writes may reach.
#![forbid(unsafe_code)]

pub use canaryd_api as api;

pub mod analysis;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod egress;
pub mod failpoint;
pub mod notify;
pub mod rollout;
pub mod server;
pub mod telemetry;
pub mod tls;
