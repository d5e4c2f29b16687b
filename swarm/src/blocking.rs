//! A bounded pool for blocking work: disk reads and writes, and hashing.
//!
//! Storage is deliberately synchronous (positioned reads and writes on a `std::fs::File`):
//! async file APIs copy through extra buffers and still use threads underneath. Hashing a
//! 4 MiB piece takes about a millisecond, far too long for an async worker. Both go through
//! this pool, whose semaphore bounds how many run at once so a burst of pieces cannot spawn
//! hundreds of threads.

use std::sync::Arc;

use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct Blocking {
    sem: Arc<Semaphore>,
}

impl Blocking {
    pub fn new(max_concurrent: usize) -> Blocking {
        Blocking { sem: Arc::new(Semaphore::new(max_concurrent.max(1))) }
    }

    /// Runs `f` on a blocking thread once a slot is free.
    pub async fn run<T, F>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self.sem.acquire().await.expect("semaphore is never closed");
        match tokio::task::spawn_blocking(f).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}
