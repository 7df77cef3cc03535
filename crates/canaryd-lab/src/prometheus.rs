//! A real Prometheus server for tests and the demo: the `prometheus` binary from PATH, on a
//! free loopback port, with its own config and data in a temporary directory. It can be
//! stopped and restarted (same port, same data) mid-test, and is killed and cleaned up when
//! dropped, also when a test panics.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::process::{find_on_path, Server, ServerError};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`prometheus` was not found on PATH; install it with `apt-get install -y prometheus`")]
    NotInstalled,
    #[error(transparent)]
    Server(#[from] ServerError),
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
    server: Server,
    web: WebConfig,
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
        let server = Server::prepare("prometheus", binary)?;
        server.write("prometheus.yml", &config_yaml(targets, scrape_interval))?;
        server.write("web.yml", &web.yaml())?;
        let mut prometheus = Self { server, web };
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
        format!("{scheme}://127.0.0.1:{}", self.server.port())
    }

    /// Kills the server; its data stays for [`Self::restart`].
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the server (again) on the same port with the same data and waits until ready.
    pub async fn restart(&mut self) -> Result<(), LabError> {
        let dir = self.server.dir();
        let args = [
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{}", self.server.port()),
            format!("--web.config.file={}", dir.join("web.yml").display()),
            "--storage.tsdb.retention.time=1d".to_string(),
        ];
        // The lab's own probe trusts the lab's certificate; it only asks "are you up?".
        let http = crate::http_client()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| ServerError::Io {
                what: "cannot build an HTTP client".into(),
                source: std::io::Error::other(e),
            })?;
        // Behind basic auth, "401" is the answer of a server that is up.
        let auth = !self.web.basic_auth_users.is_empty();
        let ready = format!("{}/-/ready", self.url());
        self.server
            .restart(&args, &http, &ready, |status| {
                status.is_success() || (auth && status == reqwest::StatusCode::UNAUTHORIZED)
            })
            .await?;
        Ok(())
    }

    /// Process id of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

fn config_yaml(targets: &[ScrapeTarget], scrape_interval: Duration) -> String {
    // Prometheus durations accept whole milliseconds ("1000ms", "15000ms").
    let interval = format!("{}ms", scrape_interval.as_millis());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::find_on_path;

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
