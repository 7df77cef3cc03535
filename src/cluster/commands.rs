//! Operator commands (`canaryd promote|abort|resume`). A command is the annotation
//! `canaryd.dev/command: <verb>[/<id>]` on the Canary, so `kubectl annotate` works as well;
//! the status records the last value carried out, so each value runs once (write a new
//! `/<id>` to repeat a verb).

use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::api::Canary;
use crate::rollout::{Command, Verb};

pub const COMMAND_ANNOTATION: &str = "canaryd.dev/command";

/// The command the Canary carries, if its verb is known.
pub fn pending(canary: &Canary) -> Option<Command> {
    let value = canary.annotations().get(COMMAND_ANNOTATION)?;
    match parse_verb(value) {
        Some(verb) => Some(Command {
            id: value.clone(),
            verb,
        }),
        None => {
            tracing::warn!(canary = %canary.name_any(), %value, "unknown command; use abort, resume or promote");
            None
        }
    }
}

fn parse_verb(value: &str) -> Option<Verb> {
    match value.split('/').next().unwrap_or_default().trim() {
        "abort" => Some(Verb::Abort),
        "resume" => Some(Verb::Resume),
        "promote" => Some(Verb::Promote),
        _ => None,
    }
}

pub fn verb_name(verb: Verb) -> &'static str {
    match verb {
        Verb::Abort => "abort",
        Verb::Resume => "resume",
        Verb::Promote => "promote",
    }
}

/// Writes a new command on the Canary; returns the annotation value. The Canary is written
/// undecoded, so the answer decodes whatever its spec holds.
pub async fn send(
    api: &Api<kube::api::DynamicObject>,
    name: &str,
    verb: Verb,
) -> Result<String, kube::Error> {
    let id = jiff::Timestamp::now().as_nanosecond();
    let value = format!("{}/{id}", verb_name(verb));
    let patch = json!({"metadata": {"annotations": {COMMAND_ANNOTATION: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_parse_with_or_without_an_id() {
        assert_eq!(parse_verb("abort"), Some(Verb::Abort));
        assert_eq!(parse_verb("resume/2"), Some(Verb::Resume));
        assert_eq!(parse_verb("promote/1764412345"), Some(Verb::Promote));
        assert_eq!(parse_verb("rollback"), None);
    }
}
