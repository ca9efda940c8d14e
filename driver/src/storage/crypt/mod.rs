//! Encrypted volumes: ext4 encryption (fscrypt policy v2), one key per volume, unlocked
//! from the claim's own Secret.
//!
//! A StorageClass asks for it with the parameter `encryption: fscrypt` and hands each
//! claim's Secret to NodeStageVolume (`csi.storage.k8s.io/node-stage-secret-name:
//! ${pvc.name}`, `...-namespace: ${pvc.namespace}`). kubelet reads that Secret with its
//! own node authorization, so no sidecar needs secret RBAC and the controller never sees
//! key material: in cluster mode the volume record carries the parameter, nothing more.
//!
//! # Keys
//!
//! * The **data key** is a random 64-byte fscrypt master key per volume, made at the
//!   volume's first stage. It never touches a disk unwrapped: the kernel holds it while
//!   the volume is staged (`FS_IOC_ADD_ENCRYPTION_KEY` at stage,
//!   `FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS` at unstage), and the driver's copy is wiped
//!   as soon as it is handed over.
//! * It is stored **wrapped** ([`wrap`]) next to the volume's record, mode 0600: AES-256-GCM
//!   under a key-encryption key = HKDF-SHA256(the Secret's `encryptionKey`, a random
//!   per-wrap salt, info bound to the volume ID), with the volume ID as associated data.
//!   A wrong Secret fails the AEAD check before anything is attached or mounted.
//! * Snapshots carry their source's wrapped key; a restore or clone starts with it and
//!   therefore shares its source's data key (a block copy needs the same key to be read).
//!   At its first stage the new claim's Secret must open it: `encryptionKey` is tried,
//!   then `sourceEncryptionKey` (the source claim's material); on success the data key is
//!   re-wrapped under `encryptionKey` with a fresh salt, so the new claim's Secret alone
//!   opens it from then on.
//!
//! # Layout of an encrypted filesystem
//!
//! mkfs.ext4 with `-O encrypt`; the root of a filesystem cannot carry a policy, so the
//! volume's data lives in its `data/` directory, which gets the v2 policy (AES-256-XTS
//! contents, AES-256-CTS filenames) at the first stage. Publish binds `data/`, not the
//! staging root.

pub mod fscrypt;
pub mod wrap;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, Zeroizing};

use crate::storage::IoFailure;

/// The StorageClass parameter that makes a volume encrypted.
pub const PARAMETER: &str = "encryption";
/// Its one value: ext4 encryption with a v2 policy.
pub const FSCRYPT: &str = "fscrypt";
/// The node-stage Secret key holding this claim's key material.
pub const KEY_SECRET: &str = "encryptionKey";
/// The node-stage Secret key holding the source claim's material (restores, clones).
pub const SOURCE_KEY_SECRET: &str = "sourceEncryptionKey";
/// Least material a Secret key must hold: the KEK is 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;
/// The directory of an encrypted filesystem that holds the volume's data.
pub const DATA_DIR: &str = "data";
/// Where the kernel says it can encrypt ext4.
pub const KERNEL_FEATURE: &str = "/sys/fs/ext4/features/encryption";

/// How to make a secret a user can paste: printed in every error about one.
const HOW_TO_CREATE: &str = "create it with `kubectl create secret generic <pvc-name> \
     --namespace <pvc-namespace> --from-literal=encryptionKey=\"$(head -c 32 /dev/urandom | base64)\"`";
const CLASS_PARAMETERS: &str = "the StorageClass must set \
     csi.storage.k8s.io/node-stage-secret-name: ${pvc.name} and \
     csi.storage.k8s.io/node-stage-secret-namespace: ${pvc.namespace}";

/// Whether the parameters ask for encryption: `Ok(false)` without the parameter,
/// [`CryptError::UnknownMode`] for a value other than `fscrypt`.
pub fn requested(parameters: &BTreeMap<String, String>) -> Result<bool, CryptError> {
    match parameters.get(PARAMETER).map(String::as_str) {
        None => Ok(false),
        Some(FSCRYPT) => Ok(true),
        Some(other) => Err(CryptError::UnknownMode(other.to_owned())),
    }
}

/// Whether a recorded volume is encrypted (its parameters were checked at create).
pub fn is_encrypted(parameters: &BTreeMap<String, String>) -> bool {
    requested(parameters).unwrap_or(false)
}

/// Why a volume of this kind cannot be encrypted, if it cannot: only ext4 filesystems
/// can (fscrypt needs a filesystem that implements it; no dm-crypt on these nodes).
/// `fs_type` is `None` for block access.
pub fn check_encryptable(fs_type: Option<&str>) -> Result<(), CryptError> {
    match fs_type {
        None => Err(CryptError::NotEncryptable(
            "raw block volumes cannot be encrypted: encryption is ext4's (fscrypt), and this \
             driver offers no dm-crypt; use volumeMode: Filesystem"
                .to_owned(),
        )),
        Some("ext4") => Ok(()),
        Some(other) => Err(CryptError::NotEncryptable(format!(
            "fsType {other} cannot be encrypted: encryption is ext4's (fscrypt); set \
             csi.storage.k8s.io/fstype: ext4 in the StorageClass"
        ))),
    }
}

