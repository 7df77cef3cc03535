//! The lab's Kubernetes API server: an in-process HTTP server on a loopback port that speaks
//! the Kubernetes REST protocol for the resources canaryd and a person use: Namespaces,
//! Services, Secrets (webhook signing keys), Events (core and `events.k8s.io`, one storage),
//! Deployments (with `scale`), Leases, CRDs and the custom resources they define (Canaries,
//! Istio's VirtualServices and Gateways). canaryd reaches it with its ordinary kube-rs client
//! and the real `kubectl` works against it, through the kubeconfig it writes.
//!
//! Modules: `store` (objects, resourceVersions, history, and the writes: admission, CRDs,
//! deletion), `watch` (per-client event streams), `handlers` (HTTP), `discovery` (discovery
//! and OpenAPI documents), `registry` (served resources), `kinds` (the built-in kinds, shared
//! by `registry`, `builtins` and `table`), `validation` (CRD schemas, metadata rules),
//! `builtins` (built-in kinds' defaults and checks), `patch` (merge, JSON and strategic merge
//! patches), `fields` (managedFields and server-side apply), `scale`, `selector`, `table`
//! (kubectl's server-side printing), `protobuf` (kubectl's `create namespace|secret` bodies),
//! `kubeconfig`, `error` (`metav1.Status`), `write_log` (who wrote which weights, status and
//! Lease, in commit order, for tests to check) and `faults` (answers held back, set by a test
//! at run time).
//!
//! Simplified, on purpose:
//! - Server-side apply tracks ownership in real `managedFields`; list semantics come from the
//!   CRD schema for custom resources and from field names for built-in kinds (see `fields`).
//! - Strategic merge patch knows the built-in kinds' keyed lists by field name (see `patch`).
//! - Unknown fields are pruned (and refused under `fieldValidation=Strict`) only for custom
//!   resources; built-in kinds have no schema here, only the checks in `builtins`.
//! - kubectl's `apply` works with its default `--validate=strict`: the OpenAPI v3 documents
//!   say that the server validates fields itself, and carry the CRDs' schemas for `kubectl
//!   explain`; `/openapi/v2` is 404.
//! - Deleting a Namespace or a CRD removes what it contains at once (no Terminating phase).
//! - Watches replay from a bounded history (`history_limit`); older resourceVersions get the
//!   `410 Expired` ERROR event a real server streams.
//!
//! Not modelled: authentication and authorization (a request's bearer token is only recorded
//! as the writer in the write log), admission webhooks, CEL validation rules
//! (`x-kubernetes-validations`), version conversion of custom resources (all served versions
//! are views of one object, validated with the storage version's schema), pagination (`limit`
//! is ignored; lists are whole), protobuf and CBOR beyond the Namespace and Secret bodies
//! (other protobuf bodies, such as `kubectl create deployment`'s, get a 415 that says to use
//! `kubectl create -f` or `apply -f`; responses are always JSON), controllers (nothing sets a
//! Deployment's status but its clients), Pods, ConfigMaps and ReplicaSets.

mod builtins;
mod discovery;
mod error;
mod faults;
mod fields;
mod handlers;
mod kinds;
mod kubeconfig;
mod patch;
mod protobuf;
mod registry;
mod scale;
mod selector;
mod store;
mod table;
mod validation;
mod watch;
mod write_log;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize as _;
use serde_json::Value;

pub use error::ApiError;
pub use faults::Delay;
use store::{FieldValidation, Store, WriteOptions};
pub use write_log::{Resulting, RouteWeight, Verb, WriteRecord};

/// Istio's VirtualService and Gateway CRDs (`networking.istio.io/v1`), as committed in deploy/.
pub const ISTIO_CRDS_YAML: &str = include_str!("../../../../deploy/istio/crds.yaml");

/// The field manager of objects the lab installs itself.
const LAB_MANAGER: &str = "canaryd-lab";

