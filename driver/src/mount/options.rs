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
///
/// `suid` and `dev` are not here: they are refused ([`REFUSED`]), so every mount the
/// driver makes keeps `nosuid,nodev` ([`ALWAYS`]).
const FLAG_OPTIONS: &[(&str, MsFlags, MsFlags)] = &[
    ("ro", MsFlags::MS_RDONLY, MsFlags::empty()),
    ("rw", MsFlags::empty(), MsFlags::MS_RDONLY),
    ("noexec", MsFlags::MS_NOEXEC, MsFlags::empty()),
    ("exec", MsFlags::empty(), MsFlags::MS_NOEXEC),
    ("nosuid", MsFlags::MS_NOSUID, MsFlags::empty()),
    ("nodev", MsFlags::MS_NODEV, MsFlags::empty()),
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

/// Flags on every staging and filesystem publish mount, whatever the request says: a
/// volume's contents are written by a pod, so a setuid binary or a device node in it
/// must not give that pod (or any other using the volume) more than it had.
pub const ALWAYS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// Options refused by name (before any `=`), with the reason the error carries.
const REFUSED: &[(&str, &str)] = &[
    // What the mount is, or where it comes from, is the driver's to decide.
    ("bind", "changes the kind of mount; not allowed"),
    ("rbind", "changes the kind of mount; not allowed"),
    ("remount", "changes the kind of mount; not allowed"),
    ("move", "changes the kind of mount; not allowed"),
    ("loop", "changes the kind of mount; not allowed"),
    ("shared", "changes mount propagation; not allowed"),
    ("rshared", "changes mount propagation; not allowed"),
    ("slave", "changes mount propagation; not allowed"),
    ("rslave", "changes mount propagation; not allowed"),
    ("private", "changes mount propagation; not allowed"),
    ("rprivate", "changes mount propagation; not allowed"),
    ("unbindable", "changes mount propagation; not allowed"),
    ("runbindable", "changes mount propagation; not allowed"),
    // Volumes are always mounted nosuid,nodev (see ALWAYS).
    (
        "suid",
        "would honour setuid binaries written by a pod; volumes are always nosuid",
    ),
    (
        "dev",
        "would honour device nodes written by a pod; volumes are always nodev",
    ),
    // SELinux labels: only kubelet's quoted `context="…"` (handled before this list).
    (
        "context",
        "an SELinux context must be quoted as kubelet writes it: context=\"user:role:type[:level]\"",
    ),
    (
        "fscontext",
        "only kubelet's context=\"…\" SELinux option is accepted",
    ),
    (
        "defcontext",
        "only kubelet's context=\"…\" SELinux option is accepted",
    ),
    (
        "rootcontext",
        "only kubelet's context=\"…\" SELinux option is accepted",
    ),
    // Filesystem options that reach beyond the volume.
    (
        "nobarrier",
        "turns off write barriers: a power loss can corrupt the filesystem; not allowed",
    ),
    (
        "logdev",
        "puts the journal on another block device of the node; not allowed",
    ),
    (
        "rtdev",
        "puts data on another block device of the node; not allowed",
    ),
    (
        "journal_dev",
        "puts the journal on another block device of the node; not allowed",
    ),
    (
        "journal_path",
        "puts the journal on another block device of the node; not allowed",
    ),
];

/// Refused `name=value` pairs.
const REFUSED_VALUES: &[(&str, &str, &str)] = &[
    (
        "errors",
        "panic",
        "would let a damaged volume crash the whole node; use errors=remount-ro",
    ),
    (
        "barrier",
        "0",
        "turns off write barriers: a power loss can corrupt the filesystem; not allowed",
    ),
];

const MAX_OPTION_LEN: usize = 256;

/// The SELinux option kubelet adds with `seLinuxMount`: `context="<label>"`, the label
/// quoted because its MLS level may hold commas (`s0:c1,c2`).
const CONTEXT_PREFIX: &str = "context=\"";

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
    /// Parse CSI mount flags. Each entry may itself be a comma list (`"noatime,nodev"`);
    /// commas inside double quotes belong to the option (kubelet's SELinux `context=`).
    /// The result always carries [`ALWAYS`].
    pub fn parse<S: AsRef<str>>(options: &[S]) -> Result<Self, MountError> {
        let mut out = Self {
            flags: ALWAYS,
            data: Vec::new(),
        };
        for entry in options {
            for option in split(entry.as_ref())? {
                out.add(option.trim())?;
            }
        }
        Ok(out)
    }

    /// Check one CSI `mount_flags` entry: exactly one acceptable option (kubelet sends
    /// one per entry; a comma list would hide options from review of the StorageClass).
    pub fn check_entry(entry: &str) -> Result<(), MountError> {
        let parts = split(entry)?;
        if parts.len() != 1 || parts[0].trim().is_empty() || parts[0].trim() != parts[0] {
            return Err(MountError::InvalidOption {
                option: entry.to_owned(),
                reason: "must be exactly one mount option",
            });
        }
        Self::default().add(parts[0])
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
        if option.starts_with(CONTEXT_PREFIX) {
            return if is_selinux_context_option(option) {
                self.data.push(option.to_owned());
                Ok(())
            } else {
                Err(invalid(
                    "an SELinux context must be context=\"user:role:type[:level]\"",
                ))
            };
        }
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        if let Some((_, reason)) = REFUSED.iter().find(|(n, _)| *n == name) {
            return Err(invalid(reason));
        }
        if let Some((_, _, reason)) = REFUSED_VALUES
            .iter()
            .find(|(n, v, _)| *n == name && v.eq_ignore_ascii_case(value))
        {
            return Err(invalid(reason));
        }
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

/// Split on commas outside double quotes; an unterminated quote is refused.
fn split(entry: &str) -> Result<Vec<&str>, MountError> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, b) in entry.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&entry[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(MountError::InvalidOption {
            option: entry.to_owned(),
            reason: "unterminated quote",
        });
    }
    parts.push(&entry[start..]);
    Ok(parts)
}

