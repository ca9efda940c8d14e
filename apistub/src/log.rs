//! The request log: every request the stub answered, in the order it answered them, with
//! what a test asserts on (method, path, query, content type, body).

use std::sync::{Mutex, MutexGuard, PoisonError};

use http::Method;
use serde_json::Value;
use tokio::sync::watch;

/// One request as the stub received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    /// Query parameters, decoded, in the order the client wrote them.
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    /// The body parsed as JSON (`None` when empty or not JSON).
    pub body: Option<Value>,
}

impl Recorded {
    /// The first value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn field_manager(&self) -> Option<&str> {
        self.param("fieldManager")
    }

    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch"), Some("true" | "1"))
    }

    /// A request that changes state (anything but GET).
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }

    /// A server-side apply.
    pub fn is_apply(&self) -> bool {
        self.method == Method::PATCH
            && self.content_type.as_deref() == Some("application/apply-patch+yaml")
    }

    /// `PATCH <path>`, for readable assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Debug)]
pub(crate) struct RequestLog {
    entries: Mutex<Vec<Recorded>>,
    /// Ticks on every entry, for waiting on a request.
    ticks: watch::Sender<u64>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            entries: Mutex::default(),
            ticks: watch::Sender::new(0),
        }
    }
}

impl RequestLog {
    fn lock(&self) -> MutexGuard<'_, Vec<Recorded>> {
        // Nothing panics while holding it: a poisoned log is still a consistent list.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn push(&self, request: Recorded) {
        self.lock().push(request);
        self.ticks.send_modify(|n| *n += 1);
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.lock().clone()
    }

    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.lock())
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.ticks.subscribe()
    }
}

/// The decoded query string, in order.
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}
