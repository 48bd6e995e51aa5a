//! redstuff: a Kubernetes operator that keeps blobs in a fleet of storage
//! nodes with Red Stuff, the two-dimensional erasure code of Walrus.
//!
//! The parts, and which way they depend on each other, are described in
//! ARCHITECTURE.md. This crate holds all of them; the binary `redstuff`
//! exposes them as subcommands.

#![warn(missing_docs)]

pub mod api_error;
pub mod auth;
pub mod bench;
pub mod blob_state;
pub mod client;
pub mod codec;
pub mod control;
pub mod dev;
pub mod fleet;
pub mod gateway;
pub mod held_back_body;
pub mod hex;
pub mod http;
pub mod json_file;
pub mod listen;
pub mod metrics;
pub mod node;
pub mod operator;
pub mod refused_body;
pub mod retry;
pub mod s3;
pub mod spare_pool;
pub mod stalled_clients;
pub mod store;
pub mod tls;
pub mod units;
pub mod watchdog;
pub mod wire;
pub mod write_behind;
