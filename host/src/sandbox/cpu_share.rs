//! The CPU shared out between activities whose guests compute, as a fair scheduler does:
//! work-conserving, bounded only while someone else waits.
//!
//! The worker has one turn per core (one [`CpuScheduler`] per process). A guest needs a turn
//! to execute once its activity has a long-running guest: one that has executed through a
//! whole epoch tick interval (it has seen two 10 ms ticks; a short guest may see one, as the
//! ticks do not wait for it). While none of an activity's guests is long-running, its guests
//! need no turn at all: tasks shorter than a tick never queue.
//!
//! A guest gives its turn back whenever it stops executing: at every tick (it yields) and
//! whenever it waits in a host call (a heartbeat, an outbound request, a sleep). A turn
//! given back goes to a waiting guest that is not long-running first (so a short task waits
//! about a tick at most behind long ones), then to the activity that holds the fewest turns
//! (the one served longest ago on a tie), never past an activity's `max_cores` (no cap by
//! default), and, while another activity of the worker has a task running or had one in
//! the last [`NEIGHBOUR_WINDOW`], never past cores − 1 (at least 1): a core stays free for
//! that neighbour's tasks, polls and reports. So an activity alone uses every core; two
//! that compute side by side get about half each; and a neighbour's short tasks never wait
//! for a computing tenant's tick. The runtime has one thread more than there are turns
//! ([`runtime_threads`]), so polls, reports and short guests find a thread even while every
//! turn is held. Configured in `[activity.cpu]`.

use crate::sandbox::capability::{Capability, GrantContext, NoFlags, TaskSetup};
use anyhow::bail;
use serde::Deserialize;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long after its last task an activity still counts as a neighbour that a core is kept
/// free for.
pub const NEIGHBOUR_WINDOW: Duration = Duration::from_secs(1);

/// The CPU share capability.
pub struct Cpu;

/// `[activity.cpu]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSettings {
    /// A hard cap: guests of this activity executing at once while one of them has run past
    /// 10 ms, whether or not other activities want the cores (default: none; the fair
    /// share decides).
    pub max_cores: Option<u32>,
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

    fn grant(settings: &CpuSettings, _: &GrantContext<'_>) -> CpuShare {
        CpuScheduler::process().share(settings.max_cores)
    }

    fn task_state(share: &CpuShare, _: &TaskSetup<'_>) -> anyhow::Result<Arc<GuestCpu>> {
        Ok(Arc::new(GuestCpu::new(share)))
    }
}

/// This machine's cores (at least 1).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The worker threads the tokio runtime should have: one more than the turns, so that
/// polls, reports and short guests find a thread while computing guests hold every turn.
pub fn runtime_threads() -> usize {
    cores() + 1
}

/// The turns of the worker's cores and who waits for them, across activities.
#[derive(Debug)]
pub struct CpuScheduler {
    state: Mutex<SchedulerState>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct SchedulerState {
    cores: usize,
    free: usize,
    /// Turns handed out so far: orders the activities by when each was last served.
    served: u64,
    activities: Vec<ActivityQueue>,
}

/// One activity's place in the scheduler.
#[derive(Debug)]
struct ActivityQueue {
    id: u64,
    turns: Weak<ActivityTurns>,
    held: usize,
    cap: usize,
    last_served: u64,
    /// Its guests alive now, and when the last one ended (or `None` before any).
    guests: usize,
    last_guest: Option<Instant>,
    /// Guests that are not long-running, served first.
    starting: VecDeque<oneshot::Sender<Turn>>,
    /// Long-running guests.
    running_on: VecDeque<oneshot::Sender<Turn>>,
}

/// The turns of one activity's guests (cheap to clone; shared by its tasks). `Default`:
/// no bound at all (a guest run outside any worker, e.g. by a benchmark).
#[derive(Debug, Clone, Default)]
pub struct CpuShare {
    turns: Option<Arc<ActivityTurns>>,
}

/// An activity's handle on the scheduler, and how many of its live guests are long-running.
#[derive(Debug)]
struct ActivityTurns {
    scheduler: Arc<CpuScheduler>,
    id: u64,
    long_running: AtomicUsize,
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

/// One turn, given back to the scheduler when dropped.
#[derive(Debug)]
struct Turn {
    activity: Option<Arc<ActivityTurns>>,
}

type TurnFuture = Pin<Box<dyn Future<Output = Turn> + Send>>;

impl CpuScheduler {
    /// A scheduler of `cores` turns.
    pub fn new(cores: usize) -> Arc<CpuScheduler> {
        Arc::new(CpuScheduler {
            state: Mutex::new(SchedulerState {
                cores: cores.max(1),
                free: cores.max(1),
                served: 0,
                activities: Vec::new(),
            }),
            next_id: AtomicU64::new(0),
        })
    }

