//! The S3 front door: an S3-compatible API (s3s) on its own listener,
//! objects mapped onto blobs through an index of keys.
//!
//! - `records`: what the index keeps (objects, uploads, parts, references);
//! - `listing` (pure): S3's listing of keys with prefixes, delimiters and pages;
//! - `assemble` (pure): completing a multipart upload;
//! - `conditions` (pure): conditional reads;
//! - `kv`, `postgres_kv`: the ordered tables the index lives in (redb or
//!   PostgreSQL); `index`: the index on them, one transaction per change;
//! - `body`: receiving bytes into the spool, checksums verified;
//! - `front`: the shared state, storing and reading objects' blobs;
//! - `objects`, `buckets`, `multipart`: the operations; `service`: the
//!   `s3s::S3` implementation over them;
//! - `host` (pure): the bucket a Host header names (virtual-hosted style);
//! - `credentials`: access keys and their file; `keyring`: the keys in
//!   force, re-read from their files while the endpoint runs;
//! - `server`: the listener and the collector.

pub mod assemble;
pub mod body;
pub mod buckets;
pub mod conditions;
pub mod credentials;
pub mod front;
pub mod host;
pub mod index;
pub mod keyring;
pub mod kv;
pub mod listing;
pub mod multipart;
pub mod objects;
pub mod postgres_kv;
pub mod records;
pub mod representation;
pub mod server;
mod service;
pub mod span;
pub mod tagging;

pub use server::{IndexLocation, S3Config, S3Server};
