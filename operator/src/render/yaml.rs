//! CsiDeployment manifests in, multi-document YAML out: `plinth-operator render`.

use kube::core::TypeMeta;

use crate::crd::CsiDeployment;

use super::{RenderEnv, RenderError, Rendered, render};

#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("not a CsiDeployment manifest")]
    Parse(#[source] serde_saphyr::DeserializeError),
    #[error("expected apiVersion plinth.dev/v1alpha1 and kind CsiDeployment, got {0} {1}")]
    WrongKind(String, String),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("serialising {0}")]
    Serialise(String, #[source] serde_saphyr::SerializeError),
}

/// Parse one CsiDeployment manifest.
pub fn parse(text: &str) -> Result<CsiDeployment, YamlError> {
    let types: TypeMeta = serde_saphyr::from_str(text).map_err(YamlError::Parse)?;
    if types.api_version != "plinth.dev/v1alpha1" || types.kind != "CsiDeployment" {
        return Err(YamlError::WrongKind(types.api_version, types.kind));
    }
    serde_saphyr::from_str(text).map_err(YamlError::Parse)
}

/// The objects as one YAML stream, warnings first as comments.
pub fn to_stream(rendered: &Rendered) -> Result<String, YamlError> {
    let mut out = String::new();
    for warning in &rendered.warnings {
        out.push_str("# warning: ");
        out.push_str(warning);
        out.push('\n');
    }
    for note in &rendered.notes {
        out.push_str("# note: ");
        out.push_str(note);
        out.push('\n');
    }
    for object in &rendered.objects {
        let yaml = serde_saphyr::to_string(&object.to_apply_json()).map_err(|e| {
            YamlError::Serialise(format!("{:?} {}", object.kind(), object.name()), e)
        })?;
        out.push_str("---\n");
        out.push_str(&yaml);
        if !yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// Parse, render and print.
pub fn render_stream(text: &str, env: &RenderEnv) -> Result<String, YamlError> {
    let cr = parse(text)?;
    to_stream(&render(&cr, env)?)
}
