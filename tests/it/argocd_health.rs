//! The Argo CD health check of a Canary (deploy/argocd/canary-health.lua) run by a real Lua,
//! Debian's `lua5.4`, on Canaries built from canaryd's own types and serialized as the API
//! server stores them. Each case asserts the health Argo CD would show and the message.
//!
//! Argo CD runs health checks in gopher-lua (Lua 5.1) with only the base and table libraries
//! and `obj` set to the live object. The driver here loads the script in the same kind of
//! sandbox: a Lua 5.4 environment with only base functions, `table` and `obj`, and strings
//! without methods (no string library), so a script that works here does not lean on what
//! Argo CD does not give it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use canaryd::api::{Canary, CanarySpec, CanaryStatus, Condition, Phase};
use jiff::Timestamp;
use serde_json::{json, Value};

const INSTALL_HINT: &str = "lua5.4 runs the Argo CD health check: install it with \
     `bash tests/setup.sh` or `apt-get install -y lua5.4`";

fn script_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/canary-health.lua")
}

/// A Lua table constructor (or scalar) equal to a JSON value, as Argo CD hands the object
/// to Lua: objects become tables with string keys, arrays tables indexed from 1, null nil.
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// A Lua string literal: quotes, backslashes and control bytes escaped (`\ddd`, three digits
/// so a following digit is not read into it); other bytes, UTF-8 included, as they are.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\{:03}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs `script` with `obj` set to `object` in Argo CD's kind of sandbox; the health status
/// and message it returns.
fn run_script(script: &str, object: &Value) -> Result<(String, String), String> {
    let driver = format!(
        r#"
local src = {script}
local obj = {object}
local env = {{ table = table, obj = obj }}
for _, name in ipairs({{ "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal",
    "rawget", "rawset", "select", "tonumber", "tostring", "type", "unpack" }}) do
  env[name] = _G[name]
end
local chunk = assert(load(src, "=canary-health.lua", "t", env))
local write, exit = io.write, os.exit
debug.setmetatable("", nil) -- no string methods: Argo CD opens no string library
local ok, hs = pcall(chunk)
if not ok then
  write("error: ", tostring(hs), "\n")
  exit(2)
end
write(tostring(hs.status), "\n", tostring(hs.message), "\n")
"#,
        script = lua_string(script),
        object = lua(object),
    );
    let mut child = Command::new("lua5.4")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(INSTALL_HINT);
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(driver.as_bytes())
        .expect("lua5.4 reads the driver");
    let out = child.wait_with_output().expect("lua5.4 finishes");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    let (status, message) = stdout
        .strip_suffix('\n')
        .unwrap_or(&stdout)
        .split_once('\n')
        .ok_or_else(|| format!("no status and message in {stdout:?}"))?;
    Ok((status.to_string(), message.to_string()))
}

/// The health Argo CD shows for `canary`, and its message.
fn health(canary: &Canary) -> (String, String) {
    let script = std::fs::read_to_string(script_path()).expect("deploy/argocd/canary-health.lua");
    let object = serde_json::to_value(canary).expect("a Canary serializes");
    run_script(&script, &object).unwrap_or_else(|e| panic!("the health check failed: {e}"))
}

const GENERATION: i64 = 2;

/// The seed's Canary as stored at `generation`, with `status`.
fn canary(generation: i64, status: Option<CanaryStatus>) -> Canary {
    let spec: CanarySpec = serde_json::from_value(json!({
        "virtualService": {"name": "demoapp", "namespace": "prod"},
        "prod": {"host": "flaskapp.prod.svc.cluster.local",
                 "deployment": {"namespace": "prod", "name": "flaskapp"}},
        "stage": {"host": "flaskapp.stage.svc.cluster.local",
                  "deployment": {"namespace": "stage", "name": "flaskapp"}},
        "steps": [0, 30, 60, 100],
        "analysis": {"alpha": 0.01},
    }))
    .expect("the seed's spec decodes");
    let mut canary = Canary::new("flaskapp", spec);
    canary.metadata.namespace = Some("prod".into());
    canary.metadata.generation = Some(generation);
    canary.metadata.uid = Some("8d4f0a52-1c1e-4a3c-9d1e-5b7c2f0e6a11".into());
    canary.status = status;
    canary
}

fn at() -> Timestamp {
    "2025-06-01T12:00:00Z".parse().expect("a timestamp")
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Some(at()),
        observed_generation: Some(GENERATION),
    }
}

/// A status decided on `GENERATION`, with the conditions the contract gives `phase`.
fn status(phase: Phase, message: &str, conditions: Vec<Condition>) -> CanaryStatus {
    CanaryStatus {
        phase,
        message: message.into(),
        observed_generation: Some(GENERATION),
        stage_revision: Some("demoapp:v2".into()),
        prod_revision: Some("demoapp:v1".into()),
        conditions,
        ..Default::default()
    }
}

