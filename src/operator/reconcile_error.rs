//! Why a reconcile failed.

use std::time::Duration;

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no namespace (both resources are namespaced).
    #[error("object without a namespace")]
    NoNamespace,
    /// No random bytes for the node token.
    #[error("cannot make a node token: {0}")]
    Token(std::io::Error),
    /// The cluster's CA or serving certificate could not be read or made
    /// (the reconcile then holds the cluster's objects, see `hold_objects`).
    #[error("TLS: {0}")]
    Tls(String),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// Nodes that must be reached could not be.
    #[error("nodes unreachable: {0}")]
    NodesUnreachable(String),
    /// Something else must end first (it is retried).
    #[error("waiting: {0}")]
    Waiting(String),
    /// The reconcile ran past its overall deadline (a node or the API
    /// server too slow); it is retried.
    #[error("took longer than {0:?}: abandoned, retried")]
    Deadline(Duration),
}
