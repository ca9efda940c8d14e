//! Focused properties of the rendered objects: each test fails if one rule of the
//! deployment breaks, whatever the rest of the output does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use k8s_openapi::api::core::v1::PodSpec;
use plinth_api::capabilities::Sidecar;
use plinth_operator::crd::{CsiDeployment, Features, StorageClassSpec};
use plinth_operator::labels;
use plinth_operator::render::{ManagedKind, ManagedObject, RenderEnv};

fn features(f: Features) -> CsiDeployment {
    let mut cr = fixture("minimal");
    cr.spec.features = f;
    cr
}

fn images(pod: &PodSpec) -> Vec<&str> {
    pod.containers
        .iter()
        .map(|c| c.image.as_deref().unwrap())
        .collect()
}

#[test]
fn snapshots_off_means_no_snapshotter_no_role_no_class() {
    let r = render_ok(
        &features(Features {
            snapshots: Some(false),
            ..Features::default()
        }),
        &full_env(),
    );
    assert!(container(controller_pod(&r), "csi-snapshotter").is_none());
    assert!(cluster_role(&r, "plinth-local-snapshotter").is_none());
    assert!(snapshot_classes(&r).is_empty());
    let provisioner = cluster_role(&r, "plinth-local-provisioner").unwrap();
    assert!(
        provisioner.rules.iter().flatten().all(|rule| !rule
            .api_groups
            .iter()
            .flatten()
            .any(|g| g.contains("snapshot"))),
        "the provisioner reads snapshots only when restoring them is possible"
    );
    let on = render_ok(&fixture("minimal"), &full_env());
    assert!(container(controller_pod(&on), "csi-snapshotter").is_some());
    assert!(cluster_role(&on, "plinth-local-snapshotter").is_some());
    assert_eq!(snapshot_classes(&on).len(), 1);
}

#[test]
fn missing_snapshot_crds_drop_the_snapshotter_but_keep_the_driver_unchanged() {
    let cr = fixture("minimal");
    let without = RenderEnv {
        snapshot_crds_present: false,
        ..full_env()
    };
    let r = render_ok(&cr, &without);
    assert!(container(controller_pod(&r), "csi-snapshotter").is_none());
    assert!(snapshot_classes(&r).is_empty());
    assert!(cluster_role(&r, "plinth-local-snapshotter").is_none());
    // Snapshots were left unset: said as a note, not a fault.
    assert!(r.notes.iter().any(|w| w.contains("VolumeSnapshot CRDs")));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(!r.sidecars.iter().any(|n| n.sidecar == Sidecar::Snapshotter));
    // Required, they are a fault until the CRDs come.
    let mut required = cr.clone();
    required.spec.features.snapshots = Some(true);
    let r_required = render_ok(&required, &without);
    assert!(
        r_required
            .warnings
            .iter()
            .any(|w| w.contains("VolumeSnapshot CRDs"))
    );
    // Installing the CRDs later must not roll every node pod.
    let with = render_ok(&cr, &full_env());
    assert_eq!(node_pod(&r), node_pod(&with));
}

#[test]
fn topology_gate_only_with_accessibility_constraints() {
    let gate = "--feature-gates=Topology=true";
    let on = render_ok(&fixture("minimal"), &full_env());
    assert!(args(container(controller_pod(&on), "csi-provisioner").unwrap()).contains(&gate));
    // Only a third-party driver can do without topology (see
    // `the_builtin_driver_refuses_what_a_cluster_of_pools_cannot_serve`).
    let mut cr = fixture("third-party");
    cr.spec.features.topology = Some(false);
    let off = render_ok(&cr, &full_env());
    let provisioner = container(controller_pod(&off), "csi-provisioner").unwrap();
    assert!(!args(provisioner).iter().any(|a| a.contains("Topology")));
    assert!(!args(provisioner).contains(&"--strict-topology=true"));
}

#[test]
fn capacity_tracking_adds_flags_env_role_and_csidriver_field() {
    let on = render_ok(&fixture("minimal"), &full_env());
    let provisioner = container(controller_pod(&on), "csi-provisioner").unwrap();
    assert!(args(provisioner).contains(&"--enable-capacity=true"));
    assert!(args(provisioner).contains(&"--capacity-ownerref-level=1"));
    let env: Vec<&str> = provisioner
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(env, ["NAMESPACE", "POD_NAME"]);
    assert_eq!(csi_driver(&on).spec.storage_capacity, Some(true));
    assert!(on.objects.iter().any(|o| matches!(o, ManagedObject::Role(role)
        if role.rules.iter().flatten().any(|r| r.resources.iter().flatten().any(|x| x == "csistoragecapacities")))));

    let off = render_ok(
        &features(Features {
            capacity_tracking: Some(false),
            ..Features::default()
        }),
        &full_env(),
    );
    let provisioner = container(controller_pod(&off), "csi-provisioner").unwrap();
    assert!(!args(provisioner).iter().any(|a| a.contains("capacity")));
    assert!(provisioner.env.is_none());
    assert_eq!(csi_driver(&off).spec.storage_capacity, Some(false));
    assert!(!off.objects.iter().any(|o| o.kind() == ManagedKind::Role));
}

#[test]
fn resize_decides_the_resizer_and_volume_expansion() {
    let on = render_ok(&fixture("minimal"), &full_env());
    assert!(container(controller_pod(&on), "csi-resizer").is_some());
    assert!(
        storage_classes(&on)
            .iter()
            .all(|sc| sc.allow_volume_expansion == Some(true))
    );
    let off = render_ok(
        &features(Features {
            resize: Some(false),
            ..Features::default()
        }),
        &full_env(),
    );
    assert!(container(controller_pod(&off), "csi-resizer").is_none());
    assert!(cluster_role(&off, "plinth-local-resizer").is_none());
    assert!(
        storage_classes(&off)
            .iter()
            .all(|sc| sc.allow_volume_expansion == Some(false))
    );
}

/// The node DaemonSet's pod template as bytes: what decides whether it rolls.
fn node_template(r: &plinth_operator::render::Rendered) -> String {
    let ds = daemon_set(r);
    serde_json::to_string(&ds.spec.as_ref().unwrap().template).unwrap()
}

