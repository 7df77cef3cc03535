//! The daemon's configuration file (`canaryd run --config FILE`).
//!
//! YAML with humantime durations. Unknown keys and bad values are errors that name the key
//! path (`prometheus.timeout: ...`), so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::duration::HumanDuration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub prometheus: PrometheusConfig,
    /// Which metric names and labels the built-in metric kinds query.
    #[serde(default)]
    pub mesh: MeshPreset,
    /// Default time between two looks of the analysis (a Canary may override it).
    #[serde(default = "default_interval")]
    pub evaluation_interval: HumanDuration,
    #[serde(default)]
    pub leader_election: LeaderElectionConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifiers: Vec<NotifierConfig>,
    /// Links in notifications and how delivery is repeated.
    #[serde(default)]
    pub notify: NotifySettings,
    /// Which objects outside its own namespace a Canary may drive.
    #[serde(default)]
    pub references: ReferencePolicy,
    /// Where a Canary's checks and webhooks may send requests.
    #[serde(default)]
    pub egress: EgressConfig,
}

/// Where the requests a Canary's author controls (checks, webhooks, the promotion webhook)
/// may go; see [`crate::egress`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressConfig {
    /// Hosts a URL may name: `*.svc` (any name ending in `.svc`), an exact name, an IP
    /// address, or `*` (any). The Canary's own `spec.prod.host` and `spec.stage.host` are
    /// always allowed besides these.
    #[serde(default = "default_egress_hosts")]
    pub hosts: Vec<String>,
    /// Allow loopback, link-local, cloud metadata and unspecified addresses (RFC 1918
    /// addresses are always allowed).
    #[serde(default)]
    pub allow_private_addresses: bool,
    /// HTTP methods a check may use (`GET`, `HEAD`, `POST`).
    #[serde(default = "default_check_methods")]
    pub check_methods: Vec<String>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            hosts: default_egress_hosts(),
            allow_private_addresses: false,
            check_methods: default_check_methods(),
        }
    }
}

impl EgressConfig {
    /// The policy the gates enforce.
    pub fn policy(&self) -> crate::egress::EgressPolicy {
        crate::egress::EgressPolicy::new(
            &self.hosts,
            self.allow_private_addresses,
            &self.check_methods,
        )
    }
}

fn default_egress_hosts() -> Vec<String> {
    vec!["*.svc".into(), "*.svc.cluster.local".into()]
}

fn default_check_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

/// Which Deployments and VirtualServices a Canary may name outside its own namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReferencePolicy {
    /// Only objects in the Canary's namespace.
    SameNamespace,
    /// Objects in another namespace when a ReferenceGrant there allows it (the default).
    #[default]
    Granted,
    /// Any namespace: for a cluster with one tenant. canaryd warns at start-up.
    Any,
}

/// What every notifier shares. Links may contain `{namespace}` and `{canary}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifySettings {
    /// Grafana dashboard of a Canary, e.g. `https://grafana/d/canaryd?var-namespace={namespace}&var-canary={canary}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
    /// Where a person sees the Canary (a GitOps UI, the Kubernetes dashboard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_url: Option<String>,
    /// How often a firing alert is sent to Alertmanager again.
    #[serde(default = "default_resend_interval")]
    pub resend_interval: HumanDuration,
    /// How long one notification is retried before canaryd gives it up.
    #[serde(default = "default_give_up_after")]
    pub give_up_after: HumanDuration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            dashboard_url: None,
            canary_url: None,
            resend_interval: default_resend_interval(),
            give_up_after: default_give_up_after(),
        }
    }
}

fn default_resend_interval() -> HumanDuration {
    HumanDuration::from_secs(60)
}

fn default_give_up_after() -> HumanDuration {
    HumanDuration::from_secs(24 * 3600)
}

fn default_interval() -> HumanDuration {
    HumanDuration::from_secs(60)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL of the Prometheus HTTP API (Prometheus, Thanos, Mimir, VictoriaMetrics).
    pub url: String,
    #[serde(default = "default_query_timeout")]
    pub timeout: HumanDuration,
    /// Attempts per query before the look is given up (and the Canary holds).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// File holding a bearer token (for example a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// Extra headers on every query, e.g. `X-Scope-OrgID` for Mimir.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// How often Prometheus scrapes the mesh's metrics. Each look's window ends this long
    /// before now, so its last scrape has been ingested, and looks are at least 4 scrape
    /// intervals long.
    #[serde(default = "default_scrape_interval")]
    pub scrape_interval: HumanDuration,
}

fn default_scrape_interval() -> HumanDuration {
    HumanDuration::from_secs(15)
}

