//! Human-readable durations ("30s", "2m", "1h 30m") in the CRD and config files.
//!
//! Stored as `std::time::Duration` in Rust and as a string in YAML/JSON, parsed by
//! `humantime`. The schema says "string" so the API server accepts what users write.

use std::borrow::Cow;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::MAX_DURATION_TEXT;

/// A duration written the way people write it: `30s`, `2m`, `1h 30m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub fn as_secs_f64(&self) -> f64 {
        self.0.as_secs_f64()
    }

    /// The duration as a signed span for timestamp arithmetic.
    pub fn span(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::try_from(self.0).unwrap_or(jiff::SignedDuration::MAX)
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Self)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    /// Also refuses a text longer than [`MAX_DURATION_TEXT`], as the CRD schema does.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IntoDeserializer};
        let text = String::deserialize(d)?;
        if text.chars().count() > MAX_DURATION_TEXT {
            return Err(D::Error::custom(format!(
                "a duration of {} characters, more than the {MAX_DURATION_TEXT} allowed; write it \
                 as 30s, 2m or 1h 30m",
                text.chars().count()
            )));
        }
        let text: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            text.as_str().into_deserializer();
        humantime_serde::deserialize(text)
            .map(Self)
            .map_err(D::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "HumanDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+ *[a-zA-Z]+ *)+$",
            "maxLength": MAX_DURATION_TEXT,
            "description": "A duration such as 30s, 2m or 1h 30m."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_forms_people_write() {
        let d: HumanDuration = serde_json::from_str("\"1h 30m\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(5400));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h 30m\"");
        assert!(serde_json::from_str::<HumanDuration>("\"soon\"").is_err());
        let long = format!("\"{}\"", "1s ".repeat(11));
        let err = serde_json::from_str::<HumanDuration>(&long).unwrap_err();
        assert!(
            err.to_string().contains("more than the 32 allowed"),
            "{err}"
        );
    }
}
