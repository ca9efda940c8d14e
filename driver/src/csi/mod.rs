//! The CSI services. Each file validates its requests, calls into [`crate::storage`] or
//! [`crate::cluster`], and maps the answer to protobuf; the work itself lives there.

pub mod advertise;
pub mod controller;
pub mod expand;
pub mod group;
pub mod identity;
pub mod inline;
pub mod node;
pub mod page;
pub mod snapshot;
pub mod validate;
