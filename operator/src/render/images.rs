//! Default images, the registry rewrite and per-image overrides.
//!
//! Public for the bundle generator, which lists every image as `relatedImages`.

use plinth_api::capabilities::Sidecar;

use crate::crd::ImagesSpec;

/// The built-in driver image of this release.
pub const DRIVER_IMAGE: &str = concat!(
    "ghcr.io/plinth-dev/plinth-driver:v",
    env!("CARGO_PKG_VERSION")
);

/// Upstream kubernetes-csi sidecar images, pinned. The keys of `spec.images.overrides`
/// are the image names (the last path segment without the tag).
pub const SIDECAR_IMAGES: &[(Sidecar, &str)] = &[
    (
        Sidecar::Provisioner,
        "registry.k8s.io/sig-storage/csi-provisioner:v6.3.0",
    ),
    (
        Sidecar::Attacher,
        "registry.k8s.io/sig-storage/csi-attacher:v4.13.0",
    ),
    (
        Sidecar::Resizer,
        "registry.k8s.io/sig-storage/csi-resizer:v2.2.1",
    ),
    (
        Sidecar::Snapshotter,
        "registry.k8s.io/sig-storage/csi-snapshotter:v8.6.0",
    ),
    (
        Sidecar::LivenessProbe,
        "registry.k8s.io/sig-storage/livenessprobe:v2.20.0",
    ),
    (
        Sidecar::NodeDriverRegistrar,
        "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.18.0",
    ),
];

/// The default image of a sidecar.
pub fn default_image(sidecar: Sidecar) -> &'static str {
    SIDECAR_IMAGES
        .iter()
        .find(|(s, _)| *s == sidecar)
        .map(|(_, image)| *image)
        // Every sidecar is in the table (a unit test holds it to that).
        .unwrap_or_default()
}

/// The override key of a sidecar: its upstream image name.
pub fn image_name(sidecar: Sidecar) -> &'static str {
    repository_name(default_image(sidecar))
}

/// The keys `spec.images.overrides` accepts.
pub fn override_keys() -> impl Iterator<Item = &'static str> {
    SIDECAR_IMAGES.iter().map(|(s, _)| image_name(*s))
}

/// `registry.k8s.io/sig-storage/csi-provisioner:v6.3.0` -> `csi-provisioner`.
fn repository_name(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split('@').next().unwrap_or(last);
    last.split(':').next().unwrap_or(last)
}

/// Move `image` to `registry`, keeping the last path segment with its tag or digest:
/// `registry.k8s.io/sig-storage/csi-provisioner:v6.3.0` with `mirror.example:5000/csi`
/// becomes `mirror.example:5000/csi/csi-provisioner:v6.3.0`.
pub fn rewrite(image: &str, registry: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    format!("{}/{last}", registry.trim_end_matches('/'))
}

/// The image a sidecar runs: an override as written, else the default moved to the
/// registry mirror when one is set.
pub fn sidecar_image(spec: &ImagesSpec, sidecar: Sidecar) -> String {
    if let Some(image) = spec.overrides.get(image_name(sidecar)) {
        return image.clone();
    }
    resolve(spec, default_image(sidecar))
}

/// The driver image: the CR's or the built-in one, moved to the mirror when set.
pub fn driver_image(spec: &ImagesSpec, cr_image: Option<&str>) -> String {
    resolve(spec, cr_image.unwrap_or(DRIVER_IMAGE))
}

/// The probe container's image (the operator's own), moved to the mirror when set: a
/// cluster that mirrors every image cannot pull the operator's from its home registry
/// either.
pub fn probe_image(spec: &ImagesSpec, operator_image: &str) -> String {
    resolve(spec, operator_image)
}

fn resolve(spec: &ImagesSpec, image: &str) -> String {
    match &spec.registry {
        Some(registry) => rewrite(image, registry),
        None => image.to_owned(),
    }
}

/// Every default image of this release (driver first), for `relatedImages`.
pub fn all_default_images() -> Vec<&'static str> {
    std::iter::once(DRIVER_IMAGE)
        .chain(SIDECAR_IMAGES.iter().map(|(_, image)| *image))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sidecar_has_a_default_image() {
        for sidecar in [
            Sidecar::Provisioner,
            Sidecar::Attacher,
            Sidecar::Resizer,
            Sidecar::Snapshotter,
            Sidecar::LivenessProbe,
            Sidecar::NodeDriverRegistrar,
        ] {
            assert!(default_image(sidecar).starts_with("registry.k8s.io/sig-storage/"));
        }
    }

    #[test]
    fn rewrite_keeps_repository_and_tag_or_digest() {
        assert_eq!(
            rewrite(
                "registry.k8s.io/sig-storage/csi-provisioner:v6.3.0",
                "registry.corp.example:5000/mirror/"
            ),
            "registry.corp.example:5000/mirror/csi-provisioner:v6.3.0"
        );
        assert_eq!(
            rewrite("ghcr.io/a/b@sha256:abc", "m.example"),
            "m.example/b@sha256:abc"
        );
        assert_eq!(image_name(Sidecar::LivenessProbe), "livenessprobe");
        assert_eq!(
            image_name(Sidecar::NodeDriverRegistrar),
            "csi-node-driver-registrar"
        );
    }

    #[test]
    fn overrides_win_over_the_registry() {
        let spec = ImagesSpec {
            registry: Some("mirror.example".into()),
            overrides: [("csi-resizer".to_owned(), "other.example/r:v9".to_owned())].into(),
            pull_secrets: vec![],
        };
        assert_eq!(sidecar_image(&spec, Sidecar::Resizer), "other.example/r:v9");
        assert_eq!(
            sidecar_image(&spec, Sidecar::Attacher),
            "mirror.example/csi-attacher:v4.13.0"
        );
        assert!(driver_image(&spec, None).starts_with("mirror.example/plinth-driver:v"));
    }
}
