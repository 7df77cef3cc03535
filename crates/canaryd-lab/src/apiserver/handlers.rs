//! HTTP: maps Kubernetes REST paths and verbs onto the store, discovery, watch and table
//! modules, and encodes answers as a real API server does (status codes, `metav1.Status`
//! errors, lists with their resourceVersion, `Warning` headers, content negotiation for
//! `Table`). Owns no state of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::watch as signal;

use super::discovery;
use super::error::{ApiError, ApiResult};
use super::faults::{self, Faults};
use super::fields::Scope;
use super::patch::{self, PatchKind};
use super::protobuf;
use super::registry::ResourceType;
use super::scale;
use super::selector::Selector;
use super::store::{normalize_numbers, FieldValidation, Store, WriteOptions, Written};
use super::table::{self, Include};
use super::watch::{self, present, WatchRequest};

/// Watches without `timeoutSeconds` end after this long, like a server's minRequestTimeout.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

pub struct AppState {
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    pub server_address: String,
    pub bookmark_interval: Duration,
    pub shutdown: signal::Receiver<bool>,
}

pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

/// The request's bearer token (see [`Call::writer`]).
pub(super) fn writer(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or("anonymous")
        .to_string()
}

/// The plural of the resource a path names, if it names one.
fn resource_plural<'a>(segments: &[&'a str]) -> Option<&'a str> {
    let rest = match segments {
        ["api", _, rest @ ..] | ["apis", _, _, rest @ ..] => rest,
        _ => return None,
    };
    match rest {
        ["namespaces", _, plural, ..] => Some(plural),
        [plural, ..] => Some(plural),
        [] => None,
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body)
}

fn found(body: Option<Value>) -> Response {
    match body {
        Some(body) => ok(&body),
        None => ApiError::not_found_path().into_response(),
    }
}

/// The parts of a request every resource handler needs.
struct Call {
    method: Method,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("1" | "true" | "True"))
    }

    /// `Some(include)` when the client accepts a `Table` (kubectl get).
    fn wants_table(&self) -> Option<Include> {
        let accept = self.headers.get(header::ACCEPT)?.to_str().ok()?;
        accept
            .contains("as=Table")
            .then(|| Include::parse(self.param("includeObject")))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
    }

    fn body_value(&self) -> ApiResult<Value> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        let content_type = self.content_type();
        let refused = |what: String| {
            ApiError::unsupported_media_type(format!(
                "the lab API server speaks JSON and YAML, and protobuf only for Namespaces and \
                 Secrets, not {what}; write a manifest and use `kubectl create -f` or \
                 `kubectl apply -f`"
            ))
        };
        if content_type.contains("cbor") {
            return Err(refused(content_type.to_string()));
        }
        let mut value: Value = if content_type.contains("protobuf") {
            protobuf::decode(&self.body).map_err(refused)?
        } else if content_type.contains("yaml") {
            serde_yaml_ng::from_slice(&self.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        } else {
            serde_json::from_slice(&self.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?
        };
        normalize_numbers(&mut value);
        Ok(value)
    }

    /// Who sends the request, as the write log records it: the bearer token (the lab checks
    /// none; the harness gives each daemon its name as its token), else `anonymous`.
    fn writer(&self) -> String {
        writer(&self.headers)
    }

    fn write_options(&self, apply: bool) -> WriteOptions {
        let manager = match self.param("fieldManager") {
            Some(manager) => manager.to_string(),
            None if apply => String::new(),
            None => self
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .filter(|m| !m.is_empty())
                .unwrap_or("unknown")
                .to_string(),
        };
        let field_validation = match self.param("fieldValidation") {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        };
        WriteOptions {
            manager,
            writer: self.writer(),
            dry_run: self.param("dryRun") == Some("All"),
            field_validation,
            force: self.flag("force"),
        }
    }
}

