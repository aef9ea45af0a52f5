//! Task slots: the engine reserved a pool for a number of tasks at once; each activity holds
//! a share of them as the permits of its own semaphore (its `max_concurrency`). A reload may
//! resize the shares, and add or remove activities, while tasks run: permits then move
//! through the pool's spare slots, so the activities never hold more than the engine
//! reserved (a grown share waits for the shrunk one's tasks to finish).

use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One of an activity's task slots, held from before a poll until the guest of the task it
/// brought has ended (not until its report: reports have their own bound); the activity's
/// `free_slots` gauge follows every take and release.
pub(crate) struct TaskSlot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Semaphore>,
    free_slots: Gauge,
}

impl TaskSlot {
    /// Waits for a free slot of `slots`.
    pub(crate) async fn acquire(slots: &Arc<Semaphore>, free_slots: &Gauge) -> TaskSlot {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        free_slots.set(slots.available_permits() as i64);
        TaskSlot {
            permit: Some(permit),
            slots: slots.clone(),
            free_slots: free_slots.clone(),
        }
    }
}

impl Drop for TaskSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.free_slots.set(self.slots.available_permits() as i64);
    }
}

/// The engine's task slots that no activity holds.
pub(crate) struct SlotPool {
    spare: Arc<Semaphore>,
}

impl SlotPool {
    /// A pool of `reserved` slots, all spare: activities get theirs with [`SlotPool::resize`].
    pub(crate) fn new(reserved: u32) -> SlotPool {
        SlotPool {
            spare: Arc::new(Semaphore::new(reserved as usize)),
        }
    }

    /// Resizes an activity's share `slots` from `from` to `to` slots: taken from its free
    /// slots as its tasks finish and returned to the pool, or taken from the pool as other
    /// activities' shares return and added to it.
    pub(crate) fn resize(&self, slots: &Arc<Semaphore>, from: u32, to: u32) {
        let (spare, slots) = (self.spare.clone(), slots.clone());
        if to > from {
            tokio::spawn(move_slots(spare, slots, to - from));
        } else if from > to {
            tokio::spawn(move_slots(slots, spare, from - to));
        }
    }
}

/// Moves `count` permits from `from` to `to`, waiting for them to be free.
async fn move_slots(from: Arc<Semaphore>, to: Arc<Semaphore>, count: u32) {
    let permits = from
        .acquire_many_owned(count)
        .await
        .expect("slot semaphores are never closed");
    permits.forget();
    to.add_permits(count as usize);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_grown_share_waits_for_a_shrunk_one_to_free_its_slots() {
        let pool = SlotPool::new(4);
        let (a, b) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
        pool.resize(&a, 0, 3);
        pool.resize(&b, 0, 1);
        settle().await;
        let running = a.clone().acquire_many_owned(3).await.unwrap(); // a's three tasks
        pool.resize(&a, 3, 1);
        pool.resize(&b, 1, 3);
        settle().await;
        assert_eq!(b.available_permits(), 1, "a's slots are still busy");
        drop(running);
        settle().await;
        assert_eq!(a.available_permits(), 1);
        assert_eq!(b.available_permits(), 3);
        assert_eq!(pool.spare.available_permits(), 0);
    }

    #[tokio::test]
    async fn unused_reserved_slots_are_spare_and_a_removed_share_returns() {
        let pool = SlotPool::new(8);
        pool.resize(&Arc::new(Semaphore::new(0)), 0, 2);
        let added = Arc::new(Semaphore::new(0));
        pool.resize(&added, 0, 5);
        settle().await;
        assert_eq!(added.available_permits(), 5);
        assert_eq!(pool.spare.available_permits(), 1);
        pool.resize(&added, 5, 0);
        settle().await;
        assert_eq!(added.available_permits(), 0);
        assert_eq!(pool.spare.available_permits(), 6);
    }
}
