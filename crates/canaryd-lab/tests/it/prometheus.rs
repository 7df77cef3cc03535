//! The lab's Prometheus supervisor: a test that panics leaves no server behind.

use std::path::Path;
use std::time::Duration;

use canaryd_lab::prometheus::LabPrometheus;

#[tokio::test]
async fn a_panicking_test_leaves_no_prometheus_running() {
    let (pid_tx, pid_rx) = tokio::sync::oneshot::channel();
    let test = tokio::spawn(async move {
        let prometheus = LabPrometheus::start(&[], Duration::from_secs(1))
            .await
            .unwrap();
        pid_tx.send(prometheus.pid().unwrap()).unwrap();
        panic!("a failing assertion while Prometheus runs");
    });
    assert!(test.await.unwrap_err().is_panic());
    let pid = pid_rx.await.unwrap();
    // Killed and reaped on drop: no process (not even a zombie) with that id.
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}