async fn handle(
    State(app): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let call = Call {
        method,
        query,
        headers,
        body,
    };
    let registry = || app.store.registry();
    let get = call.method == Method::GET;
    let response = match segments.as_slice() {
        [] if get => ok(&discovery::root_paths(&registry())),
        ["version"] if get => ok(&discovery::version()),
        ["healthz" | "readyz" | "livez"] if get => "ok".into_response(),
        ["api"] if get => ok(&discovery::core_versions(&app.server_address)),
        ["apis"] if get => ok(&discovery::group_list(&registry())),
        ["api", "v1"] if get => found(discovery::resource_list(&registry(), "", "v1")),
        ["apis", group] if get => found(discovery::group(&registry(), group)),
        ["apis", group, version] if get => {
            found(discovery::resource_list(&registry(), group, version))
        }
        ["openapi", "v3"] if get => ok(&discovery::openapi_index(&registry())),
        ["openapi", "v3", "api", "v1"] if get => {
            found(discovery::openapi_group_version(&registry(), "", "v1"))
        }
        ["openapi", "v3", "apis", group, version] if get => found(
            discovery::openapi_group_version(&registry(), group, version),
        ),
        ["api", "v1", rest @ ..] if !rest.is_empty() => {
            resource(&app, &call, "", "v1", rest).unwrap_or_else(IntoResponse::into_response)
        }
        ["apis", group, version, rest @ ..] if !rest.is_empty() => {
            resource(&app, &call, group, version, rest).unwrap_or_else(IntoResponse::into_response)
        }
        _ => ApiError::not_found_path().into_response(),
    };
    tracing::debug!(method = %call.method, %uri, status = response.status().as_u16(), "lab API request");
    let writer = call.writer();
    let request = faults::Request {
        resource: resource_plural(&segments),
        write: matches!(
            call.method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        ),
        writer: &writer,
    };
    if let Some(delay) = app.faults.delay_for(&request) {
        tokio::time::sleep(delay).await;
    }
    response
}

/// Where a resource path points.
struct Target {
    resource: ResourceType,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(store: &Store, group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let namespaced_path = match rest {
        ["namespaces", namespace, plural, tail @ ..] => store
            .lookup(group, version, plural)
            .filter(|r| r.namespaced)
            .map(|r| (r, Some((*namespace).to_string()), tail)),
        _ => None,
    };
    let (resource, namespace, tail) = match namespaced_path {
        Some(found) => found,
        None => {
            let (plural, tail) = rest.split_first().ok_or_else(ApiError::not_found_path)?;
            let resource = store
                .lookup(group, version, plural)
                .ok_or_else(ApiError::not_found_path)?;
            (resource, None, tail)
        }
    };
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some((*name).to_string()), None),
        [name, "status"] if resource.status_subresource => {
            (Some((*name).to_string()), Some("status".to_string()))
        }
        [name, "scale"] if resource.scale_subresource.is_some() => {
            (Some((*name).to_string()), Some("scale".to_string()))
        }
        _ => return Err(ApiError::not_found_path()),
    };
    if name.is_some() && resource.namespaced && namespace.is_none() {
        return Err(ApiError::not_found_path());
    }
    Ok(Target {
        resource,
        version: version.to_string(),
        namespace,
        name,
        subresource,
    })
}

fn written(target: &Target, outcome: Written) -> Response {
    let code = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = json_response(
        code,
        &present(&target.resource, &target.version, outcome.object),
    );
    for warning in outcome.warnings {
        let text = format!("299 - \"{}\"", warning.replace('"', "\\\""));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

fn resource(
    app: &AppState,
    call: &Call,
    group: &str,
    version: &str,
    rest: &[&str],
) -> ApiResult<Response> {
    let target = parse_target(&app.store, group, version, rest)?;
    let store = &app.store;
    let resource = &target.resource;
    let namespace = target.namespace.clone().unwrap_or_default();
    let scope = if target.subresource.is_some() {
        Scope::StatusOnly
    } else {
        Scope::All
    };
    let Some(name) = target.name.clone() else {
        return collection(app, call, &target);
    };
    if target.subresource.as_deref() == Some("scale") {
        return scale(app, call, &target, &namespace, &name);
    }
    match call.method {
        Method::GET => {
            let object = present(resource, version, store.get(resource, &namespace, &name)?);
            match call.wants_table() {
                Some(include) => {
                    let rv = object["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default();
                    Ok(ok(&table::table(
                        resource.columns(version),
                        std::slice::from_ref(&object),
                        include,
                        rv,
                    )))
                }
                None => Ok(ok(&object)),
            }
        }
        Method::PUT => {
            let outcome = store.update(
                resource,
                &namespace,
                &name,
                call.body_value()?,
                scope,
                &call.write_options(false),
            )?;
            Ok(written(&target, outcome))
        }
        Method::PATCH => {
            let kind = PatchKind::from_content_type(call.content_type()).ok_or_else(|| {
                ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format - accepted media types include: \
                     application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml \
                     (got {})",
                    call.content_type()
                ))
            })?;
            let apply = kind == PatchKind::Apply;
            let outcome = store.patch(
                resource,
                &namespace,
                &name,
                kind,
                &call.body_value()?,
                scope,
                &call.write_options(apply),
            )?;
            Ok(written(&target, outcome))
        }
        Method::DELETE if target.subresource.is_none() => {
            let options = call.body_value()?;
            let preconditions = &options["preconditions"];
            let object =
                store.delete(resource, &namespace, &name, preconditions, &call.writer())?;
            Ok(ok(&present(resource, version, object)))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            call.method
        ))),
    }
}

