//! Checks on untrusted request fields, turning CSI messages into the driver's own types.
//!
//! Every helper names the offending field in its error, so a CO operator reading the
//! gRPC status knows what to fix.

use std::path::{Component, Path, PathBuf};

use plinth_csi_proto::v1;
use v1::volume_capability::{AccessType, access_mode::Mode as ProtoMode};

use crate::config::Config;
use crate::error::Error;
use crate::mount::{FsType, MountOptions};
use crate::storage::spec::{Access, AccessMode, Capability, Capacity, same_kind, too_long};
// Content sources name volumes too, so storage and cluster code check IDs the same way.
pub use crate::storage::spec::{
    MAX_ID_BYTES, VolumeRef, existing_id, required, volume_id, volume_ref,
};

/// Paths are exempt from the 128-byte limit; the kernel's PATH_MAX bounds them.
const MAX_PATH_BYTES: usize = 4096;

/// A CO-chosen volume name (CreateVolume): any printable text up to 128 bytes.
pub fn name<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Error> {
    required(field, value)?;
    if value.len() > MAX_ID_BYTES {
        return Err(too_long(field, value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidArgument {
            field,
            reason: "must not contain control characters".into(),
        });
    }
    Ok(value)
}

/// A staging, target or volume path a request names, checked against this driver's pool
/// and kubelet directory ([`path`]).
pub fn kubelet_path(config: &Config, field: &'static str, value: &str) -> Result<PathBuf, Error> {
    path(field, value, &config.pool, &config.kubelet_dir)
}

/// A staging or target path from the CO: absolute, no `..`, no NUL, strictly below the
/// kubelet directory the driver serves (kubelet never hands out paths elsewhere; a path
/// elsewhere could mount a volume over, or remove, anything on the node), and never
/// inside the pool (a path there could overwrite an image or its metadata).
///
/// This is the lexical check; symlinks below the kubelet directory are refused when the
/// volume layer resolves the path ([`crate::storage::volume::NodeVolumes::resolve`]).
pub fn path(
    field: &'static str,
    value: &str,
    pool: &Path,
    kubelet_dir: &Path,
) -> Result<PathBuf, Error> {
    required(field, value)?;
    let invalid = |reason: &str| Error::InvalidArgument {
        field,
        reason: format!("{value:?} {reason}"),
    };
    if value.len() > MAX_PATH_BYTES {
        return Err(invalid("is longer than PATH_MAX"));
    }
    if value.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(invalid("is not absolute"));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(invalid("contains '..'"));
    }
    // `components()` drops `.` and doubled slashes, giving the form we compare and use.
    let normal: PathBuf = path.components().collect();
    if normal.parent().is_none() {
        return Err(invalid("is the root directory"));
    }
    if normal.starts_with(pool) || pool.starts_with(&normal) {
        return Err(invalid("overlaps the volume pool"));
    }
    if !normal.starts_with(kubelet_dir) || normal == kubelet_dir {
        return Err(invalid(&format!(
            "is not below the kubelet directory {} (--kubelet-dir)",
            kubelet_dir.display()
        )));
    }
    Ok(normal)
}

/// Why a capability cannot be served; CreateVolume answers INVALID_ARGUMENT with it,
/// ValidateVolumeCapabilities reports it as the unconfirmed message.
#[derive(Debug)]
pub struct Unsupported(pub String);

/// Mount flags are handed to mount(2): one option per entry, checked by the same parser
/// that builds the mount data ([`MountOptions`]), so what is accepted here is exactly
/// what stage and publish accept (kubelet's SELinux `context="…"` included).
fn check_mount_flag(flag: &str) -> Result<(), Unsupported> {
    MountOptions::check_entry(flag)
        .map_err(|e| Unsupported(format!("mount flag {flag:?} is not accepted: {e}")))
}

