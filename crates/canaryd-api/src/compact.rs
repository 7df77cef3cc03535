//! Compact text forms for the analysis state, which canaryd keeps in the status to continue
//! after a restart but which is not for people to read (the last decision says what it
//! means):
//! - [`f64s`]: a number vector (a log-likelihood grid) as base64 of each number's 8
//!   little-endian IEEE 754 bytes: exact, about half the size of a JSON array. The array form
//!   of older statuses is still read.
//! - [`packed`]: a whole value as one line, `z1:` and base64 of its deflated JSON, so that
//!   `kubectl describe` shows one line where the state's fields would take fifty. The object
//!   form of older statuses is still read.

use base64::Engine;
use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub fn encode(values: &[f64]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    B64.encode(bytes)
}

pub fn decode(text: &str) -> Result<Vec<f64>, String> {
    let bytes = B64.decode(text).map_err(|e| format!("not base64: {e}"))?;
    if bytes.len() % 8 != 0 {
        return Err(format!(
            "{} bytes is not a whole number of 8-byte numbers",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect())
}

/// `#[serde(with = "crate::compact::f64s")]` for a `Vec<f64>`.
pub mod f64s {
    use super::*;

    pub fn serialize<S: Serializer>(values: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(values))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            List(Vec<f64>),
        }
        match Form::deserialize(d)? {
            Form::Text(t) => decode(&t).map_err(D::Error::custom),
            Form::List(v) => Ok(v),
        }
    }
}

/// The tag in front of a [`packed`] value: the format's version.
const PACKED: &str = "z1:";

/// `#[serde(with = "crate::compact::packed")]` for an `Option<T>` (see the module doc).
pub mod packed {
    use std::io::{Read, Write};

    use flate2::{read::DeflateDecoder, write::DeflateEncoder, Compression};
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::*;

    pub fn pack<T: Serialize>(value: &T) -> Result<String, String> {
        let json = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        let mut deflated = DeflateEncoder::new(Vec::new(), Compression::best());
        deflated
            .write_all(&json)
            .and_then(|()| deflated.finish())
            .map(|bytes| format!("{PACKED}{}", B64.encode(bytes)))
            .map_err(|e| e.to_string())
    }