fn scale(
    app: &AppState,
    call: &Call,
    target: &Target,
    namespace: &str,
    name: &str,
) -> ApiResult<Response> {
    let resource = &target.resource;
    let options = call.write_options(false);
    let change =
        |current: Value| -> ApiResult<Value> {
            match call.method {
                Method::PUT => call.body_value(),
                Method::PATCH => {
                    let mut patched = current;
                    let body = call.body_value()?;
                    match PatchKind::from_content_type(call.content_type()) {
                        Some(PatchKind::Json) => patch::json_patch(&mut patched, &body)?,
                        Some(PatchKind::Merge | PatchKind::Strategic) => {
                            patch::merge_patch(&mut patched, &body)
                        }
                        _ => return Err(ApiError::unsupported_media_type(
                            "the scale subresource takes JSON, merge or strategic merge patches",
                        )),
                    }
                    Ok(patched)
                }
                _ => Err(ApiError::method_not_allowed(
                    "the scale subresource supports get, update and patch",
                )),
            }
        };
    if call.method == Method::GET {
        let paths = resource
            .scale_subresource
            .as_ref()
            .ok_or_else(ApiError::not_found_path)?;
        let current = app.store.get(resource, namespace, name)?;
        return Ok(ok(&scale::view(paths, &current)));
    }
    Ok(ok(&app
        .store
        .scale(resource, namespace, name, change, &options)?))
}

fn collection(app: &AppState, call: &Call, target: &Target) -> ApiResult<Response> {
    let store = &app.store;
    let resource = &target.resource;
    let version = &target.version;
    let selector = Selector::parse(call.param("labelSelector"), call.param("fieldSelector"))?;
    match call.method {
        Method::GET if call.flag("watch") => Ok(watch_response(app, call, target, selector)),
        Method::GET => {
            let (items, rv) = store.list(resource, target.namespace.as_deref(), &selector);
            let items: Vec<Value> = items
                .into_iter()
                .map(|o| present(resource, version, o))
                .collect();
            let rv = rv.to_string();
            let body = match call.wants_table() {
                Some(include) => table::table(resource.columns(version), &items, include, &rv),
                None => json!({
                    "kind": resource.list_kind,
                    "apiVersion": resource.api_version(version),
                    "metadata": {"resourceVersion": rv},
                    "items": items,
                }),
            };
            Ok(ok(&body))
        }
        Method::POST => {
            if resource.namespaced && target.namespace.is_none() {
                return Err(ApiError::method_not_allowed(
                    "a namespaced resource is created under /namespaces/<namespace>/",
                ));
            }
            let namespace = target.namespace.clone().unwrap_or_default();
            let outcome = store.create(
                resource,
                &namespace,
                call.body_value()?,
                &call.write_options(false),
            )?;
            Ok(written(target, outcome))
        }
        Method::DELETE => {
            let (items, _) = store.list(resource, target.namespace.as_deref(), &selector);
            let mut deleted = Vec::new();
            for item in items {
                let namespace = item["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                match store.delete(resource, namespace, name, &Value::Null, &call.writer()) {
                    Ok(object) => deleted.push(present(resource, version, object)),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(ok(&json!({
                "kind": resource.list_kind,
                "apiVersion": resource.api_version(version),
                "metadata": {"resourceVersion": store.current_resource_version().to_string()},
                "items": deleted,
            })))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            call.method
        ))),
    }
}

fn watch_response(app: &AppState, call: &Call, target: &Target, selector: Selector) -> Response {
    let since = match call.param("resourceVersion").filter(|rv| !rv.is_empty()) {
        None => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return ApiError::bad_request(format!("invalid resource version: {rv}"))
                    .into_response()
            }
        },
    };
    let streaming = |body: Body| {
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    };
    let send_initial_events = call.flag("sendInitialEvents");
    let since = if send_initial_events { None } else { since };
    let start = match app.store.watch(
        &target.resource,
        target.namespace.as_deref(),
        &selector,
        since,
    ) {
        Ok(start) => start,
        Err(error) => return streaming(Body::from(watch::error_line(&error))),
    };
    let timeout = call
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let request = WatchRequest {
        resource: target.resource.clone(),
        version: target.version.clone(),
        namespace: target.namespace.clone(),
        selector,
        bookmarks: call.flag("allowWatchBookmarks"),
        bookmark_interval: app.bookmark_interval,
        timeout,
        table: call.wants_table(),
        send_initial_events,
    };
    streaming(Body::from_stream(watch::stream(
        start,
        request,
        app.shutdown.clone(),
    )))
}