pub fn capability(cap: &v1::VolumeCapability) -> Result<Capability, Unsupported> {
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Unsupported("access_mode is required".into()))?;
    let mode = match ProtoMode::try_from(mode.mode) {
        Ok(ProtoMode::SingleNodeWriter) => AccessMode::SingleNodeWriter,
        Ok(ProtoMode::SingleNodeSingleWriter) => AccessMode::SingleNodeSingleWriter,
        Ok(ProtoMode::SingleNodeMultiWriter) => AccessMode::SingleNodeMultiWriter,
        Ok(ProtoMode::SingleNodeReaderOnly) => AccessMode::SingleNodeReaderOnly,
        Ok(
            m @ (ProtoMode::MultiNodeReaderOnly
            | ProtoMode::MultiNodeSingleWriter
            | ProtoMode::MultiNodeMultiWriter),
        ) => {
            return Err(Unsupported(format!(
                "access mode {} is not supported: local volumes live on one node",
                m.as_str_name()
            )));
        }
        Ok(ProtoMode::Unknown) | Err(_) => {
            return Err(Unsupported(format!(
                "access_mode {} is not a known access mode",
                mode.mode
            )));
        }
    };
    let access = match &cap.access_type {
        None => {
            return Err(Unsupported(
                "access_type (block or mount) is required".into(),
            ));
        }
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(mount)) => {
            let fs = match mount.fs_type.as_str() {
                "" => None,
                "ext4" => Some(FsType::Ext4),
                "xfs" => Some(FsType::Xfs),
                other => {
                    return Err(Unsupported(format!(
                        "fs_type {other:?} is not supported (ext4, xfs)"
                    )));
                }
            };
            if !mount.volume_mount_group.is_empty() {
                return Err(Unsupported(
                    "volume_mount_group is not supported (no VOLUME_MOUNT_GROUP capability)".into(),
                ));
            }
            for flag in &mount.mount_flags {
                check_mount_flag(flag)?;
            }
            Access::Mount {
                fs,
                flags: mount.mount_flags.clone(),
            }
        }
    };
    Ok(Capability { access, mode })
}

/// A required single capability (Node RPCs); unsupported ones are INVALID_ARGUMENT.
pub fn required_capability(
    field: &'static str,
    cap: Option<&v1::VolumeCapability>,
) -> Result<Capability, Error> {
    let cap = cap.ok_or(Error::MissingField(field))?;
    capability(cap).map_err(|Unsupported(reason)| Error::InvalidArgument { field, reason })
}

