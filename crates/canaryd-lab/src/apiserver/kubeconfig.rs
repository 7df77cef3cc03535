//! The kubeconfig file that points kubectl and kube-rs at the lab's API server: plain HTTP on
//! loopback, one context named `canaryd-lab`, no credentials or a bearer token that only
//! names the writer in the write log (the lab checks none).

use std::path::Path;

/// Kubeconfig YAML for a server at `server_url` (e.g. `http://127.0.0.1:41234`).
/// With `token`, the user has it as its bearer token.
pub fn render_with_token(server_url: &str, namespace: &str, token: Option<&str>) -> String {
    let user = match token {
        // JSON strings are YAML strings: any token stays one scalar.
        Some(token) => format!("{{token: {}}}", serde_json::Value::from(token)),
        None => "{}".to_string(),
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: canaryd-lab
  cluster:
    server: {server_url}
users:
- name: canaryd-lab
  user: {user}
contexts:
- name: canaryd-lab
  context:
    cluster: canaryd-lab
    user: canaryd-lab
    namespace: {namespace}
current-context: canaryd-lab
preferences: {{}}
"
    )
}

pub fn write(path: &Path, server_url: &str) -> std::io::Result<()> {
    write_with_token(path, server_url, None)
}

pub fn write_with_token(path: &Path, server_url: &str, token: Option<&str>) -> std::io::Result<()> {
    std::fs::write(path, render_with_token(server_url, "default", token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_rs_reads_the_kubeconfig() {
        let text = render_with_token("http://127.0.0.1:1", "default", None);
        let config: kube::config::Kubeconfig = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(config.current_context.as_deref(), Some("canaryd-lab"));
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("http://127.0.0.1:1"));
        let text = render_with_token("http://127.0.0.1:1", "default", Some("canaryd-a"));
        let config: kube::config::Kubeconfig = serde_yaml_ng::from_str(&text).unwrap();
        assert!(config.auth_infos[0]
            .auth_info
            .as_ref()
            .unwrap()
            .token
            .is_some());
        let raw: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(raw["users"][0]["user"]["token"], "canaryd-a");
    }
}
