//! Work that must finish even when the request waiting for it is dropped
//! (client hang-up, an outer timeout): it runs in a task of its own.

use std::future::Future;

/// Runs `work` in its own task and waits for it: cancelling the caller
/// does not cancel the work. `None` only when the runtime shut down before
/// the work finished; a panic in `work` is resumed here, never swallowed.
pub(crate) async fn run_detached<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> Option<T> {
    match tokio::spawn(work).await {
        Ok(output) => Some(output),
        Err(join) => match join.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => None,
        },
    }
}
