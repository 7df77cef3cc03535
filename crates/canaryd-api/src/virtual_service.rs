//! A narrow, lossless view of Istio's `VirtualService` (`networking.istio.io/v1`).
//!
//! canaryd reads the HTTP routes, their destinations and weights, and writes only the two
//! weights of the prod/stage split. Every other field (match, retries, timeout, headers,
//! mirrors, tcp/tls routes, ...) is carried through untouched in `rest` maps, and writes are
//! JSON patches that name only the weight paths (guarded by `test` ops on the hosts), so
//! canaryd never drops what it does not know and never fights a GitOps tool over them.

use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    namespaced,
    schema = "disabled"
)]
pub struct VirtualServiceSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// Everything else (hosts, gateways, tcp, tls, exportTo, ...), kept as written.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HttpRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Destination {
    pub host: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// Where the prod/stage split lives in a VirtualService and what it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficSplit {
    pub route_index: usize,
    pub prod_index: usize,
    pub stage_index: usize,
    pub prod_weight: i64,
    pub stage_weight: i64,
}

/// Why a VirtualService cannot carry the split; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the VirtualService has no HTTP route named \"{0}\"; fix spec.virtualService.route or the route's name")]
    NamedRouteMissing(String),
    #[error("no HTTP route of the VirtualService sends traffic to both {prod} and {stage}; add a route with these two destinations")]
    NoRoute { prod: String, stage: String },
    #[error("HTTP routes {0:?} all send traffic to both hosts; set spec.virtualService.route to the one canaryd drives")]
    Ambiguous(Vec<String>),
    #[error("HTTP route {route} has no destination with host {host}; add it with weight 0")]
    DestinationMissing { route: String, host: String },
    #[error("HTTP route {route} also sends traffic to {other}; canaryd can only drive a route whose destinations are exactly prod and stage")]
    ExtraDestination { route: String, other: String },
}

fn route_label(route: &HttpRoute, index: usize) -> String {
    route
        .name
        .clone()
        .unwrap_or_else(|| format!("#{index} (unnamed)"))
}

impl VirtualServiceSpec {
    /// Finds the route and destinations of the split: the route named `route`, or else the
    /// only route whose destinations include both hosts.
    pub fn traffic_split(
        &self,
        route: Option<&str>,
        prod_host: &str,
        stage_host: &str,
    ) -> Result<TrafficSplit, RouteError> {
        let has = |r: &HttpRoute, host: &str| r.route.iter().any(|d| d.destination.host == host);
        let route_index = match route {
            Some(name) => self
                .http
                .iter()
                .position(|r| r.name.as_deref() == Some(name))
                .ok_or_else(|| RouteError::NamedRouteMissing(name.to_string()))?,
            None => {
                let candidates: Vec<usize> = (0..self.http.len())
                    .filter(|&i| has(&self.http[i], prod_host) && has(&self.http[i], stage_host))
                    .collect();
                match candidates.as_slice() {
                    [] => {
                        return Err(RouteError::NoRoute {
                            prod: prod_host.into(),
                            stage: stage_host.into(),
                        })
                    }
                    [one] => *one,
                    many => {
                        return Err(RouteError::Ambiguous(
                            many.iter()
                                .map(|&i| route_label(&self.http[i], i))
                                .collect(),
                        ))
                    }
                }
            }
        };
        let r = &self.http[route_index];
        let label = route_label(r, route_index);
        let find = |host: &str| {
            r.route
                .iter()
                .position(|d| d.destination.host == host)
                .ok_or_else(|| RouteError::DestinationMissing {
                    route: label.clone(),
                    host: host.into(),
                })
        };
        let prod_index = find(prod_host)?;
        let stage_index = find(stage_host)?;
        if let Some(other) = r
            .route
            .iter()
            .map(|d| &d.destination.host)
            .find(|h| *h != prod_host && *h != stage_host)
        {
            return Err(RouteError::ExtraDestination {
                route: label,
                other: other.clone(),
            });
        }
        Ok(TrafficSplit {
            route_index,
            prod_index,
            stage_index,
            prod_weight: r.route[prod_index].weight.unwrap_or(0),
            stage_weight: r.route[stage_index].weight.unwrap_or(0),
        })
    }
}

