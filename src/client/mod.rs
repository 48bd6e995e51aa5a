//! Talking to storage nodes: one node's API (`NodeClient`), and the fleet
//! operations built on it: writing a blob with a write quorum and reading
//! it back from any threshold of honest nodes.

mod blob_io;
mod node_client;

pub use blob_io::{BlobClient, BlobIoError, WriteOutcome};
pub use node_client::{NodeCallError, NodeClient};
