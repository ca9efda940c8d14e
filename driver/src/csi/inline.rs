//! NodePublishVolume / NodeUnpublishVolume of CSI ephemeral inline volumes: the request
//! checks and the one call into `storage::ephemeral`, which owns what such a volume is.

use plinth_csi_proto::v1;

use crate::csi::validate;
use crate::error::Error;
use crate::state::Driver;
use crate::storage::ephemeral::{
    FS_TYPE_KEY, find, is_kubelet_inline_id, publish, spec, unpublish,
};
use crate::storage::spec::Access;

/// NodePublishVolume of an inline volume (the caller checked [`is_ephemeral`](crate::storage::ephemeral::is_ephemeral)).
pub async fn node_publish(driver: &Driver, req: v1::NodePublishVolumeRequest) -> Result<(), Error> {
    if !driver.config.features.ephemeral {
        return Err(Error::InvalidArgument {
            field: "volume_context",
            reason: "inline (ephemeral) volumes are switched off on this driver".into(),
        });
    }
    validate::volume_id("volume_id", &req.volume_id)?;
    let target = validate::kubelet_path(&driver.config, "target_path", &req.target_path)?;
    let cap = validate::required_capability("volume_capability", req.volume_capability.as_ref())?;
    let Access::Mount { fs, flags } = cap.access else {
        return Err(Error::InvalidArgument {
            field: "volume_capability",
            reason: "inline volumes are filesystems; block access is not offered for them".into(),
        });
    };
    let mut spec = spec(&req.volume_context, driver.config.ephemeral)?;
    // Kubelet passes the pod spec's `fsType` in the capability.
    if let Some(fs) = fs {
        if req.volume_context.contains_key(FS_TYPE_KEY) && fs != spec.fs {
            return Err(Error::InvalidArgument {
                field: "volume_capability",
                reason: format!(
                    "fs_type {fs} contradicts the {FS_TYPE_KEY} attribute {}",
                    spec.fs
                ),
            });
        }
        spec.fs = fs;
    }
    let readonly = req.readonly || cap.mode.read_only();
    let volumes = driver.volumes()?;
    let kubelet_id = req.volume_id.clone();
    let limits = driver.config.ephemeral;
    driver
        .storage()
        .exclusive(&req.volume_id, move || {
            publish(
                &volumes,
                &kubelet_id,
                &target,
                spec,
                limits,
                flags,
                readonly,
            )
            .map(drop)
        })
        .await
}

/// NodeUnpublishVolume when `volume_id` is an inline volume; `Ok(false)` leaves the
/// request to the persistent-volume path.
pub async fn node_unpublish(
    driver: &Driver,
    req: &v1::NodeUnpublishVolumeRequest,
) -> Result<bool, Error> {
    validate::volume_id("volume_id", &req.volume_id)?;
    let target = validate::kubelet_path(&driver.config, "target_path", &req.target_path)?;
    let volumes = driver.volumes()?;
    let inline =
        find(volumes.pool(), &req.volume_id).is_some() || is_kubelet_inline_id(&req.volume_id);
    if !inline {
        return Ok(false);
    }
    let kubelet_id = req.volume_id.clone();
    driver
        .storage()
        .exclusive(&req.volume_id, move || {
            unpublish(&volumes, &kubelet_id, &target)
        })
        .await
}