/// Looks are at least this many scrape intervals long: each arm's counts then cover almost
/// the same time, whatever the instants its pods were scraped at.
pub const MIN_SCRAPES_PER_LOOK: u32 = 4;

fn default_query_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

fn default_retries() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MeshPreset {
    /// `istio_requests_total` and `istio_request_duration_milliseconds_bucket`.
    #[default]
    Istio,
    /// Envoy's own cluster statistics.
    Envoy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElectionConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// Namespace of the Lease; defaults to the namespace canaryd runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default = "default_lease_duration")]
    pub lease_duration: HumanDuration,
    #[serde(default = "default_renew_deadline")]
    pub renew_deadline: HumanDuration,
}

fn yes() -> bool {
    true
}

fn default_lease_name() -> String {
    "canaryd".into()
}

fn default_lease_duration() -> HumanDuration {
    HumanDuration::from_secs(15)
}

fn default_renew_deadline() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_name: default_lease_name(),
            namespace: None,
            lease_duration: default_lease_duration(),
            renew_deadline: default_renew_deadline(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9090))
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `canaryd=debug,kube=info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A destination for rollout notifications. Secrets are read from files, never inlined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum NotifierConfig {
    /// Alertmanager's v2 API.
    #[serde(rename_all = "camelCase")]
    Alertmanager { name: String, url: String },
    /// A Slack-compatible incoming webhook whose URL is in a file.
    #[serde(rename_all = "camelCase")]
    Slack { name: String, url_file: PathBuf },
    /// A generic JSON webhook, signed with HMAC-SHA256 when a secret file is given.
    #[serde(rename_all = "camelCase")]
    Webhook {
        name: String,
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_file: Option<PathBuf>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        })
    }

    /// Parses and checks a config; the error is (key path, what is wrong and how to fix it).
    pub fn parse(text: &str) -> Result<Self, (String, String)> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".into()
            } else {
                key
            };
            (key, e.into_inner().to_string())
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
        match url::Url::parse(&self.prometheus.url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => {
                return bad(
                    "prometheus.url",
                    format!(
                        "\"{}\" is not an http(s) URL; write it like http://prometheus.istio-system:9090",
                        self.prometheus.url
                    ),
                )
            }
        }
        if self.prometheus.timeout.0.is_zero() {
            return bad("prometheus.timeout", "is zero; use for example 10s".into());
        }
        if self.prometheus.scrape_interval.0.as_secs() < 1 {
            return bad(
                "prometheus.scrapeInterval",
                format!(
                    "is {}; give Prometheus's scrape interval of the mesh's metrics, at least 1s (often 15s or 30s)",
                    self.prometheus.scrape_interval
                ),
            );
        }
        let shortest = self.prometheus.scrape_interval.0 * MIN_SCRAPES_PER_LOOK;
        if self.evaluation_interval.0 < shortest {
            return bad(
                "evaluationInterval",
                format!(
                    "is {}, shorter than {MIN_SCRAPES_PER_LOOK} scrape intervals \
                     (prometheus.scrapeInterval {}); use at least {}",
                    self.evaluation_interval,
                    self.prometheus.scrape_interval,
                    humantime::format_duration(shortest)
                ),
            );
        }
        let le = &self.leader_election;
        if le.renew_deadline >= le.lease_duration {
            return bad(
                "leaderElection.renewDeadline",
                format!(
                    "({}) must be shorter than leaseDuration ({})",
                    le.renew_deadline, le.lease_duration
                ),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return bad("log.level", format!("\"{}\": {e}", self.log.level));
        }
        for (i, h) in self.egress.hosts.iter().enumerate() {
            if let Err(e) = crate::egress::check_host_pattern(h) {
                return bad(&format!("egress.hosts[{i}]"), e);
            }
        }
        for (i, m) in self.egress.check_methods.iter().enumerate() {
            if !crate::egress::CHECK_METHODS.contains(&m.as_str()) {
                return bad(
                    &format!("egress.checkMethods[{i}]"),
                    format!(
                        "\"{m}\" is not a check method; use {}",
                        crate::egress::CHECK_METHODS.join(", ")
                    ),
                );
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, n) in self.notifiers.iter().enumerate() {
            if let NotifierConfig::Alertmanager { url, .. } | NotifierConfig::Webhook { url, .. } =
                n
            {
                if !url::Url::parse(url)
                    .is_ok_and(|u| u.scheme() == "http" || u.scheme() == "https")
                {
                    return bad(
                        &format!("notifiers[{i}].url"),
                        format!("\"{url}\" is not an http(s) URL; write it like http://alertmanager.monitoring:9093"),
                    );
                }
            }
            if !names.insert(n.name()) {
                return bad(
                    &format!("notifiers[{i}].name"),
                    format!(
                        "\"{}\" is used twice; give each notifier its own name",
                        n.name()
                    ),
                );
            }
        }
        Ok(())
    }
}

impl NotifierConfig {
    pub fn name(&self) -> &str {
        match self {
            NotifierConfig::Alertmanager { name, .. }
            | NotifierConfig::Slack { name, .. }
            | NotifierConfig::Webhook { name, .. } => name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/canaryd.yaml"));
        let config = Config::load(path).unwrap();
        assert_eq!(config.evaluation_interval, HumanDuration::from_secs(60));
        assert_eq!(
            config.prometheus.scrape_interval,
            HumanDuration::from_secs(15)
        );
        assert_eq!(config.mesh, MeshPreset::Istio);
        assert_eq!(
            config.egress,
            EgressConfig::default(),
            "the example shows the defaults"
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("prometheus: {url: 'http://127.0.0.1:9090'}").unwrap();
        assert_eq!(c.prometheus.timeout, HumanDuration::from_secs(10));
        assert!(c.leader_election.enabled);
        assert_eq!(c.admin.listen.port(), 9090);
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let (key, msg) =
            Config::parse("prometheus: {url: 'http://p:9090', timout: 5s}").unwrap_err();
        assert_eq!(key, "prometheus.timout");
        assert!(msg.contains("unknown field `timout`"), "{msg}");
    }

    #[test]
    fn bad_values_are_named_with_their_path() {
        let (key, msg) =
            Config::parse("prometheus: {url: 'http://p:9090', timeout: soon}").unwrap_err();
        assert_eq!(key, "prometheus.timeout");
        assert!(msg.contains("soon") || msg.contains("duration"), "{msg}");

        let (key, _) = Config::parse("prometheus: {url: 'p:9090'}").unwrap_err();
        assert_eq!(key, "prometheus.url");

        let (key, _) = Config::parse(
            "prometheus: {url: 'http://p'}\nleaderElection: {leaseDuration: 5s, renewDeadline: 10s}",
        )
        .unwrap_err();
        assert_eq!(key, "leaderElection.renewDeadline");

        let (key, msg) = Config::parse(
            "prometheus: {url: 'http://p', scrapeInterval: 30s}
evaluationInterval: 1m",
        )
        .unwrap_err();
        assert_eq!(key, "evaluationInterval");
        assert_eq!(
            msg,
            "is 1m, shorter than 4 scrape intervals (prometheus.scrapeInterval 30s); use at least 2m"
        );

        let (key, msg) =
            Config::parse("prometheus: {url: 'http://p'}\nnotifiers: [{type: pager, name: x}]")
                .unwrap_err();
        assert_eq!(key, "notifiers[0].type");
        assert!(msg.contains("pager"), "{msg}");
    }

    #[test]
    fn egress_defaults_to_cluster_services_and_safe_methods() {
        let c = Config::parse("prometheus: {url: 'http://p'}").unwrap();
        assert_eq!(c.egress.hosts, ["*.svc", "*.svc.cluster.local"]);
        assert!(!c.egress.allow_private_addresses);
        assert_eq!(c.egress.check_methods, ["GET", "HEAD"]);
        let c = Config::parse(
            "prometheus: {url: 'http://p'}\negress: {hosts: ['*.internal', 10.0.0.7], allowPrivateAddresses: true, checkMethods: [GET, POST]}",
        )
        .unwrap();
        let p = c.egress.policy();
        assert!(p.allows_private_addresses());
        assert!(p.check_url("http://api.internal/", &[]).is_ok());
        assert!(p.check_url("http://10.0.0.7/", &[]).is_ok());
        assert!(p.check_method("POST").is_ok());
    }

    #[test]
    fn bad_egress_entries_are_named_with_their_path() {
        let (key, msg) =
            Config::parse("prometheus: {url: 'http://p'}\negress: {hosts: ['*.svc', 'http://x']}")
                .unwrap_err();
        assert_eq!(key, "egress.hosts[1]");
        assert!(msg.contains("http://x"), "{msg}");
        let (key, msg) =
            Config::parse("prometheus: {url: 'http://p'}\negress: {checkMethods: [GET, DELETE]}")
                .unwrap_err();
        assert_eq!(key, "egress.checkMethods[1]");
        assert!(
            msg.contains("DELETE") && msg.contains("GET, HEAD, POST"),
            "{msg}"
        );
        let (key, _) = Config::parse("prometheus: {url: 'http://p'}\negress: {allowPrivate: true}")
            .unwrap_err();
        assert_eq!(key, "egress.allowPrivate");
    }
}
