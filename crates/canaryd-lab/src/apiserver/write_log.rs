//! The write log: every successful write (create, update, patch, delete, `scale`) of a
//! VirtualService, a Canary (spec or status), a Deployment or a Lease, in commit order, with
//! who wrote it and what the object looks like afterwards (the weights per destination host,
//! the Canary's phase and step, the Lease's holder). Tests read it in process
//! ([`super::ApiServerHandle::write_log`]) and check properties over it, such as "never two
//! writers within one lease term"; it can also go to a file as JSON lines, for debugging.
//!
//! The writer is what the request carries: the bearer token of its kubeconfig (the lab has
//! no authentication; the harness gives each daemon a token that is its name), else
//! `anonymous`. A write that changes nothing (a no-op, which a real server does not commit)
//! is not logged.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// The kinds whose writes are logged.
const LOGGED_KINDS: [&str; 4] = ["VirtualService", "Canary", "Deployment", "Lease"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Create,
    Update,
    Patch,
    Delete,
}

/// One committed write.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteRecord {
    /// 1, 2, 3, ... in commit order.
    pub seq: u64,
    /// Wall-clock time of the commit.
    pub at: jiff::Timestamp,
    /// Time since the server started, on the monotonic clock.
    #[serde(serialize_with = "millis")]
    pub elapsed: Duration,
    /// The bearer token of the request (the harness gives each daemon its name), or
    /// `anonymous`.
    pub writer: String,
    pub verb: Verb,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `Some("status")` for a write through the status subresource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subresource: Option<&'static str>,
    /// The object's resourceVersion after the write (the store's global counter).
    pub resource_version: u64,
    /// What the object looks like after the write (before, for a delete).
    pub after: Resulting,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// One destination of an HTTP route of a VirtualService.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteWeight {
    /// The route's `name`, empty when it has none.
    pub route: String,
    pub host: String,
    /// The destination's weight; a destination without one counts as 0, as Istio reads it
    /// when the route has several destinations.
    pub weight: i64,
}

/// The fields of the written object the checks need.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Resulting {
    #[serde(rename_all = "camelCase")]
    VirtualService { weights: Vec<RouteWeight> },
    #[serde(rename_all = "camelCase")]
    Canary {
        phase: Option<String>,
        step: Option<u64>,
        stage_weight: Option<u64>,
        stage_revision: Option<String>,
        rolled_back_revision: Option<String>,
        /// `status.trafficIntent` as written, if any.
        traffic_intent: Option<Value>,
        generation: Option<i64>,
    },
    #[serde(rename_all = "camelCase")]
    Deployment {
        /// The first container's image.
        image: Option<String>,
        generation: Option<i64>,
    },
    #[serde(rename_all = "camelCase")]
    Lease {
        holder: Option<String>,
        renew_time: Option<String>,
        transitions: Option<i64>,
    },
}

impl WriteRecord {
    /// The weight of `host` in the route named `route` (any route when `None`).
    pub fn weight(&self, route: Option<&str>, host: &str) -> Option<i64> {
        match &self.after {
            Resulting::VirtualService { weights } => weights
                .iter()
                .find(|w| w.host == host && route.is_none_or(|r| w.route == r))
                .map(|w| w.weight),
            _ => None,
        }
    }
}

fn resulting(kind: &str, object: &Value) -> Option<Resulting> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    Some(match kind {
        "VirtualService" => {
            let mut weights = Vec::new();
            for route in object["spec"]["http"].as_array().into_iter().flatten() {
                let name = route["name"].as_str().unwrap_or_default();
                for destination in route["route"].as_array().into_iter().flatten() {
                    weights.push(RouteWeight {
                        route: name.to_string(),
                        host: destination["destination"]["host"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        weight: destination["weight"].as_i64().unwrap_or(0),
                    });
                }
            }
            Resulting::VirtualService { weights }
        }
        "Canary" => {
            let status = &object["status"];
            Resulting::Canary {
                phase: text(&status["phase"]),
                step: status["step"].as_u64(),
                stage_weight: status["stageWeight"].as_u64(),
                stage_revision: text(&status["stageRevision"]),
                rolled_back_revision: text(&status["rolledBackRevision"]),
                traffic_intent: Some(status["trafficIntent"].clone()).filter(|v| !v.is_null()),
                generation: object["metadata"]["generation"].as_i64(),
            }
        }
        "Deployment" => Resulting::Deployment {
            image: text(&object["spec"]["template"]["spec"]["containers"][0]["image"]),
            generation: object["metadata"]["generation"].as_i64(),
        },
        "Lease" => Resulting::Lease {
            holder: text(&object["spec"]["holderIdentity"]),
            renew_time: text(&object["spec"]["renewTime"]),
            transitions: object["spec"]["leaseTransitions"].as_i64(),
        },
        _ => return None,
    })
}

