//! The S3 front door: an S3-compatible API (s3s) on its own listener,
//! objects mapped onto blobs through an index of keys.
//!
//! - `records`: what the index keeps (objects, uploads, parts, references);
//! - `listing` (pure): S3's listing of keys with prefixes, delimiters and pages;
//! - `assemble` (pure): completing a multipart upload;
//! - `index`: the embedded index (redb), one transaction per change.

pub mod assemble;
pub mod index;
pub mod listing;
pub mod records;
