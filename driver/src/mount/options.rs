//! Mount options from requests (CSI `mount_flags`), turned into mount(2) flags and data.
//!
//! Known flags become [`MsFlags`]; anything else must look like a filesystem option
//! (`name` or `name=value` of a conservative character set) and is passed as data.

use nix::mount::MsFlags;

use super::MountError;

/// Parsed mount options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2).
    pub flags: MsFlags,
    /// Filesystem-specific options, comma-joined, already validated.
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            flags: MsFlags::empty(),
            data: Vec::new(),
        }
    }
}

/// Options that map to mount(2) flags: (name, set, clear).
const FLAG_OPTIONS: &[(&str, MsFlags, MsFlags)] = &[
    ("ro", MsFlags::MS_RDONLY, MsFlags::empty()),
    ("rw", MsFlags::empty(), MsFlags::MS_RDONLY),
    ("noexec", MsFlags::MS_NOEXEC, MsFlags::empty()),
    ("exec", MsFlags::empty(), MsFlags::MS_NOEXEC),
    ("nosuid", MsFlags::MS_NOSUID, MsFlags::empty()),
    ("suid", MsFlags::empty(), MsFlags::MS_NOSUID),
    ("nodev", MsFlags::MS_NODEV, MsFlags::empty()),
    ("dev", MsFlags::empty(), MsFlags::MS_NODEV),
    ("noatime", MsFlags::MS_NOATIME, MsFlags::empty()),
    ("nodiratime", MsFlags::MS_NODIRATIME, MsFlags::empty()),
    ("relatime", MsFlags::MS_RELATIME, MsFlags::empty()),
    ("strictatime", MsFlags::MS_STRICTATIME, MsFlags::empty()),
    ("sync", MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
    ("async", MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
    ("dirsync", MsFlags::MS_DIRSYNC, MsFlags::empty()),
    ("lazytime", MsFlags::MS_LAZYTIME, MsFlags::empty()),
    ("defaults", MsFlags::empty(), MsFlags::empty()),
];

/// Options that would change what the mount is (or where it comes from): refused.
const REFUSED: &[&str] = &[
    "bind",
    "rbind",
    "remount",
    "move",
    "loop",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "unbindable",
    "runbindable",
];

const MAX_OPTION_LEN: usize = 256;

/// Names of the flag options mountinfo reports in per-mount options, with their flag,
/// so an existing mount can be compared with a request.
pub const REPORTED_FLAGS: &[(&str, MsFlags)] = &[
    ("ro", MsFlags::MS_RDONLY),
    ("noexec", MsFlags::MS_NOEXEC),
    ("nosuid", MsFlags::MS_NOSUID),
    ("nodev", MsFlags::MS_NODEV),
    ("noatime", MsFlags::MS_NOATIME),
];

impl MountOptions {
    /// Parse CSI mount flags. Each entry may itself be a comma list (`"noatime,nodev"`).
    pub fn parse<S: AsRef<str>>(options: &[S]) -> Result<Self, MountError> {
        let mut out = Self::default();
        for entry in options {
            for option in entry.as_ref().split(',') {
                out.add(option.trim())?;
            }
        }
        Ok(out)
    }

    fn add(&mut self, option: &str) -> Result<(), MountError> {
        let invalid = |reason| MountError::InvalidOption {
            option: option.to_owned(),
            reason,
        };
        if option.is_empty() {
            return Ok(());
        }
        if option.len() > MAX_OPTION_LEN {
            return Err(invalid("too long"));
        }
        if let Some((_, set, clear)) = FLAG_OPTIONS.iter().find(|(n, _, _)| *n == option) {
            self.flags.remove(*clear);
            self.flags.insert(*set);
            return Ok(());
        }
        if REFUSED.contains(&option) {
            return Err(invalid("changes the kind of mount; not allowed"));
        }
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let value_ok = value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/+@".contains(&b));
        if !name_ok || !value_ok {
            return Err(invalid("unexpected characters"));
        }
        self.data.push(option.to_owned());
        Ok(())
    }

    /// Data string for mount(2), with `extra` options first (e.g. xfs `nouuid`).
    pub fn data_string(&self, extra: Option<&str>) -> Option<String> {
        let parts: Vec<&str> = extra
            .into_iter()
            .chain(self.data.iter().map(String::as_str))
            .collect();
        (!parts.is_empty()).then(|| parts.join(","))
    }

    /// Flags that a bind remount can apply (bind mounts take per-mount flags only).
    pub fn per_mount_flags(&self) -> MsFlags {
        self.flags
            & (MsFlags::MS_RDONLY
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOATIME
                | MsFlags::MS_NODIRATIME
                | MsFlags::MS_RELATIME
                | MsFlags::MS_STRICTATIME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data() {
        let o = MountOptions::parse(&["noatime,nodev", "ro", "discard", "commit=30"]).unwrap();
        assert_eq!(
            o.flags,
            MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_RDONLY
        );
        assert_eq!(o.data, vec!["discard", "commit=30"]);
        assert_eq!(
            o.data_string(Some("nouuid")).as_deref(),
            Some("nouuid,discard,commit=30")
        );
        assert_eq!(MountOptions::default().data_string(None), None);
        // Later options win, like mount(8).
        let o = MountOptions::parse(&["ro", "rw"]).unwrap();
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn refuses_injection_and_mount_kind_changes() {
        for bad in [
            "bind",
            "remount",
            "rshared",
            "a b",
            "x=\0",
            "context=\"system_u:object_r\"",
            "=value",
            "opt=a;rm",
            "op\nt",
        ] {
            assert!(MountOptions::parse(&[bad]).is_err(), "{bad:?} accepted");
        }
        assert!(MountOptions::parse(&["x".repeat(300)]).is_err());
    }
}
