use std::path::PathBuf;

/// Why the counts of a look could not be read. Every variant means "hold, never advance";
/// an empty result is not an error (it is zero traffic, see [`super`]).
///
/// Messages name the query and keep Prometheus's own words; they never contain credentials
/// (tokens and passwords travel only in headers marked sensitive, and URLs with user info
/// are refused).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TelemetryError {
    /// Prometheus did not answer: connection refused, timeout, a proxy's 5xx page.
    #[error("Prometheus at {url} did not answer ({attempts} attempt(s)): {message}")]
    Unavailable {
        url: String,
        attempts: u32,
        message: String,
    },
    /// Prometheus, or a proxy in front of it, refused the request without a Prometheus
    /// error: wrong credentials (401, 403) or a wrong URL path (404).
    #[error("Prometheus at {url} refused the request with HTTP {status}; check {}", refused_hint(*.status))]
    Refused { url: String, status: u16 },
    /// Prometheus answered with an error: bad PromQL (`bad_data`), a failed evaluation.
    #[error("Prometheus rejected the query ({error_type}: {message}); query: {query}")]
    Query {
        query: String,
        error_type: String,
        message: String,
    },
    /// A count came back as NaN, which no count can be (a custom query dividing 0 by 0?).
    #[error("the query returned NaN for {series}; bad/total queries must return counts such as sum(increase(...[{{{{ window }}}}])); query: {query}")]
    NotANumber { query: String, series: String },
    /// Prometheus answered with something other than an instant vector.
    #[error("the query returned a {kind}, not an instant vector; query: {query}")]
    UnexpectedResult { query: String, kind: &'static str },
    /// A custom metric's PromQL template cannot be rendered.
    #[error("metric {metric}: {message}")]
    Template { metric: String, message: String },
    /// A token or password file cannot be read.
    #[error("cannot read {what} file {path}: {message}")]
    Credentials {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    /// The Prometheus settings cannot work (bad URL, unreadable CA file, bad header).
    #[error("prometheus.{key}: {message}")]
    Config { key: &'static str, message: String },
    /// A batched fetch came back without the counts of one of its Canaries.
    #[error("telemetry returned no counts for Canary {canary}")]
    NoResult { canary: String },
}

/// Longest query text kept in an error: a batched query over hundreds of hosts would
/// otherwise fill every Canary's status with the same kilobytes.
const MAX_SHOWN_QUERY: usize = 1000;

/// The query as an error shows it, cut after [`MAX_SHOWN_QUERY`] bytes.
pub(crate) fn shown_query(query: &str) -> String {
    if query.len() <= MAX_SHOWN_QUERY {
        return query.to_string();
    }
    let mut end = MAX_SHOWN_QUERY;
    while !query.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &query[..end], query.len() - end)
}

impl TelemetryError {
    /// A short fixed name for metric labels and log fields (never the message text).
    pub fn reason(&self) -> &'static str {
        match self {
            TelemetryError::Unavailable { .. } => "unavailable",
            TelemetryError::Refused { .. } => "refused",
            TelemetryError::Query { .. } => "query_error",
            TelemetryError::NotANumber { .. } => "nan",
            TelemetryError::UnexpectedResult { .. } => "unexpected_result",
            TelemetryError::Template { .. } => "template",
            TelemetryError::Credentials { .. } => "credentials",
            TelemetryError::Config { .. } => "config",
            TelemetryError::NoResult { .. } => "no_result",
        }
    }

    /// True when the same query can succeed later without a change to the spec or config
    /// (Prometheus down, overloaded, timed out).
    pub fn is_transient(&self) -> bool {
        match self {
            TelemetryError::Unavailable { .. } => true,
            TelemetryError::Query { error_type, .. } => {
                matches!(
                    error_type.as_str(),
                    "timeout" | "canceled" | "unavailable" | "internal"
                )
            }
            _ => false,
        }
    }
}

fn refused_hint(status: u16) -> &'static str {
    match status {
        401 | 403 => "bearerTokenFile or basicAuth",
        404 => "the URL, including any path prefix of a proxy",
        _ => "the URL and the headers",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_queries_are_cut_in_errors() {
        assert_eq!(shown_query("up"), "up");
        let long = "é".repeat(MAX_SHOWN_QUERY);
        let shown = shown_query(&long);
        assert!(shown.ends_with(&format!("... ({} more bytes)", MAX_SHOWN_QUERY)));
        assert!(shown.len() < MAX_SHOWN_QUERY + 30);
    }
}
