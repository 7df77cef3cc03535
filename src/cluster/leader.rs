//! Leader election on a `coordination.k8s.io/v1` Lease: with several replicas only the
//! leader writes. The leader renews the Lease every few seconds; if it cannot renew within
//! `renewDeadline` it stops writing at once, and another replica takes the Lease once it has
//! not been renewed for `leaseDuration`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// Whether this replica may write. Cheap to clone and to check before every write.
#[derive(Clone, Debug)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// Leader election disabled: always the leader.
    pub fn always() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub(crate) fn set(&self, leader: bool) {
        let was = self.0.swap(leader, Ordering::SeqCst);
        if was != leader {
            tracing::info!(leader, "leadership changed");
        }
    }
}

pub struct Election {
    pub api: Api<Lease>,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
}

impl Election {
    /// Starts campaigning in the background; the returned flag follows the outcome.
    pub fn spawn(self) -> Leadership {
        let leadership = Leadership(Arc::new(AtomicBool::new(false)));
        let flag = leadership.clone();
        tokio::spawn(async move { self.run(flag).await });
        leadership
    }

    async fn run(self, flag: Leadership) {
        let retry = (self.lease_duration / 5).max(Duration::from_millis(200));
        let mut last_renew: Option<std::time::Instant> = None;
        loop {
            // A hung call must not outlive the deadline within which leadership is proven.
            let round = tokio::time::timeout(self.renew_deadline, self.try_acquire_or_renew());
            match round.await {
                Ok(Ok(true)) => {
                    last_renew = Some(std::time::Instant::now());
                    flag.set(true);
                }
                Ok(Ok(false)) => {
                    last_renew = None;
                    flag.set(false);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, lease = %self.lease_name, "cannot renew the lease")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.lease_name, deadline = ?self.renew_deadline, "renewing the lease took longer than renewDeadline")
                }
            }
            if last_renew.is_some_and(|t| t.elapsed() > self.renew_deadline) {
                flag.set(false);
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// One round of the campaign: true when this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
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
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let held = jiff::SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(duration_secs),
            ));
            t.0 + held < now.0
        });
        if !ours && !holder.is_empty() && !expired {
            return Ok(false);
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
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
