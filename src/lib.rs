//! canaryd: fire-and-forget progressive delivery on Kubernetes with Istio.
//!
//! The data flows observe -> decide -> act. `api` holds the resource types, `rollout` the
//! pure lifecycle, `cli` the commands; only the I/O modules talk to the network.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod crd;
pub mod lab;
pub mod notify;
pub mod rollout;
pub mod server;
pub mod telemetry;
