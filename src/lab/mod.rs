//! The local lab for the demo and the end-to-end tests (DESIGN.md section 5): a simulated
//! Istio mesh whose metrics the real Prometheus scrapes, and simulated Deployment rollouts.
//! Nothing here runs in a real cluster.

pub mod mesh;
pub mod mesh_server;
pub mod scenario;
pub mod workloads;