/// `context="user:role:type[:level]"` exactly as kubelet writes it (Go's `%q` of an
/// SELinux label, which never needs escapes): at least user, role and type, and only
/// the characters SELinux labels use. Anything else inside the quotes (a quote, a
/// backslash, a space) could end the option early or smuggle in another one.
fn is_selinux_context_option(option: &str) -> bool {
    let Some(label) = option
        .strip_prefix(CONTEXT_PREFIX)
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return false;
    };
    let charset_ok = label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_:.,-".contains(&b));
    let mut fields = label.splitn(4, ':');
    let named = (0..3).all(|_| {
        fields
            .next()
            .is_some_and(|f| !f.is_empty() && !f.contains(','))
    });
    charset_ok && named
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kubelet sends with `seLinuxMount: true` (pkg/volume/util: `context=%q`).
    const KUBELET_CONTEXT: &str = r#"context="system_u:object_r:container_file_t:s0:c1,c2""#;

    #[test]
    fn flags_and_data() {
        let o = MountOptions::parse(&["noatime,nodev", "ro", "discard", "commit=30"]).unwrap();
        assert_eq!(
            o.flags,
            MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
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
    fn nosuid_and_nodev_are_always_set_and_cannot_be_removed() {
        let o = MountOptions::parse::<&str>(&[]).unwrap();
        assert!(o.flags.contains(ALWAYS));
        assert!(o.per_mount_flags().contains(ALWAYS));
        for bad in ["suid", "dev", "noatime,suid", "dev,ro"] {
            match MountOptions::parse(&[bad]) {
                Err(MountError::InvalidOption { option, reason }) => {
                    assert!(option == "suid" || option == "dev", "{option}");
                    assert!(reason.contains("always"), "{reason}");
                }
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn options_that_harm_the_node_are_refused_with_a_reason() {
        for bad in [
            "errors=panic",
            "errors=PANIC",
            "nobarrier",
            "barrier=0",
            "logdev=/dev/sda1",
            "rtdev=/dev/sda2",
            "journal_dev=0x0801",
            "journal_path=/dev/sda1",
        ] {
            let err = MountOptions::parse(&[bad]).unwrap_err();
            assert!(
                matches!(&err, MountError::InvalidOption { option, .. } if option == bad),
                "{err}"
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(MountOptions::parse(&["errors=remount-ro", "barrier=1"]).is_ok());
    }

    #[test]
    fn kubelets_selinux_context_reaches_mount_data_intact() {
        let o = MountOptions::parse(&[KUBELET_CONTEXT, "noatime"]).unwrap();
        assert_eq!(o.data, vec![KUBELET_CONTEXT]);
        assert_eq!(
            o.data_string(None).as_deref(),
            Some(r#"context="system_u:object_r:container_file_t:s0:c1,c2""#)
        );
        assert_eq!(
            o.data_string(Some("nouuid")).as_deref(),
            Some(r#"nouuid,context="system_u:object_r:container_file_t:s0:c1,c2""#)
        );
        assert!(MountOptions::check_entry(KUBELET_CONTEXT).is_ok());
        // Other valid levels: none, a range.
        for ok in [
            r#"context="system_u:object_r:container_file_t""#,
            r#"context="system_u:object_r:container_file_t:s0-s0:c0.c1023""#,
        ] {
            assert!(MountOptions::check_entry(ok).is_ok(), "{ok}");
        }
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
            // Quotes anywhere but around a whole SELinux label.
            r#"context="system_u:object_r:t:s0",suid"#,
            r#"context="a:b:c"x"#,
            r#"context="a:b:c\",dev""#,
            r#"context="a:b:c d""#,
            r#"context=system_u:object_r:container_file_t:s0"#,
            r#"context="a:b:c"#,
            r#"fscontext="a:b:c""#,
            r#"opt="x""#,
            "=value",
            "opt=a;rm",
            "op\nt",
        ] {
            assert!(MountOptions::parse(&[bad]).is_err(), "{bad:?} accepted");
        }
        assert!(MountOptions::parse(&["x".repeat(300)]).is_err());
        // One option per CSI mount flag entry.
        assert!(MountOptions::check_entry("noatime,rw").is_err());
        assert!(MountOptions::check_entry("").is_err());
        assert!(MountOptions::check_entry(" noatime").is_err());
    }
}
