//! Watch fan-out: turns the store's change feed into one client's newline-delimited JSON
//! `WatchEvent` stream, filtered by resource, namespace and selectors (an object that stops
//! matching a selector is DELETED for that watch, one that starts matching is ADDED), with
//! BOOKMARK events when asked, `timeoutSeconds`, and the end of the stream on shutdown or when
//! the client falls too far behind (it then re-watches and gets 410 if it is too old).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tokio::time::{sleep_until, Instant};

use super::builtins;
use super::error::ApiError;
use super::registry::ResourceType;
use super::selector::Selector;
use super::store::{Change, ChangeKind, WatchStart};
use super::table::{self, Include};

/// What one watch request asked for.
pub struct WatchRequest {
    pub resource: ResourceType,
    pub version: String,
    pub namespace: Option<String>,
    pub selector: Selector,
    pub bookmarks: bool,
    pub bookmark_interval: Duration,
    pub timeout: Duration,
    /// `Some` when the client asked for `Table` rows instead of objects.
    pub table: Option<Include>,
    /// `sendInitialEvents=true` (streaming list): the current objects, then a BOOKMARK marked
    /// `k8s.io/initial-events-end`.
    pub send_initial_events: bool,
}

/// The object as served at `version` (storage is version-agnostic; no schema conversion).
pub fn present(resource: &ResourceType, version: &str, object: Value) -> Value {
    let mut object = builtins::served(resource, object);
    object["apiVersion"] = json!(resource.api_version(version));
    object["kind"] = json!(resource.kind);
    object
}

fn line(event_type: &str, object: Value) -> Bytes {
    let mut text = json!({"type": event_type, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

/// The single ERROR event a real server streams for a too-old resourceVersion.
pub fn error_line(error: &ApiError) -> Bytes {
    line("ERROR", error.status())
}

struct WatchState {
    request: WatchRequest,
    pending: VecDeque<Bytes>,
    live: broadcast::Receiver<std::sync::Arc<Change>>,
    last_resource_version: u64,
    deadline: Instant,
    next_bookmark: Instant,
    shutdown: watch::Receiver<bool>,
    done: bool,
}

impl WatchState {
    /// The event type this watch sees for a change, if any.
    fn event_type(&self, change: &Change) -> Option<&'static str> {
        let request = &self.request;
        if change.group != request.resource.storage_group()
            || change.plural != request.resource.plural
        {
            return None;
        }
        if let Some(namespace) = &request.namespace {
            if change.object["metadata"]["namespace"].as_str() != Some(namespace.as_str()) {
                return None;
            }
        }
        let now = request.selector.matches(&change.object);
        let before = change
            .previous
            .as_ref()
            .is_some_and(|p| request.selector.matches(p));
        match (change.kind, before, now) {
            (ChangeKind::Added, _, true) => Some("ADDED"),
            (ChangeKind::Modified, true, true) => Some("MODIFIED"),
            (ChangeKind::Modified, false, true) => Some("ADDED"),
            (ChangeKind::Modified, true, false) => Some("DELETED"),
            (ChangeKind::Deleted, b, n) if b || n => Some("DELETED"),
            _ => None,
        }
    }

    fn render(&self, change: &Change) -> Option<Bytes> {
        let event_type = self.event_type(change)?;
        let request = &self.request;
        let object = present(&request.resource, &request.version, change.object.clone());
        let object = match request.table {
            None => object,
            Some(include) => {
                let columns = request.resource.columns(&request.version);
                let rv = change.resource_version.to_string();
                table::table(columns, &[object], include, &rv)
            }
        };
        Some(line(event_type, object))
    }

    fn bookmark(&self) -> Bytes {
        line("BOOKMARK", self.bookmark_object())
    }

    fn bookmark_object(&self) -> Value {
        let resource = &self.request.resource;
        json!({
            "kind": resource.kind,
            "apiVersion": resource.api_version(&self.request.version),
            "metadata": {"resourceVersion": self.last_resource_version.to_string()},
        })
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                received = self.live.recv() => match received {
                    Ok(change) => {
                        if change.resource_version <= self.last_resource_version {
                            continue;
                        }
                        self.last_resource_version = change.resource_version;
                        if let Some(chunk) = self.render(&change) {
                            return Some(chunk);
                        }
                    }
                    // Lagged or closed: end the stream; the client re-watches from its last version.
                    Err(_) => return None,
                },
                () = sleep_until(self.next_bookmark), if self.request.bookmarks => {
                    self.next_bookmark += self.request.bookmark_interval;
                    return Some(self.bookmark());
                }
                () = sleep_until(self.deadline) => {
                    self.done = true;
                    if self.request.bookmarks {
                        return Some(self.bookmark());
                    }
                    return None;
                }
                _ = self.shutdown.changed() => return None,
            }
        }
    }
}

/// The body of a watch response.
pub fn stream(
    start: WatchStart,
    request: WatchRequest,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let now = Instant::now();
    let mut state = WatchState {
        deadline: now + request.timeout,
        next_bookmark: now + request.bookmark_interval,
        request,
        pending: VecDeque::new(),
        live: start.live,
        last_resource_version: 0,
        shutdown,
        done: false,
    };
    let backlog: Vec<Bytes> = start
        .backlog
        .iter()
        .filter_map(|c| state.render(c))
        .collect();
    state.pending.extend(backlog);
    state.last_resource_version = start.resource_version;
    if state.request.send_initial_events {
        let mut end = state.bookmark_object();
        end["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        state.pending.push_back(line("BOOKMARK", end));
    }
    futures::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok(chunk), state))
    })
}
