//! Spawning on the AMQP process's runtime so that no panic goes unnoticed.
//!
//! Tokio keeps a task's panic in its `JoinHandle`, which nobody reads for
//! detached tasks: a panicking task would vanish without a word, and a
//! long-lived one (the IPC accept loop, a broker connection) would leave
//! the process deaf for good. [`spawn`] logs the panic; [`spawn_supervised`]
//! logs it and starts the task again.
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;

/// How long a supervised task waits before it starts again after a panic.
const RESTART_DELAY: Duration = Duration::from_millis(100);

/// Spawns `future`; a panic in it is logged, naming `what`, and the handle
/// then gives `None`.
pub fn spawn<F>(what: &'static str, future: F) -> JoinHandle<Option<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(async move {
        match CatchPanic(Box::pin(future)).await {
            Ok(output) => Some(output),
            Err(panic) => {
                log::error!("internal error in {what} (task ended): {panic}");
                None
            }
        }
    })
}

/// Spawns the task `make` builds, and builds and starts it again whenever it
/// panics (after [`RESTART_DELAY`]); it ends when the task returns.
pub fn spawn_supervised<M, F>(what: &'static str, mut make: M) -> JoinHandle<()>
where
    M: FnMut() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match CatchPanic(Box::pin(make())).await {
                Ok(()) => return,
                Err(panic) => {
                    log::error!("internal error in {what} (restarting it): {panic}");
                    tokio::time::sleep(RESTART_DELAY).await;
                }
            }
        }
    })
}

/// A future that turns a panic while polling into `Err(message)`.
struct CatchPanic<F: Future>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_panicking_task_ends_with_none_and_the_runtime_goes_on() {
        runtime().block_on(async {
            let panicked = spawn("a test task", async { panic!("boom") });
            assert_eq!(panicked.await.unwrap(), None::<()>);
            let fine = spawn("a test task", async { 7 });
            assert_eq!(fine.await.unwrap(), Some(7));
        });
    }

    #[test]
    fn a_supervised_task_starts_again_after_a_panic() {
        runtime().block_on(async {
            let starts = Arc::new(AtomicU32::new(0));
            let counted = starts.clone();
            let task = spawn_supervised("a test loop", move || {
                let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if run < 3 {
                        panic!("run {run} fails");
                    }
                }
            });
            task.await.unwrap();
            assert_eq!(starts.load(Ordering::SeqCst), 3);
        });
    }
}
