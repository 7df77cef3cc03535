//! `canaryd run`: builds the Context, campaigns for leadership, keeps one shared cache per
//! watched kind (Canaries, Deployments, VirtualServices) and runs the Controller. A change of
//! a Deployment or VirtualService wakes exactly the Canaries that name it. Canaries are
//! watched undecoded and decoded one by one ([`super::decode`]), so one that does not decode
//! fails no list or watch. A watch error is logged once per cause ([`log_watch_errors`]).

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use super::boundaries::Grants;
use super::leader::{Election, Leadership};
use super::reconcile::error_policy;
use super::{decode, Context, Error, MetricsSource};
use crate::api::limits::bounded;
use crate::api::reference_grant::ReferenceGrant;
use crate::api::virtual_service::VirtualService;
use crate::api::Canary;
use crate::config::{Config, ReferencePolicy};
use crate::server::Admin;

/// The Canaries whose spec names this object (a Deployment or a VirtualService); those
/// whose spec does not decode name nothing.
fn canaries_naming(
    canaries: &Store<DynamicObject>,
    namespace: &str,
    name: &str,
    names: impl Fn(&Canary) -> Vec<(Option<String>, String)>,
) -> Vec<ObjectRef<DynamicObject>> {
    decode::readable(canaries)
        .into_iter()
        .filter(|c| {
            let own = c.namespace().unwrap_or_default();
            names(c)
                .into_iter()
                .any(|(ns, n)| n == name && ns.unwrap_or_else(|| own.clone()) == namespace)
        })
        .map(|c| {
            ObjectRef::new_with(&c.name_any(), decode::api_resource())
                .within(&c.namespace().unwrap_or_default())
        })
        .collect()
}

/// Runs the controller until Ctrl-C / SIGTERM.
pub async fn run(
    client: Client,
    config: &Config,
    metrics: Arc<dyn MetricsSource>,
) -> Result<(), crate::notify::NotifyError> {
    run_with(client, config, metrics, &Admin::new()).await
}

