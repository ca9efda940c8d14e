//! ControllerExpandVolume and NodeExpandVolume.
//!
//! The controller grows the image file ([`crate::storage::pool::Pool::expand_volume`]: shrinking
//! is OUT_OF_RANGE) and always asks for node expansion: a mounted filesystem must grow,
//! and an attached raw device must be told its new size. The node refreshes the loop
//! device and grows the filesystem online ([`crate::storage::grow`]).

use plinth_csi_proto::v1;

use crate::backend::Backend;
use crate::csi::validate;
use crate::error::Error;
use crate::state::Driver;
use crate::storage::pool::{CapacityRange, GRANULARITY, image_size};

fn require_feature(driver: &Driver, rpc: &'static str) -> Result<(), Error> {
    if driver.config.features.expansion {
        Ok(())
    } else {
        Err(Error::Unimplemented(rpc))
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub async fn controller_expand(
    driver: &Driver,
    req: v1::ControllerExpandVolumeRequest,
) -> Result<v1::ControllerExpandVolumeResponse, Error> {
    require_feature(driver, "ControllerExpandVolume")?;
    // Arguments -> lookup -> work.
    let id = validate::volume_ref(&req.volume_id)?;
    let range = req
        .capacity_range
        .as_ref()
        .ok_or(Error::MissingField("capacity_range"))?;
    let capacity = validate::capacity(Some(range))?;
    if capacity.required == 0 && capacity.limit == 0 {
        return Err(Error::MissingField("capacity_range.required_bytes"));
    }
    // The size the range asks for, rounded like CreateVolume and never past the limit.
    let wanted = image_size(
        CapacityRange::new(capacity.required, capacity.limit),
        GRANULARITY,
    )
    .map_err(|e| Error::OutOfRange(e.to_string()))?;
    if let Some(cap) = &req.volume_capability {
        validate::required_capability("volume_capability", Some(cap))?;
    }
    let id = id.lookup()?;
    let size = Backend::of(driver).expand_volume(id, wanted).await?;
    if capacity.limit != 0 && size > capacity.limit {
        // Only possible when the volume was already larger than the limit.
        return Err(Error::OutOfRange(format!(
            "the volume is {size} bytes, above capacity_range.limit_bytes {}",
            capacity.limit
        )));
    }
    tracing::info!(size, "ControllerExpandVolume done");
    Ok(v1::ControllerExpandVolumeResponse {
        capacity_bytes: clamp(size),
        node_expansion_required: true,
    })
}

pub async fn node_expand(
    driver: &Driver,
    req: v1::NodeExpandVolumeRequest,
) -> Result<v1::NodeExpandVolumeResponse, Error> {
    require_feature(driver, "NodeExpandVolume")?;
    // Arguments -> lookup -> work, as in the node service. `volume_path` names where
    // the volume is, so a present but impossible path is part of the lookup (NOT_FOUND).
    let id = validate::volume_ref(&req.volume_id)?;
    validate::required("volume_path", &req.volume_path)?;
    let config = &driver.config;
    if !req.staging_target_path.is_empty() {
        validate::kubelet_path(config, "staging_target_path", &req.staging_target_path)?;
    }
    if let Some(cap) = &req.volume_capability {
        validate::required_capability("volume_capability", Some(cap))?;
    }
    let capacity = validate::capacity(req.capacity_range.as_ref())?;
    let id = id.lookup()?;
    let volumes = driver.volumes()?;
    volumes.pool().get(&id)?;
    let path = validate::kubelet_path(config, "volume_path", &req.volume_path).map_err(|_| {
        Error::NotAtPath {
            id: id.to_string(),
            path: req.volume_path.clone(),
        }
    })?;
    let key = id.to_string();
    let grown = driver
        .storage()
        .exclusive(&key, move || {
            let path = volumes.resolve(&path)?;
            Ok(crate::storage::grow::grow(volumes.pool(), &id, &path)?)
        })
        .await?;
    if grown.capacity_bytes < capacity.required {
        return Err(Error::OutOfRange(format!(
            "the volume is {} bytes, less than the {} requested: expand it through the controller first",
            grown.capacity_bytes, capacity.required
        )));
    }
    tracing::info!(capacity = grown.capacity_bytes, fs = ?grown.fs, "NodeExpandVolume done");
    Ok(v1::NodeExpandVolumeResponse {
        capacity_bytes: clamp(grown.capacity_bytes),
    })
}
