//! The HTTP side: instant queries against anything that serves Prometheus's query API, with
//! a timeout, bounded retries with backoff, TLS, credentials read from files and extra headers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use jiff::Timestamp;
use prometheus_http_query::response::Data;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;

use super::{shown_query, TelemetryError};
use crate::config::PrometheusConfig;

/// First pause between two attempts; it doubles after each failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One series of an instant-query result.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// A Prometheus query client built from the daemon's `prometheus` config.
#[derive(Clone)]
pub struct PromClient {
    client: prometheus_http_query::Client,
    url: String,
    timeout: Duration,
    attempts: u32,
    first_backoff: Duration,
    auth: Option<Auth>,
}

#[derive(Clone)]
enum Auth {
    Bearer(PathBuf),
    Basic { username: String, password: PathBuf },
}

impl std::fmt::Debug for PromClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromClient")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl PromClient {
    pub fn new(config: &PrometheusConfig) -> Result<Self, TelemetryError> {
        let bad = |key, message: String| TelemetryError::Config { key, message };
        let url = url::Url::parse(&config.url)
            .map_err(|e| bad("url", format!("\"{}\" is not a URL: {e}", config.url)))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "url",
                "holds credentials; put them in basicAuth.passwordFile or bearerTokenFile".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| bad("headers", format!("\"{name}\" is not a header name: {e}")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| bad("headers", format!("value of {name} is not valid: {e}")))?;
            headers.insert(name, value);
        }
        let mut builder = crate::tls::http_client()
            .timeout(config.timeout.0)
            .default_headers(headers);
        if let Some(tls) = &config.tls {
            if let Some(ca) = &tls.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| bad("tls.caFile", format!("cannot read {}: {e}", ca.display())))?;
                for cert in reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| bad("tls.caFile", format!("{} is not PEM: {e}", ca.display())))?
                {
                    builder = builder.add_root_certificate(cert);
                }
            }
            builder = builder.tls_danger_accept_invalid_certs(tls.insecure_skip_verify);
        }
        let http = builder
            .build()
            .map_err(|e| bad("tls", format!("cannot build the HTTP client: {e}")))?;
        let client = prometheus_http_query::Client::from(http, url.as_str())
            .map_err(|e| bad("url", e.to_string()))?;
        let auth = match (&config.bearer_token_file, &config.basic_auth) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "bearerTokenFile",
                    "set either bearerTokenFile or basicAuth, not both".into(),
                ))
            }
            (Some(file), None) => Some(Auth::Bearer(file.clone())),
            (None, Some(basic)) => Some(Auth::Basic {
                username: basic.username.clone(),
                password: basic.password_file.clone(),
            }),
            (None, None) => None,
        };
        Ok(Self {
            client,
            url: config.url.clone(),
            timeout: config.timeout.0,
            attempts: config.retries.max(1),
            first_backoff: FIRST_BACKOFF,
            auth,
        })
    }

    /// Overrides the first pause between attempts (tests use a short one).
    pub fn with_first_backoff(mut self, backoff: Duration) -> Self {
        self.first_backoff = backoff;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Evaluates `query` at the instant `at`. Transient failures are retried with doubling
    /// pauses, up to the configured number of attempts; bad PromQL is not retried.
    pub async fn instant(&self, query: &str, at: Timestamp) -> Result<Vec<Sample>, TelemetryError> {
        let mut backoff = self.first_backoff;
        let mut attempt = 1;
        loop {
            match self.attempt(query, at, attempt).await {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    tracing::debug!(
                        attempt,
                        reason = e.reason(),
                        "Prometheus query failed; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn attempt(
        &self,
        query: &str,
        at: Timestamp,
        attempt: u32,
    ) -> Result<Vec<Sample>, TelemetryError> {
        let mut request = self
            .client
            .query(query)
            // Prometheus takes fractional seconds; it keeps milliseconds.
            .query("time", unix_seconds(at))
            .timeout(self.timeout.as_millis().try_into().unwrap_or(i64::MAX));
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.header()?);
        }
        // POST: a batched query over many hosts does not fit in a URL.
        let result = request
            .post()
            .await
            .map_err(|e| self.classify(query, attempt, e))?;
        match result.into_inner().0 {
            Data::Vector(v) => Ok(v
                .into_iter()
                .map(|s| {
                    let (labels, sample) = s.into_inner();
                    Sample {
                        labels,
                        value: sample.value(),
                    }
                })
                .collect()),
            Data::Matrix(_) => Err(unexpected(query, "range vector")),
            Data::Scalar(_) => Err(unexpected(query, "scalar")),
        }
    }
}

impl PromClient {
    fn classify(
        &self,
        query: &str,
        attempt: u32,
        error: prometheus_http_query::Error,
    ) -> TelemetryError {
        use prometheus_http_query::Error;
        let status = match &error {
            Error::Client(e) => e.inner().and_then(reqwest::Error::status),
            _ => None,
        };
        match (error, status) {
            (Error::Prometheus(p), _) => TelemetryError::Query {
                query: shown_query(query),
                error_type: p.error_type().to_string(),
                message: p.message().to_string(),
            },
            // 429 means overloaded: worth another attempt, like a 5xx.
            (_, Some(s)) if s.is_client_error() && s != StatusCode::TOO_MANY_REQUESTS => {
                TelemetryError::Refused {
                    url: self.url.clone(),
                    status: s.as_u16(),
                }
            }
            (other, _) => TelemetryError::Unavailable {
                url: self.url.clone(),
                attempts: attempt,
                message: error_chain(&other),
            },
        }
    }
}

impl Auth {
    /// Read at every query so a rotated Secret is picked up without a restart.
    fn header(&self) -> Result<HeaderValue, TelemetryError> {
        let value = match self {
            Auth::Bearer(file) => format!("Bearer {}", read_secret("bearer token", file)?),
            Auth::Basic { username, password } => {
                let password = read_secret("basic auth password", password)?;
                let pair = format!("{username}:{password}");
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
        };
        let mut value = HeaderValue::try_from(value).map_err(|_| TelemetryError::Config {
            key: "bearerTokenFile",
            message: "the credential holds characters a header cannot carry".into(),
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

fn read_secret(what: &'static str, path: &Path) -> Result<String, TelemetryError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|e| TelemetryError::Credentials {
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// `1700000000.123`: exact to the millisecond, as Prometheus stores time.
fn unix_seconds(at: Timestamp) -> String {
    let ms = at.as_millisecond();
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

fn unexpected(query: &str, kind: &'static str) -> TelemetryError {
    TelemetryError::UnexpectedResult {
        query: shown_query(query),
        kind,
    }
}

/// "failed to send request: error sending request: connection refused": the whole chain,
/// since the top error alone rarely says what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}
