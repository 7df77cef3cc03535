//! A real Alertmanager (Debian package `prometheus-alertmanager`) for tests and the demo: on
//! a free loopback port, clustering off, stopped, restarted on the same port, killed on drop.

use std::path::PathBuf;
use std::time::Duration;

use super::process::{find_on_path, Server, ServerError};

/// Sends nowhere: tests read alerts back through the API.
const CONFIG: &str = "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n";

#[derive(Debug, thiserror::Error)]
pub enum AlertmanagerError {
    #[error("Alertmanager was not found on PATH (`prometheus-alertmanager` or `alertmanager`); install it with `apt-get install -y prometheus-alertmanager`")]
    NotInstalled,
    #[error(transparent)]
    Server(#[from] ServerError),
}

#[derive(Debug)]
pub struct LabAlertmanager {
    server: Server,
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
        let server = Server::prepare("alertmanager", binary)?;
        server.write("alertmanager.yml", CONFIG)?;
        Ok(Self { server })
    }

    pub async fn start() -> Result<Self, AlertmanagerError> {
        let mut am = Self::prepare()?;
        am.restart().await?;
        Ok(am)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port())
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// (Re)starts on the same port and data directory, and waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), AlertmanagerError> {
        let dir = self.server.dir();
        let args = [
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{}", self.server.port()),
            "--cluster.listen-address=".to_string(),
        ];
        let ready = format!("{}/-/ready", self.url());
        self.server
            .restart(
                &args,
                &crate::http_client().build().expect("an HTTP client"),
                &ready,
                |s| s.is_success(),
            )
            .await?;
        Ok(())
    }

    /// The active alerts Alertmanager holds (`GET /api/v2/alerts`).
    pub async fn alerts(&self) -> Result<Vec<serde_json::Value>, reqwest::Error> {
        crate::http_client()
            .build()
            .expect("an HTTP client")
            .get(format!("{}/api/v2/alerts", self.url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}
