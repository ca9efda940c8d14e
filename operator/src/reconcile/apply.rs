//! Server-side apply of one desired object, skipping it when nothing changed and
//! replacing it when the server refuses a change to an immutable field.

use kube::Client;
use kube::api::{DynamicObject, Patch, PatchParams};
use tracing::{debug, info, instrument};

use super::FIELD_MANAGER;
use super::error::{Error, Verb, is_immutable_rejection};
use super::fingerprint::{Fingerprints, hash_desired};
use super::namespace;
use super::objects::{Desired, KindExt, LiveObject};
use super::prune::delete_owned;

/// What happened to one desired object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The live object already is what we applied last time: no request sent.
    Skipped,
    Applied,
    /// Deleted and re-created because an immutable field had to change.
    Replaced,
}

pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies `desired` unless the fingerprint says the live object is already it; with the
/// object as the server answered, when it was written.
#[instrument(skip_all, fields(object = %desired.key))]
pub async fn apply_object(
    client: &Client,
    fingerprints: &Fingerprints,
    owner: &str,
    desired: &Desired,
    live: Option<&LiveObject>,
) -> Result<(Outcome, Option<DynamicObject>), Error> {
    let hash = hash_desired(&desired.body);
    if let Some(live) = live
        && fingerprints.is_current(owner, &desired.key, hash, &live.version)
    {
        debug!("unchanged, not applying");
        return Ok((Outcome::Skipped, None));
    }
    let api = desired.kind.api(client, desired.key.namespace.as_deref());
    let name = desired.key.name.as_str();
    let patch = Patch::Apply(&desired.body);
    let first = match api.patch(name, &apply_params(), &patch).await {
        Err(err) => match namespace::missing_namespace(&err) {
            Some(missing) => {
                namespace::create(client, &missing, owner).await?;
                api.patch(name, &apply_params(), &patch).await
            }
            None => Err(err),
        },
        applied => applied,
    };
    let (applied, outcome) = match first {
        Ok(obj) => (obj, Outcome::Applied),
        // Replacing deletes: only ever an object we listed as ours (a live object carries
        // our labels and its uid goes with the deletion).
        Err(err) if is_immutable_rejection(&err) && live.is_some_and(|l| l.uid.is_some()) => {
            info!(error = %err, "immutable field changed: replacing the object");
            // Only the instance we listed (uid precondition), never one somebody
            // re-created meanwhile; background propagation lets the new object be
            // created at once while the garbage collector removes the old one's pods.
            let target = LiveObject {
                kind: desired.kind,
                key: desired.key.clone(),
                uid: live.and_then(|l| l.uid.clone()),
                version: String::new(),
            };
            delete_owned(client, &target).await?;
            let obj = api
                .patch(name, &apply_params(), &patch)
                .await
                .map_err(Error::api(Verb::Apply, &desired.key))?;
            (obj, Outcome::Replaced)
        }
        Err(err) => return Err(Error::api(Verb::Apply, &desired.key)(err)),
    };
    fingerprints.record(
        owner,
        desired.key.clone(),
        hash,
        desired.kind.live_version(&applied.metadata),
    );
    Ok((outcome, Some(applied)))
}
