//! The cluster-scoped CSIDriver object: how kubelet and the scheduler treat the driver.

use k8s_openapi::api::storage::v1::{CSIDriver, CSIDriverSpec};
use plinth_api::capabilities::VolumeLifecycleMode;

use super::Plan;
use crate::crd::{CsiDeployment, FsGroupPolicy, LifecycleMode};
use crate::labels;

pub fn csi_driver(cr: &CsiDeployment, plan: &Plan) -> CSIDriver {
    let options = &cr.spec.csi_driver;
    let modes: Vec<String> = match &options.volume_lifecycle_modes {
        Some(modes) => {
            let mut modes = modes.clone();
            modes.sort();
            modes.dedup();
            modes
                .into_iter()
                .map(|m| match m {
                    LifecycleMode::Persistent => "Persistent",
                    LifecycleMode::Ephemeral => "Ephemeral",
                })
                .map(str::to_owned)
                .collect()
        }
        None if plan.capabilities.lifecycle_modes.is_empty() => {
            vec![VolumeLifecycleMode::Persistent.as_str().to_owned()]
        }
        None => plan
            .capabilities
            .lifecycle_modes
            .iter()
            .map(|m| m.as_str().to_owned())
            .collect(),
    };
    // The built-in driver formats a private filesystem per volume: kubelet may chown it.
    let fs_group_policy = options
        .fs_group_policy
        .or(cr.spec.is_builtin().then_some(FsGroupPolicy::File))
        .map(|p| {
            match p {
                FsGroupPolicy::None => "None",
                FsGroupPolicy::File => "File",
                FsGroupPolicy::ReadWriteOnceWithFSType => "ReadWriteOnceWithFSType",
            }
            .to_owned()
        });
    CSIDriver {
        metadata: labels::metadata(cr, plan.driver_name.clone(), None),
        spec: CSIDriverSpec {
            attach_required: Some(
                options
                    .attach_required
                    .unwrap_or_else(|| plan.capabilities.attach_required()),
            ),
            // Inline ephemeral volumes need the pod's identity to name and clean up.
            pod_info_on_mount: Some(
                options
                    .pod_info_on_mount
                    .unwrap_or_else(|| plan.ephemeral()),
            ),
            fs_group_policy,
            storage_capacity: Some(
                options
                    .storage_capacity
                    .unwrap_or_else(|| plan.capacity_tracking()),
            ),
            volume_lifecycle_modes: Some(modes),
            se_linux_mount: options.se_linux_mount,
            requires_republish: options.requires_republish,
            token_requests: (!options.token_requests.is_empty())
                .then(|| options.token_requests.clone()),
            ..CSIDriverSpec::default()
        },
    }
}
