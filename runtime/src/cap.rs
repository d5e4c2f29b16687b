//! [`Cap`]: a bound on work of one kind running at once (uploads, preheat jobs, prefetches).
//! Work takes a permit and holds it until it ends; a caller that cannot wait gets [`Full`],
//! which the service's API edge answers with 503 and `Retry-After`.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `max` of some work at once. Cheap to clone; clones share the permits.
#[derive(Clone, Debug)]
pub struct Cap {
    permits: Arc<Semaphore>,
    max: usize,
    /// What runs, in the error (`"uploads"`).
    what: &'static str,
    /// The config key that sets `max`, in the error (`"max_uploads"`).
    key: &'static str,
}

/// The cap was full.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{max} {what} are already running ({key})")]
pub struct Full {
    pub max: usize,
    pub what: &'static str,
    pub key: &'static str,
}

impl Cap {
    pub fn new(what: &'static str, key: &'static str, max: usize) -> Cap {
        Cap { permits: Arc::new(Semaphore::new(max)), max, what, key }
    }

    /// A permit if one is free.
    pub fn try_take(&self) -> Result<OwnedSemaphorePermit, Full> {
        self.try_take_many(1).map(|mut p| p.pop().expect("one permit"))
    }

    /// `n` permits, each released on its own, if `n` are free; none otherwise.
    pub fn try_take_many(&self, n: usize) -> Result<Vec<OwnedSemaphorePermit>, Full> {
        let full = Full { max: self.max, what: self.what, key: self.key };
        let count = u32::try_from(n).map_err(|_| full.clone())?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut all = self.permits.clone().try_acquire_many_owned(count).map_err(|_| full)?;
        let mut out = Vec::with_capacity(n);
        while all.num_permits() > 1 {
            out.extend(all.split(1));
        }
        out.push(all);
        Ok(out)
    }

    /// Waits for a permit.
    pub async fn take(&self) -> OwnedSemaphorePermit {
        self.permits.clone().acquire_owned().await.expect("the semaphore is never closed")
    }

    /// Permits free now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cap_refuses_until_a_permit_comes_back() {
        let cap = Cap::new("uploads", "max_uploads", 3);
        let two = cap.try_take_many(2).unwrap();
        assert_eq!(two.len(), 2);
        assert!(two.iter().all(|p| p.num_permits() == 1));
        let one = cap.try_take().unwrap();
        assert_eq!(one.num_permits(), 1);
        let full = cap.try_take().unwrap_err();
        assert_eq!(full.to_string(), "3 uploads are already running (max_uploads)");
        assert!(cap.try_take_many(1).is_err());
        drop(one);
        assert!(cap.try_take_many(2).is_err(), "all or none");
        assert_eq!(cap.available(), 1);
        drop(two);
        assert_eq!(cap.try_take_many(3).unwrap().len(), 3);
        assert!(cap.try_take_many(0).unwrap().is_empty());
    }
}
