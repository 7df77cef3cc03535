//! A real Prometheus server for tests and the demo: the `prometheus` binary from PATH, on a
//! free loopback port, with its own config and data in a temporary directory. It can be
//! stopped and restarted (same port, same data) mid-test, and is killed and cleaned up when
//! dropped, also when a test panics.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take on a busy machine before it is reported as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`prometheus` was not found on PATH; install it with `apt-get install -y prometheus`")]
    NotInstalled,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("prometheus exited before it was ready ({status}); the end of its log:\n{log}")]
    Exited { status: String, log: String },
    #[error("prometheus was not ready within {timeout:?}; the end of its log:\n{log}")]
    NotReady { timeout: Duration, log: String },
}

/// A job scraped by the lab's Prometheus: `http://<address>/metrics`.
#[derive(Clone, Debug)]
pub struct ScrapeTarget {
    pub job: String,
    pub address: SocketAddr,
}

/// Prometheus's `--web.config.file`: TLS and basic auth on its HTTP API.
#[derive(Clone, Debug, Default)]
pub struct WebConfig {
    /// PEM certificate and key files; the server speaks https when set.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// (username, bcrypt hash of the password).
    pub basic_auth_users: Vec<(String, String)>,
}

impl WebConfig {
    fn yaml(&self) -> String {
        let mut yaml = String::new();
        if let Some((cert, key)) = &self.tls {
            let _ = write!(
                yaml,
                "tls_server_config:\n  cert_file: {:?}\n  key_file: {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            );
        }
        if !self.basic_auth_users.is_empty() {
            yaml.push_str("basic_auth_users:\n");
            for (user, hash) in &self.basic_auth_users {
                let _ = writeln!(yaml, "  {user:?}: {hash:?}");
            }
        }
        yaml
    }
}

/// A running (or stopped) Prometheus owned by the lab.
#[derive(Debug)]
pub struct LabPrometheus {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    web: WebConfig,
    child: Option<Child>,
}

impl LabPrometheus {
    /// Writes the config, starts Prometheus and waits until it answers `/-/ready`.
    pub async fn start(
        targets: &[ScrapeTarget],
        scrape_interval: Duration,
    ) -> Result<Self, LabError> {
        Self::start_with_web_config(targets, scrape_interval, WebConfig::default()).await
    }

    /// [`Self::start`] with TLS and/or basic auth in front of the HTTP API.
    pub async fn start_with_web_config(
        targets: &[ScrapeTarget],
        scrape_interval: Duration,
        web: WebConfig,
    ) -> Result<Self, LabError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let binary = find_on_path("prometheus", &path).ok_or(LabError::NotInstalled)?;
        let dir = tempfile::Builder::new()
            .prefix("canaryd-prometheus-")
            .tempdir()
            .map_err(|source| io("cannot create a temporary directory", source))?;
        let config = config_yaml(targets, scrape_interval);
        std::fs::write(dir.path().join("prometheus.yml"), config)
            .map_err(|source| io("cannot write prometheus.yml", source))?;
        std::fs::write(dir.path().join("web.yml"), web.yaml())
            .map_err(|source| io("cannot write web.yml", source))?;
        let port = free_port()?;
        let mut prometheus = Self {
            binary,
            dir,
            port,
            web,
            child: None,
        };
        prometheus.restart().await?;
        Ok(prometheus)
    }

    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        let scheme = if self.web.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server; its data stays for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port with the same data and waits until ready.
    pub async fn restart(&mut self) -> Result<(), LabError> {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|source| io("cannot open prometheus.log", source))?;
        let log_err = log
            .try_clone()
            .map_err(|source| io("cannot open prometheus.log", source))?;
        let dir = self.dir.path();
        let child = Command::new(&self.binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg(format!(
                "--web.config.file={}",
                dir.join("web.yml").display()
            ))
            .arg("--storage.tsdb.retention.time=1d")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| io(&format!("cannot start {}", self.binary.display()), source))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), LabError> {
        // The lab's own probe trusts the lab's certificate; it only asks "are you up?".
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| io("cannot build an HTTP client", std::io::Error::other(e)))?;
        // Behind basic auth, "401" is the answer of a server that is up.
        let auth = !self.web.basic_auth_users.is_empty();
        let ready = format!("{}/-/ready", self.url());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(LabError::Exited {
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
            if answer.is_ok_and(|r| {
                r.status().is_success() || (auth && r.status() == reqwest::StatusCode::UNAUTHORIZED)
            }) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(LabError::NotReady {
                    timeout: READY_TIMEOUT,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Process id of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for LabPrometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config_yaml(targets: &[ScrapeTarget], scrape_interval: Duration) -> String {
    let interval = crate::telemetry::promql::format_window(scrape_interval);
    let mut yaml = format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\nscrape_configs:\n"
    );
    for t in targets {
        let _ = write!(
            yaml,
            "  - job_name: {:?}\n    static_configs:\n      - targets: [{:?}]\n",
            t.job,
            t.address.to_string()
        );
    }
    yaml
}

pub(crate) fn find_on_path(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub(crate) fn free_port() -> Result<u16, LabError> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| io("cannot find a free loopback port", source))
}

fn io(what: &str, source: std::io::Error) -> LabError {
    LabError::Io {
        what: what.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_package_to_install() {
        assert_eq!(find_on_path("prometheus", std::ffi::OsStr::new("")), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus"), "not executable").unwrap();
        assert_eq!(find_on_path("prometheus", dir.path().as_os_str()), None);
        assert!(LabError::NotInstalled
            .to_string()
            .contains("apt-get install -y prometheus"));
    }

    #[test]
    fn config_scrapes_every_target_at_the_interval() {
        let yaml = config_yaml(
            &[ScrapeTarget {
                job: "mesh".into(),
                address: "127.0.0.1:9999".parse().unwrap(),
            }],
            Duration::from_millis(500),
        );
        assert_eq!(
            yaml,
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\n  evaluation_interval: 500ms\nscrape_configs:\n  - job_name: \"mesh\"\n    static_configs:\n      - targets: [\"127.0.0.1:9999\"]\n"
        );
    }
}