/// [`run`], recording into `admin`'s metrics and marking it ready once the caches synced.
pub async fn run_with(
    client: Client,
    config: &Config,
    metrics: Arc<dyn MetricsSource>,
    admin: &Admin,
) -> Result<(), crate::notify::NotifyError> {
    let leader = if config.leader_election.enabled {
        let le = &config.leader_election;
        let namespace = le
            .namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| client.default_namespace().to_string());
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            format!(
                "canaryd-{}-{}",
                std::process::id(),
                jiff::Timestamp::now().as_millisecond()
            )
        });
        tracing::info!(%identity, lease = %le.lease_name, %namespace, "campaigning for leadership");
        Election {
            api: Api::<Lease>::namespaced(client.clone(), &namespace),
            lease_name: le.lease_name.clone(),
            identity,
            lease_duration: le.lease_duration.0,
            renew_deadline: le.renew_deadline.0,
        }
        .spawn()
    } else {
        Leadership::always()
    };

    let (deployments, dep_writer) = reflector::store();
    let (virtual_services, vs_writer) = reflector::store();
    let canary_kind: ApiResource = decode::api_resource();
    let canary_writer = Writer::<DynamicObject>::new(canary_kind.clone());
    let canaries = canary_writer.as_reader();
    let synced = [(); 3].map(|_| watch::channel(false));
    let [dep_synced, vs_synced, canary_synced] = synced.each_ref().map(|(tx, _)| tx.clone());
    let dep_stream = watcher(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(super::trim::deployment)
    .reflect(dep_writer);
    let dep_stream =
        log_watch_errors("Deployments", mark_synced(dep_stream, dep_synced)).touched_objects();
    let vs_stream = watcher(
        Api::<VirtualService>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(super::trim::virtual_service)
    .reflect(vs_writer);
    let vs_stream =
        log_watch_errors("VirtualServices", mark_synced(vs_stream, vs_synced)).touched_objects();
    let canary_stream = watcher(
        Api::<DynamicObject>::all_with(client.clone(), &canary_kind),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(super::trim::canary)
    .reflect(canary_writer);
    let canary_stream =
        log_watch_errors("Canaries", mark_synced(canary_stream, canary_synced)).applied_objects();

    let (grants, grant_stream, grants_synced) = watch_grants(&client, config.references).await;

    let mut ctx = Context::new(
        client.clone(),
        metrics,
        leader,
        deployments.clone(),
        virtual_services.clone(),
        config.evaluation_interval.0,
    );
    ctx.canaries = canaries.clone();
    ctx.scrape_interval = config.prometheus.scrape_interval.0;
    ctx.references = config.references;
    ctx.gates = super::gates::GateRunner::new(config.egress.policy());
    ctx.grants = grants;
    ctx.notifier = crate::notify::Notifier::from_config(config, admin.deliveries.clone())?;
    ctx.exported = admin.metrics.clone();
    ctx.board = admin.board.clone();
    admin.board.watch(canaries.clone());
    let ctx = Arc::new(ctx);

    let controller =
        Controller::for_stream_with(canary_stream, canaries.clone(), canary_kind.clone());
    let mut caches = synced.map(|(_, rx)| rx).to_vec();
    caches.extend(grants_synced);
    tokio::spawn(report_state(admin.clone(), ctx.leader.clone(), caches));
    let for_grants = canaries.clone();
    let for_deployments = canaries.clone();
    controller
        .watches_stream(dep_stream, move |d: Deployment| {
            canaries_naming(
                &for_deployments,
                &d.namespace().unwrap_or_default(),
                &d.name_any(),
                |c| {
                    vec![
                        (
                            c.spec.stage.deployment.namespace.clone(),
                            c.spec.stage.deployment.name.clone(),
                        ),
                        (
                            c.spec.prod.deployment.namespace.clone(),
                            c.spec.prod.deployment.name.clone(),
                        ),
                    ]
                },
            )
        })
        .watches_stream(vs_stream, move |vs: VirtualService| {
            canaries_naming(
                &canaries,
                &vs.namespace().unwrap_or_default(),
                &vs.name_any(),
                |c| {
                    vec![(
                        c.spec.virtual_service.namespace.clone(),
                        c.spec.virtual_service.name.clone(),
                    )]
                },
            )
        })
        .watches_stream(grant_stream, move |grant: ReferenceGrant| {
            // A grant speaks for Canaries of the namespaces it names.
            let from: Vec<String> = grant
                .spec
                .from
                .iter()
                .map(|f| f.namespace.clone())
                .collect();
            for_grants
                .state()
                .into_iter()
                .filter(|c| from.contains(&c.namespace().unwrap_or_default()))
                .map(|c| ObjectRef::from_obj_with(&*c, canary_kind.clone()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(timed_reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(canary = %obj.name, "reconciled"),
                // Logged where it happens, once per cause (`log_watch_errors`).
                Err(kube::runtime::controller::Error::QueueError(_)) => {}
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
    tracing::info!("controller stopped");
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

/// The ReferenceGrant cache the `granted` policy reads, its watch stream and its sync signal.
/// Without the CRD (or under another policy) nothing is watched: cross-namespace references
/// are then refused under `granted` (with a condition saying to install the CRD), and the
/// daemon must be restarted once it is installed.
async fn watch_grants(
    client: &Client,
    policy: ReferencePolicy,
) -> (
    Grants,
    futures::stream::BoxStream<'static, Result<ReferenceGrant, watcher::Error>>,
    Option<watch::Receiver<bool>>,
) {
    let none = || futures::stream::pending().boxed();
    match policy {
        ReferencePolicy::Any => {
            tracing::warn!(
                "references: any — every Canary may drive Deployments and VirtualServices in \
                 every namespace; use this only in a cluster with one tenant"
            );
            return (Grants::NotInstalled, none(), None);
        }
        ReferencePolicy::SameNamespace => return (Grants::NotInstalled, none(), None),
        ReferencePolicy::Granted => {}
    }
    let api = Api::<ReferenceGrant>::all(client.clone());
    match api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::warn!(
                "the ReferenceGrant CRD (gateway.networking.k8s.io/v1beta1) is not installed: \
                 Canaries may drive only objects in their own namespace until it is installed \
                 and canaryd restarted"
            );
            return (Grants::NotInstalled, none(), None);
        }
        // Any other answer: watch, and let the watcher's backoff deal with errors.
        _ => {}
    }
    let (store, writer) = reflector::store();
    let (tx, rx) = watch::channel(false);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let stream = log_watch_errors("ReferenceGrants", mark_synced(stream, tx))
        .touched_objects()
        .boxed();
    (Grants::Watched(store), stream, Some(rx))
}

/// [`decode::reconcile`], timed and counted in canaryd's metrics.
async fn timed_reconcile(canary: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let deleted = canary.metadata.deletion_timestamp.is_some();
    let (namespace, name) = (canary.namespace().unwrap_or_default(), canary.name_any());
    let result = decode::reconcile(canary, ctx.clone()).await;
    let category = result.as_ref().err().map(Error::category);
    ctx.exported.reconciled(started.elapsed(), category);
    if deleted && result.is_ok() {
        // The finalizer is gone: so is the Canary, and so are its series.
        ctx.exported.forget_canary(&namespace, &name);
        ctx.board.forget(&namespace, &name);
    }
    result
}

/// Passes a watch stream through and sets `synced` once its first full list is in the cache.
///
/// Readiness is taken from the streams, not from `Store::wait_until_ready`: the Controller's
/// runner waits on the Canary store too, and the store's ready signal wakes only one of two
/// waiters, which left `/readyz` at 503 for good.
fn mark_synced<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    synced: watch::Sender<bool>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> {
    events.inspect(move |event| {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            synced.send_replace(true);
        }
    })
}

/// How much of a watch error's text is logged, in bytes: enough for the cause, too little for
/// the objects a message may quote.
const WATCH_ERROR_TEXT: usize = 300;

/// Passes a watch stream through and logs its errors at WARN once per cause: the first
/// error, then one whose cause differs (digits aside: a position or version in the text is
/// not a new cause), and the first again after the watch recovered. Not every retry of the
/// backoff, and never more than [`WATCH_ERROR_TEXT`] of the text.
fn log_watch_errors<K>(
    watch: &'static str,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> {
    let mut last_cause: Option<String> = None;
    events.inspect(move |event| match event {
        Err(e) => {
            let text = bounded(&e.to_string(), WATCH_ERROR_TEXT);
            let cause: String = text.chars().filter(|c| !c.is_ascii_digit()).collect();
            if last_cause.as_ref() != Some(&cause) {
                last_cause = Some(cause);
                tracing::warn!(
                    watch,
                    error = %text,
                    "watch failed; retrying with backoff (logged again only for another cause)"
                );
            }
        }
        Ok(_) => {
            if last_cause.take().is_some() {
                tracing::info!(watch, "watch recovered");
            }
        }
    })
}

/// Marks the admin server ready once every cache has synced, then follows leadership.
async fn report_state(admin: Admin, leader: Leadership, synced: Vec<watch::Receiver<bool>>) {
    for mut cache in synced {
        if cache.wait_for(|done| *done).await.is_err() {
            return;
        }
    }
    admin.readiness.set_ready();
    tracing::info!("caches synced; ready");
    loop {
        admin.metrics.set_leader(leader.is_leader());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::operate::logged;

    /// A list that fails to decode, its error quoting an object of the body.
    fn list_error(column: usize) -> watcher::Error {
        let body = format!("SECRET-BODY-{}", "x".repeat(5000));
        let e = serde_json::from_value::<u8>(serde_json::json!(body)).unwrap_err();
        let e = serde_json::Error::io(std::io::Error::other(format!("{e} at column {column}")));
        watcher::Error::InitialListFailed(kube::Error::SerdeError(e))
    }

    #[test]
    fn a_watch_error_is_logged_once_per_cause_and_without_the_body() {
        let mut events: Vec<Result<watcher::Event<DynamicObject>, watcher::Error>> =
            (0..10).map(|i| Err(list_error(1000 + i))).collect();
        events.push(Err(watcher::Error::NoResourceVersion));
        events.push(Ok(watcher::Event::Init));
        events.push(Err(watcher::Error::NoResourceVersion));
        let log = logged(tracing_subscriber::EnvFilter::new("info"), || {
            let stream = log_watch_errors("Canaries", futures::stream::iter(events));
            futures::executor::block_on(stream.collect::<Vec<_>>());
        });
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 3, "{log}");
        assert!(
            warnings[0].contains("failed to perform initial object list"),
            "{log}"
        );
        assert!(warnings[1].contains("no metadata.resourceVersion"), "{log}");
        assert!(log.contains("watch recovered"), "{log}");
        assert!(log.lines().all(|l| l.len() < 600), "{log}");
        assert!(!log.contains(&"x".repeat(WATCH_ERROR_TEXT)), "{log}");
    }
}
