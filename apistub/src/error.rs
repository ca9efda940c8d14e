//! Errors: the `Status` answers the HTTP side sends, and what can go wrong starting the stub.

use std::{io, net::SocketAddr, path::PathBuf};

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde_json::json;

/// The `reason` field of a Kubernetes `Status`; clients (kube's `Status::is_*` helpers,
/// client-go's `apierrors`) branch on it, so it must match what the real server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    AlreadyExists,
    Conflict,
    Expired,
    Invalid,
    UnsupportedMediaType,
    TooManyRequests,
    InternalError,
    ServiceUnavailable,
    Timeout,
    Unknown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "BadRequest",
            Reason::Unauthorized => "Unauthorized",
            Reason::Forbidden => "Forbidden",
            Reason::NotFound => "NotFound",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::AlreadyExists => "AlreadyExists",
            Reason::Conflict => "Conflict",
            Reason::Expired => "Expired",
            Reason::Invalid => "Invalid",
            Reason::UnsupportedMediaType => "UnsupportedMediaType",
            Reason::TooManyRequests => "TooManyRequests",
            Reason::InternalError => "InternalError",
            Reason::ServiceUnavailable => "ServiceUnavailable",
            Reason::Timeout => "Timeout",
            Reason::Unknown => "",
        }
    }

    /// The reason the real server gives alongside an HTTP code (used for injected faults).
    pub fn for_code(code: StatusCode) -> Reason {
        match code.as_u16() {
            400 => Reason::BadRequest,
            401 => Reason::Unauthorized,
            403 => Reason::Forbidden,
            404 => Reason::NotFound,
            405 => Reason::MethodNotAllowed,
            409 => Reason::Conflict,
            410 => Reason::Expired,
            415 => Reason::UnsupportedMediaType,
            422 => Reason::Invalid,
            429 => Reason::TooManyRequests,
            500 => Reason::InternalError,
            503 => Reason::ServiceUnavailable,
            504 => Reason::Timeout,
            _ => Reason::Unknown,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request the API refuses; rendered as a `Status` object with the matching HTTP code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: Reason,
    pub message: String,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: Reason, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Reason::BadRequest, message)
    }

    pub fn not_found(resource: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            Reason::NotFound,
            format!("{resource} \"{name}\" not found"),
        )
    }

    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            Reason::NotFound,
            format!(
                "the server could not find the requested resource ({path}); plinth-apistub serves cluster-scoped custom resources only"
            ),
        )
    }

    pub fn already_exists(resource: &str, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            Reason::AlreadyExists,
            format!("{resource} \"{name}\" already exists"),
        )
    }

    /// The optimistic-concurrency failure clients retry on.
    pub fn conflict(resource: &str, name: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            Reason::Conflict,
            format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
        )
    }

    pub fn invalid(resource: &str, name: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Reason::Invalid,
            format!("{resource} \"{name}\" is invalid: {why}"),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reason::UnsupportedMediaType,
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
        )
    }

    pub fn method_not_allowed(method: &http::Method) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Reason::MethodNotAllowed,
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Reason::InternalError,
            message,
        )
    }

    /// The watch answer when the requested resourceVersion fell out of the kept history:
    /// kube's watcher re-lists on it.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            StatusCode::GONE,
            Reason::Expired,
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// The `Status` object, as sent in a response body or a watch `ERROR` event.
    pub fn to_status(&self) -> serde_json::Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason.as_str(),
            "code": self.code.as_u16(),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.code,
            [(header::CONTENT_TYPE, "application/json")],
            self.to_status().to_string(),
        )
            .into_response()
    }
}

/// Why the stub could not start or hand out its connection details.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot write kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot build a kube client for {url}")]
    Client {
        url: String,
        #[source]
        source: kube::Error,
    },
    #[error("the stub's URL {url} is not a valid URI")]
    Url {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
}
