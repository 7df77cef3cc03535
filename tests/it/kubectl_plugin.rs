//! The binary as a kubectl plugin: installed as `kubectl-canaryd` on the PATH, real kubectl
//! runs it as `kubectl canaryd ...` with the same kubeconfig.

#[tokio::test]
async fn kubectl_canaryd_lists_the_canaries_and_names_itself_in_its_help() {
    let (api, _) = crate::lab_api::with_canary().await;
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_canaryd"),
        bin.path().join("kubectl-canaryd"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Not a blocking call: the API server answers on this test's runtime.
    let kubectl = |args: &'static [&'static str]| {
        tokio::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", api.kubeconfig_path())
            .env("PATH", &path)
            .output()
    };
    let out = kubectl(&["canaryd", "list", "-n", "prod"])
        .await
        .expect("kubectl is installed (apt-get install -y kubectl)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("NAME "), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("flaskapp ")),
        "{stdout}"
    );

    let help = kubectl(&["canaryd", "--help"]).await.unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: kubectl canaryd <COMMAND>"), "{text}");
}