    /// The process's scheduler: one turn per core of this machine.
    pub fn process() -> Arc<CpuScheduler> {
        static PROCESS: OnceLock<Arc<CpuScheduler>> = OnceLock::new();
        PROCESS.get_or_init(|| CpuScheduler::new(cores())).clone()
    }

    /// A new activity's share, at most `max_cores` turns at once if set.
    pub fn share(self: &Arc<CpuScheduler>, max_cores: Option<u32>) -> CpuShare {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let turns = Arc::new(ActivityTurns {
            scheduler: self.clone(),
            id,
            long_running: AtomicUsize::new(0),
        });
        self.state.lock().unwrap().activities.push(ActivityQueue {
            id,
            turns: Arc::downgrade(&turns),
            held: 0,
            cap: max_cores.map_or(usize::MAX, |cap| cap.max(1) as usize),
            last_served: 0,
            guests: 0,
            last_guest: None,
            starting: VecDeque::new(),
            running_on: VecDeque::new(),
        });
        CpuShare { turns: Some(turns) }
    }
}

impl SchedulerState {
    fn queue(&mut self, id: u64) -> &mut ActivityQueue {
        self.activities
            .iter_mut()
            .find(|queue| queue.id == id)
            .expect("an activity stays in the scheduler while it has turns or waiters")
    }

    /// Whether the activity at `index` may take one more turn: under its cap, and under
    /// cores − 1 while another activity is active (see the module's doc).
    fn may_take(&self, index: usize, now: Instant) -> bool {
        let queue = &self.activities[index];
        let neighbour_active = self.activities.iter().any(|other| {
            other.id != queue.id
                && (other.guests > 0
                    || other
                        .last_guest
                        .is_some_and(|ended| now.duration_since(ended) < NEIGHBOUR_WINDOW))
        });
        let limit = if neighbour_active {
            queue.cap.min(self.cores - 1).max(1)
        } else {
            queue.cap
        };
        queue.held < limit
    }

    /// Takes a turn for the activity at `index`.
    fn take(&mut self, index: usize) {
        self.free -= 1;
        self.served += 1;
        let queue = &mut self.activities[index];
        queue.held += 1;
        queue.last_served = self.served;
    }

    /// The activity whose waiting guest gets the next free turn: one with a starting guest
    /// first, then the one holding the fewest turns, then the one served longest ago.
    fn next_served(&self) -> Option<usize> {
        let now = Instant::now();
        self.activities
            .iter()
            .enumerate()
            .filter(|(index, queue)| {
                !(queue.starting.is_empty() && queue.running_on.is_empty())
                    && self.may_take(*index, now)
            })
            .min_by_key(|(_, queue)| (queue.starting.is_empty(), queue.held, queue.last_served))
            .map(|(index, _)| index)
    }
}

impl CpuShare {
    /// A share of a scheduler of its own with `cores` turns: the activity alone.
    pub fn cores(cores: u32) -> CpuShare {
        CpuScheduler::new(cores as usize).share(None)
    }