/// Whether this node's kernel can encrypt ext4.
pub fn check_kernel() -> Result<(), CryptError> {
    check_kernel_at(Path::new(KERNEL_FEATURE))
}

fn check_kernel_at(feature: &Path) -> Result<(), CryptError> {
    if feature.exists() {
        Ok(())
    } else {
        Err(CryptError::KernelUnsupported(feature.to_path_buf()))
    }
}

/// A volume's data key, opened for a stage.
#[derive(Debug)]
pub struct Opened {
    pub key: wrap::DataKey,
    /// To be written to the volume's key file before the key is used: a new key (first
    /// stage), or one re-wrapped for this volume and claim (first stage of a restore or
    /// clone).
    pub store: Option<wrap::WrappedKey>,
}

/// Open volume `id`'s data key from its key file (`key_file`) with the stage's
/// `secrets`, or make the key of its first stage. Touches nothing: a missing or wrong
/// secret fails here, before anything is attached or mounted.
pub fn open(key_file: &Path, id: &str, secrets: &Secrets) -> Result<Opened, CryptError> {
    let material = secrets.required(id)?;
    let Some(stored) = wrap::read(key_file)? else {
        let key = wrap::DataKey::generate()?;
        let store = Some(wrap::wrap(&key, &material, id)?);
        return Ok(Opened { key, store });
    };
    let rewrap = |key: wrap::DataKey| -> Result<Opened, CryptError> {
        let store = Some(wrap::wrap(&key, &material, id)?);
        Ok(Opened { key, store })
    };
    if let wrap::Unwrapped::Key(key) = wrap::unwrap(&stored, &material)? {
        // A restore's key still bound to its source opens with the same material:
        // bind it to this volume.
        return if stored.bound_to == id {
            Ok(Opened { key, store: None })
        } else {
            rewrap(key)
        };
    }
    match secrets.material(SOURCE_KEY_SECRET)? {
        Some(source) => match wrap::unwrap(&stored, &source)? {
            wrap::Unwrapped::Key(key) => {
                tracing::info!(
                    "data key opened with sourceEncryptionKey; re-wrapping it under encryptionKey"
                );
                rewrap(key)
            }
            wrap::Unwrapped::WrongMaterial => Err(CryptError::WrongKey(
                id.to_owned(),
                ", and neither is \"sourceEncryptionKey\"",
            )),
        },
        None => Err(CryptError::WrongKey(id.to_owned(), "")),
    }
}

/// Key material from a Secret: redacted in Debug, wiped on drop.
#[derive(Clone)]
pub struct Material(Zeroizing<Vec<u8>>);

impl Material {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Material(<redacted>)")
    }
}

/// The `secrets` of a CSI request, taken out of it at once: Debug shows only the keys,
/// and the values are wiped on drop.
#[derive(Default)]
pub struct Secrets(HashMap<String, Zeroizing<String>>);

impl Secrets {
    /// Take the secrets out of a request's field (leaving it empty).
    pub fn take(field: &mut HashMap<String, String>) -> Self {
        Self(
            std::mem::take(field)
                .into_iter()
                .map(|(k, v)| (k, Zeroizing::new(v)))
                .collect(),
        )
    }

    /// The material under `key`: `Ok(None)` when absent, [`CryptError::ShortSecret`]
    /// when shorter than [`MIN_SECRET_BYTES`].
    pub fn material(&self, key: &'static str) -> Result<Option<Material>, CryptError> {
        let Some(value) = self.0.get(key) else {
            return Ok(None);
        };
        let bytes = value.as_bytes();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(CryptError::ShortSecret {
                key,
                len: bytes.len(),
            });
        }
        Ok(Some(Material(Zeroizing::new(bytes.to_vec()))))
    }

    /// This claim's material, required: [`CryptError::MissingSecret`] without it.
    pub fn required(&self, volume: &str) -> Result<Material, CryptError> {
        self.material(KEY_SECRET)?
            .ok_or_else(|| CryptError::MissingSecret(volume.to_owned()))
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.0.keys().collect();
        keys.sort();
        f.debug_struct("Secrets")
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        // The keys may name what the values are; the values are wiped by Zeroizing.
        for (mut k, _) in self.0.drain() {
            k.zeroize();
        }
    }
}

