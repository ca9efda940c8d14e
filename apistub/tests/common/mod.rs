//! Shared by the integration tests: a small cluster-scoped custom resource and helpers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, time::Duration};

use kube::{
    Api, CustomResource,
    api::{ObjectMeta, Patch, PatchParams},
    core::Status,
};
use plinth_apistub::{ApiStub, Running};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "test.plinth.dev",
    version = "v1",
    kind = "Widget",
    plural = "widgets",
    status = "WidgetStatus"
)]
pub struct WidgetSpec {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub observed_generation: i64,
}

pub const PATH: &str = "/apis/test.plinth.dev/v1/widgets";

pub async fn start() -> (Running, Api<Widget>) {
    let stub = ApiStub::start().await.expect("the stub starts");
    let api = Api::all(stub.client().expect("a client for the stub"));
    (stub, api)
}

pub fn widget(name: &str, size: u64, labels: &[(&str, &str)]) -> Widget {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Widget {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: WidgetSpec { size, color: None },
        status: None,
    }
}

/// The `Status` of a refused request.
pub fn status_of<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

pub fn rv(w: &Widget) -> u64 {
    w.metadata
        .resource_version
        .as_deref()
        .expect("a resourceVersion")
        .parse()
        .expect("a numeric resourceVersion")
}

pub fn generation(w: &Widget) -> i64 {
    w.metadata.generation.expect("a generation")
}

/// Bounds every wait in the tests, so a broken stub fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// A merge patch of the main resource.
pub async fn merge(
    api: &Api<Widget>,
    name: &str,
    patch: serde_json::Value,
) -> Result<Widget, kube::Error> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
}

/// A merge patch of the status subresource.
pub async fn merge_status(
    api: &Api<Widget>,
    name: &str,
    patch: serde_json::Value,
) -> Result<Widget, kube::Error> {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
}

pub async fn resize(api: &Api<Widget>, name: &str, size: u64) -> Widget {
    merge(api, name, serde_json::json!({"spec": {"size": size}}))
        .await
        .expect("resized")
}
