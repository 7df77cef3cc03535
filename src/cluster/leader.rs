//! Leader election on a `coordination.k8s.io/v1` Lease: with several replicas only the
//! leader writes.
//!
//! Fencing rests on three rules, so that two replicas never both believe they lead:
//! - **Leadership is local time since the last successful renew.** A renew that starts at
//!   instant `t` (this process's monotonic clock) and succeeds makes the replica the leader
//!   until `t + renewDeadline`; [`Leadership::is_leader`] compares with the clock at each
//!   call, so a replica that is paused (SIGSTOP), partitioned or stuck in a slow call stops
//!   leading on time by itself, without its campaign task having to run.
//! - **Every renew is bounded**: one round (read and write of the Lease) may take at most half
//!   the renew deadline, so a hung API server cannot keep a round open past it.
//! - **Taking over needs the Lease seen unchanged for a whole lease duration on the local
//!   clock**, from the first time this replica saw that record (holder, renewTime,
//!   resourceVersion). The other replica's `renewTime` is never compared with the local wall
//!   clock, so clock skew between nodes does not matter. The holder's last successful renew
//!   started before this replica read its record, and `renewDeadline < leaseDuration`, so the
//!   old leader has stopped leading before the new one starts.
//!
//! A write still in flight when leadership ends is fenced by the API server: status writes
//! carry a `test` of the Canary's resourceVersion and weight writes a `test` of the
//! VirtualService's (see `reconcile::write_status` and `traffic::set_weights`), so a deposed
//! leader's late write fails instead of overwriting the new leader's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// Whether this replica may write. Cheap to clone and to check before every write.
#[derive(Clone, Debug)]
pub struct Leadership(Arc<Mutex<Term>>);

#[derive(Clone, Copy, Debug)]
enum Term {
    /// Leader election disabled.
    Always,
    /// Leading until this instant (in the past: not leading).
    Until(Instant),
    Never,
}

impl Leadership {
    /// Leader election disabled: always the leader.
    pub fn always() -> Self {
        Self(Arc::new(Mutex::new(Term::Always)))
    }

    fn never() -> Self {
        Self(Arc::new(Mutex::new(Term::Never)))
    }

    pub fn is_leader(&self) -> bool {
        match *self.0.lock().expect("leadership lock") {
            Term::Always => true,
            Term::Until(end) => Instant::now() < end,
            Term::Never => false,
        }
    }

    /// Tests: lead (as without election) or not.
    #[cfg(test)]
    pub(crate) fn set(&self, leader: bool) {
        *self.0.lock().expect("leadership lock") = if leader { Term::Always } else { Term::Never };
    }

    fn lead_until(&self, end: Instant) {
        *self.0.lock().expect("leadership lock") = Term::Until(end);
    }

    fn step_down(&self) {
        *self.0.lock().expect("leadership lock") = Term::Never;
    }
}

pub struct Election {
    pub api: Api<Lease>,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
}

/// Another replica's Lease record, and since when (local clock) it has been seen unchanged.
struct Observed {
    record: (String, Option<String>, Option<String>),
    since: Instant,
}

impl Election {
    /// Starts campaigning in the background; the returned flag follows the outcome.
    pub fn spawn(self) -> Leadership {
        let leadership = Leadership::never();
        let flag = leadership.clone();
        tokio::spawn(async move { self.run(flag).await });
        leadership
    }

