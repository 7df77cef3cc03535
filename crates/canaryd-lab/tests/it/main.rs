//! The lab's integration tests, one module per part, linked into one test binary: the API
//! server (through kube-rs and the real kubectl), the simulated cluster, mesh and rollouts,
//! and the Prometheus supervisor.

mod apiserver;
mod apiserver_kubectl;
mod prometheus;
mod sim_cluster;
mod sim_mesh;
mod sim_workloads;
