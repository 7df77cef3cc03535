//! Human-readable durations ("30s", "2m", "1h 30m") in the CRD and config files.
//!
//! Stored as `std::time::Duration` in Rust and as a string in YAML/JSON. The text is checked
//! by [`parse`] against one grammar, which the CRD schema's `pattern` ([`pattern`]) states
//! too: whole numbers of at most [`MAX_DURATION_DIGITS`] digits, each followed by one of
//! humantime's units ([`UNITS`]), with optional spaces. humantime then gives the value, which
//! must be at most [`MAX_DURATION`]. A schema cannot add up the parts, so only that bound is
//! the parser's alone: a text the schema accepts is either a duration or too long a one, and
//! the error says which limit it broke.

use std::borrow::Cow;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{MAX_DURATION, MAX_DURATION_DIGITS, MAX_DURATION_TEXT};

/// humantime's units (`humantime::parse_duration`), long and short; `M` is 30.44 days and
/// `y` 365.25 days. `µs` is left out: the grammar is ASCII, `us` says the same.
pub const UNITS: [&str; 39] = [
    "nanos", "nsec", "ns", "usec", "us", "millis", "msec", "ms", "seconds", "second", "secs",
    "sec", "s", "minutes", "minute", "min", "mins", "m", "hours", "hour", "hr", "hrs", "h", "days",
    "day", "d", "weeks", "week", "wk", "wks", "w", "months", "month", "M", "years", "year", "yr",
    "yrs", "y",
];

/// The grammar as the CRD schema's `pattern`: one or more `<digits> <unit>` parts, spaces
/// optional between and after them.
pub fn pattern() -> String {
    format!(
        "^([0-9]{{1,{MAX_DURATION_DIGITS}}} *({}) *)+$",
        UNITS.join("|")
    )
}

/// Why a text is not a duration canaryd accepts; the message names the rule and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

const EXAMPLES: &str = "write it as 30s, 2m or 1h 30m";

