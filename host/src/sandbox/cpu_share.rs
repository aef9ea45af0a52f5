//! An activity's share of the CPU: how many of its guests may be running on a core at once
//! once they have run for a whole epoch tick (10 ms). A guest that reaches a tick gives up
//! its turn, yields, and queues (first in, first out) for one of the activity's turns
//! before it runs on; guests that finish within a tick never queue. So a tenant whose
//! guests spin can occupy at most `max_cores` of the worker's threads, and the others'
//! tasks, the polls and the reports keep the rest.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The turns of one activity's guests (cheap to clone; shared by its tasks).
#[derive(Debug, Clone, Default)]
pub struct CpuShare {
    /// `None`: no bound.
    turns: Option<Arc<Semaphore>>,
}

/// The turn a running guest holds, shared by its store and the future that takes the next
/// one. Dropped with the store, which gives the turn back.
#[derive(Debug, Default)]
pub(crate) struct HeldTurn(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl CpuShare {
    /// At most `cores` guests of the activity running past a tick at once.
    pub fn cores(cores: u32) -> CpuShare {
        CpuShare {
            turns: Some(Arc::new(Semaphore::new(cores.max(1) as usize))),
        }
    }

    /// At a tick: gives back `held`'s turn and returns the future that yields and waits for
    /// the next (`None` when there is no bound: a plain yield will do).
    pub(crate) fn next_turn(
        &self,
        held: &HeldTurn,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        let turns = self.turns.clone()?;
        drop(held.0.lock().unwrap().take());
        let slot = held.0.clone();
        Some(Box::pin(async move {
            tokio::task::yield_now().await;
            let turn = turns
                .acquire_owned()
                .await
                .expect("CPU turn semaphores are never closed");
            *slot.lock().unwrap() = Some(turn);
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_guest_waits_for_a_turn_that_another_holds_and_gets_it_back_when_it_is_released() {
        let share = CpuShare::cores(1);
        let (first, second) = (HeldTurn::default(), HeldTurn::default());
        share.next_turn(&first).unwrap().await; // first holds the only turn
        let mut waiting = tokio::spawn(share.next_turn(&second).unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the turn is held");
        let _queued_again = share.next_turn(&first).unwrap(); // first gives it back at its tick
        (&mut waiting).await.unwrap();
        assert!(second.0.lock().unwrap().is_some());
        assert!(CpuShare::default().next_turn(&first).is_none());
    }
}
