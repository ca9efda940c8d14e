//! The admission policy that makes "a node plugin writes only its own node's objects"
//! exact, where RBAC cannot (see [`super::rbac::driver_rules`]).
//!
//! A ValidatingAdmissionPolicy (CEL, in the apiserver: nothing to run) matches the built-in
//! node plugin's writes to the driver's resources and admits them only for objects whose
//! `spec.node` (old and new) and `plinth.dev/node` label are the node the caller's token
//! was issued on, and a PoolNode only under that node's own name. Pod-bound ServiceAccount tokens
//! name their pod's node in `authentication.kubernetes.io/node-name` (Kubernetes 1.32 and
//! later, the operator's minimum being 1.34), which cannot be forged from inside the pod.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use kube::Resource;
use plinth_api::cluster::crd::{GROUP, NODE_LABEL, PoolNode, PoolSnapshot, PoolVolume};

use super::{ManagedObject, names};
use crate::crd::CsiDeployment;
use crate::labels;

/// The user-info extra key of pod-bound tokens that names the pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Every resource the node plugin writes, with the status subresources it writes.
fn written_resources() -> Vec<String> {
    [
        PoolVolume::plural(&()),
        PoolSnapshot::plural(&()),
        PoolNode::plural(&()),
    ]
    .into_iter()
    .flat_map(|plural| [plural.to_string(), format!("{plural}/status")])
    .collect()
}

fn validation(
    expression: String,
    message: Option<String>,
    message_expression: Option<String>,
) -> Validation {
    Validation {
        expression,
        message,
        message_expression,
        reason: Some("Forbidden".to_owned()),
    }
}

/// The policy and its binding (Deny) for the built-in driver of `cr`; none for a
/// third-party driver, whose node plugin gets no API access from the operator.
pub fn objects(cr: &CsiDeployment) -> Vec<ManagedObject> {
    if !cr.spec.is_builtin() {
        return Vec::new();
    }
    let name = names::driver_node_policy(cr);
    let username = format!(
        "system:serviceaccount:{}:{}",
        cr.spec.namespace,
        names::node_service_account(cr)
    );
    // Names, namespaces and driver names are validated DNS labels and subdomains: safe
    // inside CEL single-quoted strings.
    let driver = &cr.spec.driver.name;
    let pool_nodes = PoolNode::plural(&());
    let policy = ValidatingAdmissionPolicy {
        metadata: labels::metadata(cr, name.clone(), None),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".to_owned()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![GROUP.to_owned()]),
                    api_versions: Some(vec!["*".to_owned()]),
                    // A patch is an UPDATE at admission; the node plugin may not delete.
                    operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()]),
                    resources: Some(written_resources()),
                    scope: Some("Cluster".to_owned()),
                    resource_names: None,
                }]),
                ..MatchResources::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "node-plugin".to_owned(),
                expression: format!("request.userInfo.username == '{username}'"),
            }]),
            variables: Some(vec![Variable {
                name: "tokenNode".to_owned(),
                expression: format!(
                    "has(request.userInfo.extra) && '{NODE_NAME_EXTRA}' in request.userInfo.extra \
                     ? request.userInfo.extra['{NODE_NAME_EXTRA}'][0] : ''"
                ),
            }]),
            validations: Some(vec![
                validation(
                    "variables.tokenNode != ''".to_owned(),
                    Some(format!(
                        "the node plugin must call with a pod-bound ServiceAccount token naming \
                         its node ({NODE_NAME_EXTRA})"
                    )),
                    None,
                ),
                validation(
                    "object.spec.node == variables.tokenNode".to_owned(),
                    None,
                    Some(
                        "'the node plugin on ' + variables.tokenNode + ' may write only objects \
                         of its own node, not of node ' + object.spec.node"
                            .to_owned(),
                    ),
                ),
                validation(
                    "request.operation != 'UPDATE' || oldObject.spec.node == variables.tokenNode"
                        .to_owned(),
                    Some("the node plugin may not take over another node's object".to_owned()),
                    None,
                ),
                validation(
                    format!("object.spec.driver == '{driver}'"),
                    Some(format!(
                        "this node plugin writes only the objects of driver {driver}"
                    )),
                    None,
                ),
                // Agents select their work by this label: a node must not relabel a
                // record to hand it to, or hide it from, another node.
                validation(
                    format!(
                        "!has(object.metadata.labels) || !('{NODE_LABEL}' in object.metadata.labels) \
                         || object.metadata.labels['{NODE_LABEL}'] == variables.tokenNode"
                    ),
                    None,
                    Some(format!(
                        "'the node plugin on ' + variables.tokenNode + ' may not label an object \
                         {NODE_LABEL}=' + object.metadata.labels['{NODE_LABEL}']"
                    )),
                ),
                // A node publishes exactly one PoolNode, named for itself and the driver.
                validation(
                    format!(
                        "request.resource.resource != '{pool_nodes}' \
                         || object.metadata.name == variables.tokenNode + '.{driver}'"
                    ),
                    None,
                    Some(format!(
                        "'the node plugin on ' + variables.tokenNode + ' publishes only PoolNode ' \
                         + variables.tokenNode + '.{driver}, not ' + object.metadata.name"
                    )),
                ),
            ]),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: labels::metadata(cr, name.clone(), None),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(name),
            validation_actions: Some(vec!["Deny".to_owned()]),
            match_resources: None,
            param_ref: None,
        }),
    };
    vec![
        ManagedObject::ValidatingAdmissionPolicy(policy),
        ManagedObject::ValidatingAdmissionPolicyBinding(binding),
    ]
}
