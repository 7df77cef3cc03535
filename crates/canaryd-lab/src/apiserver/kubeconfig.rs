//! The kubeconfig file that points kubectl and kube-rs at the lab's API server: plain HTTP on
//! loopback, no credentials, one context named `canaryd-lab`.

use std::path::Path;

/// Kubeconfig YAML for a server at `server_url` (e.g. `http://127.0.0.1:41234`).
pub fn render(server_url: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: canaryd-lab
  cluster:
    server: {server_url}
users:
- name: canaryd-lab
  user: {{}}
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
    std::fs::write(path, render(server_url, "default"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_rs_reads_the_kubeconfig() {
        let text = render("http://127.0.0.1:1", "default");
        let config: kube::config::Kubeconfig = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(config.current_context.as_deref(), Some("canaryd-lab"));
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("http://127.0.0.1:1"));
    }
}