/// Errors of encrypted volumes. None of them carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// [InvalidArgument]
    #[error("parameter {PARAMETER}: {0:?} is not an encryption this driver offers (fscrypt)")]
    UnknownMode(String),
    /// [InvalidArgument]
    #[error("parameter {PARAMETER}: {0}")]
    NotEncryptable(String),
    /// [InvalidArgument]
    #[error(
        "parameter {PARAMETER}: this node's kernel cannot encrypt ext4 ({} is missing); \
         use a kernel built with CONFIG_FS_ENCRYPTION, or a class without encryption",
        .0.display()
    )]
    KernelUnsupported(PathBuf),
    /// [InvalidArgument]
    #[error(
        "inline (ephemeral) volumes cannot be encrypted: they have no claim, so no per-claim \
         Secret to hold their key; use a PersistentVolumeClaim (or a generic ephemeral \
         volume) of an encrypted StorageClass"
    )]
    Inline,
    /// [InvalidArgument]
    #[error(
        "volume {0} is encrypted and NodeStageVolume carried no {KEY_SECRET:?} secret: \
         {CLASS_PARAMETERS}, and the claim needs its Secret with key {KEY_SECRET}: {HOW_TO_CREATE}"
    )]
    MissingSecret(String),
    /// [InvalidArgument]
    #[error(
        "secret key {key:?} holds {len} bytes; it needs at least {MIN_SECRET_BYTES}: {HOW_TO_CREATE}"
    )]
    ShortSecret { key: &'static str, len: usize },
    /// [PermissionDenied]
    #[error(
        "the Secret given for volume {0} does not open its key: {KEY_SECRET:?} is not the \
         material the volume was staged with{1}; nothing was changed. Put the original \
         material back (keep a rotated one as {SOURCE_KEY_SECRET:?} until the next stage)"
    )]
    WrongKey(String, &'static str),
    /// [FailedPrecondition]
    #[error(
        "volume {0} holds encrypted data but its wrapped key is missing from the pool; \
         it cannot be opened"
    )]
    KeyLost(String),
    /// [FailedPrecondition]
    #[error("volume {id}: {reason}")]
    Layout { id: String, reason: String },
    /// [Internal]
    #[error(transparent)]
    Io(#[from] IoFailure),
    /// [Internal]
    #[error("{op} {path}: {source}")]
    Kernel {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// [Internal]
    #[error("wrapped key {path}: {reason}")]
    Record { path: PathBuf, reason: String },
}

impl CryptError {
    pub(crate) fn kernel<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(nix::Error) -> Self + 'a {
        move |source| Self::Kernel {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::UnknownMode(_)
            | Self::NotEncryptable(_)
            | Self::KernelUnsupported(_)
            | Self::Inline
            | Self::MissingSecret(_)
            | Self::ShortSecret { .. } => Code::InvalidArgument,
            // gRPC: the caller lacks the right to do this (its credential does not open
            // the volume). Final for kubelet, which retries with backoff and shows the
            // message in the pod's events; FAILED_PRECONDITION would blame the volume.
            Self::WrongKey(..) => Code::PermissionDenied,
            Self::KeyLost(_) | Self::Layout { .. } => Code::FailedPrecondition,
            Self::Io(_) | Self::Kernel { .. } | Self::Record { .. } => Code::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_is_fscrypt_or_absent() {
        let params = |v: &str| BTreeMap::from([(PARAMETER.to_owned(), v.to_owned())]);
        assert!(!requested(&BTreeMap::new()).unwrap());
        assert!(requested(&params("fscrypt")).unwrap());
        let e = requested(&params("luks")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains("\"luks\""), "{e}");
    }

    #[test]
    fn only_ext4_filesystems_encrypt() {
        assert!(check_encryptable(Some("ext4")).is_ok());
        assert!(
            check_encryptable(Some("xfs"))
                .unwrap_err()
                .to_string()
                .contains("xfs")
        );
        assert!(
            check_encryptable(None)
                .unwrap_err()
                .to_string()
                .contains("block")
        );
        let missing = check_kernel_at(Path::new("/nonexistent/encryption")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/encryption"),
            "{missing}"
        );
    }

    #[test]
    fn secrets_never_show_their_values() {
        let mut field = HashMap::from([
            (
                KEY_SECRET.to_owned(),
                "s3cr3t-material-0123456789abcdefXYZ".to_owned(),
            ),
            ("short".to_owned(), "tiny".to_owned()),
        ]);
        let secrets = Secrets::take(&mut field);
        assert!(field.is_empty());
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains(KEY_SECRET), "{shown}");
        let material = secrets.required("v").unwrap();
        assert_eq!(format!("{material:?}"), "Material(<redacted>)");
        assert_eq!(material.bytes().len(), 35);
        assert!(matches!(secrets.material(SOURCE_KEY_SECRET), Ok(None)));
        assert!(matches!(
            Secrets::default().required("v"),
            Err(CryptError::MissingSecret(_))
        ));
    }

    #[test]
    fn short_material_is_refused_with_the_way_to_make_one() {
        let secrets = Secrets::take(&mut HashMap::from([(
            KEY_SECRET.to_owned(),
            "too-short".to_owned(),
        )]));
        let e = secrets.required("v").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.to_string().contains("head -c 32 /dev/urandom | base64"),
            "{e}"
        );
        assert!(!e.to_string().contains("too-short"), "{e}");
    }
}
