//! Talking to storage nodes: one node's API (`NodeClient`, with deadlines
//! and size caps), and the fleet operations built on it (`BlobClient`):
//! writes that commit on a quorum, reads from any threshold of honest
//! nodes, deletes that leave tombstones on a quorum.

mod blob_client;
mod commit;
mod cpu;
pub mod deadline;
mod delete;
mod left_over;
pub mod memory_budget;
mod node_client;
pub mod quorum;
mod range;
mod read;
mod read_budget;
mod row_read;
pub mod segment_cache;
pub mod shared_reads;
mod ship;
#[cfg(test)]
mod test_fleet;
pub mod unanswering;
mod upload;
#[cfg(test)]
pub(crate) use upload::tests as upload_tests;
mod write;

pub use blob_client::{BlobClient, BlobIoError, SESSION_TOUCH_EVERY};
pub use commit::{commit_verdict, CommitVerdict};
pub use deadline::{Deadlines, MIN_INVENTORY_RATE, MIN_TRANSFER_RATE};
pub use delete::DeleteOutcome;
pub use left_over::hear_out_in_background;
pub use memory_budget::{MemoryBudget, MemoryReservation};
pub use node_client::{
    ChangesAnswer, CheckedChanges, CheckedPage, NodeCallError, NodeCalls, NodeClient, CHANGES_PAGE,
    DEFAULT_MAX_INVENTORY_BLOBS, ENTRIES_PER_REQUEST,
};
pub use range::{segment_spans, RangeStream};
pub use read::{SlowNodes, VisibleBlob};
pub use shared_reads::SharedReads;
pub use unanswering::UnansweringNodes;
pub use upload::{BlobUpload, SEGMENTS_IN_FLIGHT};
pub use write::WriteOutcome;
