//! `canaryd demo` stopped at the worst moment, in the middle of the rollout: SIGTERM stops
//! the lab as Ctrl-C does, and even SIGKILL leaves none of its programs (Prometheus,
//! Alertmanager, the daemon) running.

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
