//! A real server program the lab runs (Prometheus, Alertmanager): its binary from PATH, its
//! files in a temporary directory, a free loopback port and a log file. It is (re)started on
//! the same port and data, waited for until its readiness URL answers, and killed when
//! dropped, also when a test panics. Every child the lab starts is tethered to it
//! ([`tethered`]): it is killed when the lab's process dies, even by SIGKILL.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take on a busy machine before it is reported as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited before it was ready ({status}); the end of its log:\n{log}")]
    Exited {
        name: &'static str,
        status: String,
        log: String,
    },
    #[error("{name} was not ready within {timeout:?}; the end of its log:\n{log}")]
    NotReady {
        name: &'static str,
        timeout: Duration,
        log: String,
    },
}

fn io(what: impl Into<String>, source: std::io::Error) -> ServerError {
    ServerError::Io {
        what: what.into(),
        source,
    }
}

#[derive(Debug)]
pub struct Server {
    name: &'static str,
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Server {
    /// A temporary directory and a free port for `binary`; nothing runs yet.
    pub fn prepare(name: &'static str, binary: PathBuf) -> Result<Self, ServerError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("canaryd-{name}-"))
            .tempdir()
            .map_err(|source| io("cannot create a temporary directory", source))?;
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|source| io("cannot find a free loopback port", source))?;
        Ok(Self {
            name,
            binary,
            dir,
            port,
            child: None,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Writes a file into the server's directory.
    pub fn write(&self, file: &str, content: &str) -> Result<(), ServerError> {
        std::fs::write(self.dir().join(file), content)
            .map_err(|source| io(format!("cannot write {file}"), source))
    }

    /// Kills the server; its data stays for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) with `args` and waits until `ready_url` answers with a
    /// status `ready` accepts.
    pub async fn restart(
        &mut self,
        args: &[String],
        http: &reqwest::Client,
        ready_url: &str,
        ready: impl Fn(reqwest::StatusCode) -> bool,
    ) -> Result<(), ServerError> {
        self.stop();
        let log_name = format!("{}.log", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|source| io(format!("cannot open {log_name}"), source))?;
        let log_err = log
            .try_clone()
            .map_err(|source| io(format!("cannot open {log_name}"), source))?;
        let child = tethered(&self.binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| io(format!("cannot start {}", self.binary.display()), source))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(ServerError::Exited {
                        name: self.name,
                        status: status.to_string(),
                        log: self.log_tail(),
                    });
                }
            }
            let answer = http
                .get(ready_url)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|r| ready(r.status())) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(ServerError::NotReady {
                    name: self.name,
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
        self.dir().join(format!("{}.log", self.name))
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 20)
    }
}

/// The last `lines` lines of a log file (empty when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command for `binary` that the kernel kills (SIGKILL) when the thread that starts it
/// dies, so a lab killed without warning leaves no server behind. It runs the program
/// through util-linux's `setpriv --pdeathsig`, which sets the signal and then execs the
/// program (same pid). Without `setpriv` on PATH the child is not tethered.
pub fn tethered(binary: &Path) -> Command {
    match find_on_path("setpriv", &std::env::var_os("PATH").unwrap_or_default()) {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            command.args(["--pdeathsig", "KILL", "--"]).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// The first executable file called `name` on `path` (a PATH value).
pub fn find_on_path(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
