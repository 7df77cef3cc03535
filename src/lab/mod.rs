//! The local lab used by `canaryd demo` and the end-to-end tests (DESIGN.md section 5): a
//! Kubernetes API server, real programs (Prometheus) started and stopped on loopback ports,
//! a simulated Istio mesh whose metrics Prometheus scrapes, and simulated Deployment
//! rollouts. Never used by the daemon against a real cluster.

pub mod apiserver;
pub mod mesh;
pub mod mesh_server;
pub mod prometheus;
pub mod scenario;
pub mod workloads;