    /// The activity's guests alive now, and how many of them are long-running: what the
    /// share decides on (`(0, 0)` for no share).
    pub fn guests(&self) -> (usize, usize) {
        self.turns.as_ref().map_or((0, 0), |turns| {
            let mut state = turns.scheduler.state.lock().unwrap();
            let alive = state.queue(turns.id).guests;
            (alive, turns.long_running.load(Ordering::SeqCst))
        })
    }
}

impl Drop for ActivityTurns {
    fn drop(&mut self) {
        let mut state = self.scheduler.state.lock().unwrap();
        state.activities.retain(|queue| queue.id != self.id);
    }
}

impl GuestCpu {
    /// A new guest of the activity whose share is `share`.
    pub(crate) fn new(share: &CpuShare) -> GuestCpu {
        if let Some(turns) = &share.turns {
            turns.scheduler.state.lock().unwrap().queue(turns.id).guests += 1;
        }
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
            let mut state = turns.scheduler.state.lock().unwrap();
            let queue = state.queue(turns.id);
            queue.guests -= 1;
            queue.last_guest = Some(Instant::now());
        }
    }
}

/// Takes a free turn for `activity`, or queues for one (with the starting guests if
/// `starting`).
fn wait_for_turn(activity: Arc<ActivityTurns>, starting: bool) -> TurnFuture {
    Box::pin(async move {
        let granted = {
            let mut state = activity.scheduler.state.lock().unwrap();
            let index = state
                .activities
                .iter()
                .position(|queue| queue.id == activity.id)
                .expect("an activity with a waiting guest is in the scheduler");
            if state.free > 0 && state.may_take(index, Instant::now()) {
                state.take(index);
                None
            } else {
                let (sender, granted) = oneshot::channel();
                let queue = &mut state.activities[index];
                if starting {
                    queue.starting.push_back(sender);
                } else {
                    queue.running_on.push_back(sender);
                }
                Some(granted)
            }
        };
        match granted {
            None => Turn {
                activity: Some(activity),
            },
            Some(granted) => granted
                .await
                .expect("a waiting guest's sender is only dropped after sending"),
        }
    })
}

impl Drop for Turn {
    /// Gives the turn back and hands it to the guest the scheduler serves next, or frees it.
    fn drop(&mut self) {
        let Some(activity) = self.activity.take() else {
            return;
        };
        // Dropped after the lock is released: the last handle on an activity locks it too.
        let mut unlocked_drops: Vec<Arc<ActivityTurns>> = vec![activity.clone()];
        let mut state = activity.scheduler.state.lock().unwrap();
        state.queue(activity.id).held -= 1;
        state.free += 1;
        while let Some(index) = state.next_served() {
            let queue = &mut state.activities[index];
            let next = queue
                .starting
                .pop_front()
                .or_else(|| queue.running_on.pop_front())
                .expect("next_served picks an activity with a waiting guest");
            let Some(turns) = queue.turns.upgrade() else {
                continue; // the activity is going away: none of its guests waits any more
            };
            state.take(index);
            match next.send(Turn {
                activity: Some(turns),
            }) {
                Ok(()) => break,
                // That guest stopped waiting (its task ended): take the turn back, try the next.
                Err(mut unwanted) => {
                    let queue = &mut state.activities[index];
                    queue.held -= 1;
                    state.free += 1;
                    unlocked_drops.extend(unwanted.activity.take());
                }
            }
        }
        drop(state);
        drop(unlocked_drops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn activity(share: &CpuShare) -> Arc<ActivityTurns> {
        share.turns.clone().unwrap()
    }

    /// The activity's long-running guests and the scheduler's free turns.
    fn counts(share: &CpuShare) -> (usize, usize) {
        let turns = activity(share);
        let free = turns.scheduler.state.lock().unwrap().free;
        (turns.long_running.load(Ordering::SeqCst), free)
    }

    /// Whether `waiting` gets its turn within 50 ms.
    async fn granted(waiting: &mut tokio::task::JoinHandle<Turn>) -> Option<Turn> {
        tokio::time::timeout(Duration::from_millis(50), waiting)
            .await
            .ok()
            .map(Result::unwrap)
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
    async fn an_activity_alone_gets_every_core_and_a_cap_bounds_it() {
        let scheduler = CpuScheduler::new(2);
        let alone = activity(&scheduler.share(None));
        let both = [
            wait_for_turn(alone.clone(), false).await,
            wait_for_turn(alone.clone(), false).await,
        ];
        let mut third = tokio::spawn(wait_for_turn(alone.clone(), false));
        assert!(granted(&mut third).await.is_none(), "two cores, two turns");
        drop(both);
        assert!(granted(&mut third).await.is_some());

        let capped = activity(&scheduler.share(Some(1)));
        let held = wait_for_turn(capped.clone(), false).await;
        let mut second = tokio::spawn(wait_for_turn(capped.clone(), false));
        assert!(
            granted(&mut second).await.is_none(),
            "max_cores = 1 with a core free"
        );
        drop(held);
        assert!(granted(&mut second).await.is_some());
    }

    #[tokio::test]
    async fn activities_that_compute_side_by_side_share_the_cores_equally() {
        let scheduler = CpuScheduler::new(2);
        let (a, b) = (
            activity(&scheduler.share(None)),
            activity(&scheduler.share(None)),
        );
        // A came first and holds both turns; A and B each have a guest waiting.
        let mut a_held = vec![
            wait_for_turn(a.clone(), false).await,
            wait_for_turn(a.clone(), false).await,
        ];
        let mut a_waiting = tokio::spawn(wait_for_turn(a.clone(), false));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut b_waiting = tokio::spawn(wait_for_turn(b.clone(), false));
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A's guest yields at a tick: the turn goes to B, which holds none.
        drop(a_held.pop());
        let b_turn = granted(&mut b_waiting).await.expect("B is served first");
        assert!(granted(&mut a_waiting).await.is_none());
        // Each holds one now; when A yields again, its own waiting guest is served.
        drop(a_held.pop());
        let a_turn = granted(&mut a_waiting).await.expect("A keeps its half");
        let held = |turns: &ActivityTurns| scheduler.state.lock().unwrap().queue(turns.id).held;
        assert_eq!((held(&a), held(&b)), (1, 1));
        drop((a_turn, b_turn));
        assert_eq!(scheduler.state.lock().unwrap().free, 2);
    }

    #[tokio::test]
    async fn a_core_stays_free_while_a_neighbour_has_tasks_and_for_a_while_after() {
        let scheduler = CpuScheduler::new(2);
        let (tenant, neighbour) = (scheduler.share(None), scheduler.share(None));
        let computing = activity(&tenant);
        let mut held = vec![
            wait_for_turn(computing.clone(), false).await,
            wait_for_turn(computing.clone(), false).await,
        ];
        let neighbours_task = GuestCpu::new(&neighbour);
        drop(held.pop()); // a tick: the turn is given back...
        let mut again = tokio::spawn(wait_for_turn(computing.clone(), false));
        assert!(
            granted(&mut again).await.is_none(),
            "...and kept free for the neighbour"
        );
        drop(neighbours_task);
        assert!(
            granted(&mut again).await.is_none(),
            "the neighbour was active less than a second ago"
        );
        tokio::time::sleep(NEIGHBOUR_WINDOW).await;
        drop(held.pop()); // the next tick, once the neighbour has been gone a while
        let both = [
            granted(&mut again).await.expect("alone again: every core"),
            wait_for_turn(computing.clone(), false).await,
        ];
        assert_eq!(counts(&tenant).1, 0);
        drop(both);
    }

    #[tokio::test]
    async fn a_starting_guest_gets_the_next_turn_ahead_of_a_spinning_one() {
        let scheduler = CpuScheduler::new(1);
        let (spinning, other) = (
            activity(&scheduler.share(None)),
            activity(&scheduler.share(None)),
        );
        let held = wait_for_turn(spinning.clone(), false).await;
        let mut spinner = tokio::spawn(wait_for_turn(other.clone(), false));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut newcomer = tokio::spawn(wait_for_turn(spinning.clone(), true));
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        let newcomers_turn = granted(&mut newcomer)
            .await
            .expect("the newcomer goes first");
        assert!(granted(&mut spinner).await.is_none());
        drop(newcomers_turn);
        drop(granted(&mut spinner).await.unwrap());
        assert_eq!(scheduler.state.lock().unwrap().free, 1);
    }

    #[tokio::test]
    async fn a_turn_skips_a_guest_that_stopped_waiting() {
        let share = CpuShare::cores(1);
        let turns = activity(&share);
        let held = wait_for_turn(turns.clone(), false).await;
        let abandoned = tokio::spawn(wait_for_turn(turns.clone(), false));
        let mut waiting = tokio::spawn(wait_for_turn(turns.clone(), false));
        tokio::time::sleep(Duration::from_millis(20)).await;
        abandoned.abort(); // its task ended while it waited
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        drop(
            granted(&mut waiting)
                .await
                .expect("the guest still waiting"),
        );
        assert_eq!(counts(&share).1, 1);
    }

    #[test]
    fn an_activity_leaves_the_scheduler_with_its_last_share() {
        let scheduler = CpuScheduler::new(2);
        let share = scheduler.share(None);
        let guest = GuestCpu::new(&share);
        drop(share);
        assert_eq!(scheduler.state.lock().unwrap().activities.len(), 1);
        drop(guest);
        assert!(scheduler.state.lock().unwrap().activities.is_empty());
    }
}
