//! Codec work for async callers, run on rayon's fixed pool rather than on
//! tokio's blocking threads.
//!
//! The encoder's buffers are segment-sized, and the allocator keeps freed
//! memory a moment for reuse (see `main.rs`). Allocated on tokio's blocking
//! pool, which grows a thread per concurrent task, every such thread keeps
//! its own freed segments: sixteen concurrent uploads kept about 80 MiB
//! more than the upload memory budget allowed. On rayon's pool (one thread
//! per core, where the encoder runs its parallel passes anyway) the same
//! few threads allocate every segment and reuse each other's freed pages.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `work` on rayon's pool; the future resolves to its result, or to
/// an error when it panicked.
pub fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = std::io::Result<T>> {
    let (done, result) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = done.send(catch_unwind(AssertUnwindSafe(work)));
    });
    async move {
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(std::io::Error::other("the codec task panicked")),
            Err(_) => Err(std::io::Error::other("the codec task was dropped")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_result_comes_back_and_a_panic_is_an_error_not_an_abort() {
        assert_eq!(run(|| 6 * 7).await.unwrap(), 42);
        let error = run(|| -> u8 { panic!("on purpose") }).await.unwrap_err();
        assert!(error.to_string().contains("panicked"), "{error}");
    }
}
