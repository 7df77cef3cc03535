//! Crash points for the chaos test: [`hit`] marks a place in the code where a crash must be
//! survivable (between two writes that belong together). Built with the cargo feature
//! `failpoints` (test builds only: tests/run.sh turns it on, the container image never has
//! it), the `fail` crate decides from the `FAILPOINTS` environment variable whether a point
//! fires, e.g. `FAILPOINTS="intent-written=5%return;weights-written=5%return"`; a point that
//! fires aborts the process at once, as a SIGKILL or an OOM kill would: no destructor, no
//! flush, no graceful shutdown. Without the feature [`hit`] is an empty function.
//!
//! The points: `intent-written` (the status with the intended weights is written, the weight
//! patch is not) and `weights-written` (the weights are written, the confirming status is
//! not), both in `cluster::reconcile`.

/// Aborts the process when the failpoint `name` fires; does nothing otherwise.
#[cfg(feature = "failpoints")]
pub fn hit(name: &'static str) {
    static SETUP: std::sync::Once = std::sync::Once::new();
    SETUP.call_once(|| {
        // Reads FAILPOINTS once (a malformed value panics, naming it). The scenario guard
        // would reset every point when dropped; the points stay set for the whole process.
        std::mem::forget(fail::FailScenario::setup());
    });
    let fired = fail::eval(name, |_| ()).is_some();
    if fired {
        eprintln!("failpoint {name} fired: aborting the process");
        std::process::abort();
    }
}

/// Aborts the process when the failpoint `name` fires; without the `failpoints` feature it
/// never does, and compiles to nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &'static str) {}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    #[test]
    fn an_unset_point_does_not_fire() {
        super::hit("no-such-point");
    }
}
