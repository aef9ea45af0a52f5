//! An activity's share of the CPU: how many of its guests may be executing at once, on the
//! worker's threads, once one of them is long-running: it has executed through a whole
//! epoch tick interval (it has seen two 10 ms ticks; a short guest may see one, as the
//! ticks do not wait for it).
//!
//! A guest gives its turn back whenever it stops executing: at every tick (it yields) and
//! whenever it waits in a host call (a heartbeat, an outbound request, a sleep). To run on
//! it waits for one of the activity's `max_cores` turns, first in, first out, except that
//! guests which are not long-running go first (so a short task waits about a tick at most
//! behind its own activity's long ones). While none of the activity's guests is
//! long-running, its guests need no turn at all: tasks shorter than a tick never queue. So
//! a tenant whose guests spin can occupy at most `max_cores` of the worker's threads (after
//! its first guests' first 10–20 ms), and the others' tasks, the polls and the reports keep
//! the rest. Configured in `[activity.cpu]`.

use crate::sandbox::capability::{Capability, NoFlags, TaskSetup};
use anyhow::bail;
use serde::Deserialize;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio::sync::oneshot;

/// The CPU share capability.
pub struct Cpu;

/// `[activity.cpu]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSettings {
    /// Guests of this activity executing at once while one of them has run past 10 ms
    /// (default: the machine's cores minus one, at least 1): a tenant's spinning guests leave
    /// the other tenants and the worker's own calls a core.
    pub max_cores: Option<u32>,
}

impl CpuSettings {
    /// Guests of the activity that may execute at once under load, with its default.
    pub fn max_cores(&self) -> u32 {
        self.max_cores.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            u32::try_from(cores.saturating_sub(1).max(1)).unwrap_or(u32::MAX)
        })
    }
}

impl Capability for Cpu {
    type Settings = CpuSettings;
    type Grant = CpuShare;
    type TaskState = Arc<GuestCpu>;
    type Usage = ();
    type Metrics = ();
    type Flags = NoFlags;

    fn validate(settings: &CpuSettings) -> anyhow::Result<()> {
        if settings.max_cores == Some(0) {
            bail!("key `max_cores` must be at least 1");
        }
        Ok(())
    }

    fn grant(settings: &CpuSettings) -> CpuShare {
        CpuShare::cores(settings.max_cores())
    }

    fn task_state(share: &CpuShare, _: &TaskSetup<'_>) -> anyhow::Result<Arc<GuestCpu>> {
        Ok(Arc::new(GuestCpu::new(share)))
    }
}

/// The turns of one activity's guests (cheap to clone; shared by its tasks).
#[derive(Debug, Clone, Default)]
pub struct CpuShare {
    /// `None`: no bound.
    turns: Option<Arc<Turns>>,
}

/// One guest's place in its activity's share: the ticks it has seen while executing.
/// Counted in the activity's long-running guests from its second tick until it is dropped.
#[derive(Debug)]
pub struct GuestCpu {
    share: CpuShare,
    ticks: AtomicU32,
}

/// The tick at which a guest has surely executed for a whole tick interval.
const LONG_RUNNING_AT_TICK: u32 = 2;

/// An activity's turns: how many are free, who waits for one, and how many of its guests,
/// still alive, are long-running.
#[derive(Debug)]
struct Turns {
    queue: Mutex<TurnQueue>,
    long_running: AtomicUsize,
}

#[derive(Debug)]
struct TurnQueue {
    free: usize,
    /// Guests that are not long-running, served first.
    starting: VecDeque<oneshot::Sender<Turn>>,
    /// Long-running guests.
    running_on: VecDeque<oneshot::Sender<Turn>>,
}

/// One turn, given back to the activity when dropped.
#[derive(Debug)]
struct Turn {
    turns: Option<Arc<Turns>>,
}

type TurnFuture = Pin<Box<dyn Future<Output = Turn> + Send>>;

impl CpuShare {
    /// At most `cores` guests of the activity executing at once, while one of them is
    /// long-running.
    pub fn cores(cores: u32) -> CpuShare {
        CpuShare {
            turns: Some(Arc::new(Turns {
                queue: Mutex::new(TurnQueue {
                    free: cores.max(1) as usize,
                    starting: VecDeque::new(),
                    running_on: VecDeque::new(),
                }),
                long_running: AtomicUsize::new(0),
            })),
        }
    }
}

impl GuestCpu {
    /// A new guest of the activity whose share is `share`.
    pub(crate) fn new(share: &CpuShare) -> GuestCpu {
        GuestCpu {
            share: share.clone(),
            ticks: AtomicU32::new(0),
        }
    }