/// Ready, and Reconciling and Stalled when True, plus `rest`, as the contract sets them (a
/// condition in its usual state is left out: absent Reconciling is False).
fn rollout_conditions(
    ready: (&str, &str),
    reconciling: bool,
    stalled: Option<&str>,
    message: &str,
    rest: Vec<Condition>,
) -> Vec<Condition> {
    let mut all = vec![cond("Ready", ready.0, ready.1, message)];
    if reconciling {
        all.push(cond("Reconciling", "True", "Progressing", message));
    }
    if let Some(reason) = stalled {
        all.push(cond("Stalled", "True", reason, message));
    }
    all.extend(rest);
    all
}

#[track_caller]
fn assert_health(canary: &Canary, expected: &str, message: &str) {
    let (got, said) = health(canary);
    assert_eq!(
        (got.as_str(), said.as_str()),
        (expected, message),
        "health of {}",
        serde_json::to_string(&canary.status).unwrap()
    );
}

#[test]
fn idle_is_healthy() {
    let msg = "stage runs what prod runs (demoapp:v1); waiting for a new revision";
    let conditions = rollout_conditions(("True", "Idle"), false, None, msg, vec![]);
    let c = canary(GENERATION, Some(status(Phase::Idle, msg, conditions)));
    assert_health(&c, "Healthy", msg);
}

#[test]
fn testing_is_progressing() {
    let msg = "stage demoapp:v2 at 0 %: running 1 check and 0 pre-rollout webhooks";
    let conditions = rollout_conditions(("Unknown", "Progressing"), true, None, msg, vec![]);
    let c = canary(GENERATION, Some(status(Phase::Testing, msg, conditions)));
    assert_health(&c, "Progressing", msg);
}

#[test]
fn progressing_is_progressing() {
    let msg = "step 2 of 4: stage at 30 %; not yet proven not worse (errors: ratio < 2.1)";
    let conditions = rollout_conditions(("Unknown", "Progressing"), true, None, msg, vec![]);
    let mut s = status(Phase::Progressing, msg, conditions);
    s.step = 1;
    s.stage_weight = 30;
    let c = canary(GENERATION, Some(s));
    assert_health(&c, "Progressing", msg);
}

#[test]
fn succeeded_is_healthy() {
    let msg = "prod runs demoapp:v2 with all traffic; rollout succeeded in 14m";
    let promoted = cond("Promoted", "True", "Promoted", msg);
    let conditions = rollout_conditions(("True", "Succeeded"), false, None, msg, vec![promoted]);
    let mut s = status(Phase::Succeeded, msg, conditions);
    s.prod_revision = Some("demoapp:v2".into());
    let c = canary(GENERATION, Some(s));
    assert_health(&c, "Healthy", msg);
}

#[test]
fn rolled_back_is_degraded() {
    let msg = "rolled back at 30 %: stage's error rate is proven worse than prod's (ratio > 1.5)";
    let rolled_back = cond("RolledBack", "True", "RolledBack", msg);
    let conditions = rollout_conditions(
        ("False", "RolledBack"),
        false,
        Some("RolledBack"),
        msg,
        vec![rolled_back],
    );
    let mut s = status(Phase::RolledBack, msg, conditions);
    s.rolled_back_revision = Some("demoapp:v2".into());
    let c = canary(GENERATION, Some(s));
    assert_health(&c, "Degraded", msg);
}

#[test]
fn paused_is_suspended() {
    let msg = "paused at 60 %: no decision within stepDuration.max (30m); resume, promote or abort";
    let conditions = rollout_conditions(("False", "Paused"), false, Some("Paused"), msg, vec![]);
    let mut s = status(Phase::Paused, msg, conditions);
    s.paused_from = Some(Phase::Progressing);
    s.stage_weight = 60;
    let c = canary(GENERATION, Some(s));
    assert_health(&c, "Suspended", msg);
}

#[test]
fn invalid_spec_is_degraded() {
    let msg = "spec.steps[2]: 30 does not exceed the step before it (60); make the weights \
               strictly increasing";
    let conditions = vec![
        cond("SpecValid", "False", "InvalidSpec", msg),
        cond("Ready", "False", "InvalidSpec", msg),
        cond("Stalled", "True", "InvalidSpec", msg),
    ];
    let c = canary(GENERATION, Some(status(Phase::Idle, msg, conditions)));
    assert_health(&c, "Degraded", msg);
}

