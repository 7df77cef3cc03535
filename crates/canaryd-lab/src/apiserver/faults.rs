//! Fault injection, set and cleared by a test at run time: answers held back. The request is
//! carried out at once (a write commits, and the write log has it); only the answer waits
//! for the delay, as on a slow network or an overloaded server, so a client's timeout
//! fires although its write went through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Which answers to hold back, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delay {
    pub duration: Duration,
    /// Only requests for this resource (its plural, e.g. `leases`); `None`: every resource,
    /// discovery included.
    pub resource: Option<String>,
    /// Only creates, updates, patches and deletes.
    pub writes_only: bool,
    /// Only requests of this writer (the bearer token, see `write_log`); `None`: everyone's,
    /// the lab's own client included.
    pub writer: Option<String>,
}

impl Delay {
    /// Every answer, to everyone.
    pub fn all(duration: Duration) -> Self {
        Delay {
            duration,
            resource: None,
            writes_only: false,
            writer: None,
        }
    }

    pub fn of_resource(mut self, plural: &str) -> Self {
        self.resource = Some(plural.to_string());
        self
    }

    pub fn of_writer(mut self, writer: &str) -> Self {
        self.writer = Some(writer.to_string());
        self
    }

    pub fn writes_only(mut self) -> Self {
        self.writes_only = true;
        self
    }
}

/// A request as the delay rule sees it.
pub(super) struct Request<'a> {
    pub resource: Option<&'a str>,
    pub write: bool,
    pub writer: &'a str,
}

#[derive(Default)]
pub(super) struct Faults {
    delay: Mutex<Option<Delay>>,
    delayed: AtomicU64,
}

impl Faults {
    pub fn set_delay(&self, delay: Option<Delay>) {
        *self.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    /// How long to hold this request's answer back, counting it when it is.
    pub fn delay_for(&self, request: &Request<'_>) -> Option<Duration> {
        let rule = self.delay.lock().unwrap_or_else(|e| e.into_inner());
        let rule = rule.as_ref()?;
        let applies = rule
            .resource
            .as_deref()
            .is_none_or(|r| request.resource == Some(r))
            && (!rule.writes_only || request.write)
            && rule.writer.as_deref().is_none_or(|w| w == request.writer);
        if !applies {
            return None;
        }
        self.delayed.fetch_add(1, Ordering::Relaxed);
        Some(rule.duration)
    }

    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_holds_back_only_what_it_names() {
        let faults = Faults::default();
        let lease_patch = Request {
            resource: Some("leases"),
            write: true,
            writer: "canaryd-a",
        };
        let lease_get = Request {
            write: false,
            ..lease_patch
        };
        assert_eq!(faults.delay_for(&lease_patch), None, "no rule yet");
        let second = Duration::from_secs(1);
        faults.set_delay(Some(
            Delay::all(second)
                .of_resource("leases")
                .of_writer("canaryd-a")
                .writes_only(),
        ));
        assert_eq!(faults.delay_for(&lease_patch), Some(second));
        assert_eq!(faults.delay_for(&lease_get), None);
        let other = Request {
            writer: "canaryd-b",
            ..lease_patch
        };
        assert_eq!(faults.delay_for(&other), None);
        faults.set_delay(Some(Delay::all(second)));
        assert_eq!(faults.delay_for(&other), Some(second));
        faults.set_delay(None);
        assert_eq!(faults.delay_for(&other), None);
        assert_eq!(faults.delayed(), 2);
    }
}
