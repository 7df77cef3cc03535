//! The install on a real cluster (deploy/manifests and the Helm chart in deploy/helm/canaryd):
//! every object parses into its k8s-openapi type with no field lost (a misspelled field is
//! dropped by the typed parse, so the round trip shows it), the RBAC is exactly
//! deploy/rbac/canaryd.yaml (which a unit test checks against the calls the controller makes),
//! the Deployment runs hardened, and the chart's templates use only values that exist.
//! No helm binary can be installed here, so the chart is rendered by the small subset of Go
//! templates its templates are written in.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

const NAMESPACE: &str = "canaryd-system";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).expect("valid YAML");
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn roundtrip<T: DeserializeOwned + Serialize>(object: &Value) {
    let typed: T = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", id(object)));
    let back = serde_json::to_value(&typed).unwrap();
    if let Some(path) = first_difference(object, &back, String::new()) {
        panic!(
            "{}: {path} is lost or changed by its typed form (misspelled?)",
            id(object)
        );
    }
}

/// Where two JSON documents differ; numbers compare by value (255 = 255.0).
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => (x.as_f64() != y.as_f64()).then_some(path),
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, format!("{path}.{k}")),
                _ => Some(format!("{path}.{k}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{path}[{i}]"))),
        _ => (a != b).then_some(path),
    }
}

fn id(object: &Value) -> String {
    format!("{}/{}", object["kind"], object["metadata"]["name"])
}

/// Parses every object into its k8s-openapi type; other kinds (the Prometheus operator's)
/// must at least name an apiVersion and kind.
fn check_types(objects: &[Value]) {
    for o in objects {
        match o["kind"].as_str().unwrap_or_default() {
            "Namespace" => roundtrip::<Namespace>(o),
            "CustomResourceDefinition" => roundtrip::<CustomResourceDefinition>(o),
            "ServiceAccount" => roundtrip::<ServiceAccount>(o),
            "ClusterRole" => roundtrip::<ClusterRole>(o),
            "ClusterRoleBinding" => roundtrip::<ClusterRoleBinding>(o),
            "Role" => roundtrip::<Role>(o),
            "RoleBinding" => roundtrip::<RoleBinding>(o),
            "ConfigMap" => roundtrip::<ConfigMap>(o),
            "Deployment" => roundtrip::<Deployment>(o),
            "Service" => roundtrip::<Service>(o),
            "PodDisruptionBudget" => roundtrip::<PodDisruptionBudget>(o),
            "NetworkPolicy" => roundtrip::<NetworkPolicy>(o),
            "ServiceMonitor" | "PrometheusRule" => {
                assert_eq!(o["apiVersion"], "monitoring.coreos.com/v1", "{}", id(o))
            }
            other => panic!("unexpected kind {other} in the install"),
        }
    }
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn rbac_kinds(objects: &[Value]) -> Vec<Value> {
    let kinds = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let mut rbac: Vec<Value> = objects
        .iter()
        .filter(|o| kinds.contains(&o["kind"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    rbac.sort_by_key(id);
    rbac
}

/// The RBAC both installs must carry: deploy/rbac/canaryd.yaml.
fn reference_rbac() -> Vec<Value> {
    rbac_kinds(&documents(&read("deploy/rbac/canaryd.yaml")))
}

/// Two replicas, leader election on, probes on the admin port, non-root, read-only root
/// filesystem, no privilege escalation, requests and limits, and a config canaryd accepts.
fn check_deployment(objects: &[Value]) {
    let deployments = of_kind(objects, "Deployment");
    assert_eq!(deployments.len(), 1);
    let d: Deployment = serde_json::from_value(deployments[0].clone()).unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("canaryd"));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    let c = &pod.containers[0];
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let resources = c.resources.clone().unwrap();
    for r in [&resources.requests, &resources.limits] {
        let r = r.as_ref().expect("requests and limits");
        assert!(r.contains_key("cpu") && r.contains_key("memory"));
    }
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone()
    };
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));

    let config_maps = of_kind(objects, "ConfigMap");
    let text = config_maps[0]["data"]["canaryd.yaml"].as_str().unwrap();
    let config = canaryd::config::Config::parse(text)
        .unwrap_or_else(|e| panic!("the shipped config is refused: {e:?}\n{text}"));
    assert!(config.leader_election.enabled);
    assert_eq!(config.admin.listen.port(), 9090);
}

// ---------------------------------------------------------------------------------------
// deploy/manifests