#[test]
fn reference_not_granted_and_route_conflict_are_degraded() {
    let msg = "spec.stage.deployment: stage/flaskapp needs a ReferenceGrant in stage";
    let conditions = vec![
        cond("ReferencesAllowed", "False", "NotGranted", msg),
        cond("Ready", "False", "NotGranted", msg),
    ];
    let c = canary(GENERATION, Some(status(Phase::Idle, msg, conditions)));
    assert_health(&c, "Degraded", msg);

    let msg = "the route primary of prod/demoapp is driven by Canary prod/flaskapp-old";
    let conditions = vec![
        cond("Conflict", "True", "RouteOwnedByAnother", msg),
        cond("Ready", "False", "RouteOwnedByAnother", msg),
    ];
    let c = canary(GENERATION, Some(status(Phase::Idle, msg, conditions)));
    assert_health(&c, "Degraded", msg);
}

#[test]
fn observed_generation_behind_is_progressing() {
    // A Succeeded rollout decided on generation 2, and a spec edited since (generation 3).
    let msg = "prod runs demoapp:v2 with all traffic; rollout succeeded in 14m";
    let promoted = cond("Promoted", "True", "Promoted", msg);
    let conditions = rollout_conditions(("True", "Succeeded"), false, None, msg, vec![promoted]);
    let c = canary(3, Some(status(Phase::Succeeded, msg, conditions)));
    assert_health(
        &c,
        "Progressing",
        "Waiting for canaryd to act on generation 3 of the spec (last acted on: 2)",
    );

    // An invalid spec fixed by an edit canaryd has not seen yet is no longer Degraded.
    let msg = "spec.steps[2]: 30 does not exceed the step before it (60)";
    let conditions = vec![
        cond("SpecValid", "False", "InvalidSpec", msg),
        cond("Ready", "False", "InvalidSpec", msg),
        cond("Stalled", "True", "InvalidSpec", msg),
    ];
    let c = canary(3, Some(status(Phase::Idle, msg, conditions)));
    assert_health(
        &c,
        "Progressing",
        "Waiting for canaryd to act on generation 3 of the spec (last acted on: 2)",
    );
}

#[test]
fn no_status_yet_is_progressing() {
    let c = canary(1, None);
    assert_health(
        &c,
        "Progressing",
        "Waiting for canaryd to report on this Canary",
    );
}

#[test]
fn a_new_stage_revision_pending_after_success_is_progressing() {
    // Still Succeeded, with something pending (a newer stage revision canaryd waits for), as
    // the contract has it: Ready=Unknown.
    let msg = "waiting for stage demoapp:v3 to become ready (since 12:00:00)";
    let promoted = cond("Promoted", "True", "Promoted", "prod runs demoapp:v2");
    let conditions =
        rollout_conditions(("Unknown", "Progressing"), true, None, msg, vec![promoted]);
    let c = canary(GENERATION, Some(status(Phase::Succeeded, msg, conditions)));
    assert_health(&c, "Progressing", msg);
}

/// argocd-cm-patch.yaml carries the script inline: it must be the file, byte for byte.
#[test]
fn the_argocd_cm_patch_installs_this_script() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let patch = std::fs::read_to_string(root.join("deploy/argocd/argocd-cm-patch.yaml"))
        .expect("deploy/argocd/argocd-cm-patch.yaml");
    let patch: Value = serde_yaml_ng::from_str(&patch).expect("the patch is YAML");
    assert_eq!(patch["kind"], "ConfigMap");
    assert_eq!(patch["metadata"]["name"], "argocd-cm");
    let inline = patch["data"]["resource.customizations.health.canaryd.dev_Canary"]
        .as_str()
        .expect("the health check key");
    let script = std::fs::read_to_string(script_path()).unwrap();
    assert!(
        inline == script,
        "deploy/argocd/argocd-cm-patch.yaml's health check differs from \
         deploy/argocd/canary-health.lua; copy the script into the patch"
    );
    let ignore = patch["data"]
        ["resource.customizations.ignoreDifferences.networking.istio.io_VirtualService"]
        .as_str()
        .expect("the VirtualService ignoreDifferences key");
    let ignore: Value = serde_yaml_ng::from_str(ignore).expect("ignoreDifferences is YAML");
    assert_eq!(
        ignore["jqPathExpressions"],
        json!([".spec.http[]?.route[]?.weight"])
    );
}

/// The sandbox is as poor as Argo CD's: a script using the string library fails here too.
#[test]
fn the_sandbox_has_no_string_library() {
    let obj = json!({"status": {"phase": "Idle"}});
    let err = run_script(
        r#"return {status = ("Healthy"):lower(), message = ""}"#,
        &obj,
    )
    .expect_err("string methods are not available");
    assert!(err.contains("error"), "{err}");
    let err = run_script(
        r#"return {status = string.format("%s", "Healthy"), message = ""}"#,
        &obj,
    )
    .expect_err("the string library is not available");
    assert!(err.contains("error"), "{err}");
    // And a plain script runs.
    let ok = run_script(
        r#"local hs = {} hs.status = obj.status.phase hs.message = "m" return hs"#,
        &obj,
    );
    assert_eq!(ok, Ok(("Idle".to_string(), "m".to_string())));
}