#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// Changes kept for watches that resume from a resourceVersion; older ones get 410.
    pub history_limit: usize,
    /// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Namespaces that exist from the start.
    pub namespaces: Vec<String>,
    /// Serve VirtualServices and Gateways from the start.
    pub install_istio_crds: bool,
    /// Serve Canaries from the start.
    pub install_canary_crd: bool,
    /// Serve the Gateway API's ReferenceGrants (the subset canaryd reads) from the start.
    pub install_reference_grant_crd: bool,
    /// Also append the write log (see [`ApiServerHandle::write_log`]) to this file, as JSON
    /// lines.
    pub write_log_file: Option<PathBuf>,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(10),
            namespaces: vec!["default".to_string()],
            install_istio_crds: false,
            install_canary_crd: false,
            install_reference_grant_crd: false,
            write_log_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error("cannot write the kubeconfig file: {0}")]
    Kubeconfig(#[source] std::io::Error),
    #[error("cannot open the write log's file: {0}")]
    WriteLog(#[source] std::io::Error),
    #[error("cannot install {what}: {source}")]
    Install {
        what: String,
        #[source]
        source: InstallError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the manifest is not YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("{api_version} {kind} is not served; install its CRD first")]
    NotServed { api_version: String, kind: String },
    #[error("the server refused it: {0}")]
    Refused(#[from] ApiError),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the lab's server URL is not a URI: {0}")]
    Url(#[from] axum::http::uri::InvalidUri),
    #[error("cannot build a kube client: {0}")]
    Kube(#[from] kube::Error),
}

pub struct ApiServer;

impl ApiServer {
    /// Binds 127.0.0.1 on an OS-picked port, writes a kubeconfig and serves until the handle
    /// is dropped (or `shutdown`). Must be called inside a Tokio runtime.
    pub async fn start(options: ApiServerOptions) -> Result<ApiServerHandle, StartError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(StartError::Bind)?;
        let address = listener.local_addr().map_err(StartError::Bind)?;
        let url = format!("http://{address}");
        let dir = tempfile::tempdir().map_err(StartError::Kubeconfig)?;
        let kubeconfig = dir.path().join("kubeconfig");
        kubeconfig::write(&kubeconfig, &url).map_err(StartError::Kubeconfig)?;
        let store = Arc::new(Store::new(options.history_limit));
        if let Some(path) = &options.write_log_file {
            store.write_log_to(path).map_err(StartError::WriteLog)?;
        }
        let faults = Arc::new(faults::Faults::default());
        let (shutdown, shutdown_signal) = tokio::sync::watch::channel(false);
        let state = Arc::new(handlers::AppState {
            store: store.clone(),
            faults: faults.clone(),
            server_address: address.to_string(),
            bookmark_interval: options.bookmark_interval,
            shutdown: shutdown_signal.clone(),
        });
        let app = handlers::router(state);
        let mut stop = shutdown_signal;
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            });
            if let Err(error) = serve.await {
                tracing::warn!(%error, "lab API server stopped");
            }
        });
        let handle = ApiServerHandle {
            address,
            url,
            store,
            faults,
            kubeconfig,
            _dir: dir,
            shutdown,
            task,
        };
        for namespace in &options.namespaces {
            let manifest =
                format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n");
            handle
                .install(&manifest)
                .map_err(|source| StartError::Install {
                    what: format!("namespace {namespace}"),
                    source,
                })?;
        }
        let crds = [
            (
                options.install_canary_crd,
                "the Canary CRD",
                canaryd_api::crd::canary_crd_yaml(),
            ),
            (
                options.install_reference_grant_crd,
                "the ReferenceGrant CRD",
                canaryd_api::crd::reference_grant_crd_yaml(),
            ),
            (
                options.install_istio_crds,
                "the Istio CRDs",
                ISTIO_CRDS_YAML.to_string(),
            ),
        ];
        for (_, what, manifest) in crds.iter().filter(|(wanted, ..)| *wanted) {
            handle
                .install(manifest)
                .map_err(|source| StartError::Install {
                    what: (*what).into(),
                    source,
                })?;
        }
        Ok(handle)
    }
}

