//! Label and field selectors, parsed from the query string and matched against stored JSON.

use serde_json::Value;

use crate::error::ApiError;

/// One label requirement of a `labelSelector`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// The field requirements custom resources support: `metadata.name` and `metadata.namespace`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldReq {
    path: FieldPath,
    value: String,
    negated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldPath {
    Name,
    Namespace,
}

/// A parsed `labelSelector` plus `fieldSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Selector {
    pub fn parse(
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Self, ApiError> {
        let labels = match label_selector {
            Some(s) => split_top_level(s)
                .into_iter()
                .map(parse_label_req)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let fields = match field_selector {
            Some(s) => split_top_level(s)
                .into_iter()
                .map(parse_field_req)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Selector { labels, fields })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let metadata = object.get("metadata");
        let label = |key: &str| {
            metadata
                .and_then(|m| m.get("labels"))
                .and_then(|l| l.get(key))
                .and_then(Value::as_str)
        };
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        });
        let fields_ok = self.fields.iter().all(|req| {
            let actual = match req.path {
                FieldPath::Name => metadata
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                // Empty for a cluster-scoped object.
                FieldPath::Namespace => metadata
                    .and_then(|m| m.get("namespace"))
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            };
            (actual == req.value) != req.negated
        });
        labels_ok && fields_ok
    }
}

/// Splits on commas that are not inside `in (...)` value sets; empty parts are dropped.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn invalid_selector(kind: &str, req: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: invalid {kind} selector {req:?}"
    ))
}

fn parse_label_req(req: &str) -> Result<LabelReq, ApiError> {
    let key = |k: &str| -> Result<String, ApiError> {
        let k = k.trim();
        let valid = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if valid {
            Ok(k.to_owned())
        } else {
            Err(invalid_selector("label", req))
        }
    };
    if let Some(rest) = req.strip_prefix('!') {
        return Ok(LabelReq::NotExists(key(rest)?));
    }
    if let Some((k, v)) = req.split_once("!=") {
        return Ok(LabelReq::NotEquals(key(k)?, v.trim().to_owned()));
    }
    if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
        return Ok(LabelReq::Equals(key(k)?, v.trim().to_owned()));
    }
    if let Some((k, set)) = req.split_once(" notin ") {
        return Ok(LabelReq::NotIn(
            key(k)?,
            parse_set(set).ok_or_else(|| invalid_selector("label", req))?,
        ));
    }
    if let Some((k, set)) = req.split_once(" in ") {
        return Ok(LabelReq::In(
            key(k)?,
            parse_set(set).ok_or_else(|| invalid_selector("label", req))?,
        ));
    }
    Ok(LabelReq::Exists(key(req)?))
}

/// `(a, b, c)` → `[a, b, c]`.
fn parse_set(set: &str) -> Option<Vec<String>> {
    let inner = set.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

fn parse_field_req(req: &str) -> Result<FieldReq, ApiError> {
    let (path, value, negated) = if let Some((p, v)) = req.split_once("!=") {
        (p, v, true)
    } else if let Some((p, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
        (p, v, false)
    } else {
        return Err(invalid_selector("field", req));
    };
    let path = match path.trim() {
        "metadata.name" => FieldPath::Name,
        "metadata.namespace" => FieldPath::Namespace,
        other => {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {other}"
            )));
        }
    };
    Ok(FieldReq {
        path,
        value: value.trim().to_owned(),
        negated,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}})
    }

    #[test]
    fn label_forms() {
        let o = obj("a", json!({"plinth.dev/node": "n1", "tier": "gold"}));
        let m = |l: &str| Selector::parse(Some(l), None).unwrap().matches(&o);
        assert!(m("plinth.dev/node=n1"));
        assert!(m("plinth.dev/node==n1,tier=gold"));
        assert!(!m("plinth.dev/node=n2"));
        assert!(m("plinth.dev/node!=n2"));
        assert!(!m("tier!=gold"));
        assert!(m("tier"));
        assert!(!m("!tier"));
        assert!(m("!absent"));
        assert!(m("tier in (silver, gold)"));
        assert!(!m("tier notin (silver,gold)"));
        assert!(m("absent notin (x),tier in (gold)"));
        assert!(m(""));
    }

    #[test]
    fn field_forms() {
        let o = obj("vol-1", json!({}));
        let m = |f: &str| Selector::parse(None, Some(f)).unwrap().matches(&o);
        assert!(m("metadata.name=vol-1"));
        assert!(m("metadata.name==vol-1"));
        assert!(!m("metadata.name=vol-2"));
        assert!(m("metadata.name!=vol-2"));
        assert!(m("metadata.namespace="));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["a b=c", "=v", "x in (a", "!"] {
            let err = Selector::parse(Some(bad), None).unwrap_err();
            assert_eq!(err.code, http::StatusCode::BAD_REQUEST, "{bad}");
        }
        let err = Selector::parse(None, Some("spec.node=n1")).unwrap_err();
        assert!(
            err.message.contains("field label not supported"),
            "{}",
            err.message
        );
        assert!(Selector::parse(None, Some("metadata.name")).is_err());
    }
}
