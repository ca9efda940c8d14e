//! Set algebra on RBAC rules: flatten rules into single grants, merge them back into a
//! short canonical list, and tell which grants a set of rules does not cover.
//!
//! The operator creates Roles for the drivers it deploys, and the apiserver refuses to let
//! it grant what it does not hold itself (RBAC escalation prevention). Its ClusterRole is
//! therefore computed as a union, and [`missing`] is how tests prove the union holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::rbac::v1::PolicyRule;

/// One verb on one resource (optionally one named object) of one API group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub group: String,
    pub resource: String,
    /// `None`: every object of the resource.
    pub name: Option<String>,
    pub verb: String,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        if let Some(name) = &self.name {
            write!(f, " (name {name})")?;
        }
        Ok(())
    }
}

/// Every single grant a rule makes. Non-resource URLs are not part of this model: no
/// role the operator holds or renders uses them.
pub fn grants(rule: &PolicyRule) -> Vec<Grant> {
    let groups = rule.api_groups.as_deref().unwrap_or_default();
    let resources = rule.resources.as_deref().unwrap_or_default();
    let names: Vec<Option<String>> = match rule.resource_names.as_deref() {
        Some(names) if !names.is_empty() => names.iter().cloned().map(Some).collect(),
        _ => vec![None],
    };
    let mut out = Vec::new();
    for group in groups {
        for resource in resources {
            for name in &names {
                for verb in &rule.verbs {
                    out.push(Grant {
                        group: group.clone(),
                        resource: resource.clone(),
                        name: name.clone(),
                        verb: verb.clone(),
                    });
                }
            }
        }
    }
    out
}

fn matches(held: &str, wanted: &str) -> bool {
    held == "*" || held == wanted
}

/// Whether `rule` grants `grant` (wildcards and unrestricted names included).
fn covers(rule: &PolicyRule, grant: &Grant) -> bool {
    let any = |list: Option<&Vec<String>>, wanted: &str| {
        list.is_some_and(|l| l.iter().any(|h| matches(h, wanted)))
    };
    let name_ok = match (rule.resource_names.as_deref(), &grant.name) {
        (None | Some([]), _) => true,
        (Some(names), Some(wanted)) => names.iter().any(|n| n == wanted),
        (Some(_), None) => false,
    };
    any(rule.api_groups.as_ref(), &grant.group)
        && any(rule.resources.as_ref(), &grant.resource)
        && rule.verbs.iter().any(|v| matches(v, &grant.verb))
        && name_ok
}

/// The grants of `wanted` that no rule of `held` covers.
pub fn missing(held: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<Grant> {
    let mut out: BTreeSet<Grant> = BTreeSet::new();
    for grant in wanted.iter().flat_map(grants) {
        if !held.iter().any(|rule| covers(rule, &grant)) {
            out.insert(grant);
        }
    }
    out.into_iter().collect()
}

/// A short, deterministic list of rules granting exactly the union of `rules`: grants of
/// one group and resource set with the same verbs share a rule; named grants stay apart.
pub fn merge(rules: impl IntoIterator<Item = PolicyRule>) -> Vec<PolicyRule> {
    // (group, resource, names) -> verbs
    let mut verbs_of: BTreeMap<(String, String, BTreeSet<String>), BTreeSet<String>> =
        BTreeMap::new();
    let mut unnamed: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut named: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for grant in rules.into_iter().flat_map(|r| grants(&r)) {
        match grant.name {
            None => {
                unnamed.insert((grant.group, grant.resource, grant.verb));
            }
            Some(name) => {
                named
                    .entry((grant.group, grant.resource, grant.verb))
                    .or_default()
                    .insert(name);
            }
        }
    }
    for (group, resource, verb) in &unnamed {
        verbs_of
            .entry((group.clone(), resource.clone(), BTreeSet::new()))
            .or_default()
            .insert(verb.clone());
    }
    for ((group, resource, verb), names) in named {
        // A named grant is redundant next to the same unnamed one.
        if unnamed.contains(&(group.clone(), resource.clone(), verb.clone())) {
            continue;
        }
        verbs_of
            .entry((group, resource, names))
            .or_default()
            .insert(verb);
    }
    // (group, names, verbs) -> resources
    let mut rules: BTreeMap<(String, BTreeSet<String>, BTreeSet<String>), BTreeSet<String>> =
        BTreeMap::new();
    for ((group, resource, names), verbs) in verbs_of {
        rules
            .entry((group, names, verbs))
            .or_default()
            .insert(resource);
    }
    rules
        .into_iter()
        .map(|((group, names, verbs), resources)| PolicyRule {
            api_groups: Some(vec![group]),
            resources: Some(resources.into_iter().collect()),
            resource_names: (!names.is_empty()).then(|| names.into_iter().collect()),
            verbs: verbs.into_iter().collect(),
            ..PolicyRule::default()
        })
        .collect()
}

/// A rule from string slices, for the operator's own hand-listed needs.
pub fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let own = |s: &[&str]| s.iter().map(|&x| x.to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(own(groups)),
        resources: Some(own(resources)),
        verbs: own(verbs),
        ..PolicyRule::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_exactly_the_union() {
        let input = vec![
            rule(&[""], &["events"], &["create", "patch"]),
            rule(&[""], &["events"], &["patch", "list"]),
            rule(
                &["storage.k8s.io"],
                &["csinodes"],
                &["get", "list", "watch"],
            ),
            rule(
                &["storage.k8s.io"],
                &["csidrivers"],
                &["get", "list", "watch"],
            ),
            PolicyRule {
                resource_names: Some(vec!["lease-a".to_owned()]),
                ..rule(&["coordination.k8s.io"], &["leases"], &["get"])
            },
        ];
        let merged = merge(input.clone());
        // Equal grant sets, both ways.
        assert!(missing(&merged, &input).is_empty());
        assert!(missing(&input, &merged).is_empty());
        // Resources with equal verbs share one rule.
        assert!(merged.iter().any(|r| r.resources.as_deref()
            == Some(&["csidrivers".to_owned(), "csinodes".to_owned()][..])));
        assert_eq!(merged, merge(merged.clone()), "merge is idempotent");
    }

    #[test]
    fn named_grants_do_not_cover_every_object() {
        let held = vec![PolicyRule {
            resource_names: Some(vec!["mine".to_owned()]),
            ..rule(&["coordination.k8s.io"], &["leases"], &["get", "patch"])
        }];
        let wanted = vec![rule(&["coordination.k8s.io"], &["leases"], &["get"])];
        assert_eq!(
            missing(&held, &wanted)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["get coordination.k8s.io/leases"]
        );
        // The other way round an unnamed `get` covers the named `get`, not the `patch`.
        assert_eq!(
            missing(&wanted, &held)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["patch coordination.k8s.io/leases (name mine)"]
        );
    }

    #[test]
    fn wildcards_cover_and_missing_verbs_are_reported() {
        let held = vec![rule(&["apps"], &["*"], &["get", "list"])];
        let wanted = vec![rule(&["apps"], &["statefulsets"], &["get", "delete"])];
        let gaps = missing(&held, &wanted);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].verb, "delete");
    }
}