/// A running server; dropping it stops the server and ends open watches.
pub struct ApiServerHandle {
    address: SocketAddr,
    url: String,
    store: Arc<Store>,
    faults: Arc<faults::Faults>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServerHandle {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig file for kubectl (`--kubeconfig`) and kube-rs; lives as long as the handle.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes a kubeconfig for this server to `path` (for a person's `KUBECONFIG` during the
    /// demo); it stops working when the server stops.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        kubeconfig::write(path, &self.url)
    }

    /// A kube-rs client for this server, default namespace `default`; its writes are
    /// `canaryd-lab`'s in the write log.
    pub fn client(&self) -> Result<kube::Client, ClientError> {
        self.client_as(LAB_MANAGER)
    }

    /// A kube-rs client whose requests carry `writer` as their bearer token, which is all
    /// the write log records of who wrote (the lab checks no credentials).
    pub fn client_as(&self, writer: &str) -> Result<kube::Client, ClientError> {
        let mut config = kube::Config::new(self.url.parse()?);
        if let Ok(token) = axum::http::HeaderValue::from_str(&format!("Bearer {writer}")) {
            config
                .headers
                .push((axum::http::header::AUTHORIZATION, token));
        }
        Ok(kube::Client::try_from(config)?)
    }

    /// A kubeconfig like [`Self::kubeconfig_path`]'s whose user has the bearer token
    /// `writer`: a daemon started with it is `writer` in the write log.
    pub fn write_kubeconfig_as(&self, path: &Path, writer: &str) -> std::io::Result<()> {
        kubeconfig::write_with_token(path, &self.url, Some(writer))
    }

    /// Every committed write of a VirtualService, Canary, Deployment or Lease so far, in
    /// commit order (module `write_log`).
    pub fn write_log(&self) -> Vec<WriteRecord> {
        self.store.write_log_since(0)
    }

    /// The write log's records after the one numbered `seq`.
    pub fn write_log_since(&self, seq: u64) -> Vec<WriteRecord> {
        self.store.write_log_since(seq)
    }

    /// From now on, holds back the answers `delay` names (module `faults`); `None` ends it.
    pub fn delay_responses(&self, delay: Option<Delay>) {
        self.faults.set_delay(delay);
    }

    /// How many answers were held back so far.
    pub fn delayed_responses(&self) -> u64 {
        self.faults.delayed()
    }

    /// Creates every object of a (multi-document) YAML manifest, CRDs first served at once.
    /// Objects without a namespace go to `default`.
    pub fn install(&self, manifest: &str) -> Result<Vec<Value>, InstallError> {
        let mut created = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(manifest) {
            let mut object = Value::deserialize(document)?;
            store::normalize_numbers(&mut object);
            if object.is_null() {
                continue;
            }
            let api_version = object["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let kind = object["kind"].as_str().unwrap_or_default().to_string();
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
            let resource = self
                .store
                .registry()
                .all()
                .find(|r| r.group == group && r.kind == kind && r.version(version).is_some())
                .cloned()
                .ok_or_else(|| InstallError::NotServed {
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                })?;
            let namespace = if resource.namespaced {
                object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string()
            } else {
                String::new()
            };
            let options = WriteOptions {
                manager: LAB_MANAGER.to_string(),
                writer: LAB_MANAGER.to_string(),
                dry_run: false,
                field_validation: FieldValidation::Strict,
                force: false,
            };
            let written = self.store.create(&resource, &namespace, object, &options)?;
            created.push(written.object);
        }
        Ok(created)
    }

    /// Stops serving and ends open watches.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for ApiServerHandle {
    fn drop(&mut self) {
        self.shutdown();
        self.task.abort();
    }
}
