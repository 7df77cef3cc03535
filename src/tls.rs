//! The one TLS provider of every HTTP client canaryd builds: rustls with ring, the provider
//! kube's client uses too, so no second crypto library is compiled.

use std::sync::Once;

/// A reqwest client builder with ring installed as rustls' process-wide provider.
pub fn http_client() -> reqwest::ClientBuilder {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err only when a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}
