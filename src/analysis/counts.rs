//! The counts one look of the analysis consumes: for each arm, over one evaluation window,
//! the requests, the 5xx errors, the cumulative latency histogram and custom bad/total pairs.
//! Telemetry produces them from Prometheus; `canaryd analyze --input` reads them from JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Counts of both arms over the same window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LookCounts {
    pub stage: ArmCounts,
    pub prod: ArmCounts,
}

/// Counts of one arm over one window. canaryd reads exact (integer) counts from Prometheus;
/// counts from other sources may be fractional, and the analysis rounds them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmCounts {
    pub requests: f64,
    #[serde(default)]
    pub errors: f64,
    /// Cumulative histogram: requests at or below each boundary (ms), ending with +Inf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_buckets: Vec<Bucket>,
    /// Custom `ratio` metrics by metric name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ratios: BTreeMap<String, RatioCounts>,
}

impl ArmCounts {
    /// Adds the counts of a later window: the sums over both windows. Latency buckets keep
    /// the boundaries both histograms have (a sum over windows must stay cumulative).
    pub fn accumulate(&mut self, later: &ArmCounts) {
        self.requests += later.requests;
        self.errors += later.errors;
        if self.latency_buckets.is_empty() {
            self.latency_buckets = later.latency_buckets.clone();
        } else if !later.latency_buckets.is_empty() {
            self.latency_buckets.retain_mut(|b| {
                match later.latency_buckets.iter().find(|l| l.le_ms == b.le_ms) {
                    Some(l) => {
                        b.count += l.count;
                        true
                    }
                    None => false,
                }
            });
        }
        for (name, r) in &later.ratios {
            let sum = self.ratios.entry(name.clone()).or_default();
            sum.bad += r.bad;
            sum.total += r.total;
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatioCounts {
    pub bad: f64,
    pub total: f64,
}

/// One cumulative histogram bucket, written in JSON as `[le_ms, count]` with `"+Inf"` for
/// the last boundary, as Prometheus writes `le`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub le_ms: f64,
    pub count: f64,
}

impl Serialize for Bucket {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        if self.le_ms.is_infinite() {
            t.serialize_element("+Inf")?;
        } else {
            t.serialize_element(&self.le_ms)?;
        }
        t.serialize_element(&self.count)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Bucket {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Le {
            Number(f64),
            Text(String),
        }
        let (le, count): (Le, f64) = Deserialize::deserialize(d)?;
        let le_ms = match le {
            Le::Number(n) => n,
            Le::Text(t) => t.parse::<f64>().map_err(|_| {
                serde::de::Error::custom(format!(
                    "bucket boundary \"{t}\" is not a number; write milliseconds or \"+Inf\""
                ))
            })?,
        };
        Ok(Bucket { le_ms, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_read_and_write_prometheus_style() {
        let arm: ArmCounts = serde_json::from_str(
            r#"{"requests": 452, "errors": 3, "latency_buckets": [[0.5, 0], [250, 446], ["+Inf", 452]]}"#,
        )
        .unwrap();
        assert_eq!(arm.latency_buckets[2].le_ms, f64::INFINITY);
        assert_eq!(
            arm.latency_buckets[1],
            Bucket {
                le_ms: 250.0,
                count: 446.0
            }
        );
        let back = serde_json::to_string(&arm).unwrap();
        assert!(back.contains(r#"["+Inf",452.0]"#), "{back}");
        assert!(serde_json::from_str::<Bucket>(r#"["soon", 1]"#)
            .unwrap_err()
            .to_string()
            .contains("\"soon\" is not a number"));
    }
}
