//! Benchmarks run by `redstuff bench`: each measures the project's code
//! against a baseline in the same run and reports ratios.

pub mod codec;
pub mod concurrent;
pub mod cpu;
pub mod faults;
pub mod fleet;
pub mod hung_node;
pub mod memory;
mod nodes;
pub mod plan;
pub mod s3;

/// A bench ended early at the user's request (see [`StopRequest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted: the bench stopped its fleet and removed its files")]
pub struct Interrupted;

/// A request to end a running bench early (the command line sets it on
/// Ctrl-C or SIGTERM): the fleet benches then resume any node they
/// stopped, stop their fleet, remove their files and return
/// [`Interrupted`].
#[derive(Debug, Clone)]
pub struct StopRequest(tokio::sync::watch::Receiver<bool>);

impl StopRequest {
    /// A request made once `requested` holds true.
    pub fn new(requested: tokio::sync::watch::Receiver<bool>) -> Self {
        Self(requested)
    }

    /// A request never made.
    pub fn never() -> Self {
        Self(tokio::sync::watch::channel(false).1)
    }

    /// Whether the stop has been requested.
    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// `Err(Interrupted)` once the stop has been requested: checked
    /// between the steps that do not wait on anything.
    pub fn check(&self) -> Result<(), Interrupted> {
        if self.requested() {
            Err(Interrupted)
        } else {
            Ok(())
        }
    }

    /// Completes once the stop is requested; never, when it no longer can
    /// be.
    pub async fn wait(&mut self) {
        let can_come = self.0.wait_for(|requested| *requested).await.is_ok();
        if !can_come {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs `work` until it ends or the stop is requested, whichever comes
/// first: a stop drops `work` where it waits, and is `Err(Interrupted)`.
/// So is a failure that ends `work` once the stop was requested (a client
/// process ended by the same Ctrl-C).
pub(crate) async fn until_stopped<T>(
    stop: &mut StopRequest,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let result = tokio::select! {
        result = work => result,
        () = stop.wait() => Err(anyhow::Error::from(Interrupted)),
    };
    if result.is_err() && stop.requested() {
        return Err(Interrupted.into());
    }
    result
}

/// Writes a benchmark's input file and fsyncs it: its pages would
/// otherwise be written back during whatever is measured next, competing
/// with the writes measured (the kernel starts writeback up to 30 s
/// later).
pub(crate) fn write_input(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Fills `buffer` with pseudo-random bytes that follow `seed` (xorshift):
/// distinct blobs for distinct seeds, at memory speed.
pub(crate) fn fill(buffer: &mut [u8], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for word in buffer.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_request_interrupts_the_work_it_races() {
        let (requested, watch) = tokio::sync::watch::channel(false);
        let mut stop = StopRequest::new(watch);
        assert_eq!(stop.check(), Ok(()));
        let done = until_stopped(&mut stop, async { Ok::<_, anyhow::Error>(7) })
            .await
            .unwrap();
        assert_eq!(done, 7);
        requested.send(true).unwrap();
        assert_eq!(stop.check(), Err(Interrupted));
        let endless = until_stopped(&mut stop, std::future::pending::<anyhow::Result<()>>());
        let error = endless.await.unwrap_err();
        assert!(error.downcast_ref::<Interrupted>().is_some(), "{error:#}");
        // A failure once the stop was asked for is the interruption.
        let failed = until_stopped(&mut stop, async {
            Err::<(), _>(anyhow::anyhow!("client killed"))
        });
        let error = failed.await.unwrap_err();
        assert!(error.downcast_ref::<Interrupted>().is_some(), "{error:#}");
    }

    #[tokio::test]
    async fn a_stop_never_requested_lets_the_work_end() {
        let mut stop = StopRequest::never();
        assert!(!stop.requested());
        let failed = until_stopped(&mut stop, async { Err::<(), _>(anyhow::anyhow!("no")) });
        let error = failed.await.unwrap_err();
        assert!(error.downcast_ref::<Interrupted>().is_none());
    }
}
