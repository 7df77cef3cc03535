//! The lab's API server alone (no daemon, no Prometheus) with the seed's objects and its
//! Canary: for tests of what a person sees through kubectl.

use canaryd::api::Canary;
use canaryd_lab::apiserver::{ApiServer, ApiServerHandle, ApiServerOptions};
use kube::api::PostParams;
use kube::Api;

pub async fn with_canary() -> (ApiServerHandle, Canary) {
    let api = ApiServer::start(ApiServerOptions {
        install_istio_crds: true,
        install_canary_crd: true,
        install_reference_grant_crd: true,
        ..Default::default()
    })
    .await
    .expect("the lab API server starts");
    api.install(canaryd_lab::harness::SEED)
        .expect("the seed installs");
    let canaries: Api<Canary> = Api::namespaced(api.client().unwrap(), "prod");
    let canary = canaries
        .create(&PostParams::default(), &canaryd_lab::harness::lab_canary(1))
        .await
        .expect("the Canary is created");
    (api, canary)
}
