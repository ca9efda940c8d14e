//! Wrapping a volume's data key with a key derived from its Secret, and the wrapped key's
//! file.
//!
//! ```text
//! KEK     = HKDF-SHA256(ikm = Secret material, salt = 32 random bytes,
//!                       info = "plinth.dev/fscrypt-kek/v1:" ‖ volume ID)
//! wrapped = AES-256-GCM(KEK, nonce = 12 random bytes, data key,
//!                       aad = "plinth.dev/fscrypt-key/v1:" ‖ volume ID)
//! ```
//!
//! The file (`<pool>/volumes/<id>.key`, or `<pool>/snapshots/<snapshot>.key` for a
//! snapshot's copy) is JSON, mode 0600, written atomically; `boundTo` names the volume
//! the key was wrapped for (a restore's file names its source until its first stage).

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{CryptError, Material};
use crate::mount::ioctl::FSCRYPT_MAX_KEY_SIZE;
use crate::storage::io_err;

/// Version of the wrapped-key file.
pub const FORMAT_VERSION: u32 = 1;
const ALGORITHM: &str = "hkdf-sha256/aes-256-gcm";
const KEK_INFO: &str = "plinth.dev/fscrypt-kek/v1:";
const AAD: &str = "plinth.dev/fscrypt-key/v1:";
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// A volume's fscrypt master key, in memory only; wiped on drop.
pub struct DataKey(Zeroizing<[u8; FSCRYPT_MAX_KEY_SIZE]>);

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptError> {
        let mut key = Zeroizing::new([0u8; FSCRYPT_MAX_KEY_SIZE]);
        random(&mut key[..])?;
        Ok(Self(key))
    }

    pub fn bytes(&self) -> &[u8; FSCRYPT_MAX_KEY_SIZE] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// The wrapped key as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WrappedKey {
    pub format_version: u32,
    pub algorithm: String,
    /// The volume ID bound into the derivation and the associated data.
    pub bound_to: String,
    /// Hex.
    pub salt: String,
    /// Hex.
    pub nonce: String,
    /// Hex: the data key encrypted, with its 16-byte tag.
    pub wrapped: String,
}

fn random(buf: &mut [u8]) -> Result<(), CryptError> {
    let path = Path::new("/dev/urandom");
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| io_err("read", path)(e).into())
}

fn kek(material: &Material, salt: &[u8], volume: &str) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let info = [KEK_INFO.as_bytes(), volume.as_bytes()].concat();
    // Expanding to 32 bytes cannot fail (the limit is 255 × 32).
    let _ = Hkdf::<Sha256>::new(Some(salt), material.bytes()).expand(&info, &mut out[..]);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Wrap `key` for volume `volume` under `material`, with a fresh salt and nonce.
pub fn wrap(key: &DataKey, material: &Material, volume: &str) -> Result<WrappedKey, CryptError> {
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    random(&mut salt)?;
    random(&mut nonce)?;
    let kek = kek(material, &salt, volume);
    let cipher = Aes256Gcm::new_from_slice(&kek[..]).map_err(|_| record_error("bad KEK length"))?;
    let aad = [AAD.as_bytes(), volume.as_bytes()].concat();
    let wrapped = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &key.bytes()[..],
                aad: &aad,
            },
        )
        .map_err(|_| record_error("encryption failed"))?;
    Ok(WrappedKey {
        format_version: FORMAT_VERSION,
        algorithm: ALGORITHM.to_owned(),
        bound_to: volume.to_owned(),
        salt: hex(&salt),
        nonce: hex(&nonce),
        wrapped: hex(&wrapped),
    })
}

fn record_error(reason: &str) -> CryptError {
    CryptError::Record {
        path: Default::default(),
        reason: reason.to_owned(),
    }
}

/// What unwrapping found.
#[derive(Debug)]
pub enum Unwrapped {
    Key(DataKey),
    /// The material is not the one the key was wrapped with (or the file was altered).
    WrongMaterial,
}