#[test]
fn controller_only_toggles_leave_the_node_pod_template_byte_identical() {
    let base = render_ok(&fixture("minimal"), &full_env());
    for (what, off) in [
        (
            "snapshots",
            Features {
                snapshots: Some(false),
                ..Features::default()
            },
        ),
        (
            "clones",
            Features {
                clones: Some(false),
                ..Features::default()
            },
        ),
        (
            "capacity tracking",
            Features {
                capacity_tracking: Some(false),
                ..Features::default()
            },
        ),
    ] {
        let toggled = render_ok(&features(off), &full_env());
        assert_ne!(
            controller_pod(&toggled),
            controller_pod(&base),
            "{what} changes the controller"
        );
        assert_eq!(
            node_template(&toggled),
            node_template(&base),
            "switching {what} off must not roll the node DaemonSet"
        );
    }
    // The snapshot CRDs going away is controller-only too.
    let no_crds = render_ok(
        &fixture("minimal"),
        &RenderEnv {
            snapshot_crds_present: false,
            ..full_env()
        },
    );
    assert_eq!(node_template(&no_crds), node_template(&base));

    // Resize is served by the node too (NodeExpandVolume, its EXPAND_VOLUME capability):
    // that toggle rolls it, through the driver's arguments only.
    let no_resize = render_ok(
        &features(Features {
            resize: Some(false),
            ..Features::default()
        }),
        &full_env(),
    );
    let no_resize_args = args(container(node_pod(&no_resize), "plinth-driver").unwrap());
    let base_args = args(container(node_pod(&base), "plinth-driver").unwrap());
    assert!(
        no_resize_args.contains(&"--disable=expansion"),
        "{no_resize_args:?}"
    );
    assert!(
        !base_args.iter().any(|a| a.starts_with("--disable")),
        "{base_args:?}"
    );
}

#[test]
fn ephemeral_sets_lifecycle_modes_and_pod_info() {
    let on = render_ok(&fixture("minimal"), &full_env());
    let spec = &csi_driver(&on).spec;
    assert_eq!(
        spec.volume_lifecycle_modes.as_deref().unwrap(),
        ["Persistent", "Ephemeral"]
    );
    assert_eq!(spec.pod_info_on_mount, Some(true));
    let off = render_ok(
        &features(Features {
            ephemeral: Some(false),
            ..Features::default()
        }),
        &full_env(),
    );
    let spec = &csi_driver(&off).spec;
    assert_eq!(
        spec.volume_lifecycle_modes.as_deref().unwrap(),
        ["Persistent"]
    );
    assert_eq!(spec.pod_info_on_mount, Some(false));
}

#[test]
fn third_party_with_publish_gets_the_attacher_and_attach_required() {
    let r = render_ok(&fixture("third-party"), &full_env());
    let pod = controller_pod(&r);
    assert_eq!(
        container_names(pod),
        [
            "csi-driver",
            "csi-provisioner",
            "csi-attacher",
            "csi-resizer",
            "liveness-probe"
        ]
    );
    assert_eq!(csi_driver(&r).spec.attach_required, Some(true));
    assert!(cluster_role(&r, "plinth-acme-attacher").is_some());
    let provisioner = cluster_role(&r, "plinth-acme-provisioner").unwrap();
    assert!(provisioner.rules.iter().flatten().any(|rule| {
        rule.resources
            .iter()
            .flatten()
            .any(|x| x == "volumeattachments")
    }));
    // The third-party driver gets its endpoint and node name the way it declared.
    let driver = container(pod, "csi-driver").unwrap();
    let env: Vec<&str> = driver
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(env, ["CSI_ENDPOINT", "NODE_ID"]);
    assert_eq!(
        driver.image.as_deref(),
        Some("registry.acme.example/csi/acme-block:v2.4.1")
    );
    // No pool for a driver that is not ours.
    assert!(
        !node_pod(&r)
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == "pool")
    );
    // The built-in driver never needs the attacher.
    let builtin = render_ok(&fixture("minimal"), &full_env());
    assert!(container(controller_pod(&builtin), "csi-attacher").is_none());
    assert_eq!(csi_driver(&builtin).spec.attach_required, Some(false));
}

#[test]
fn controller_sidecars_are_exactly_what_the_capabilities_need() {
    for name in fixture_names() {
        let r = render_ok(&fixture(&name), &env_for(&name));
        let expected: Vec<&str> = r
            .sidecars
            .iter()
            .map(|n| n.sidecar.container_name())
            .collect();
        let names: Vec<&str> = controller_containers(&r)
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        if fixture(&name).spec.is_per_node() {
            assert!(names.is_empty() && expected.is_empty(), "{name}: {names:?}");
            continue;
        }
        assert_eq!(&names[1..], expected.as_slice(), "{name}");
    }
}

#[test]
fn every_image_is_rewritten_when_a_registry_is_set() {
    let r = render_ok(&fixture("air-gapped"), &full_env());
    let mirror = "registry.corp.example:5000/mirror/";
    let override_ = "registry.corp.example:5000/approved/csi-provisioner@sha256:";
    for image in images(controller_pod(&r))
        .into_iter()
        .chain(images(node_pod(&r)))
    {
        assert!(
            image.starts_with(mirror) || image.starts_with(override_),
            "{image} not from the mirror"
        );
    }
    assert!(
        images(controller_pod(&r))
            .iter()
            .any(|i| i.starts_with(override_))
    );
    for pod in [controller_pod(&r), node_pod(&r)] {
        let secrets: Vec<&str> = pod
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(secrets, ["mirror-pull"]);
    }
}

#[test]
fn only_the_node_driver_is_privileged_and_only_it_propagates_mounts() {
    for name in fixture_names() {
        let r = render_ok(&fixture(&name), &env_for(&name));
        for c in controller_containers(&r) {
            let sc = c.security_context.as_ref().unwrap();
            assert_ne!(sc.privileged, Some(true), "{name}: controller {}", c.name);
            assert_eq!(
                sc.allow_privilege_escalation,
                Some(false),
                "{name}: {}",
                c.name
            );
        }
        let driver_name = if is_third_party_fixture(&name) {
            "csi-driver"
        } else {
            "plinth-driver"
        };
        for c in &node_pod(&r).containers {
            let privileged = c.security_context.as_ref().and_then(|s| s.privileged) == Some(true);
            let bidirectional = c
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_propagation.as_deref() == Some("Bidirectional"));
            assert_eq!(privileged, c.name == driver_name, "{name}: node {}", c.name);
            assert_eq!(
                bidirectional,
                c.name == driver_name,
                "{name}: node {}",
                c.name
            );
        }
    }
}