/// `text` as a duration: the grammar of [`pattern`] (and at most [`MAX_DURATION_TEXT`]
/// characters), then at most [`MAX_DURATION`].
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let chars = text.chars().count();
    if chars > MAX_DURATION_TEXT {
        return Err(DurationError(format!(
            "a duration of {chars} characters, more than the {MAX_DURATION_TEXT} allowed; \
             {EXAMPLES}"
        )));
    }
    check_grammar(text).map_err(|why| {
        DurationError(if text.is_empty() {
            format!("an empty duration; {EXAMPLES}")
        } else {
            format!("\"{text}\" is not a duration: {why}; {EXAMPLES}")
        })
    })?;
    let too_long = || {
        DurationError(format!(
            "\"{text}\" is more than the longest duration allowed, {} (365.25 days); write \
             at most that",
            humantime::format_duration(MAX_DURATION)
        ))
    };
    // The grammar bounds every number, so humantime cannot overflow here; were it to, the
    // text would be far over the bound anyway.
    let d = humantime::parse_duration(text).map_err(|_| too_long())?;
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// The grammar of [`pattern`], by hand, saying what is wrong where.
fn check_grammar(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let spaces = |mut i: usize| {
        while bytes.get(i) == Some(&b' ') {
            i += 1;
        }
        i
    };
    let mut i = 0;
    loop {
        let start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err(format!("expected a number at \"{}\"", &text[i..]));
        }
        if i - start > MAX_DURATION_DIGITS {
            return Err(format!(
                "{} has more than the {MAX_DURATION_DIGITS} digits a number may have",
                &text[start..i]
            ));
        }
        if bytes.get(i) == Some(&b'.') {
            return Err("a number must be whole (1s 500ms, not 1.5s)".into());
        }
        i = spaces(i);
        let unit_start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_alphabetic) {
            i += 1;
        }
        let unit = &text[unit_start..i];
        if unit.is_empty() {
            return Err(format!(
                "{} has no unit; add one of ns, us, ms, s, m, h, d, w, M, y",
                text[start..unit_start].trim_end()
            ));
        }
        if !UNITS.contains(&unit) {
            return Err(format!(
                "unknown unit \"{unit}\"; use ns, us, ms, s, m, h, d, w, M (30.44 days) or y \
                 (365.25 days), or their long names (seconds, minutes, hours, days, ...)"
            ));
        }
        i = spaces(i);
        if i == bytes.len() {
            return Ok(());
        }
    }
}

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
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map(Self)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    /// [`parse`]: the same text the CRD schema accepts, and at most [`MAX_DURATION`].
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map(Self).map_err(serde::de::Error::custom)
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
            "pattern": pattern(),
            "maxLength": MAX_DURATION_TEXT,
            "description": "A duration such as 30s, 2m or 1h 30m: whole numbers with units \
                            (ns, us, ms, s, m, h, d, w, M, y), at most one year in all."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::{json, Value};

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

    #[test]
    fn errors_name_the_rule_and_the_limit() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert!(err("5 parsecs").contains("unknown unit \"parsecs\""));
        assert!(err("99999999999999999999999s").contains("more than the 9 digits"));
        assert!(err("1.5s").contains("whole"));
        assert!(err("30").contains("30 has no unit"));
        assert!(err("").contains("empty"));
        assert!(err("2y").contains("longest duration allowed, 1year (365.25 days)"));
        assert_eq!(parse("1y").unwrap(), MAX_DURATION);
    }

    /// What the CRD schema and the parser should make of a text.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Want {
        /// Both accept it.
        Valid,
        /// Both refuse it.
        Malformed,
        /// Well formed and over [`MAX_DURATION`]: the schema accepts it (a pattern cannot add
        /// up the parts), the parser refuses it naming the limit.
        OverMax,
    }

    const TABLE: &[(&str, Want)] = &[
        ("30s", Want::Valid),
        ("2m", Want::Valid),
        ("1h 30m", Want::Valid),
        ("1h30m", Want::Valid),
        ("1h  30m ", Want::Valid),
        ("5 minutes", Want::Valid),
        ("0s", Want::Valid),
        ("250ms", Want::Valid),
        ("999999999ns", Want::Valid),
        ("10us", Want::Valid),
        ("2 days 4 hours", Want::Valid),
        ("1w", Want::Valid),
        ("3M", Want::Valid),
        ("1y", Want::Valid),
        ("31557600s", Want::Valid),
        ("5 parsecs", Want::Malformed),
        ("99999999999999999999999s", Want::Malformed),
        ("1234567890s", Want::Malformed),
        ("", Want::Malformed),
        ("1.5s", Want::Malformed),
        ("0", Want::Malformed),
        ("30", Want::Malformed),
        ("s", Want::Malformed),
        (" 30s", Want::Malformed),
        ("30s\n", Want::Malformed),
        ("\t30s", Want::Malformed),
        ("30S", Want::Malformed),
        ("5µs", Want::Malformed),
        ("-5s", Want::Malformed),
        ("1e3s", Want::Malformed),
        ("1 2s", Want::Malformed),
        ("1h-30m", Want::Malformed),
        ("30s,1m", Want::Malformed),
        ("1m s", Want::Malformed),
        ("1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s", Want::Malformed),
        ("2y", Want::OverMax),
        ("366d", Want::OverMax),
        ("31557601s", Want::OverMax),
        ("999999999s", Want::OverMax),
        ("999999999y 999999999y 999999999y", Want::OverMax),
    ];

    /// Every string schema with a `pattern` in the generated CRD: its field's place in a
    /// Canary (object keys, and 0 for a list's items), the pattern and the maxLength.
    fn patterned(schema: &Value, at: &mut Vec<Value>, found: &mut Vec<(Vec<Value>, String, u64)>) {
        if let Some(pattern) = schema["pattern"].as_str() {
            let max = schema["maxLength"].as_u64().unwrap_or(u64::MAX);
            found.push((at.clone(), pattern.to_string(), max));
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (key, inner) in properties {
                at.push(json!(key));
                patterned(inner, at, found);
                at.pop();
            }
        }
        if schema["items"].is_object() {
            at.push(json!(0));
            patterned(&schema["items"], at, found);
            at.pop();
        }
    }

    /// `doc` with `text` at `at`, creating the objects and one-item lists on the way.
    fn with(mut doc: Value, at: &[Value], text: &str) -> Value {
        let mut place = &mut doc;
        for step in at {
            place = match step {
                Value::String(key) => {
                    if !place.is_object() {
                        *place = json!({});
                    }
                    place
                        .as_object_mut()
                        .unwrap()
                        .entry(key.clone())
                        .or_insert(json!({}))
                }
                _ => {
                    if place.as_array().is_none_or(|a| a.is_empty()) {
                        *place = json!([{}]);
                    }
                    &mut place[0]
                }
            };
        }
        *place = json!(text);
        doc
    }

    /// One table, fed to the generated CRD's pattern (and maxLength) of every duration field
    /// and to the decoding of a whole Canary with that field set: they agree on every text
    /// but the ones over the bound, which only the parser can add up.
    #[test]
    fn the_schema_and_the_parser_accept_the_same_durations() {
        let crd = serde_json::to_value(crate::Canary::crd()).unwrap();
        let mut found = Vec::new();
        patterned(
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            &mut Vec::new(),
            &mut found,
        );
        let fields: Vec<String> = found
            .iter()
            .map(|(at, _, _)| {
                at.iter()
                    .map(|s| s.to_string().replace('"', ""))
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .collect();
        // Only durations carry a pattern; a new patterned field needs its parser in this test.
        for (field, (_, p, max)) in fields.iter().zip(&found) {
            assert_eq!(
                (p.as_str(), *max),
                (pattern().as_str(), MAX_DURATION_TEXT as u64),
                "{field}"
            );
        }
        assert!(
            fields.contains(&"spec.stepDuration.min".to_string()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"spec.checks.0.timeout".to_string()),
            "{fields:?}"
        );
        let base = json!({
            "apiVersion": "canaryd.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "t", "namespace": "prod"},
            "spec": {
                "virtualService": {"name": "vs"},
                "prod": {"host": "p", "deployment": {"name": "p"}},
                "stage": {"host": "s", "deployment": {"name": "s"}},
                "checks": [{"name": "c", "url": "http://{{ host }}/"}],
                "webhooks": [{"name": "w", "type": "pre-rollout", "url": "http://hook/"}],
                "promotion": {"mode": "webhook", "webhook": {"url": "http://hook/"}}
            }
        });
        serde_json::from_value::<crate::Canary>(base.clone()).expect("the base Canary decodes");
        for ((at, pattern, max), field) in found.iter().zip(&fields) {
            let regex = regex::Regex::new(pattern).expect("the CRD's pattern compiles");
            for &(text, want) in TABLE {
                let schema = regex.is_match(text) && text.chars().count() as u64 <= *max;
                let decoded = serde_json::from_value::<crate::Canary>(with(base.clone(), at, text));
                let case = format!("{field} = {text:?}: schema {schema}, decoded {decoded:?}");
                match want {
                    Want::Valid => assert!(schema && decoded.is_ok(), "{case}"),
                    Want::Malformed => assert!(!schema && decoded.is_err(), "{case}"),
                    Want::OverMax => {
                        assert!(schema, "{case}");
                        let err = decoded.expect_err(&case).to_string();
                        assert!(err.contains("longest duration allowed"), "{case}");
                    }
                }
            }
        }
    }
}
