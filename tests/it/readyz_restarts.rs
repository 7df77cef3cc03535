//! `/readyz` tells the truth on every start: the real daemon against the lab, stopped with
//! SIGTERM and started again 20 times, must answer 200 each time within a bound once its
//! caches have synced. (An earlier bug, a waker lost between two waiters on the Canary
//! store's ready signal, kept it at 503 for good in some starts; see
//! `cluster::controller::mark_synced`.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canaryd_lab::harness::{Lab, LabOptions, LEASE_NAMESPACE};

const BINARY: &str = env!("CARGO_BIN_EXE_canaryd");
const RESTARTS: usize = 20;
/// From the start of the process to `/readyz` = 200.
const READY_WITHIN: Duration = Duration::from_secs(15);
/// From SIGTERM to the process's exit.
const EXIT_WITHIN: Duration = Duration::from_secs(15);

fn start(config: &Path, lab: &Lab, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the daemon's log opens");
    canaryd_lab::process::tethered(BINARY.as_ref())
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("KUBECONFIG", lab.kubeconfig())
        .env("POD_NAME", "canaryd-readyz")
        .env("POD_NAMESPACE", LEASE_NAMESPACE)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("the log file clones"))
        .stderr(file)
        .spawn()
        .expect("canaryd starts")
}

/// What `/readyz` answered: the status and body, or why there was no answer.
async fn readyz(http: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let answer = http
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = answer.status().as_u16();
    Ok((status, answer.text().await.unwrap_or_default()))
}

fn log_tail(log: &Path) -> String {
    canaryd_lab::process::tail(log, 30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_after_every_one_of_20_restarts() {
    let _one = crate::e2e_lab::ONE_AT_A_TIME.lock().await;
    let lab = Lab::start(LabOptions {
        alertmanager: false,
        requests_per_second: 200.0,
        ..Default::default()
    })
    .await
    .expect("the lab starts");
    // The first config of a lab gets its fixed admin port; every start reuses the file.
    let config = lab.daemon_config("canaryd-readyz").unwrap();
    let url = format!("http://127.0.0.1:{}/readyz", lab.admin_port);
    let log = lab.dir.path().join("canaryd-readyz.log");
    let http = reqwest::Client::new();
    let began = Instant::now();
    let mut slowest = Duration::ZERO;
    for attempt in 1..=RESTARTS {
        let mut daemon = start(&config, &lab, &log);
        let started = Instant::now();
        let mut last = Err("not asked yet".to_string());
        loop {
            if let Ok(Some(status)) = daemon.try_wait() {
                panic!(
                    "start {attempt}: canaryd exited ({status}) before /readyz said 200; last \
                     answer {last:?}; its log:\n{}",
                    log_tail(&log)
                );
            }
            last = readyz(&http, &url).await;
            if matches!(last, Ok((200, _))) {
                break;
            }
            if started.elapsed() > READY_WITHIN {
                let _ = daemon.kill();
                let _ = daemon.wait();
                panic!(
                    "start {attempt} of {RESTARTS}: /readyz did not answer 200 within \
                     {READY_WITHIN:?}; last answer {last:?}; canaryd's log:\n{}",
                    log_tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slowest = slowest.max(started.elapsed());

        let sent = Command::new("kill")
            .args(["-TERM", &daemon.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "start {attempt}: kill -TERM failed");
        let stopping = Instant::now();
        let status = loop {
            if let Some(status) = daemon.try_wait().expect("wait for canaryd") {
                break status;
            }
            if stopping.elapsed() > EXIT_WITHIN {
                let _ = daemon.kill();
                let _ = daemon.wait();
                panic!(
                    "start {attempt}: canaryd did not exit within {EXIT_WITHIN:?} of SIGTERM; \
                     its log:\n{}",
                    log_tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            status.success(),
            "start {attempt}: canaryd exited with {status} on SIGTERM; its log:\n{}",
            log_tail(&log)
        );
    }
    eprintln!(
        "{RESTARTS} starts in {:?}; the slowest was ready after {slowest:?}",
        began.elapsed()
    );
}