/// The log itself; the store appends to it under its lock, so `seq` is commit order.
pub(super) struct WriteLog {
    start: Instant,
    records: Vec<WriteRecord>,
    file: Option<std::io::LineWriter<std::fs::File>>,
}

/// What the store knows about a committed write.
pub(super) struct Commit<'a> {
    pub writer: &'a str,
    pub verb: Verb,
    pub kind: &'a str,
    pub status: bool,
    pub object: &'a Value,
}

impl WriteLog {
    pub fn new() -> Self {
        WriteLog {
            start: Instant::now(),
            records: Vec::new(),
            file: None,
        }
    }

    /// From now on also appends each record to `path` as a JSON line.
    pub fn also_to_file(&mut self, path: &Path) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        self.file = Some(std::io::LineWriter::new(file));
        Ok(())
    }

    pub fn record(&mut self, commit: Commit<'_>) {
        if !LOGGED_KINDS.contains(&commit.kind) {
            return;
        }
        let Some(after) = resulting(commit.kind, commit.object) else {
            return;
        };
        let meta = &commit.object["metadata"];
        let record = WriteRecord {
            seq: self.records.len() as u64 + 1,
            at: jiff::Timestamp::now(),
            elapsed: self.start.elapsed(),
            writer: commit.writer.to_string(),
            verb: commit.verb,
            kind: commit.kind.to_string(),
            namespace: meta["namespace"].as_str().unwrap_or_default().to_string(),
            name: meta["name"].as_str().unwrap_or_default().to_string(),
            subresource: commit.status.then_some("status"),
            resource_version: meta["resourceVersion"]
                .as_str()
                .and_then(|rv| rv.parse().ok())
                .unwrap_or_default(),
            after,
        };
        if let Some(file) = self.file.as_mut() {
            if let Ok(line) = serde_json::to_string(&record) {
                let _ = writeln!(file, "{line}");
            }
        }
        self.records.push(record);
    }

    pub fn since(&self, seq: u64) -> Vec<WriteRecord> {
        let from = (seq as usize).min(self.records.len());
        self.records[from..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_virtual_service_write_records_the_weight_of_each_host() {
        let mut log = WriteLog::new();
        let vs = json!({"metadata": {"name": "demoapp", "namespace": "prod", "resourceVersion": "7"},
            "spec": {"http": [{"name": "primary", "route": [
                {"destination": {"host": "a"}, "weight": 70},
                {"destination": {"host": "b"}, "weight": 30}]}]}});
        log.record(Commit {
            writer: "canaryd-a",
            verb: Verb::Patch,
            kind: "VirtualService",
            status: false,
            object: &vs,
        });
        let secret = json!({"metadata": {"name": "s", "namespace": "prod"}});
        log.record(Commit {
            writer: "x",
            verb: Verb::Create,
            kind: "Secret",
            status: false,
            object: &secret,
        });
        let records = log.since(0);
        assert_eq!(records.len(), 1, "only the logged kinds");
        let r = &records[0];
        assert_eq!(
            (r.seq, r.resource_version, r.writer.as_str()),
            (1, 7, "canaryd-a")
        );
        assert_eq!(r.weight(Some("primary"), "b"), Some(30));
        assert_eq!(r.weight(None, "a"), Some(70));
        assert_eq!(r.weight(Some("other"), "a"), None);
        let line = serde_json::to_value(r).unwrap();
        assert_eq!(line["after"]["type"], "virtualService");
        assert_eq!(line["verb"], "patch");
    }
}
