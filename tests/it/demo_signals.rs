//! `canaryd demo` as a person runs it. Run to its end, it shows the checks passing at step
//! 0, lists every step in its summary (from the Canary's status history) and, for a bad
//! release, shows the rollback's alert in the lab's Alertmanager. Stopped at the worst
//! moment, in the middle of the rollout: SIGTERM stops the lab as Ctrl-C does, and even
//! SIGKILL leaves none of its programs (Prometheus, Alertmanager, the daemon) running.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_canaryd");
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The pids whose parent is `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| stat(*child).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// State and parent pid of `pid`, if it exists.
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let mut rest = text[text.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.next()?.parse().ok()?))
}

/// Running, not a zombie waiting to be reaped.
fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z')
}

fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -{name} {pid}");
}

/// Starts the demo and returns once stage has its release, with the demo's children.
fn demo_mid_rollout() -> (Child, Vec<u32>) {
    let mut demo = Command::new(BINARY)
        .args(["demo", "--scenario", "good"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the demo starts");
    let stdout = demo.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let released = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("releasing "));
    assert!(released, "the demo ended before it released to stage");
    // Keep reading so the demo never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let kids = children(demo.id());
    assert!(
        kids.len() >= 2,
        "expected at least Prometheus and the daemon under the demo, found {kids:?}"
    );
    (demo, kids)
}

/// Waits until `done` holds or the timeout passes; true when it held.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + STOP_TIMEOUT;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn sigterm_mid_rollout_stops_the_demo_and_everything_it_started() {
    let _one = crate::e2e_lab::ONE_AT_A_TIME.blocking_lock();
    let (mut demo, kids) = demo_mid_rollout();
    signal(demo.id(), "TERM");
    let mut status = None;
    assert!(
        eventually(|| {
            status = demo.try_wait().expect("wait for the demo");
            status.is_some()
        }),
        "the demo did not stop within {STOP_TIMEOUT:?} of SIGTERM"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(130), "{status:?}");
    let left: Vec<u32> = kids.iter().copied().filter(|k| alive(*k)).collect();
    assert!(left.is_empty(), "still running after SIGTERM: {left:?}");
}

#[test]
fn sigkill_mid_rollout_leaves_no_program_of_the_demo_running() {
    let _one = crate::e2e_lab::ONE_AT_A_TIME.blocking_lock();
    let (mut demo, kids) = demo_mid_rollout();
    signal(demo.id(), "KILL");
    demo.wait().expect("the killed demo is reaped");
    assert!(
        eventually(|| kids.iter().all(|k| !alive(*k))),
        "still running {STOP_TIMEOUT:?} after SIGKILL: {:?}",
        kids.iter().filter(|k| alive(**k)).collect::<Vec<_>>()
    );
}

/// Runs the demo of `scenario` to its end; returns whether it exited 0 and its stdout.
fn demo(scenario: &str) -> (bool, String) {
    let out = Command::new(BINARY)
        .args([
            "demo",
            "--scenario",
            scenario,
            "--speed",
            "60",
            "--rate",
            "4000",
        ])
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.is_empty(),
        "the demo printed nothing; stderr:\n{stderr}"
    );
    (out.status.success(), stdout)
}

/// The lines from the one starting with `from` up to (not including) the next line that
/// starts with `until`.
fn section<'a>(output: &'a str, from: &str, until: &str) -> Vec<&'a str> {
    output
        .lines()
        .skip_while(|l| !l.starts_with(from))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || !l.starts_with(until))
        .map(|(_, l)| l)
        .collect()
}

/// The summary's lines, after its heading.
fn summary(output: &str) -> Vec<&str> {
    section(output, "What each step did", "The VirtualService")
        .into_iter()
        .skip(1)
        .collect()
}

#[test]
fn the_good_demo_shows_its_checks_passing_at_step_0_and_every_step_in_its_summary() {
    let _one = crate::e2e_lab::ONE_AT_A_TIME.blocking_lock();
    let (ok, output) = demo("good");
    assert!(ok, "the good release is promoted:\n{output}");
    let step_0 = section(&output, "step 0/3:", "step 1/3:");
    assert!(
        step_0.iter().any(
            |l| l.contains("pre-traffic checks passed: check health: 5/5 passed")
                && l.contains("check home: 1/1 passed")
        ),
        "the checks pass at step 0, live:\n{output}"
    );
    let summary = summary(&output);
    let starts: Vec<&str> = summary
        .iter()
        .map(|l| l.trim_start().split([',', ':']).next().unwrap_or(""))
        .collect();
    assert_eq!(
        starts,
        [
            "step 0 (0 %)",
            "step 1 (30 %)",
            "step 2 (60 %)",
            "step 3 (100 %)",
            "promotion",
            "switching back",
            "succeeded"
        ],
        "{output}"
    );
    assert!(
        summary[0].contains("pre-traffic checks passed: check health: 5/5 passed"),
        "{output}"
    );
    assert!(
        summary[1].contains("advanced: stage is proven not worse"),
        "{output}"
    );
    assert!(summary[3].contains("promoted: "), "{output}");
}

#[test]
fn the_bad_errors_demo_rolls_back_at_a_step_and_alertmanager_gets_the_alert() {
    let _one = crate::e2e_lab::ONE_AT_A_TIME.blocking_lock();
    let (ok, output) = demo("bad-errors");
    assert!(ok, "the release with more errors is rolled back:\n{output}");
    let summary = summary(&output);
    assert!(
        summary[0].starts_with("  step 0 (0 %)")
            && summary[0].contains("pre-traffic checks passed"),
        "its checks pass (its errors are a rate, for the statistics):\n{output}"
    );
    let last = summary.last().copied().unwrap_or_default();
    assert!(
        last.contains("rolled back: ") && last.contains("stage is worse than prod on errors"),
        "the summary ends with the step that rolled back:\n{output}"
    );
    assert!(
        output
            .lines()
            .any(|l| l.starts_with("Alertmanager (http://127.0.0.1:")
                && l.contains("received CanaryRolledBack [severity critical]")),
        "the notification reached the lab's Alertmanager:\n{output}"
    );
}