    pub fn unpack<T: DeserializeOwned>(text: &str) -> Result<T, String> {
        let body = text
            .strip_prefix(PACKED)
            .ok_or_else(|| format!("does not start with {PACKED}"))?;
        let bytes = B64.decode(body).map_err(|e| format!("not base64: {e}"))?;
        let mut json = Vec::new();
        // Bounded: a status is at most 1.5 MiB, and so is what it may inflate to here.
        DeflateDecoder::new(bytes.as_slice())
            .take(1 << 24)
            .read_to_end(&mut json)
            .map_err(|e| format!("not deflated: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| e.to_string())
    }

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(v) => s.serialize_str(&pack(v).map_err(serde::ser::Error::custom)?),
        }
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        match Option::<serde_json::Value>::deserialize(d)? {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => {
                unpack(&text).map(Some).map_err(D::Error::custom)
            }
            Some(object) => serde_json::from_value(object)
                .map(Some)
                .map_err(D::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(with = "super::f64s")]
        v: Vec<f64>,
    }

    #[test]
    fn numbers_round_trip_exactly_and_the_array_form_is_still_read() {
        let h = Holder {
            v: vec![0.0, -1.5, 1e-300, -123456.789, f64::MIN_POSITIVE],
        };
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Holder>(&text).unwrap(), h);
        let old = r#"{"v": [0.0, -1.5, 1e-300, -123456.789, 2.2250738585072014e-308]}"#;
        assert_eq!(serde_json::from_str::<Holder>(old).unwrap(), h);
        // A likelihood grid as the analysis writes it: about half the size of the array.
        let grid = Holder {
            v: (1..=27)
                .map(|i| -f64::from(i) * 1.234_567_890_123_456_7)
                .collect(),
        };
        let (compact, array) = (
            serde_json::to_string(&grid).unwrap().len(),
            serde_json::to_string(&grid.v).unwrap().len(),
        );
        assert!(compact * 10 < array * 6, "{compact} vs {array}");
        let bad = serde_json::from_str::<Holder>(r#"{"v": "AAAA"}"#).unwrap_err();
        assert!(bad.to_string().contains("8-byte"), "{bad}");
    }

    #[test]
    fn the_analysis_state_is_one_line_in_the_status_and_the_object_form_is_still_read() {
        use crate::canary::{AnalysisState, CanaryStatus, SeriesState};
        let state = AnalysisState {
            looks: 7,
            series: (0..3)
                .map(|i| SeriesState {
                    name: format!("series-{i}"),
                    stage_requests: 14_181,
                    prod_requests: 33_845,
                    log_likelihood: (0..29).map(|k| -f64::from(k * i) * 0.37).collect(),
                    step_log_likelihood: (0..29).map(|k| f64::from(k) * 0.11).collect(),
                    ..SeriesState::default()
                })
                .collect(),
            ..AnalysisState::default()
        };
        let status = CanaryStatus {
            analysis: Some(state.clone()),
            ..CanaryStatus::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        let packed = json["analysis"].as_str().expect("a string");
        assert!(packed.starts_with("z1:") && !packed.contains('\n'));
        let object_form = serde_json::to_string(&state).unwrap();
        assert!(
            packed.len() < object_form.len(),
            "{} vs {}",
            packed.len(),
            object_form.len()
        );
        let back: CanaryStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back.analysis, Some(state.clone()));

        // A status written before the state was packed.
        let old = serde_json::json!({"phase": "Progressing", "analysis": serde_json::to_value(&state).unwrap()});
        let read: CanaryStatus = serde_json::from_value(old).unwrap();
        assert_eq!(read.analysis, Some(state));

        let bad = serde_json::from_value::<CanaryStatus>(serde_json::json!({"analysis": "AAAA"}))
            .unwrap_err();
        assert!(bad.to_string().contains("z1:"), "{bad}");
    }

    #[test]
    fn the_last_decision_keeps_its_summary_in_words_and_its_reports_packed() {
        use crate::canary::{CanaryStatus, DecisionRecord, MetricReport, Verdict};
        let reports: Vec<_> = ["errors", "latency@250", "slo:errors"]
            .iter()
            .map(|name| MetricReport {
                name: name.to_string(),
                verdict: Verdict::Continue,
                e_value: 0.3094,
                rollback_threshold: 316.2,
                ratio_lower: 0.35,
                ratio_upper: Some(1.7),
                margin: 1.5,
                stage_rate: Some(0.005),
                prod_rate: Some(0.0049),
                stage_requests: 12_000,
                prod_requests: 28_000,
                ..MetricReport::default()
            })
            .collect();
        let decision = DecisionRecord {
            verdict: Verdict::Continue,
            step: 1,
            stage_weight: 30,
            reason: "not known yet".into(),
            summary: vec!["errors: continue".into(), "latency: continue".into()],
            metrics: reports.clone(),
            ..DecisionRecord::default()
        };
        let status = CanaryStatus {
            last_decision: Some(decision.clone()),
            ..CanaryStatus::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        let stored = &json["lastDecision"];
        assert!(stored["metrics"].as_str().unwrap().starts_with("z1:"));
        assert_eq!(stored["summary"][1], "latency: continue");
        // What `kubectl describe` prints: a line per field, one per summary line.
        let yaml = serde_yaml_ng::to_string(stored).unwrap();
        assert!(yaml.lines().count() <= 10, "{yaml}");
        let back: CanaryStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back.last_decision, Some(decision.clone()));

        // A status written before the reports were packed.
        let mut old = serde_json::to_value(&decision).unwrap();
        old["metrics"] = serde_json::to_value(&reports).unwrap();
        let read: CanaryStatus =
            serde_json::from_value(serde_json::json!({"lastDecision": old})).unwrap();
        assert_eq!(read.last_decision.unwrap().metrics, reports);

        // Notifications carry the decision with its reports unpacked.
        let plain = serde_json::to_value(&decision).unwrap();
        assert_eq!(plain["metrics"][0]["name"], "errors");
    }
}
