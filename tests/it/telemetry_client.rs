//! The Prometheus client's transport: TLS and basic auth against the real Prometheus (its
//! `--web.config.file`), and a bearer token and extra headers as a Mimir-style gateway sees
//! them. Credentials never appear in errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use canaryd::config::PrometheusConfig;
use canaryd::telemetry::{PromClient, TelemetryError};
use canaryd_lab::prometheus::{LabPrometheus, WebConfig};
use jiff::Timestamp;

/// bcrypt of "s3cret" (cost 5), as Prometheus's web config wants it.
const S3CRET_BCRYPT: &str = "$2b$05$abcdefghijklmnopqrstuuLK7U1u6pVRmL7L1BBM2aS35PSZnDXlK";

fn config(yaml: &str) -> PrometheusConfig {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn client(yaml: &str) -> PromClient {
    PromClient::new(&config(yaml))
        .unwrap()
        .with_first_backoff(Duration::from_millis(20))
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key).
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian package openssl) makes the test certificates");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-days",
                "1",
                "-subj",
                "/CN=canaryd test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-new"],
            &ec[..],
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "server.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "cert.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

#[tokio::test]
async fn tls_and_basic_auth_against_the_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(dir.path());
    let prometheus = LabPrometheus::start_with_web_config(
        &[],
        Duration::from_secs(1),
        WebConfig {
            tls: Some((cert, key)),
            basic_auth_users: vec![("canaryd".into(), S3CRET_BCRYPT.into())],
        },
    )
    .await
    .unwrap();
    let url = prometheus.url();
    assert!(url.starts_with("https://"));
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let settings = format!(
        "{{url: \"{url}\", retries: 2, tls: {{caFile: {ca:?}}}, basicAuth: {{username: canaryd, passwordFile: {password:?}}}}}"
    );

    let samples = client(&settings)
        .instant("vector(42)", Timestamp::now())
        .await
        .unwrap();
    assert_eq!(samples[0].value, 42.0);

    // A wrong password is refused, not retried as an outage, and never printed.
    std::fs::write(&password, "wrong-password").unwrap();
    let err = client(&settings)
        .instant("vector(1)", Timestamp::now())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        TelemetryError::Refused {
            url: url.clone(),
            status: 401
        }
    );
    assert!(!err.is_transient());
    assert!(!format!("{err} {err:?}").contains("wrong-password"));

    // Without the CA the server's certificate is not trusted.
    std::fs::write(&password, "s3cret").unwrap();
    let untrusted = settings.replace(&format!("tls: {{caFile: {ca:?}}}, "), "");
    let err = client(&untrusted)
        .instant("vector(1)", Timestamp::now())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TelemetryError::Unavailable { message, .. } if message.contains("certificate")),
        "{err:?}"
    );
    // ... unless verification is switched off.
    let insecure = settings.replace(
        &format!("tls: {{caFile: {ca:?}}}"),
        "tls: {insecureSkipVerify: true}",
    );
    let samples = client(&insecure)
        .instant("vector(7)", Timestamp::now())
        .await
        .unwrap();
    assert_eq!(samples[0].value, 7.0);
}

/// A gateway in front of Prometheus that checks the bearer token and records what it got.
async fn gateway(seen: Arc<Mutex<Vec<(String, String, String)>>>) -> String {
    let app = axum::Router::new().route(
        "/prometheus/api/v1/query",
        axum::routing::post(
            move |headers: HeaderMap, axum::Form(form): axum::Form<Vec<(String, String)>>| {
                let header = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let time = form
                    .iter()
                    .find(|(k, _)| k == "time")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                seen.lock().unwrap().push((
                    header("authorization"),
                    header("x-scope-orgid"),
                    time,
                ));
                let authorized = header("authorization").starts_with("Bearer tok");
                async move {
                    if !authorized {
                        return (StatusCode::UNAUTHORIZED, HeaderMap::new(), "no".to_string());
                    }
                    let mut json = HeaderMap::new();
                    json.insert("content-type", "application/json".parse().unwrap());
                    let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"b"},"value":[1700000000,"3"]}]}}"#;
                    (StatusCode::OK, json, body.to_string())
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/prometheus")
}

#[tokio::test]
async fn bearer_token_is_read_at_every_query_and_extra_headers_are_sent() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = gateway(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok1\n").unwrap();
    let client = client(&format!(
        "{{url: \"{url}\", bearerTokenFile: {token:?}, headers: {{X-Scope-OrgID: team-a}}}}"
    ));
    let at = Timestamp::from_millisecond(1_700_000_000_123).unwrap();
    assert_eq!(client.instant("up", at).await.unwrap()[0].value, 3.0);
    // A rotated Secret is used without a restart.
    std::fs::write(&token, "tok2").unwrap();
    client.instant("up", at).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (
                "Bearer tok1".to_string(),
                "team-a".to_string(),
                "1700000000.123".to_string()
            ),
            (
                "Bearer tok2".to_string(),
                "team-a".to_string(),
                "1700000000.123".to_string()
            ),
        ]
    );
    assert!(!format!("{client:?}").contains("tok"));

    std::fs::write(&token, "stolen-secret").unwrap();
    let err = client.instant("up", at).await.unwrap_err();
    assert!(matches!(err, TelemetryError::Refused { status: 401, .. }));
    assert!(!format!("{err} {err:?}").contains("stolen-secret"));

    std::fs::remove_file(&token).unwrap();
    let err = client.instant("up", at).await.unwrap_err();
    assert!(matches!(err, TelemetryError::Credentials { .. }), "{err:?}");
}

#[test]
fn settings_that_cannot_work_are_refused_up_front() {
    let err = PromClient::new(&config("{url: \"http://user:pw@prometheus:9090\"}")).unwrap_err();
    assert!(err.to_string().contains("basicAuth.passwordFile"), "{err}");
    assert!(!err.to_string().contains("pw@"), "{err}");
    let err = PromClient::new(&config(
        "{url: \"http://prometheus:9090\", headers: {\"bad header\": x}}",
    ))
    .unwrap_err();
    assert!(err.to_string().starts_with("prometheus.headers:"), "{err}");
}