    async fn run(self, flag: Leadership) {
        let retry = (self.lease_duration / 5).max(Duration::from_millis(200));
        let round_limit = self.renew_deadline / 2;
        let mut observed = None;
        let mut leading = false;
        loop {
            let started = Instant::now();
            let round = tokio::time::timeout(round_limit, self.round(&mut observed));
            match round.await {
                Ok(Ok(true)) => flag.lead_until(started + self.renew_deadline),
                Ok(Ok(false)) => flag.step_down(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, lease = %self.lease_name, "cannot renew the lease")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.lease_name, limit = ?round_limit, "renewing the lease took longer than half the renewDeadline; giving up this round")
                }
            }
            self.note_change(&flag, &mut leading);
            tokio::time::sleep(retry).await;
            // A term can lapse while this task sleeps (or the process is stopped).
            self.note_change(&flag, &mut leading);
        }
    }

    fn note_change(&self, flag: &Leadership, leading: &mut bool) {
        if flag.is_leader() != *leading {
            *leading = !*leading;
            tracing::info!(leader = *leading, identity = %self.identity, "leadership changed");
        }
    }

    /// One round of the campaign: true when this replica holds the Lease afterwards.
    async fn round(&self, observed: &mut Option<Observed>) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let duration_secs = self.lease_duration.as_secs().max(1) as i32;
        let lease = match self.api.get_opt(&self.lease_name).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease_name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(duration_secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() {
            let record = (
                holder.clone(),
                spec.renew_time.as_ref().map(|t| t.0.to_string()),
                lease.metadata.resource_version.clone(),
            );
            let held = Duration::from_secs(
                spec.lease_duration_seconds.unwrap_or(duration_secs).max(1) as u64,
            );
            match observed {
                Some(o) if o.record == record && o.since.elapsed() >= held => {}
                Some(o) if o.record == record => return Ok(false),
                _ => {
                    *observed = Some(Observed {
                        record,
                        since: Instant::now(),
                    });
                    return Ok(false);
                }
            }
            tracing::info!(lease = %self.lease_name, previous = %holder, "the lease was not renewed for a whole lease duration; taking it over");
        }
        let mut next = lease.clone();
        let next_spec = next.spec.get_or_insert_with(Default::default);
        if !ours {
            next_spec.holder_identity = Some(self.identity.clone());
            next_spec.acquire_time = Some(now.clone());
            next_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        next_spec.lease_duration_seconds = Some(duration_secs);
        next_spec.renew_time = Some(now);
        // replace carries the resourceVersion we read: two candidates cannot both win.
        match self
            .api
            .replace(&self.lease_name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => {
                *observed = None;
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use kube::Client;

    #[tokio::test(start_paused = true)]
    async fn leadership_ends_on_time_even_if_the_campaign_never_runs_again() {
        let leadership = Leadership::never();
        assert!(!leadership.is_leader());
        leadership.lead_until(Instant::now() + Duration::from_secs(3));
        assert!(leadership.is_leader());
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert!(leadership.is_leader());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            !leadership.is_leader(),
            "no renew within the deadline: not leading"
        );
    }

    /// The other replica's renewTime is a day old by the local clock (skew, or a dead
    /// replica): still, the Lease is taken only once it was seen unchanged for a whole lease
    /// duration on the local clock.
    #[tokio::test(start_paused = true)]
    async fn a_lease_is_taken_over_only_after_a_whole_duration_seen_unchanged() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "canaryd-system");
        let election = Election {
            api: Api::namespaced(client, "canaryd-system"),
            lease_name: "canaryd".into(),
            identity: "b".into(),
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
        };
        let leadership = election.spawn();
        let old = (Timestamp::now() - jiff::SignedDuration::from_hours(24)).to_string();
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "canaryd", "namespace": "canaryd-system", "resourceVersion": "7"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 4, "renewTime": old}
        });
        let first_read = Instant::now();
        let taken_at = loop {
            let (request, send) = handle.next_request().await.expect("the campaign goes on");
            let method = request.method().clone();
            let answer = if method == Method::PUT {
                let bytes = http_body_util::BodyExt::collect(request.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                let mut written: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(written["spec"]["holderIdentity"], "b");
                assert_eq!(
                    written["metadata"]["resourceVersion"], "7",
                    "guarded by the version read"
                );
                written["metadata"]["resourceVersion"] = "8".into();
                send.send_response(Response::new(Body::from(
                    serde_json::to_vec(&written).unwrap(),
                )));
                break Instant::now();
            } else {
                assert_eq!(method, Method::GET);
                assert!(
                    !leadership.is_leader(),
                    "not leading while another holds the Lease"
                );
                serde_json::to_vec(&lease).unwrap()
            };
            send.send_response(Response::new(Body::from(answer)));
        };
        assert!(
            taken_at - first_read >= Duration::from_secs(4),
            "taken after {:?}",
            taken_at - first_read
        );
        // The next round's read shows the write; leadership follows the successful write.
        let (_request, send) = handle.next_request().await.expect("the campaign goes on");
        let mut ours = lease.clone();
        ours["spec"]["holderIdentity"] = "b".into();
        ours["metadata"]["resourceVersion"] = "8".into();
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&ours).unwrap(),
        )));
        assert!(leadership.is_leader());
    }
}