fn kustomize() -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", "deploy/manifests"])
        .current_dir(root())
        .output()
        .expect("kubectl is installed");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/manifests failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8(out.stdout).unwrap())
}

#[test]
fn the_plain_manifests_render_offline_into_valid_objects() {
    let objects = kustomize();
    check_types(&objects);
    assert_eq!(rbac_kinds(&objects), reference_rbac());
    check_deployment(&objects);
    let crds = of_kind(&objects, "CustomResourceDefinition");
    let generated = &documents(&read("deploy/crds/canary.yaml"))[0];
    assert_eq!(
        first_difference(crds[0], generated, String::new()),
        None,
        "the CRD is the generated one"
    );
    for o in &objects {
        let namespaced = !matches!(
            o["kind"].as_str(),
            Some("Namespace" | "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding")
        );
        if namespaced {
            assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{}", id(o));
        }
    }
}

// ---------------------------------------------------------------------------------------
// deploy/helm/canaryd

const CHART: &str = "deploy/helm/canaryd";

fn values() -> Value {
    chart_values(CHART)
}

fn chart_values(chart: &str) -> Value {
    serde_yaml_ng::from_str(&read(format!("{chart}/values.yaml"))).expect("values.yaml parses")
}

fn templates() -> Vec<(String, String)> {
    chart_templates(CHART)
}

fn chart_templates(chart: &str) -> Vec<(String, String)> {
    let dir = root().join(chart).join("templates");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn lookup<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches(".Values.")
        .split('.')
        .try_fold(values, |v, key| v.get(key))
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Number(_)) => true,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One `{{ ... }}` action inside a line.
fn action(expr: &str, values: &Value) -> String {
    let expr = expr
        .trim()
        .trim_start_matches('-')
        .trim_end_matches('-')
        .trim();
    if let Some(raw) = expr.strip_prefix('`') {
        return raw.trim_end_matches('`').to_string();
    }
    match expr {
        ".Release.Namespace" | "$.Release.Namespace" => return NAMESPACE.into(),
        ".Release.Name" => return "canaryd".into(),
        _ => {}
    }
    if expr.starts_with("include ") {
        return "a-sha256-of-the-config".into();
    }
    let (path, quote) = match expr.strip_suffix("| quote") {
        Some(p) => (p.trim(), true),
        None => (expr, false),
    };
    let value = lookup(values, path).unwrap_or_else(|| panic!("cannot render {{{{ {expr} }}}}"));
    if quote {
        Value::String(scalar(value)).to_string()
    } else {
        scalar(value)
    }
}