#[test]
fn replicas_decide_leader_election_pdb_and_spreading() {
    let one = render_ok(&fixture("minimal"), &full_env());
    for c in &controller_pod(&one).containers {
        assert!(
            !args(c).iter().any(|a| a.starts_with("--leader-election")),
            "{}",
            c.name
        );
    }
    assert!(
        !one.objects
            .iter()
            .any(|o| o.kind() == ManagedKind::PodDisruptionBudget)
    );
    assert!(controller_pod(&one).affinity.is_none());

    let three = render_ok(&fixture("full"), &full_env());
    for c in &controller_pod(&three).containers {
        let elects = args(c).contains(&"--leader-election=true");
        let should = c.name.starts_with("csi-");
        assert_eq!(elects, should, "{}", c.name);
        if should {
            assert!(args(c).contains(&"--leader-election-namespace=storage"));
        }
    }
    let pdb = three
        .objects
        .iter()
        .find_map(|o| match o {
            ManagedObject::PodDisruptionBudget(p) => Some(p),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        pdb.spec.as_ref().unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert!(
        controller_pod(&three)
            .affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .is_some()
    );
    assert!(
        three
            .objects
            .iter()
            .any(|o| o.kind() == ManagedKind::Role && o.name() == "plinth-full-leader-election")
    );
}

#[test]
fn kubelet_dir_moves_every_kubelet_path() {
    let r = render_ok(&fixture("k0s"), &full_env());
    let pod = node_pod(&r);
    let host_paths: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref())
        .map(|h| h.path.as_str())
        .collect();
    for path in host_paths {
        assert!(
            path.starts_with("/var/lib/k0s/kubelet/")
                || path == "/dev"
                || path == "/var/lib/plinth/local.csi.plinth.dev",
            "{path}"
        );
        assert!(!path.starts_with("/var/lib/kubelet"), "{path}");
    }
    // The driver refuses staging and target paths outside the kubelet directory it is given.
    let driver = container(pod, "plinth-driver").unwrap();
    assert!(
        args(driver).contains(&"--kubelet-dir=/var/lib/k0s/kubelet"),
        "{:?}",
        args(driver)
    );
    let registrar = container(pod, "node-driver-registrar").unwrap();
    assert!(args(registrar).contains(
        &"--kubelet-registration-path=/var/lib/k0s/kubelet/plugins/local.csi.plinth.dev/csi.sock"
    ));
    // OnDelete and empty tolerations as asked.
    let ds = daemon_set(&r).spec.as_ref().unwrap();
    assert_eq!(
        ds.update_strategy.as_ref().unwrap().type_.as_deref(),
        Some("OnDelete")
    );
    assert_eq!(pod.tolerations.as_deref(), Some(&[][..]));
    // Default: tolerate everything.
    let default = render_ok(&fixture("minimal"), &full_env());
    let tolerations = node_pod(&default).tolerations.clone().unwrap();
    assert_eq!(tolerations.len(), 1);
    assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
    assert!(tolerations[0].key.is_none());
}

#[test]
fn every_object_is_labelled_and_owned_when_the_cr_has_a_uid() {
    let mut cr = fixture("full");
    cr.metadata.uid = Some("2f1c9b4e-0000-4000-8000-000000000001".into());
    let r = render_ok(&cr, &full_env());
    for o in &r.objects {
        let meta = o.metadata();
        let labels_ = meta.labels.as_ref().unwrap();
        assert_eq!(
            labels_.get(labels::CR_LABEL).map(String::as_str),
            Some("full"),
            "{}",
            o.name()
        );
        assert_eq!(
            labels_.get(labels::MANAGED_BY.0).map(String::as_str),
            Some(labels::MANAGED_BY.1)
        );
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "CsiDeployment");
        assert_eq!(owners[0].api_version, "plinth.dev/v1alpha1");
        assert_eq!(owners[0].uid, "2f1c9b4e-0000-4000-8000-000000000001");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(owners[0].block_owner_deletion, Some(true));
        assert_eq!(
            o.namespace().is_some(),
            o.kind().namespaced(),
            "{}",
            o.name()
        );
        if o.kind().namespaced() {
            assert_eq!(o.namespace(), Some("storage"));
        }
        // The apply body names the kind the reconciler will address it by.
        let json = o.to_apply_json();
        let resource = o.kind().api_resource();
        assert_eq!(json["apiVersion"], resource.api_version.as_str());
        assert_eq!(json["kind"], resource.kind.as_str());
    }
    // Offline (no uid): no owner reference, still labelled.
    let offline = render_ok(&fixture("full"), &full_env());
    assert!(
        offline
            .objects
            .iter()
            .all(|o| o.metadata().owner_references.is_none())
    );
}

#[test]
fn output_is_deterministic_whatever_the_list_order() {
    let cr = fixture("full");
    let mut reversed = cr.clone();
    reversed.spec.storage_classes.as_mut().unwrap().reverse();
    let a = yaml(&render_ok(&cr, &full_env()));
    assert_eq!(a, yaml(&render_ok(&cr, &full_env())));
    assert_eq!(a, yaml(&render_ok(&reversed, &full_env())));
}