/// Unwrap `wrapped` with `material`.
pub fn unwrap(wrapped: &WrappedKey, material: &Material) -> Result<Unwrapped, CryptError> {
    if wrapped.format_version > FORMAT_VERSION || wrapped.algorithm != ALGORITHM {
        return Err(record_error(&format!(
            "format {} / {} is not one this driver reads",
            wrapped.format_version, wrapped.algorithm
        )));
    }
    let field = |name: &str, text: &str, len: Option<usize>| {
        unhex(text)
            .filter(|b| len.is_none_or(|l| b.len() == l))
            .ok_or_else(|| record_error(&format!("{name} is malformed")))
    };
    let salt = field("salt", &wrapped.salt, Some(SALT_LEN))?;
    let nonce = field("nonce", &wrapped.nonce, Some(NONCE_LEN))?;
    let sealed = field("wrapped", &wrapped.wrapped, Some(FSCRYPT_MAX_KEY_SIZE + 16))?;
    let kek = kek(material, &salt, &wrapped.bound_to);
    let cipher = Aes256Gcm::new_from_slice(&kek[..]).map_err(|_| record_error("bad KEK length"))?;
    let aad = [AAD.as_bytes(), wrapped.bound_to.as_bytes()].concat();
    let Ok(plain) = cipher.decrypt(
        Nonce::from_slice(&nonce),
        Payload {
            msg: &sealed,
            aad: &aad,
        },
    ) else {
        return Ok(Unwrapped::WrongMaterial);
    };
    let plain = Zeroizing::new(plain);
    let mut key = Zeroizing::new([0u8; FSCRYPT_MAX_KEY_SIZE]);
    if plain.len() != FSCRYPT_MAX_KEY_SIZE {
        return Err(record_error("unwrapped key has the wrong length"));
    }
    key.copy_from_slice(&plain);
    Ok(Unwrapped::Key(DataKey(key)))
}

/// Read a wrapped-key file; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<WrappedKey>, CryptError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e).into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CryptError::Record {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Write a wrapped-key file atomically, mode 0600 from its creation on.
pub fn write(path: &Path, key: &WrappedKey) -> Result<(), CryptError> {
    let json = serde_json::to_vec_pretty(key).map_err(|e| CryptError::Record {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_private(path, &json).map_err(|e| io_err("write", path)(e).into())
}

/// Copy a wrapped-key file (a snapshot of, or a volume restored from, an encrypted
/// volume); `Ok(false)` when `from` has none (the source was never staged).
pub fn copy(from: &Path, to: &Path) -> Result<bool, CryptError> {
    match read(from)? {
        Some(key) => write(to, &key).map(|()| true),
        None => Ok(false),
    }
}

/// Remove a wrapped-key file if there is one.
pub fn remove(path: &Path) -> Result<(), CryptError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e).into()),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path without parent"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("path without UTF-8 file name"))?;
    // The pool's temp-file convention, so recovery removes a leftover.
    let temp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let _ = fs::remove_file(&temp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&temp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn material(text: &str) -> Material {
        Material(Zeroizing::new(text.as_bytes().to_vec()))
    }

    #[test]
    fn the_right_material_unwraps_and_nothing_else_does() {
        let key = DataKey::generate().unwrap();
        let right = material("0123456789abcdef0123456789abcdef-right");
        let wrapped = wrap(&key, &right, "vol-a").unwrap();
        let Unwrapped::Key(back) = unwrap(&wrapped, &right).unwrap() else {
            panic!("the right material did not unwrap");
        };
        assert_eq!(back.bytes(), key.bytes());
        let wrong = material("0123456789abcdef0123456789abcdef-wrong");
        assert!(matches!(
            unwrap(&wrapped, &wrong).unwrap(),
            Unwrapped::WrongMaterial
        ));
        // Bound to the volume: the same file claimed by another volume does not open.
        let moved = WrappedKey {
            bound_to: "vol-b".into(),
            ..wrapped.clone()
        };
        assert!(matches!(
            unwrap(&moved, &right).unwrap(),
            Unwrapped::WrongMaterial
        ));
        // Fresh salt and nonce every time.
        let again = wrap(&key, &right, "vol-a").unwrap();
        assert_ne!(again.salt, wrapped.salt);
        assert_ne!(again.wrapped, wrapped.wrapped);
        // The file holds neither the key nor the material.
        let json = serde_json::to_string(&wrapped).unwrap();
        assert!(!json.contains(&hex(key.bytes())));
        assert!(!json.contains("0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn key_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.key");
        let key = DataKey::generate().unwrap();
        let wrapped = wrap(&key, &material("0123456789abcdef0123456789abcdef"), "v").unwrap();
        write(&path, &wrapped).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(&path).unwrap(), Some(wrapped));
        assert_eq!(read(&dir.path().join("none.key")).unwrap(), None);
        assert!(!copy(&dir.path().join("none.key"), &dir.path().join("c.key")).unwrap());
        assert!(copy(&path, &dir.path().join("c.key")).unwrap());
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
    }
}
