//! Label selectors (`labelSelector=`) and field selectors (`fieldSelector=`), parsed and
//! matched like the API server does. A field selector may name any dotted field path (a real
//! server allows a per-kind list, such as `involvedObject.name` for Events, which kubectl
//! describe uses); a missing field compares as the empty string. Pure: no store, no HTTP.

use serde_json::Value;

use super::error::{ApiError, ApiResult};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector` plus `fieldSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

/// Splits on commas that are not inside `( )`.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_set(key: &str, rest: &str, whole: &str) -> ApiResult<(String, Vec<String>)> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| ApiError::bad_request(format!("unable to parse requirement: {whole}")))?;
    let values = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    Ok((key.trim().to_string(), values))
}

fn parse_requirement(part: &str) -> ApiResult<Requirement> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key.trim().to_string()));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default().trim_start();
    if let Some(set) = rest.strip_prefix("notin") {
        let (key, values) = parse_set(key, set, part)?;
        return Ok(Requirement::NotIn(key, values));
    }
    if let Some(set) = rest.strip_prefix("in") {
        let (key, values) = parse_set(key, set, part)?;
        return Ok(Requirement::In(key, values));
    }
    if rest.is_empty() && !key.is_empty() {
        return Ok(Requirement::Exists(key.to_string()));
    }
    Err(ApiError::bad_request(format!(
        "unable to parse requirement: {part}"
    )))
}

fn parse_all(input: Option<&str>) -> ApiResult<Vec<Requirement>> {
    split_top_level(input.unwrap_or_default())
        .into_iter()
        .map(parse_requirement)
        .collect()
}

fn holds(requirement: &Requirement, lookup: &dyn Fn(&str) -> Option<String>) -> bool {
    match requirement {
        Requirement::Equals(k, v) => lookup(k).as_deref() == Some(v.as_str()),
        Requirement::NotEquals(k, v) => lookup(k).as_deref() != Some(v.as_str()),
        Requirement::In(k, vs) => lookup(k).is_some_and(|x| vs.contains(&x)),
        Requirement::NotIn(k, vs) => lookup(k).is_none_or(|x| !vs.contains(&x)),
        Requirement::Exists(k) => lookup(k).is_some(),
        Requirement::DoesNotExist(k) => lookup(k).is_none(),
    }
}

impl Selector {
    pub fn parse(label_selector: Option<&str>, field_selector: Option<&str>) -> ApiResult<Self> {
        let fields = parse_all(field_selector)?;
        if let Some(bad) = fields
            .iter()
            .find(|f| !matches!(f, Requirement::Equals(..) | Requirement::NotEquals(..)))
        {
            return Err(ApiError::bad_request(format!(
                "field selectors support only =, == and !=: {bad:?}"
            )));
        }
        Ok(Selector {
            labels: parse_all(label_selector)?,
            fields,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let metadata = &object["metadata"];
        let label = |key: &str| {
            metadata["labels"][key]
                .as_str()
                .map(std::string::ToString::to_string)
        };
        let field = |key: &str| {
            let value = key.split('.').fold(object, |v, segment| &v[segment]);
            Some(match value {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            })
        };
        self.labels.iter().all(|r| holds(r, &label)) && self.fields.iter().all(|r| holds(r, &field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(labels: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "prod", "labels": labels}})
    }

    #[test]
    fn every_label_operator_matches_like_the_api_server() {
        let obj = object(json!({"app": "web", "tier": "front"}));
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=api", true),
            ("tier in (front, back)", true),
            ("tier notin (front,back)", false),
            ("tier notin (db)", true),
            ("missing notin (db)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier in (front),!missing", true),
            ("app=web,tier=back", false),
            ("", true),
        ];
        for (selector, expected) in cases {
            let parsed = Selector::parse(Some(selector), None).unwrap();
            assert_eq!(parsed.matches(&obj), expected, "{selector}");
        }
    }

    #[test]
    fn field_selectors_compare_dotted_fields() {
        let obj = object(json!({}));
        let by_name = Selector::parse(None, Some("metadata.name=web")).unwrap();
        assert!(by_name.matches(&obj));
        let other_ns = Selector::parse(None, Some("metadata.namespace!=prod")).unwrap();
        assert!(!other_ns.matches(&obj));
        let event = json!({"involvedObject": {"name": "web", "kind": "Deployment"}});
        let about_web =
            Selector::parse(None, Some("involvedObject.name=web,involvedObject.uid=")).unwrap();
        assert!(about_web.matches(&event));
        let err = Selector::parse(None, Some("spec.x in (1)")).unwrap_err();
        assert_eq!(err.code, 400);
    }

    #[test]
    fn a_malformed_set_is_a_bad_request() {
        let err = Selector::parse(Some("tier in front"), None).unwrap_err();
        assert_eq!(err.reason, "BadRequest");
    }
}