#[test]
fn storage_classes_default_to_one_named_after_the_cr() {
    let r = render_ok(&fixture("minimal"), &full_env());
    let classes = storage_classes(&r);
    assert_eq!(classes.len(), 1);
    let sc = classes[0];
    assert_eq!(sc.metadata.name.as_deref(), Some("plinth-local"));
    assert_eq!(sc.provisioner, "local.csi.plinth.dev");
    assert_eq!(
        sc.volume_binding_mode.as_deref(),
        Some("WaitForFirstConsumer")
    );
    assert_eq!(sc.reclaim_policy.as_deref(), Some("Delete"));
    assert!(
        sc.metadata.annotations.is_none(),
        "not the cluster default unless asked"
    );

    let full = render_ok(&fixture("full"), &full_env());
    let default: Vec<_> = storage_classes(&full)
        .into_iter()
        .filter(|sc| {
            sc.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
                .is_some_and(|v| v == "true")
        })
        .map(|sc| sc.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(default, ["plinth-ext4"]);

    let mut none = fixture("minimal");
    none.spec.storage_classes = Some(Vec::<StorageClassSpec>::new());
    assert!(storage_classes(&render_ok(&none, &full_env())).is_empty());
}

#[test]
fn volume_snapshot_classes_carry_driver_and_deletion_policy() {
    let r = render_ok(&fixture("full"), &full_env());
    let classes = snapshot_classes(&r);
    assert_eq!(classes.len(), 1);
    let json = ManagedObject::VolumeSnapshotClass(classes[0].clone()).to_apply_json();
    assert_eq!(json["apiVersion"], "snapshot.storage.k8s.io/v1");
    assert_eq!(json["kind"], "VolumeSnapshotClass");
    assert_eq!(json["driver"], "local.csi.plinth.dev");
    assert_eq!(json["deletionPolicy"], "Retain");
    assert_eq!(
        json["metadata"]["annotations"]["snapshot.storage.kubernetes.io/is-default-class"],
        "true"
    );
    // Exactly the fields of the snapshot.storage.k8s.io/v1 CRD, nothing the apiserver would
    // prune or refuse.
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in keys {
        assert!(
            [
                "apiVersion",
                "kind",
                "metadata",
                "driver",
                "deletionPolicy",
                "parameters"
            ]
            .contains(&key),
            "{key}"
        );
    }
}

#[test]
fn sidecar_rbac_is_within_what_the_operator_may_grant() {
    use plinth_operator::render::rbac::sidecar_rules;
    for name in fixture_names() {
        let r = render_ok(&fixture(&name), &env_for(&name));
        let placed = plinth_operator::render::Plan::new(&fixture(&name), &env_for(&name));
        for need in placed
            .controller_sidecars
            .iter()
            .chain(&placed.node_sidecars)
        {
            let all = sidecar_rules(need.sidecar);
            let role = format!(
                "plinth-{}-{}",
                fixture(&name).metadata.name.unwrap(),
                match need.sidecar {
                    Sidecar::Provisioner => "provisioner",
                    Sidecar::Attacher => "attacher",
                    Sidecar::Resizer => "resizer",
                    Sidecar::Snapshotter => "snapshotter",
                    _ => continue,
                }
            );
            let granted = cluster_role(&r, &role).unwrap();
            for rule in granted.rules.iter().flatten() {
                assert!(all.cluster.contains(rule), "{name}: {role} grants {rule:?}");
            }
        }
        // The node ServiceAccount is bound to the built-in node plugin's role and nothing
        // else: a third-party node plugin and the registrar talk only to kubelet.
        let cr_name = fixture(&name).metadata.name.unwrap();
        let node_sa = format!("plinth-{cr_name}-node");
        let bound: Vec<String> = r
            .objects
            .iter()
            .filter_map(|o| match o {
                ManagedObject::ClusterRoleBinding(b) => {
                    Some((b.role_ref.name.clone(), b.subjects.clone()))
                }
                ManagedObject::RoleBinding(b) => {
                    Some((b.role_ref.name.clone(), b.subjects.clone()))
                }
                _ => None,
            })
            .filter(|(_, subjects)| subjects.iter().flatten().any(|s| s.name == node_sa))
            .map(|(role, _)| role)
            .collect();
        let expected: Vec<String> = if fixture(&name).spec.is_per_node() {
            // Per node, the provisioner and snapshotter run in the node pods.
            ["provisioner", "snapshotter", "provisioner"]
                .map(|s| format!("plinth-{cr_name}-{s}"))
                .to_vec()
        } else if is_third_party_fixture(&name) {
            Vec::new()
        } else {
            vec![format!("plinth-{cr_name}-driver-node")]
        };
        assert_eq!(bound, expected, "{name}");
    }
}

/// Every grant of a ClusterRole, as `verb resource` strings.
fn grants_of(r: &plinth_operator::render::Rendered, role: &str) -> Vec<String> {
    let mut out: Vec<String> = cluster_role(r, role)
        .unwrap_or_else(|| panic!("no ClusterRole {role}"))
        .rules
        .iter()
        .flatten()
        .flat_map(|rule| {
            assert_eq!(
                rule.api_groups.as_deref(),
                Some(&["plinth.dev".to_owned()][..])
            );
            assert!(rule.resource_names.is_none());
            rule.resources
                .iter()
                .flatten()
                .flat_map(|res| rule.verbs.iter().map(move |verb| format!("{verb} {res}")))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn builtin_driver_plugins_get_least_privilege_on_the_driver_resources() {
    let r = render_ok(&fixture("minimal"), &full_env());
    let expect = |list: &[&str]| {
        let mut v: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(
        grants_of(&r, "plinth-local-driver-controller"),
        expect(&[
            "get poolvolumes",
            "list poolvolumes",
            "watch poolvolumes",
            "create poolvolumes",
            "patch poolvolumes",
            "delete poolvolumes",
            "get poolsnapshots",
            "list poolsnapshots",
            "watch poolsnapshots",
            "create poolsnapshots",
            "patch poolsnapshots",
            "delete poolsnapshots",
            "get poolnodes",
            "list poolnodes",
            "watch poolnodes",
        ])
    );
    // The node plugin never creates or deletes work, and never writes another kind's
    // status: it patches finalizers and status, and applies its own PoolNode.
    assert_eq!(
        grants_of(&r, "plinth-local-driver-node"),
        expect(&[
            "get poolvolumes",
            "list poolvolumes",
            "watch poolvolumes",
            "patch poolvolumes",
            "get poolsnapshots",
            "list poolsnapshots",
            "watch poolsnapshots",
            "patch poolsnapshots",
            "patch poolvolumes/status",
            "patch poolsnapshots/status",
            "get poolnodes",
            "create poolnodes",
            "patch poolnodes",
            "patch poolnodes/status",
        ])
    );
    let binding = |name: &str| {
        r.objects
            .iter()
            .find_map(|o| match o {
                ManagedObject::ClusterRoleBinding(b)
                    if b.metadata.name.as_deref() == Some(name) =>
                {
                    Some(b)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no binding {name}"))
    };
    for (role, sa) in [
        ("plinth-local-driver-controller", "plinth-local-controller"),
        ("plinth-local-driver-node", "plinth-local-node"),
    ] {
        let b = binding(role);
        assert_eq!(b.role_ref.kind, "ClusterRole");
        assert_eq!(b.role_ref.name, role);
        let subjects = b.subjects.as_deref().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, sa);
        assert_eq!(subjects[0].namespace.as_deref(), Some("plinth-system"));
    }
    // A third-party driver brings its own RBAC story: no driver roles.
    let third = render_ok(&fixture("third-party"), &full_env());
    assert!(cluster_role(&third, "plinth-acme-driver-controller").is_none());
    assert!(cluster_role(&third, "plinth-acme-driver-node").is_none());
}

#[test]
fn builtin_controller_runs_without_a_pool_and_answers_before_the_sidecars_give_up() {
    for (name, handoff) in [("minimal", "30"), ("full", "60")] {
        let r = render_ok(&fixture(name), &full_env());
        let pod = controller_pod(&r);
        let driver = container(pod, "plinth-driver").unwrap();
        let a = args(driver);
        assert!(!a.iter().any(|x| x.starts_with("--pool")), "{name}: {a:?}");
        assert!(
            a.contains(&format!("--handoff-timeout-seconds={handoff}").as_str()),
            "{name}: {a:?}"
        );
        let volumes: Vec<&str> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["socket-dir"], "{name}");
        let mounts: Vec<&str> = driver
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/csi"], "{name}");
    }
    // A third-party controller gets exactly its own arguments.
    let third = render_ok(&fixture("third-party"), &full_env());
    let driver = container(controller_pod(&third), "csi-driver").unwrap();
    assert_eq!(
        args(driver),
        ["--mode=controller", "--endpoint=$(CSI_ENDPOINT)"]
    );
}

fn service_account<'a>(
    r: &'a plinth_operator::render::Rendered,
    name: &str,
) -> &'a k8s_openapi::api::core::v1::ServiceAccount {
    r.objects
        .iter()
        .find_map(|o| match o {
            ManagedObject::ServiceAccount(sa) if o.name() == name => Some(sa),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no ServiceAccount {name}"))
}

#[test]
fn only_the_builtin_node_driver_container_carries_an_api_token() {
    const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let r = render_ok(&fixture("minimal"), &full_env());
    let node_sa = service_account(&r, "plinth-local-node");
    assert_eq!(node_sa.automount_service_account_token, Some(false));
    let pod = node_pod(&r);
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "kube-api-access")
        .expect("a projected token volume");
    let sources = volume
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_deref()
        .unwrap();
    let token = sources
        .iter()
        .find_map(|s| s.service_account_token.as_ref())
        .unwrap();
    assert_eq!(token.path, "token");
    assert!(token.audience.is_none(), "the apiserver's own audience");
    assert!(sources.iter().any(|s| {
        s.config_map
            .as_ref()
            .is_some_and(|c| c.name == "kube-root-ca.crt")
    }));
    assert!(
        sources.iter().any(|s| s.downward_api.is_some()),
        "namespace file"
    );
    for c in &pod.containers {
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "kube-api-access");
        if c.name == "plinth-driver" {
            let mount = mount.expect("the driver mounts the token");
            assert_eq!(mount.mount_path, TOKEN_DIR);
            assert_eq!(mount.read_only, Some(true));
        } else {
            assert!(mount.is_none(), "{} gets no token", c.name);
        }
    }
    // The controller pod keeps the ServiceAccount's own token (sidecars and driver alike).
    let controller_sa = service_account(&r, "plinth-local-controller");
    assert_ne!(controller_sa.automount_service_account_token, Some(false));
    // A third-party node plugin gets none.
    let third = render_ok(&fixture("third-party"), &full_env());
    assert!(
        !node_pod(&third)
            .volumes
            .iter()
            .flatten()
            .any(|v| v.projected.is_some())
    );
}

#[test]
fn features_the_release_does_not_serve_are_left_out_not_crash_looped() {
    let served = plinth_api::served_features();
    let env = RenderEnv {
        builtin_features: served,
        ..full_env()
    };
    let r = render_ok(&fixture("minimal"), &env);
    let names = container_names(controller_pod(&r));
    assert_eq!(names.contains(&"csi-snapshotter"), served.snapshots);
    assert_eq!(names.contains(&"csi-resizer"), served.expansion);
}

#[test]
fn switching_off_a_declared_third_party_capability_drops_its_sidecar() {
    let mut cr = fixture("third-party");
    cr.spec.features.resize = Some(false);
    let r = render_ok(&cr, &full_env());
    assert!(container(controller_pod(&r), "csi-resizer").is_none());
    assert!(cluster_role(&r, "plinth-acme-resizer").is_none());
    assert!(
        storage_classes(&r)
            .iter()
            .all(|sc| sc.allow_volume_expansion == Some(false))
    );
}

#[test]
fn group_snapshots_gate_needs_the_group_crds() {
    let cr = group_snapshot_driver();
    let gate = "--feature-gates=CSIVolumeGroupSnapshot=true";
    let with = render_ok(&cr, &full_env());
    let snapshotter = container(controller_pod(&with), "csi-snapshotter").unwrap();
    assert!(args(snapshotter).contains(&gate));
    let role = cluster_role(&with, "plinth-acme-snapshotter").unwrap();
    assert!(role.rules.iter().flatten().any(|r| {
        r.api_groups
            .iter()
            .flatten()
            .any(|g| g == "groupsnapshot.storage.k8s.io")
    }));

    let without = RenderEnv {
        group_snapshot_crds_present: false,
        ..full_env()
    };
    let r = render_ok(&cr, &without);
    let snapshotter = container(controller_pod(&r), "csi-snapshotter").unwrap();
    assert!(!args(snapshotter).contains(&gate));
    let said: Vec<&String> = r.warnings.iter().chain(&r.notes).collect();
    assert!(
        said.iter().any(|w| w.contains("VolumeGroupSnapshot")),
        "{said:?}"
    );
    // The built-in driver never runs the gate: a cluster of pools has no group snapshots.
    let builtin = render_ok(&fixture("minimal"), &full_env());
    let snapshotter = container(controller_pod(&builtin), "csi-snapshotter").unwrap();
    assert!(!args(snapshotter).contains(&gate));
    let role = cluster_role(&builtin, "plinth-local-snapshotter").unwrap();
    assert!(!role.rules.iter().flatten().any(|r| {
        r.api_groups
            .iter()
            .flatten()
            .any(|g| g == "groupsnapshot.storage.k8s.io")
    }));
}

/// Every sidecar is explained, deployed or left out, in words a user reads in
/// `kubectl describe`.
#[test]
fn every_sidecar_decision_is_explained() {
    let without_crds = RenderEnv {
        snapshot_crds_present: false,
        ..full_env()
    };
    let mut cr = fixture("minimal");
    cr.spec.features.resize = Some(false);
    let r = render_ok(&cr, &without_crds);
    let line = |pod: &str, name: &str| {
        r.sidecar_decisions
            .iter()
            .find(|d| d.pod == pod && d.name == name)
            .unwrap_or_else(|| panic!("no line for {pod}/{name}: {:#?}", r.sidecar_decisions))
            .clone()
    };
    let provisioner = line("controller", "csi-provisioner");
    assert!(provisioner.deployed);
    assert_eq!(
        provisioner.reason,
        "the driver advertises CREATE_DELETE_VOLUME"
    );
    let attacher = line("controller", "csi-attacher");
    assert!(!attacher.deployed);
    assert_eq!(
        attacher.reason,
        "the driver does not advertise PUBLISH_UNPUBLISH_VOLUME"
    );
    let resizer = line("controller", "csi-resizer");
    assert!(!resizer.deployed);
    assert_eq!(resizer.reason, "switched off: features.resize is false");
    let snapshotter = line("controller", "csi-snapshotter");
    assert!(!snapshotter.deployed);
    assert!(
        snapshotter.reason.contains("VolumeSnapshot CRDs")
            && snapshotter.reason.contains("not installed"),
        "{}",
        snapshotter.reason
    );
    assert!(line("node", "node-driver-registrar").deployed);
    assert!(line("node", "liveness-probe").deployed);
    assert!(line("controller", "liveness-probe").deployed);
    // The lines agree with the containers actually rendered.
    let containers: Vec<String> = controller_pod(&r)
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect();
    for d in r.sidecar_decisions.iter().filter(|d| d.pod == "controller") {
        assert_eq!(
            containers.contains(&d.name),
            d.deployed,
            "{d:?} vs {containers:?}"
        );
    }
}

/// A third-party fixture's `thirdParty` block, to edit.
fn third_party(cr: &mut CsiDeployment) -> &mut plinth_operator::crd::ThirdPartyDriver {
    cr.spec.driver.third_party.as_mut().unwrap()
}

fn env_names(c: &k8s_openapi::api::core::v1::Container) -> Vec<&str> {
    c.env.iter().flatten().map(|e| e.name.as_str()).collect()
}

fn mount_paths(c: &k8s_openapi::api::core::v1::Container) -> Vec<&str> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect()
}

#[test]
fn per_node_provisioning_has_no_controller_and_provisions_from_every_node_pod() {
    let r = render_ok(&fixture("hostpath"), &env_for("hostpath"));
    assert!(
        !r.objects.iter().any(|o| matches!(
            o.kind(),
            ManagedKind::StatefulSet | ManagedKind::PodDisruptionBudget
        )),
        "no controller StatefulSet or PDB per node"
    );
    assert!(
        !r.objects
            .iter()
            .any(|o| o.kind() == ManagedKind::ServiceAccount
                && o.name() == "plinth-hostpath-controller"),
        "no controller ServiceAccount"
    );
    let node = node_pod(&r);
    assert_eq!(
        container_names(node),
        [
            "csi-driver",
            "node-driver-registrar",
            "liveness-probe",
            "csi-provisioner",
            "csi-snapshotter"
        ]
    );
    let provisioner = container(node, "csi-provisioner").unwrap();
    assert_eq!(
        args(provisioner),
        [
            "--csi-address=/csi/csi.sock",
            "--v=2",
            "--timeout=60s",
            "--extra-create-metadata=true",
            "--default-fstype=ext4",
            "--feature-gates=Topology=true",
            "--strict-topology=true",
            "--node-deployment=true",
            "--immediate-topology=false",
            "--enable-capacity=true",
            "--capacity-ownerref-level=0",
            "--worker-threads=5",
        ]
    );
    assert_eq!(
        env_names(provisioner),
        ["NODE_NAME", "NAMESPACE", "POD_NAME"]
    );
    let api = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(mount_paths(provisioner), ["/csi", api]);
    let snapshotter = container(node, "csi-snapshotter").unwrap();
    assert_eq!(
        args(snapshotter),
        [
            "--csi-address=/csi/csi.sock",
            "--v=2",
            "--timeout=60s",
            "--extra-create-metadata=true",
            "--node-deployment=true",
        ]
    );
    assert_eq!(env_names(snapshotter), ["NODE_NAME"]);
    assert_eq!(mount_paths(snapshotter), ["/csi", api]);
    // The registrar and livenessprobe stay without credentials.
    for name in ["node-driver-registrar", "liveness-probe", "csi-driver"] {
        assert!(
            !mount_paths(container(node, name).unwrap()).contains(&api),
            "{name} has a token"
        );
    }
    // Capacity objects are owned by the pod: the provisioner reads its pod, no StatefulSet.
    let role = r
        .objects
        .iter()
        .find_map(|o| match o {
            ManagedObject::Role(role) if o.name() == "plinth-hostpath-provisioner" => Some(role),
            _ => None,
        })
        .unwrap();
    let resources: Vec<&str> = role
        .rules
        .iter()
        .flatten()
        .flat_map(|rule| rule.resources.iter().flatten().map(String::as_str))
        .collect();
    assert_eq!(resources, ["csistoragecapacities", "pods"]);
    // No resizer per node, so no expansion on the class.
    assert_eq!(storage_classes(&r)[0].allow_volume_expansion, Some(false));
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("csi-resizer is left out")),
        "{:?}",
        r.notes
    );
}

#[test]
fn sidecar_decisions_name_the_pod_each_sidecar_runs_in() {
    let r = render_ok(&fixture("hostpath"), &env_for("hostpath"));
    let decision = |name: &str, pod: &str| {
        r.sidecar_decisions
            .iter()
            .find(|d| d.name == name && d.pod == pod)
            .unwrap_or_else(|| panic!("no decision for {pod}/{name}: {:?}", r.sidecar_decisions))
    };
    let provisioner = decision("csi-provisioner", "node");
    assert!(provisioner.deployed);
    assert!(
        provisioner.reason.contains("--node-deployment"),
        "{}",
        provisioner.reason
    );
    let snapshotter = decision("csi-snapshotter", "node");
    assert!(snapshotter.deployed);
    assert!(
        snapshotter
            .reason
            .contains("--enable-distributed-snapshotting"),
        "{}",
        snapshotter.reason
    );
    let resizer = decision("csi-resizer", "node");
    assert!(!resizer.deployed);
    assert!(
        resizer.reason.contains("no per-node mode"),
        "{}",
        resizer.reason
    );
    let controller_probe = decision("liveness-probe", "controller");
    assert!(!controller_probe.deployed);
    assert!(decision("liveness-probe", "node").deployed);
    // Central mode keeps them in the controller pod.
    let central = render_ok(&fixture("third-party"), &full_env());
    assert!(
        central
            .sidecar_decisions
            .iter()
            .any(|d| d.name == "csi-provisioner" && d.pod == "controller" && d.deployed)
    );
}

#[test]
fn driver_pod_extras_reach_the_driver_container_of_their_pod_only() {
    use k8s_openapi::api::core::v1::{EnvVar, VolumeMount};
    let mut cr = fixture("third-party");
    let volume = plinth_operator::crd::PodVolume;
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    };
    let env = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    };
    {
        let third = third_party(&mut cr);
        third.controller_pod.env = vec![env("API_URL", "https://storage.example")];
        third.controller_pod.env_from = vec![
            serde_json::from_value(
                serde_json::json!({ "secretRef": { "name": "acme-credentials" } }),
            )
            .unwrap(),
        ];
        third.controller_pod.volumes = vec![volume(serde_json::json!({
            "name": "config",
            "configMap": { "name": "acme-config" },
        }))];
        third.controller_pod.volume_mounts = vec![mount("config", "/etc/acme")];
        third.node_pod.volumes = vec![volume(serde_json::json!({
            "name": "data",
            "hostPath": { "path": "/var/lib/acme", "type": "DirectoryOrCreate" },
        }))];
        third.node_pod.volume_mounts = vec![mount("data", "/var/lib/acme")];
        third.node_pod.host_network = true;
        third.sidecar_args.insert(
            "csi-attacher".to_owned(),
            vec!["--worker-threads=20".to_owned()],
        );
        third.sidecar_args.insert(
            "liveness-probe".to_owned(),
            vec!["--probe-timeout=3s".to_owned()],
        );
    }
    let r = render_ok(&cr, &full_env());
    let controller = controller_pod(&r);
    let driver = container(controller, "csi-driver").unwrap();
    assert_eq!(env_names(driver), ["CSI_ENDPOINT", "NODE_ID", "API_URL"]);
    assert_eq!(
        driver.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        "acme-credentials"
    );
    assert_eq!(mount_paths(driver), ["/csi", "/etc/acme"]);
    let volume_names: Vec<&str> = controller
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volume_names, ["socket-dir", "config"]);
    assert_eq!(controller.host_network, None);
    let node = node_pod(&r);
    let node_driver = container(node, "csi-driver").unwrap();
    assert_eq!(env_names(node_driver), ["CSI_ENDPOINT", "NODE_ID"]);
    assert_eq!(node_driver.env_from, None);
    assert_eq!(
        mount_paths(node_driver),
        [
            "/csi",
            "/var/lib/kubelet/pods",
            "/var/lib/kubelet/plugins/kubernetes.io/csi",
            "/dev",
            "/var/lib/acme"
        ]
    );
    let data = node
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "data")
        .unwrap();
    assert_eq!(data.host_path.as_ref().unwrap().path, "/var/lib/acme");
    assert_eq!(node.host_network, Some(true));
    assert_eq!(node.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    // Sidecar arguments come after Plinth's, in every pod carrying the sidecar.
    let attacher = container(controller, "csi-attacher").unwrap();
    assert_eq!(args(attacher).last(), Some(&"--worker-threads=20"));
    for pod in [controller, node] {
        assert_eq!(
            args(container(pod, "liveness-probe").unwrap()),
            [
                "--csi-address=/csi/csi.sock",
                "--v=2",
                "--health-port=9808",
                "--probe-timeout=3s"
            ]
        );
    }
    assert!(
        !args(container(controller, "csi-provisioner").unwrap()).contains(&"--worker-threads=20")
    );
}