    /// Called at each epoch tick the guest reaches while executing.
    pub(crate) fn note_tick(&self) {
        if let Some(turns) = &self.share.turns {
            if self.ticks.fetch_add(1, Ordering::SeqCst) + 1 == LONG_RUNNING_AT_TICK {
                turns.long_running.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn is_long_running(&self) -> bool {
        self.ticks.load(Ordering::SeqCst) >= LONG_RUNNING_AT_TICK
    }

    /// Runs `guest` (the future that executes the guest: it returns `Pending` when the guest
    /// yields at a tick or waits in a host call) within the activity's share: each time it
    /// is polled while the share is in use, it first waits for a turn; each time it returns
    /// `Pending`, it gives the turn back.
    pub(crate) async fn run<F: Future>(&self, guest: F) -> F::Output {
        let Some(turns) = self.share.turns.clone() else {
            return guest.await;
        };
        let mut guest = std::pin::pin!(guest);
        let mut turn: Option<Turn> = None;
        let mut waiting: Option<TurnFuture> = None;
        std::future::poll_fn(|cx| {
            if turn.is_none() && turns.long_running.load(Ordering::SeqCst) > 0 {
                let starting = !self.is_long_running();
                let next = waiting.get_or_insert_with(|| wait_for_turn(turns.clone(), starting));
                match next.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(granted) => {
                        turn = Some(granted);
                        waiting = None;
                    }
                }
            }
            let polled = guest.as_mut().poll(cx);
            if polled.is_pending() {
                turn = None;
            }
            polled
        })
        .await
    }
}

impl Drop for GuestCpu {
    fn drop(&mut self) {
        if let Some(turns) = &self.share.turns {
            if self.is_long_running() {
                turns.long_running.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Takes a free turn, or queues for one (with the starting guests if `starting`).
fn wait_for_turn(turns: Arc<Turns>, starting: bool) -> TurnFuture {
    Box::pin(async move {
        let granted = {
            let mut queue = turns.queue.lock().unwrap();
            if queue.free > 0 {
                queue.free -= 1;
                None
            } else {
                let (sender, granted) = oneshot::channel();
                if starting {
                    queue.starting.push_back(sender);
                } else {
                    queue.running_on.push_back(sender);
                }
                Some(granted)
            }
        };
        match granted {
            None => Turn { turns: Some(turns) },
            Some(granted) => granted
                .await
                .expect("a waiting guest's sender is only dropped after sending"),
        }
    })
}

impl Drop for Turn {
    /// Hands the turn to the first guest still waiting (starting guests first), or frees it.
    fn drop(&mut self) {
        let Some(turns) = self.turns.take() else {
            return;
        };
        loop {
            let next = {
                let mut queue = turns.queue.lock().unwrap();
                match queue
                    .starting
                    .pop_front()
                    .or_else(|| queue.running_on.pop_front())
                {
                    Some(next) => next,
                    None => {
                        queue.free += 1;
                        return;
                    }
                }
            };
            let handed = Turn {
                turns: Some(turns.clone()),
            };
            match next.send(handed) {
                Ok(()) => return,
                // That guest stopped waiting (its task ended): disarm the turn, try the next.
                Err(mut unwanted) => drop(unwanted.turns.take()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The activity's long-running guests and free turns.
    fn counts(share: &CpuShare) -> (usize, usize) {
        let turns = share.turns.as_ref().unwrap();
        let free = turns.queue.lock().unwrap().free;
        (turns.long_running.load(Ordering::SeqCst), free)
    }

    /// A stand-in for a guest: each `Pending` is a yield at a tick, noted as the epoch
    /// callback notes it; it counts the polls in which it executed.
    async fn spin(guest: &GuestCpu, executed: &AtomicUsize, ticks: usize) {
        let mut left = ticks;
        std::future::poll_fn(|cx| {
            executed.fetch_add(1, Ordering::SeqCst);
            if left == 0 {
                return Poll::Ready(());
            }
            left -= 1;
            guest.note_tick();
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    #[tokio::test]
    async fn short_guests_need_no_turn_even_when_a_tick_falls_in_their_run() {
        let share = CpuShare::cores(1);
        let (first, second) = (GuestCpu::new(&share), GuestCpu::new(&share));
        let executed = AtomicUsize::new(0);
        tokio::join!(
            first.run(spin(&first, &executed, 0)),
            second.run(spin(&second, &executed, 1))
        );
        assert_eq!(executed.load(Ordering::SeqCst), 3);
        assert_eq!(counts(&share), (0, 1), "none long-running, no turn taken");
    }

    #[tokio::test]
    async fn spinning_guests_take_turns_and_give_every_turn_back() {
        let share = CpuShare::cores(1);
        let (first, second) = (GuestCpu::new(&share), GuestCpu::new(&share));
        let executed = AtomicUsize::new(0);
        tokio::join!(
            first.run(spin(&first, &executed, 20)),
            second.run(spin(&second, &executed, 20))
        );
        assert_eq!(executed.load(Ordering::SeqCst), 42);
        assert_eq!(counts(&share).0, 2);
        drop((first, second));
        assert_eq!(counts(&share), (0, 1), "every turn given back");
    }

    #[tokio::test]
    async fn a_starting_guest_gets_the_next_turn_ahead_of_a_spinning_one() {
        let turns = CpuShare::cores(1).turns.unwrap();
        let held = wait_for_turn(turns.clone(), false).await;
        let mut spinner = tokio::spawn(wait_for_turn(turns.clone(), false));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut newcomer = tokio::spawn(wait_for_turn(turns.clone(), true));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!newcomer.is_finished(), "the turn is held");
        drop(held);
        let newcomers_turn = (&mut newcomer).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!spinner.is_finished(), "the newcomer went first");
        drop(newcomers_turn);
        drop((&mut spinner).await.unwrap());
        assert_eq!(turns.queue.lock().unwrap().free, 1);
    }

    #[tokio::test]
    async fn a_turn_skips_a_guest_that_stopped_waiting() {
        let share = CpuShare::cores(1);
        let turns = share.turns.clone().unwrap();
        let held = wait_for_turn(turns.clone(), false).await;
        let abandoned = tokio::spawn(wait_for_turn(turns.clone(), false));
        let waiting = tokio::spawn(wait_for_turn(turns.clone(), false));
        tokio::time::sleep(Duration::from_millis(20)).await;
        abandoned.abort(); // its task ended while it waited
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        let handed = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the turn went to the guest still waiting")
            .unwrap();
        drop(handed);
        assert_eq!(turns.queue.lock().unwrap().free, 1);
    }
}
