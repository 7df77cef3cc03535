//! The rollout page in a real browser (Debian's headless Chromium), during a demo rollout:
//! mid-rollout it shows the step stage is in; at the end the timeline has every step, every
//! look and the final decision, and the page refreshes itself. It saves a screenshot
//! (`target/tmp/rollout-page.png`; README.md shows one).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_canaryd");

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
        .expect("Chromium is not installed: run `bash tests/setup.sh` (installs Debian's chromium)")
}

/// Chromium, headless, with a fresh profile and none of its own network traffic.
fn browser(profile: &Path) -> Command {
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Runs Chromium to its end, or kills it after a minute and fails.
fn finish(mut command: Command, what: &str) -> Vec<u8> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("Chromium runs");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).map(|_| out)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for Chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {what} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "chromium {what} failed: {status}");
    reader.join().unwrap().expect("Chromium's output")
}

/// The page's DOM once loaded, after its scripts ran for `virtual_ms` more of (virtual)
/// time when given.
fn dom(profile: &Path, url: &str, virtual_ms: Option<u32>) -> String {
    let mut command = browser(profile);
    if let Some(ms) = virtual_ms {
        command.arg(format!("--virtual-time-budget={ms}"));
    }
    command.args(["--dump-dom", url]);
    String::from_utf8_lossy(&finish(command, &format!("--dump-dom {url}"))).into_owned()
}

/// The phase badge of the page's heading.
fn heading_phase(dom: &str) -> Option<&str> {
    let h1 = &dom[dom.find("<h1>")?..];
    let h1 = &h1[..h1.find("</h1>")?];
    let badge = &h1[h1.find(r#"class="phase "#)? + 13..];
    Some(&badge[..badge.find('"')?])
}

/// Lines of the demo's output, read on a thread so the demo never blocks on its pipe.
fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    what: &str,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(what) {
                    return line;
                }
            }
            Err(_) => panic!(
                "no line with {what:?} from the demo; it printed:\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[test]
fn the_rollout_page_shows_a_demo_rollout_live_in_a_real_browser() {
    let profile = tempfile::tempdir().unwrap();
    let mut demo = Command::new(BINARY)
        .args(["demo", "--scenario", "good", "--keep"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the demo starts");
    let stdout = demo.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let announced = wait_for_line(&lines, &mut seen, "rollout page", Duration::from_secs(120));
    let url = announced[announced.find("http://").expect("a URL")..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let list_url = format!(
        "{}/",
        &url[..url.find("/rollouts/").expect("a rollout URL")]
    );

    // Mid-rollout: the page shows the rollout at a step with traffic.
    let deadline = Instant::now() + Duration::from_secs(120);
    let during = loop {
        let page = dom(profile.path(), &url, None);
        if heading_phase(&page) == Some("Progressing") && page.contains(r#"class="look "#) {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the rollout progressing:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(during.contains("Traffic to stage"));
    assert!(
        during.contains("step 1 · 30 %"),
        "the planned steps are drawn"
    );

    wait_for_line(
        &lines,
        &mut seen,
        "The lab keeps running",
        Duration::from_secs(240),
    );
    // After the rollout: run the page's script for 5 s of virtual time, so it refreshes.
    let after = dom(profile.path(), &url, Some(5000));
    assert_eq!(
        heading_phase(&after),
        Some("Succeeded"),
        "final decision:\n{after}"
    );
    let refreshes: u32 = after
        .split(r#"data-refreshes=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("main[data-refreshes]");
    assert!(refreshes >= 1, "the page did not refresh itself");
    for phase in ["Testing", "Progressing", "Promoting", "Succeeded"] {
        assert!(
            after.contains(&format!(
                r#"<span class="phase {phase}">{phase}</span></td>"#
            )),
            "the decisions list has no {phase} row"
        );
    }
    assert!(after.matches(r#"<tr class="decision">"#).count() >= 4);
    assert!(
        after.contains(r#"class="look advance""#),
        "an advancing look is drawn"
    );
    assert!(
        after.contains("rolls back at 10^"),
        "evidence is drawn against the threshold"
    );
    assert!(
        after.contains("margin "),
        "the ratio is drawn against the margin"
    );

    let list = dom(profile.path(), &list_url, None);
    assert!(list.contains(r#"href="/rollouts/prod/flaskapp""#) && list.contains(">Succeeded<"));

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rollout-page.png");
    let _ = std::fs::remove_file(&shot);
    let mut shoot = browser(profile.path());
    shoot.args([
        "--window-size=1100,1500",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    finish(shoot, "--screenshot");
    let png = std::fs::read(&shot).expect("the screenshot is saved");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real picture"
    );

    let stopped = Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(stopped.success());
    let status = demo.wait().expect("the demo exits");
    assert_eq!(status.code(), Some(130), "SIGTERM stops the kept lab");
}