/// CreateVolume's list of capabilities: all must be served, and they must agree on
/// block vs. filesystem (one image cannot be both).
pub fn capabilities(
    field: &'static str,
    caps: &[v1::VolumeCapability],
) -> Result<Vec<Capability>, Error> {
    if caps.is_empty() {
        return Err(Error::MissingField(field));
    }
    let parsed = caps
        .iter()
        .map(|cap| {
            capability(cap).map_err(|Unsupported(reason)| Error::InvalidArgument { field, reason })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(first) = parsed.first()
        && parsed.iter().any(|c| !same_kind(&c.access, &first.access))
    {
        return Err(Error::InvalidArgument {
            field,
            reason: "capabilities mix block and mount, or two filesystems".into(),
        });
    }
    Ok(parsed)
}

pub fn capacity(range: Option<&v1::CapacityRange>) -> Result<Capacity, Error> {
    let Some(range) = range else {
        return Ok(Capacity::default());
    };
    let non_negative = |field: &'static str, value: i64| {
        u64::try_from(value).map_err(|_| Error::InvalidArgument {
            field,
            reason: format!("{value} is negative"),
        })
    };
    let required = non_negative("capacity_range.required_bytes", range.required_bytes)?;
    let limit = non_negative("capacity_range.limit_bytes", range.limit_bytes)?;
    if limit != 0 && limit < required {
        return Err(Error::OutOfRange(format!(
            "capacity_range.limit_bytes {limit} is below required_bytes {required}"
        )));
    }
    Ok(Capacity { required, limit })
}

/// This node's topology segment.
pub fn node_topology(key: &str, node_id: &str) -> v1::Topology {
    v1::Topology {
        segments: [(key.to_owned(), node_id.to_owned())].into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::volume_capability::{AccessMode as ProtoAccessMode, BlockVolume, MountVolume};

    fn cap(mode: ProtoMode, access: AccessType) -> v1::VolumeCapability {
        v1::VolumeCapability {
            access_mode: Some(ProtoAccessMode { mode: mode as i32 }),
            access_type: Some(access),
        }
    }

    fn mount(fs: &str) -> AccessType {
        AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })
    }

    #[test]
    fn volume_ids_cannot_escape_the_pool() {
        for bad in ["../etc", "a/b", "..", ".hidden", "a\0b", "vol id"] {
            assert!(
                matches!(
                    volume_id("volume_id", bad),
                    Err(Error::InvalidArgument { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            volume_id("volume_id", ""),
            Err(Error::MissingField("volume_id"))
        ));
        assert!(volume_id("volume_id", &"a".repeat(129)).is_err());
        assert!(volume_id("volume_id", &"a".repeat(128)).is_ok());
        assert!(volume_id("volume_id", "pvc-1234.abc_D").is_ok());
    }

    #[test]
    fn paths_must_be_absolute_clean_and_outside_the_pool() {
        let pool = Path::new("/var/lib/plinth/pool");
        let kubelet = Path::new("/var/lib/kubelet");
        let ok = path(
            "target_path",
            "/var/lib/kubelet/pods/x//mount/",
            pool,
            kubelet,
        )
        .unwrap();
        assert_eq!(ok, Path::new("/var/lib/kubelet/pods/x/mount"));
        for bad in [
            "relative/path",
            "/var/lib/kubelet/../../etc",
            "/",
            "/var/lib/plinth/pool/img",
            "/var/lib/plinth",
            "/tmp/a\0b",
            "/tmp/elsewhere",
            "/var/lib/kubelet",
            "/var/lib/kubelet-other/pods/x",
        ] {
            assert!(
                path("target_path", bad, pool, kubelet).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn multi_node_modes_unknown_filesystems_and_missing_parts_are_refused() {
        assert!(capability(&cap(ProtoMode::MultiNodeMultiWriter, mount("ext4"))).is_err());
        assert!(capability(&cap(ProtoMode::MultiNodeReaderOnly, mount("ext4"))).is_err());
        assert!(capability(&cap(ProtoMode::SingleNodeWriter, mount("btrfs"))).is_err());
        assert!(capability(&cap(ProtoMode::Unknown, mount("ext4"))).is_err());
        let no_type = v1::VolumeCapability {
            access_mode: Some(ProtoAccessMode {
                mode: ProtoMode::SingleNodeWriter as i32,
            }),
            access_type: None,
        };
        assert!(capability(&no_type).is_err());
        let ok = capability(&cap(ProtoMode::SingleNodeWriter, mount(""))).unwrap();
        assert_eq!(
            ok.access,
            Access::Mount {
                fs: None,
                flags: vec![]
            }
        );
        let block = capability(&cap(
            ProtoMode::SingleNodeReaderOnly,
            AccessType::Block(BlockVolume {}),
        ))
        .unwrap();
        assert_eq!(block.access, Access::Block);
        assert!(block.mode.read_only());
    }

    #[test]
    fn mount_flags_cannot_smuggle_options() {
        let with_flags = |flags: &[&str]| {
            cap(
                ProtoMode::SingleNodeWriter,
                AccessType::Mount(MountVolume {
                    fs_type: "ext4".into(),
                    mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
                    ..Default::default()
                }),
            )
        };
        assert!(capability(&with_flags(&["noatime", "discard"])).is_ok());
        assert!(capability(&with_flags(&["noatime,rw"])).is_err());
        assert!(capability(&with_flags(&["a b"])).is_err());
        // kubelet's seLinuxMount option, commas inside the quotes.
        let selinux = r#"context="system_u:object_r:container_file_t:s0:c1,c2""#;
        assert!(capability(&with_flags(&[selinux, "noatime"])).is_ok());
        for refused in [
            "suid",
            "dev",
            "errors=panic",
            "nobarrier",
            "logdev=/dev/sda",
        ] {
            let Err(Unsupported(reason)) = capability(&with_flags(&[refused])) else {
                panic!("{refused:?} accepted");
            };
            assert!(reason.contains(refused), "{reason}");
        }
    }

    #[test]
    fn mixed_block_and_mount_capabilities_are_refused() {
        let caps = [
            cap(ProtoMode::SingleNodeWriter, mount("ext4")),
            cap(
                ProtoMode::SingleNodeWriter,
                AccessType::Block(BlockVolume {}),
            ),
        ];
        assert!(capabilities("volume_capabilities", &caps).is_err());
        assert!(matches!(
            capabilities("volume_capabilities", &[]),
            Err(Error::MissingField(_))
        ));
    }

    #[test]
    fn capacity_ranges_are_checked() {
        let range = |required_bytes, limit_bytes| v1::CapacityRange {
            required_bytes,
            limit_bytes,
        };
        assert_eq!(capacity(None).unwrap(), Capacity::default());
        assert!(matches!(
            capacity(Some(&range(10, 5))),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            capacity(Some(&range(-1, 0))),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(
            capacity(Some(&range(5, 0))).unwrap(),
            Capacity {
                required: 5,
                limit: 0
            }
        );
    }
}