impl TrafficSplit {
    /// A JSON patch (RFC 6902) that sets the two weights and nothing else. The `test` ops
    /// make the API server reject it if the route's destinations moved since they were read.
    pub fn weight_patch(&self, prod_host: &str, stage_host: &str, stage_weight: u8) -> Value {
        let stage_weight = stage_weight.min(100);
        let base = format!("/spec/http/{}/route", self.route_index);
        json!([
            {"op": "test", "path": format!("{base}/{}/destination/host", self.prod_index), "value": prod_host},
            {"op": "test", "path": format!("{base}/{}/destination/host", self.stage_index), "value": stage_host},
            {"op": "add", "path": format!("{base}/{}/weight", self.prod_index), "value": 100 - stage_weight},
            {"op": "add", "path": format!("{base}/{}/weight", self.stage_index), "value": stage_weight},
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's VirtualService with fields canaryd does not model.
    fn rich_virtual_service() -> Value {
        serde_json::from_str(
            r#"{
  "apiVersion": "networking.istio.io/v1",
  "kind": "VirtualService",
  "metadata": {"name": "demoapp", "namespace": "prod", "labels": {"app": "demo"}},
  "spec": {
    "hosts": ["demoapp.example.com"],
    "gateways": ["prod/demo-gateway"],
    "http": [
      {"name": "admin",
       "match": [{"uri": {"prefix": "/admin"}}],
       "route": [{"destination": {"host": "admin.prod.svc.cluster.local"}}]},
      {"name": "primary",
       "match": [{"uri": {"prefix": "/"}, "headers": {"x-tenant": {"exact": "a"}}}],
       "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx"},
       "timeout": "10s",
       "headers": {"request": {"set": {"x-canary": "true"}}},
       "mirror": {"host": "shadow.prod.svc.cluster.local"},
       "route": [
         {"destination": {"host": "flaskapp.prod.svc.cluster.local", "port": {"number": 80}, "subset": "v1"},
          "weight": 100, "headers": {"response": {"add": {"x-env": "prod"}}}},
         {"destination": {"host": "flaskapp.stage.svc.cluster.local", "port": {"number": 80}},
          "weight": 0}
       ]}
    ],
    "tcp": [{"route": [{"destination": {"host": "db"}}]}],
    "exportTo": ["."]
  }
}"#,
        )
        .unwrap()
    }

    const PROD: &str = "flaskapp.prod.svc.cluster.local";
    const STAGE: &str = "flaskapp.stage.svc.cluster.local";

    #[test]
    fn reading_and_writing_back_keeps_every_field() {
        let original = rich_virtual_service();
        let vs: VirtualService = serde_json::from_value(original.clone()).unwrap();
        assert_eq!(serde_json::to_value(&vs).unwrap(), original);
    }

    #[test]
    fn weight_patch_changes_exactly_the_two_weights() {
        let original = rich_virtual_service();
        let vs: VirtualService = serde_json::from_value(original.clone()).unwrap();
        let split = vs.spec.traffic_split(None, PROD, STAGE).unwrap();
        assert_eq!(
            (split.route_index, split.prod_weight, split.stage_weight),
            (1, 100, 0)
        );

        let patch: json_patch::Patch =
            serde_json::from_value(split.weight_patch(PROD, STAGE, 30)).unwrap();
        let mut patched = original.clone();
        json_patch::patch(&mut patched, &patch).unwrap();

        let mut expected = original;
        expected["spec"]["http"][1]["route"][0]["weight"] = json!(70);
        expected["spec"]["http"][1]["route"][1]["weight"] = json!(30);
        assert_eq!(patched, expected);
    }

    #[test]
    fn weight_patch_is_refused_when_destinations_moved() {
        let original = rich_virtual_service();
        let vs: VirtualService = serde_json::from_value(original.clone()).unwrap();
        let split = vs.spec.traffic_split(None, PROD, STAGE).unwrap();
        let patch: json_patch::Patch =
            serde_json::from_value(split.weight_patch(PROD, STAGE, 30)).unwrap();
        let mut reordered = original;
        let route = reordered["spec"]["http"][1]["route"]
            .as_array_mut()
            .unwrap();
        route.swap(0, 1);
        let before = reordered.clone();
        assert!(json_patch::patch(&mut reordered, &patch).is_err());
        assert_eq!(reordered, before, "a failed patch changes nothing");
    }

    #[test]
    fn a_missing_weight_reads_as_zero_and_is_added() {
        let mut v = rich_virtual_service();
        v["spec"]["http"][1]["route"][1]
            .as_object_mut()
            .unwrap()
            .remove("weight");
        let vs: VirtualService = serde_json::from_value(v.clone()).unwrap();
        let split = vs.spec.traffic_split(Some("primary"), PROD, STAGE).unwrap();
        assert_eq!(split.stage_weight, 0);
        let patch: json_patch::Patch =
            serde_json::from_value(split.weight_patch(PROD, STAGE, 100)).unwrap();
        json_patch::patch(&mut v, &patch).unwrap();
        assert_eq!(v["spec"]["http"][1]["route"][1]["weight"], json!(100));
        assert_eq!(v["spec"]["http"][1]["route"][0]["weight"], json!(0));
    }

    #[test]
    fn routes_that_cannot_carry_the_split_are_explained() {
        let vs: VirtualService = serde_json::from_value(rich_virtual_service()).unwrap();
        assert_eq!(
            vs.spec.traffic_split(Some("nope"), PROD, STAGE),
            Err(RouteError::NamedRouteMissing("nope".into()))
        );
        assert_eq!(
            vs.spec.traffic_split(Some("admin"), PROD, STAGE),
            Err(RouteError::DestinationMissing {
                route: "admin".into(),
                host: PROD.into()
            })
        );
        let err = vs
            .spec
            .traffic_split(None, PROD, "flaskapp.canary.svc.cluster.local")
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("add a route with these two destinations"));

        let mut two = vs.spec.clone();
        two.http.push(two.http[1].clone());
        two.http[2].name = None;
        assert_eq!(
            two.traffic_split(None, PROD, STAGE),
            Err(RouteError::Ambiguous(vec![
                "primary".into(),
                "#2 (unnamed)".into()
            ]))
        );
    }
}
