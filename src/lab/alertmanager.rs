//! A real Alertmanager (Debian package `prometheus-alertmanager`) for tests and the demo: on
//! a free loopback port, clustering off, stopped, restarted on the same port, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::prometheus::{find_on_path, free_port};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Sends nowhere: tests read alerts back through the API.
const CONFIG: &str = "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n";

#[derive(Debug, thiserror::Error)]
pub enum AlertmanagerError {
    #[error("Alertmanager was not found on PATH (`prometheus-alertmanager` or `alertmanager`); install it with `apt-get install -y prometheus-alertmanager`")]
    NotInstalled,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("alertmanager exited before it was ready ({status}); the end of its log:\n{log}")]
    Exited { status: String, log: String },
    #[error("alertmanager was not ready within {timeout:?}; the end of its log:\n{log}")]
    NotReady { timeout: Duration, log: String },
}

fn io(what: &str, source: std::io::Error) -> AlertmanagerError {
    AlertmanagerError::Io {
        what: what.into(),
        source,
    }
}

#[derive(Debug)]
pub struct LabAlertmanager {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl LabAlertmanager {
    /// The binary, when installed.
    pub fn binary() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        find_on_path("prometheus-alertmanager", &path)
            .or_else(|| find_on_path("alertmanager", &path))
    }

    /// Picks a port and writes the config without starting (see [`Self::restart`]).
    pub fn prepare() -> Result<Self, AlertmanagerError> {
        let binary = Self::binary().ok_or(AlertmanagerError::NotInstalled)?;
        let dir = tempfile::Builder::new()
            .prefix("canaryd-alertmanager-")
            .tempdir()
            .map_err(|source| io("cannot create a temporary directory", source))?;
        std::fs::write(dir.path().join("alertmanager.yml"), CONFIG)
            .map_err(|source| io("cannot write alertmanager.yml", source))?;
        let port = free_port().map_err(|e| io("no free port", std::io::Error::other(e)))?;
        Ok(Self {
            binary,
            dir,
            port,
            child: None,
        })
    }

    pub async fn start() -> Result<Self, AlertmanagerError> {
        let mut am = Self::prepare()?;
        am.restart().await?;
        Ok(am)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts on the same port and data directory, and waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), AlertmanagerError> {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|source| io("cannot open alertmanager.log", source))?;
        let log_err = log
            .try_clone()
            .map_err(|source| io("cannot open alertmanager.log", source))?;
        let dir = self.dir.path();
        let child = Command::new(&self.binary)
            .arg(format!(
                "--config.file={}",
                dir.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| io(&format!("cannot start {}", self.binary.display()), source))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), AlertmanagerError> {
        let http = reqwest::Client::new();
        let ready = format!("{}/-/ready", self.url());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(AlertmanagerError::Exited {
                        status: status.to_string(),
                        log: self.log_tail(),
                    });
                }
            }
            let answer = http
                .get(&ready)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(AlertmanagerError::NotReady {
                    timeout: READY_TIMEOUT,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The active alerts Alertmanager holds (`GET /api/v2/alerts`).
    pub async fn alerts(&self) -> Result<Vec<serde_json::Value>, reqwest::Error> {
        reqwest::Client::new()
            .get(format!("{}/api/v2/alerts", self.url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("alertmanager.log")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for LabAlertmanager {
    fn drop(&mut self) {
        self.stop();
    }
}
