//! The local lab used by `canaryd demo` and the end-to-end tests (DESIGN.md section 5): a
//! Kubernetes API server, real programs (Prometheus) started and stopped on loopback ports,
//! and the simulated parts of a cluster. Never used by the daemon against a real cluster.

pub mod apiserver;
pub mod prometheus;