fn binding_subjects(
    r: &plinth_operator::render::Rendered,
) -> Vec<(String, Option<String>, String, String)> {
    r.objects
        .iter()
        .filter_map(|o| {
            let (kind, role_ref, subjects) = match o {
                ManagedObject::RoleBinding(b) => ("RoleBinding", &b.role_ref, &b.subjects),
                ManagedObject::ClusterRoleBinding(b) => {
                    ("ClusterRoleBinding", &b.role_ref, &b.subjects)
                }
                _ => return None,
            };
            (role_ref.name == "plinth-operation-secret-reader").then(|| {
                (
                    format!("{kind}/{}", o.name()),
                    o.namespace().map(str::to_owned),
                    role_ref.kind.clone(),
                    subjects
                        .iter()
                        .flatten()
                        .map(|s| s.name.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                )
            })
        })
        .collect()
}

fn with_parameters(mut cr: CsiDeployment, pairs: &[(&str, &str)]) -> CsiDeployment {
    let classes = cr.spec.storage_classes.as_mut().unwrap();
    classes[0].parameters = pairs
        .iter()
        .map(|(k, v)| (format!("csi.storage.k8s.io/{k}"), (*v).to_owned()))
        .collect();
    cr
}

#[test]
fn operation_secrets_are_readable_as_narrowly_as_the_parameters_allow() {
    // Literal namespaces: a RoleBinding in each, for the controller's ServiceAccount.
    let literal = with_parameters(
        fixture("third-party"),
        &[
            ("provisioner-secret-name", "acme-provision"),
            ("provisioner-secret-namespace", "acme-secrets"),
            ("controller-publish-secret-name", "acme-attach"),
            ("controller-publish-secret-namespace", "acme-attach-ns"),
            ("node-stage-secret-name", "${pvc.name}"),
            ("node-stage-secret-namespace", "${pvc.namespace}"),
        ],
    );
    let r = render_ok(&literal, &full_env());
    let reader = |ns: &str| {
        (
            "RoleBinding/plinth-acme-operation-secrets".to_owned(),
            Some(ns.to_owned()),
            "ClusterRole".to_owned(),
            "plinth-acme-controller".to_owned(),
        )
    };
    assert_eq!(
        binding_subjects(&r),
        [reader("acme-attach-ns"), reader("acme-secrets")]
    );
    // A templated namespace can be any: one ClusterRoleBinding instead.
    let templated = with_parameters(
        fixture("third-party"),
        &[
            ("provisioner-secret-name", "acme-provision"),
            ("provisioner-secret-namespace", "acme-secrets"),
            ("controller-expand-secret-name", "${pvc.name}"),
            ("controller-expand-secret-namespace", "${pvc.namespace}"),
        ],
    );
    assert_eq!(
        binding_subjects(&render_ok(&templated, &full_env())),
        [(
            "ClusterRoleBinding/plinth-acme-operation-secrets".to_owned(),
            None,
            "ClusterRole".to_owned(),
            "plinth-acme-controller".to_owned()
        )]
    );
    // kubelet reads node-stage, node-publish and node-expand secrets: nothing to grant.
    let kubelet_only = with_parameters(
        fixture("third-party"),
        &[
            ("node-stage-secret-name", "s"),
            ("node-stage-secret-namespace", "acme-secrets"),
            ("node-publish-secret-name", "s"),
            ("node-publish-secret-namespace", "acme-secrets"),
            ("node-expand-secret-name", "s"),
            ("node-expand-secret-namespace", "acme-secrets"),
        ],
    );
    assert!(binding_subjects(&render_ok(&kubelet_only, &full_env())).is_empty());
    // A secret of a sidecar that is not deployed grants nothing (resize switched off).
    let mut no_resizer = with_parameters(
        fixture("third-party"),
        &[
            ("controller-expand-secret-name", "s"),
            ("controller-expand-secret-namespace", "acme-secrets"),
        ],
    );
    no_resizer.spec.features.resize = Some(false);
    assert!(binding_subjects(&render_ok(&no_resizer, &full_env())).is_empty());
    // Per node, the node pods' ServiceAccount reads them; snapshot classes count too.
    let mut per_node = with_parameters(
        fixture("hostpath"),
        &[
            ("provisioner-secret-name", "hp"),
            ("provisioner-secret-namespace", "hp-secrets"),
        ],
    );
    per_node.spec.volume_snapshot_classes = Some(vec![
        serde_json::from_value(serde_json::json!({
            "name": "hp-snap",
            "parameters": {
                "csi.storage.k8s.io/snapshotter-secret-name": "snap",
                "csi.storage.k8s.io/snapshotter-secret-namespace": "snap-secrets",
            },
        }))
        .unwrap(),
    ]);
    let r = render_ok(&per_node, &env_for("hostpath"));
    let subjects: Vec<(Option<String>, String)> = binding_subjects(&r)
        .into_iter()
        .map(|(_, ns, _, subject)| (ns, subject))
        .collect();
    assert_eq!(
        subjects,
        [
            (
                Some("hp-secrets".to_owned()),
                "plinth-hostpath-node".to_owned()
            ),
            (
                Some("snap-secrets".to_owned()),
                "plinth-hostpath-node".to_owned()
            ),
        ]
    );
}

#[test]
fn encrypted_classes_carry_the_node_stage_secret_and_say_so() {
    let r = render_ok(&fixture("encrypted"), &full_env());
    let classes = storage_classes(&r);
    let encrypted = classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("plinth-encrypted"))
        .unwrap();
    let parameters: Vec<(&str, &str)> = encrypted
        .parameters
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        parameters,
        [
            ("csi.storage.k8s.io/node-stage-secret-name", "${pvc.name}"),
            (
                "csi.storage.k8s.io/node-stage-secret-namespace",
                "${pvc.namespace}"
            ),
            ("encryption", "fscrypt"),
        ]
    );
    assert_eq!(
        encrypted
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("plinth.dev/encryption")
            .map(String::as_str),
        Some("fscrypt")
    );
    assert_eq!(
        encrypted
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("plinth.dev/encryption-secret")
            .map(String::as_str),
        Some("${pvc.namespace}/${pvc.name}")
    );
    let plain = classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("plinth-plain"))
        .unwrap();
    assert_eq!(plain.parameters, None);
    assert!(
        !plain
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key("plinth.dev/encryption")
    );
    assert_eq!(r.encrypted_classes, ["plinth-encrypted"]);
    // kubelet reads node-stage secrets: no sidecar gets Secret access.
    assert!(binding_subjects(&r).is_empty());
    // Other Secret locations are the user's choice.
    let mut custom = fixture("encrypted");
    custom.spec.storage_classes.as_mut().unwrap()[0].encryption = Some(
        serde_json::from_value(
            serde_json::json!({ "secretName": "volume-keys", "secretNamespace": "keys" }),
        )
        .unwrap(),
    );
    let r = render_ok(&custom, &full_env());
    let class = storage_classes(&r)
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some("plinth-encrypted"))
        .unwrap();
    let parameters = class.parameters.as_ref().unwrap();
    assert_eq!(
        parameters["csi.storage.k8s.io/node-stage-secret-name"],
        "volume-keys"
    );
    assert_eq!(
        parameters["csi.storage.k8s.io/node-stage-secret-namespace"],
        "keys"
    );
}

/// A mirrored cluster pulls the probe's image (the operator's own) from the mirror too.
#[test]
fn the_probe_job_pulls_the_operator_image_from_the_mirror() {
    use plinth_operator::render::probe;
    let mut cr = fixture("third-party");
    cr.spec.images.registry = Some("mirror.example:5000/csi".into());
    let setup = probe::setup(&cr, &full_env());
    let job = probe::job(&cr, &setup, "ghcr.io/plinth-dev/plinth-operator:v0.1.0");
    let pod = job.spec.unwrap().template.spec.unwrap();
    let images: Vec<String> = pod
        .init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .map(|c| c.image.clone().unwrap())
        .collect();
    assert!(
        images.contains(&"mirror.example:5000/csi/plinth-operator:v0.1.0".to_owned()),
        "{images:?}"
    );
    assert!(
        images
            .iter()
            .all(|i| i.starts_with("mirror.example:5000/csi/")),
        "{images:?}"
    );
}