/// The index of the `end` that closes the block opened on line `open`.
fn block_end(lines: &[&str], open: usize) -> usize {
    let mut depth = 0;
    for (i, line) in lines.iter().enumerate().skip(open) {
        let t = line
            .trim()
            .trim_start_matches("{{")
            .trim_start_matches('-')
            .trim_start();
        if ["if ", "with ", "range "].iter().any(|v| t.starts_with(v)) {
            depth += 1;
        } else if t.starts_with("end") {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
    }
    panic!("unclosed block at line {open}")
}

/// Renders the subset of Go templates the chart uses: values, `quote`, raw strings,
/// `if`/`with`/`else`/`end` on values, `range` over an empty list or, as
/// `range $name := .Values.list`, over a list of scalars, `toYaml | nindent`.
fn render(template: &str, values: &Value) -> String {
    // (condition, active before the block)
    let mut blocks: Vec<(bool, bool)> = Vec::new();
    let active = |blocks: &Vec<(bool, bool)>| blocks.iter().all(|(c, _)| *c);
    let mut out = String::new();
    let lines: Vec<&str> = template.lines().collect();
    let mut next = 0;
    while next < lines.len() {
        let (index, line) = (next, lines[next]);
        next += 1;
        let t = line.trim();
        if let Some(bound) = t
            .strip_prefix("{{- range $")
            .and_then(|rest| rest.split_once(" := "))
        {
            let (name, list) = (bound.0, bound.1.trim_end_matches("}}").trim());
            let end = block_end(&lines, index);
            if active(&blocks) {
                let body = lines[index + 1..end].join("\n");
                let items = lookup(values, list).and_then(Value::as_array);
                for item in items.into_iter().flatten() {
                    let bound = body.replace(&format!("{{{{ ${name} }}}}"), &scalar(item));
                    out.push_str(&render(&bound, values));
                }
            }
            next = end + 1;
            continue;
        }
        if t.starts_with("{{") && t.ends_with("}}") && t.matches("{{").count() == 1 {
            let inner = t[2..t.len() - 2].trim().trim_start_matches('-').trim();
            let mut words = inner.split_whitespace();
            let verb = words.next().unwrap_or_default();
            let arg = words.next().unwrap_or_default();
            let now = active(&blocks);
            match verb {
                "if" | "with" | "range" => {
                    let cond = now && arg.starts_with(".Values.") && truthy(lookup(values, arg));
                    assert!(
                        !(verb == "range" && cond),
                        "the test renderer only ranges over empty lists"
                    );
                    blocks.push((cond, now));
                    continue;
                }
                "else" => {
                    let (cond, before) = blocks.pop().expect("else inside a block");
                    blocks.push((before && !cond, before));
                    continue;
                }
                "end" => {
                    blocks.pop().expect("end closes a block");
                    continue;
                }
                "toYaml" => {
                    if now {
                        let indent: usize = inner.rsplit(' ').next().unwrap().parse().unwrap();
                        let yaml = serde_yaml_ng::to_string(lookup(values, arg).unwrap()).unwrap();
                        for l in yaml.lines() {
                            out.push_str(&" ".repeat(indent));
                            out.push_str(l);
                            out.push('\n');
                        }
                    }
                    continue;
                }
                _ => {}
            }
        }
        if !active(&blocks) {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            // A raw string (`{{ `...` }}`) may itself contain braces.
            let close = if rest[start + 2..].trim_start().starts_with('`') {
                "` }}"
            } else {
                "}}"
            };
            let end = rest[start..].find(close).expect("closed action") + start + close.len() - 2;
            out.push_str(&action(&rest[start + 2..end], values));
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    assert!(blocks.is_empty(), "unclosed block");
    out
}

fn render_chart(values: &Value) -> Vec<Value> {
    let mut objects = documents(&read(format!("{CHART}/crds/canary.yaml")));
    objects.extend(render_templates(CHART, values));
    objects
}

fn render_templates(chart: &str, values: &Value) -> Vec<Value> {
    let mut objects = Vec::new();
    for (name, text) in chart_templates(chart) {
        let rendered = render(&text, values);
        let docs = serde_yaml_ng::Deserializer::from_str(&rendered)
            .map(<Value as serde::Deserialize>::deserialize)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{name} renders to invalid YAML: {e}\n{rendered}"));
        objects.extend(docs.into_iter().filter(|v| !v.is_null()));
    }
    objects
}

#[test]
fn chart_yaml_and_values_parse_and_every_value_a_template_uses_exists() {
    let chart: Value = serde_yaml_ng::from_str(&read(format!("{CHART}/Chart.yaml"))).unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "canaryd");
    assert!(chart["version"].is_string() && chart["appVersion"].is_string());
    let values = values();
    let mut used = 0;
    for (name, text) in templates() {
        for (i, _) in text.match_indices(".Values.") {
            let path: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .collect();
            let path = path.trim_end_matches('.');
            assert!(
                lookup(&values, path).is_some(),
                "{name} uses {path}, which values.yaml does not define"
            );
            used += 1;
        }
    }
    assert!(used > 20, "the templates read their values");
}

#[test]
fn the_chart_grants_secrets_only_in_the_namespaces_it_is_given() {
    let secret_rules = |objects: &[Value]| {
        rbac_kinds(objects)
            .into_iter()
            .filter(|o| o["rules"].to_string().contains("secrets"))
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["namespace"]
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(
        secret_rules(&render_chart(&values())).is_empty(),
        "by default canaryd may read no Secret"
    );
    let mut values = values();
    values["webhookSecrets"]["namespaces"] = json!(["prod"]);
    let objects = render_chart(&values);
    check_types(&objects);
    let mut expected = reference_rbac();
    expected.extend(rbac_kinds(&documents(&read(
        "deploy/rbac/webhook-secrets.yaml",
    ))));
    expected.sort_by_key(id);
    assert_eq!(
        rbac_kinds(&objects),
        expected,
        "chart = deploy/rbac + webhook-secrets.yaml"
    );
    values["webhookSecrets"]["namespaces"] = json!(["prod", "team-a"]);
    assert_eq!(
        secret_rules(&render_chart(&values)),
        vec![r#"Role/"prod""#, r#"Role/"team-a""#]
    );
    values["webhookSecrets"]["clusterWide"] = json!(true);
    assert!(secret_rules(&render_chart(&values)).contains(&"ClusterRole/null".to_string()));
}

#[test]
fn the_chart_installs_the_same_objects_as_the_manifests() {
    let objects = render_chart(&values());
    check_types(&objects);
    assert_eq!(
        rbac_kinds(&objects),
        reference_rbac(),
        "chart RBAC = deploy/rbac"
    );
    check_deployment(&objects);
    assert_eq!(
        read(format!("{CHART}/crds/canary.yaml")),
        read("deploy/crds/canary.yaml"),
        "the chart's CRD is a copy of the generated one: cp deploy/crds/canary.yaml {CHART}/crds/"
    );

    let manifests = kustomize();
    let key = |o: &Value| id(o);
    let mut ours: Vec<String> = objects.iter().map(key).collect();
    let mut plain: Vec<String> = manifests
        .iter()
        .filter(|o| o["kind"] != "Namespace")
        .map(key)
        .collect();
    ours.sort();
    plain.sort();
    assert_eq!(ours, plain);
    let deployment_spec = |objects: &[Value]| {
        let mut spec = of_kind(objects, "Deployment")[0]["spec"].clone();
        spec["template"]["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        spec
    };
    assert_eq!(
        first_difference(
            &deployment_spec(&objects),
            &deployment_spec(&manifests),
            "spec".into()
        ),
        None,
        "the chart's Deployment differs from deploy/manifests"
    );
    let config = |objects: &[Value]| -> Value {
        let text = of_kind(objects, "ConfigMap")[0]["data"]["canaryd.yaml"]
            .as_str()
            .unwrap()
            .to_string();
        serde_yaml_ng::from_str(&text).unwrap()
    };
    assert_eq!(config(&objects), config(&manifests));
}

#[test]
fn optional_parts_of_the_chart_render_when_enabled() {
    let mut values = values();
    values["serviceMonitor"]["enabled"] = json!(true);
    values["prometheusRule"]["enabled"] = json!(true);
    values["prometheus"]["bearerTokenSecret"] = json!("prometheus-token");
    values["prometheus"]["basicAuth"] =
        json!({"username": "canaryd", "passwordSecret": "prometheus-password"});
    values["podDisruptionBudget"]["enabled"] = json!(false);
    let objects = render_chart(&values);
    check_types(&objects);
    assert_eq!(of_kind(&objects, "ServiceMonitor").len(), 1);
    assert!(of_kind(&objects, "PodDisruptionBudget").is_empty());
    let rules = of_kind(&objects, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .clone();
    assert!(rules.iter().all(|r| r["expr"].is_string()));
    let config = of_kind(&objects, "ConfigMap")[0]["data"]["canaryd.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let parsed = canaryd::config::Config::parse(&config)
        .unwrap_or_else(|e| panic!("config with credentials refused: {e:?}\n{config}"));
    assert!(parsed.prometheus.bearer_token_file.is_some());
    let volumes = &of_kind(&objects, "Deployment")[0]["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes.as_array().unwrap().len(), 3);
}

#[test]
fn the_network_policy_keeps_the_metadata_endpoints_out_of_reach() {
    let policy = |objects: &[Value]| of_kind(objects, "NetworkPolicy")[0]["spec"].clone();
    let chart = policy(&render_chart(&values()));
    assert_eq!(
        first_difference(&chart, &policy(&kustomize()), "spec".into()),
        None,
        "the chart's NetworkPolicy differs from deploy/manifests"
    );
    assert_eq!(chart["policyTypes"], json!(["Ingress", "Egress"]));
    let blocks: Vec<&Value> = chart["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["to"].as_array().unwrap())
        .filter_map(|peer| peer.get("ipBlock"))
        .collect();
    assert_eq!(
        blocks,
        [
            &json!({"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}),
            &json!({"cidr": "::/0", "except": ["fd00:ec2::254/128"]}),
        ]
    );

    let mut values = values();
    values["networkPolicy"]["egressDenyIPv6"] = json!([]);
    let objects = render_chart(&values);
    check_types(&objects);
    assert_eq!(
        policy(&objects)["egress"][1]["to"][1],
        json!({"ipBlock": {"cidr": "::/0"}})
    );
    values["networkPolicy"]["egressDeny"] = json!([]);
    let objects = render_chart(&values);
    check_types(&objects);
    let open = policy(&objects);
    assert_eq!(
        open["policyTypes"],
        json!(["Ingress"]),
        "egress unrestricted"
    );
    assert!(open.get("egress").is_none());
}

#[test]
fn the_chart_egress_values_reach_the_daemons_config() {
    let config = |values: &Value| {
        let objects = render_chart(values);
        let text = of_kind(&objects, "ConfigMap")[0]["data"]["canaryd.yaml"]
            .as_str()
            .unwrap()
            .to_string();
        canaryd::config::Config::parse(&text)
            .unwrap_or_else(|e| panic!("config refused: {e:?}\n{text}"))
            .egress
    };
    let mut values = values();
    assert_eq!(config(&values), canaryd::config::EgressConfig::default());
    values["egress"] = json!({
        "hosts": ["*.internal", "10.0.0.7"],
        "allowPrivateAddresses": true,
        "checkMethods": ["GET", "POST"],
    });
    let egress = config(&values);
    assert_eq!(egress.hosts, ["*.internal", "10.0.0.7"]);
    assert!(egress.allow_private_addresses);
    assert_eq!(egress.check_methods, ["GET", "POST"]);
    values["egress"]["hosts"] = json!([]);
    assert!(
        config(&values).hosts.is_empty(),
        "only the Canaries' own hosts"
    );
}

// ---------------------------------------------------------------------------------------
// deploy/examples

#[test]
fn the_examples_are_a_valid_demo_app_in_two_environments_with_its_canary() {
    let chart = "deploy/examples/demoapp";
    let mut values = chart_values(chart);
    let prod = render_templates(chart, &values);
    values["deployment"]["tag"] = json!("v2");
    let stage = render_templates(chart, &values);
    check_types(&prod);
    check_types(&stage);
    let image = |objects: &[Value]| {
        of_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(image(&prod).ends_with(":v1") && image(&stage).ends_with(":v2"));

    let canary: canaryd::api::Canary =
        serde_yaml_ng::from_str(&read("deploy/examples/canary.yaml")).unwrap();
    canaryd::api::validation::validate(&canary.spec, "prod").expect("the example Canary is valid");
    // The example grant lets the example Canary drive every object it names, and no more.
    let mut grant: canaryd::api::reference_grant::ReferenceGrant =
        serde_yaml_ng::from_str(&read("deploy/examples/referencegrant.yaml")).unwrap();
    let store = |grant: &canaryd::api::reference_grant::ReferenceGrant| {
        let mut writer = kube::runtime::reflector::store::Writer::default();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(grant.clone()));
        canaryd::cluster::boundaries::Grants::Watched(writer.as_reader())
    };
    let policy = canaryd::config::ReferencePolicy::Granted;
    canaryd::cluster::boundaries::check_references(&canary, policy, &store(&grant))
        .expect("the example grant covers the example Canary");
    grant.spec.from[0].namespace = "tenant".into();
    let refused = canaryd::cluster::boundaries::check_references(&canary, policy, &store(&grant));
    assert!(refused.unwrap_err().contains("spec.stage.deployment"));
    let istio = documents(&read("deploy/examples/istio.yaml"));
    let vs: canaryd::api::virtual_service::VirtualService =
        serde_json::from_value(of_kind(&istio, "VirtualService")[0].clone()).unwrap();
    assert_eq!(
        vs.metadata.name.as_deref(),
        Some(canary.spec.virtual_service.name.as_str())
    );
    let hosts = serde_json::to_string(&vs).unwrap();
    assert!(hosts.contains(&canary.spec.prod.host) && hosts.contains(&canary.spec.stage.host));
    let gateway = of_kind(&istio, "Gateway")[0];
    assert_eq!(
        vs_gateways(of_kind(&istio, "VirtualService")[0]),
        vec![format!(
            "prod/{}",
            gateway["metadata"]["name"].as_str().unwrap()
        )]
    );
}

fn vs_gateways(vs: &Value) -> Vec<String> {
    vs["spec"]["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool() {
    let mut values = values();
    values["prometheusRule"]["enabled"] = json!(true);
    let objects = render_chart(&values);
    let rule = of_kind(&objects, "PrometheusRule")[0];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canaryd-rules.yaml");
    let groups = json!({"groups": rule["spec"]["groups"]});
    std::fs::write(&path, serde_yaml_ng::to_string(&groups).unwrap()).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
        .expect("promtool (Debian package prometheus; tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "promtool refuses the chart's alert rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
