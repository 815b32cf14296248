//! Group commit: writes of one kind that arrive while the last ones are being written are gathered
//! and written together, in one database call and one commit. Each caller is answered with its
//! own outcome, and only once the write that holds it has committed (or failed).
//!
//! Nothing waits for a batch to fill: a write that finds nothing in flight and nothing queued is
//! written at once, alone, in its caller's own task, so a lone caller pays no hand-off and no
//! delay. Under load, the writes that queue behind those in flight go together next: one round
//! trip, one commit and one turn of each lock they take, where each would have paid its own.
//!
//! A writer that must wait its turn at the database before it writes (a SQLite file's writers
//! take turns in the process) has a writer task gather its batch only once it holds the turn:
//! what arrives while it waits goes in that batch instead of waiting for the next.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use futures_util::FutureExt;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::error::RepoError;

/// One queued write and where its outcome goes.
type Queued<I, O> = (I, oneshot::Sender<Result<O, RepoError>>);

/// Writes a batch; returns one outcome per item, in the items' order.
pub trait BatchWriter<I, O>: Send + Sync + 'static {
    /// What a write holds from before its batch is gathered until it is written; `()` for a
    /// writer that waits for nothing before it writes.
    type Turn: Send;

    /// Waits until this writer may write.
    ///
    /// # Errors
    /// The writer cannot write now (its database is closing): the items are failed with it.
    fn turn(&self) -> impl Future<Output = Result<Self::Turn, RepoError>> + Send;

    /// Writes `items` in `turn`.
    fn write(
        &self,
        items: Vec<I>,
        turn: Self::Turn,
    ) -> impl Future<Output = Vec<Result<O, RepoError>>> + Send;
}

/// Batches in flight at once for each kind of write in the service (besides a lone write in its
/// caller's task): one being written while the next gathers. On PostgreSQL the next waits in the
/// database for the locks the first holds and starts as they are released; on SQLite it waits
/// for the file's turn and gathers what arrived meanwhile once it has it.
pub const WRITERS: usize = 2;

/// The queue of one kind of write and its writer tasks, started on first use.
pub struct GroupCommit<I, O, W> {
    writer: Arc<W>,
    /// Writes in flight at once: each writer task writes one batch at a time.
    writers: usize,
    /// The most items in one batch.
    max_batch: usize,
    queue: OnceLock<mpsc::UnboundedSender<Queued<I, O>>>,
    /// Writes being written or queued now, its own included.
    pending: AtomicUsize,
}

impl<I, O, W> std::fmt::Debug for GroupCommit<I, O, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("writers", &self.writers)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl<I, O, W> GroupCommit<I, O, W>
where
    I: Send + 'static,
    O: Send + 'static,
    W: BatchWriter<I, O>,
{
    /// `writers` batches in flight at once (at least one), each of at most `max_batch` items.
    pub fn new(writer: W, writers: usize, max_batch: usize) -> Self {
        Self {
            writer: Arc::new(writer),
            writers: writers.max(1),
            max_batch: max_batch.max(1),
            queue: OnceLock::new(),
            pending: AtomicUsize::new(0),
        }
    }

    /// The service's group commit for `writer`: [`WRITERS`] batches in flight, each of at most
    /// `max_batch` writes.
    pub fn shared(writer: W, max_batch: usize) -> Arc<Self> {
        Arc::new(Self::new(writer, WRITERS, max_batch))
    }

    /// Writes `item` with whatever else is queued; answers once that write has committed.
    ///
    /// # Errors
    /// The item's own outcome; `Unavailable` when the writer is gone (the runtime is shutting
    /// down), or when its batch failed as a whole (a panic): the item was not written.
    pub async fn write(&self, item: I) -> Result<O, RepoError> {
        let pending = Pending::enter(&self.pending);
        if pending.alone {
            // No batch to join: hand-offs to a writer task would only add wake-ups.
            let turn = self.writer.turn().await?;
            return write_caught(self.writer.as_ref(), vec![item], turn)
                .await
                .pop()
                .unwrap_or_else(|| Err(RepoError::Other("a write came back empty".into())));
        }
        let (reply, outcome) = oneshot::channel();
        self.queue()
            .send((item, reply))
            .map_err(|_| RepoError::Unavailable("the writer has stopped".into()))?;
        outcome
            .await
            .map_err(|_| RepoError::Unavailable("the write was abandoned".into()))?
    }

    fn queue(&self) -> &mpsc::UnboundedSender<Queued<I, O>> {
        self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let receiver = Arc::new(Mutex::new(receiver));
            for _ in 0..self.writers {
                tokio::spawn(run_writer(
                    Arc::clone(&receiver),
                    Arc::clone(&self.writer),
                    self.max_batch,
                ));
            }
            sender
        })
    }
}

/// Counts a write as pending from its start until its caller has its answer or is gone.
struct Pending<'a> {
    count: &'a AtomicUsize,
    /// Nothing else was pending when this write started.
    alone: bool,
}

impl<'a> Pending<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let before = count.fetch_add(1, Ordering::AcqRel);
        Self {
            count,
            alone: before == 0,
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Writes `items` and returns one outcome per item; a panic (or a writer that miscounts) fails
/// every item as not written, and leaves the caller, a writer task among them, running.
async fn write_caught<I, O, W: BatchWriter<I, O>>(
    writer: &W,
    items: Vec<I>,
    turn: W::Turn,
) -> Vec<Result<O, RepoError>> {
    let count = items.len();
    match AssertUnwindSafe(writer.write(items, turn))
        .catch_unwind()
        .await
    {
        Ok(outcomes) if outcomes.len() == count => outcomes,
        Ok(outcomes) => (0..count)
            .map(|_| {
                Err(RepoError::Other(format!(
                    "a batch of {count} writes came back with {} outcomes",
                    outcomes.len()
                )))
            })
            .collect(),
        Err(_) => (0..count)
            .map(|_| {
                Err(RepoError::Unavailable(
                    "the batch failed: it panicked".into(),
                ))
            })
            .collect(),
    }
}

/// One writer task: waits for the first item, then for the writer's turn, takes what is queued
/// by then, writes it, answers, and goes again until every sender is gone. It holds the queue
/// while it waits for the turn, so that another writer task does not take the writes that
/// arrive meanwhile and wait for the turn behind it with them.
async fn run_writer<I, O, W>(
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Queued<I, O>>>>,
    writer: Arc<W>,
    max_batch: usize,
) where
    I: Send + 'static,
    O: Send + 'static,
    W: BatchWriter<I, O>,
{
    loop {
        let (batch, turn) = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let turn = writer.turn().await;
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            (batch, turn)
        };
        let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
        let outcomes = match turn {
            Ok(turn) => write_caught(writer.as_ref(), items, turn).await,
            Err(err) => items.iter().map(|_| Err(err.clone())).collect(),
        };
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that has gone away (its call was cancelled) no longer needs the answer.
            let _ = reply.send(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// Records the batches it is given, each once its gate lets it through (a permit per batch);
    /// an item `0` fails alone, an item `99` panics its batch.
    struct Recorder {
        batches: StdMutex<Vec<Vec<u32>>>,
        gate: tokio::sync::Semaphore,
    }

    impl BatchWriter<u32, u32> for Arc<Recorder> {
        type Turn = ();

        async fn turn(&self) -> Result<(), RepoError> {
            Ok(())
        }

        async fn write(&self, items: Vec<u32>, (): ()) -> Vec<Result<u32, RepoError>> {
            self.gate.acquire().await.expect("gate").forget();
            assert!(!items.contains(&99), "a batch panics");
            self.batches.lock().expect("batches").push(items.clone());
            items
                .into_iter()
                .map(|i| {
                    if i == 0 {
                        Err(RepoError::Precondition("zero".into()))
                    } else {
                        Ok(i * 10)
                    }
                })
                .collect()
        }
    }

    fn recorder() -> Arc<Recorder> {
        Arc::new(Recorder {
            batches: StdMutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(0),
        })
    }

    fn spawn_write<W: BatchWriter<u32, u32>>(
        group: &Arc<GroupCommit<u32, u32, W>>,
        item: u32,
    ) -> tokio::task::JoinHandle<Result<u32, RepoError>> {
        let group = Arc::clone(group);
        tokio::spawn(async move { group.write(item).await })
    }

    async fn settle() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_lone_write_goes_alone_and_those_queued_behind_it_go_together() {
        let recorder = recorder();
        let group = Arc::new(GroupCommit::new(Arc::clone(&recorder), 1, 64));
        recorder.gate.add_permits(1);
        assert_eq!(group.write(1).await.expect("written"), 10);
        // The gate is shut: a lone write waits at it in its caller's task, the next in the one
        // writer task, and five more queue behind them.
        let alone = spawn_write(&group, 2);
        settle().await;
        let next = spawn_write(&group, 3);
        settle().await;
        let queued: Vec<_> = [4, 0, 5, 6, 7]
            .into_iter()
            .map(|i| spawn_write(&group, i))
            .collect();
        settle().await;
        recorder.gate.add_permits(3);
        assert_eq!(alone.await.expect("task").expect("written"), 20);
        assert_eq!(next.await.expect("task").expect("written"), 30);
        let mut outcomes = Vec::new();
        for task in queued {
            outcomes.push(task.await.expect("task"));
        }
        assert!(matches!(outcomes[1], Err(RepoError::Precondition(_))));
        let values: Vec<_> = outcomes.into_iter().filter_map(Result::ok).collect();
        assert_eq!(values, [40, 50, 60, 70], "each its own outcome");
        let mut batches = recorder.batches.lock().expect("batches").clone();
        assert_eq!(batches.remove(0), [1]);
        batches.sort_by_key(Vec::len);
        assert_eq!(
            batches,
            [vec![2], vec![3], vec![4, 0, 5, 6, 7]],
            "the queued ones in one batch"
        );
    }

    #[tokio::test]
    async fn the_service_s_group_commit_has_two_batches_in_flight() {
        let recorder = recorder();
        let group = GroupCommit::shared(Arc::clone(&recorder), 64);
        // The gate is shut: a lone write waits at it in its caller's task, a second in a writer
        // task, and three more come one after another.
        let mut tasks = Vec::new();
        for item in 1..=5 {
            tasks.push(spawn_write(&group, item));
            settle().await;
        }
        recorder.gate.add_permits(10);
        for task in tasks {
            task.await.expect("task").expect("written");
        }
        let mut batches = recorder.batches.lock().expect("batches").clone();
        batches.sort();
        assert_eq!(
            batches,
            [vec![1], vec![2], vec![3], vec![4, 5]],
            "with no turn to wait for, a second writer task takes the third write at once"
        );
    }

    /// Records the batches it writes, each in a turn of one at a time (as a SQLite file's
    /// writers take turns), and fails every write once its turns are closed.
    struct TakesTurns {
        batches: StdMutex<Vec<Vec<u32>>>,
        turns: Arc<tokio::sync::Semaphore>,
    }

    impl BatchWriter<u32, u32> for Arc<TakesTurns> {
        type Turn = tokio::sync::OwnedSemaphorePermit;

        async fn turn(&self) -> Result<Self::Turn, RepoError> {
            Arc::clone(&self.turns)
                .acquire_owned()
                .await
                .map_err(|_| RepoError::Unavailable("closed".into()))
        }

        async fn write(&self, items: Vec<u32>, _turn: Self::Turn) -> Vec<Result<u32, RepoError>> {
            self.batches.lock().expect("batches").push(items.clone());
            items.into_iter().map(Ok).collect()
        }
    }

    #[tokio::test]
    async fn a_writer_task_gathers_its_batch_once_it_holds_the_turn() {
        let writer = Arc::new(TakesTurns {
            batches: StdMutex::new(Vec::new()),
            turns: Arc::new(tokio::sync::Semaphore::new(1)),
        });
        let group = GroupCommit::shared(Arc::clone(&writer), 64);
        // Another writer holds the turn: a lone write waits for it in its caller's task, the
        // next in a writer task, and three more arrive one after another meanwhile.
        let held = Arc::clone(&writer.turns)
            .acquire_owned()
            .await
            .expect("the turn");
        let mut tasks = Vec::new();
        for item in 1..=5 {
            tasks.push(spawn_write(&group, item));
            settle().await;
        }
        drop(held);
        for task in tasks {
            task.await.expect("task").expect("written");
        }
        assert_eq!(
            writer.batches.lock().expect("batches").clone(),
            [vec![1], vec![2, 3, 4, 5]],
            "the writes that arrived while the turn was awaited go in its batch"
        );
        // With the turns closed, a lone write and those of a batch fail, and nothing is written.
        writer.turns.close();
        let other = Pending::enter(&group.pending);
        assert!(matches!(
            group.write(6).await,
            Err(RepoError::Unavailable(_))
        ));
        drop(other);
        assert!(matches!(
            group.write(7).await,
            Err(RepoError::Unavailable(_))
        ));
        assert_eq!(writer.batches.lock().expect("batches").len(), 2);
    }

    tokio::task_local! {
        static CALLER: u32;
    }

    /// Answers with the caller's task-local value when it runs in the caller's own task.
    struct WhereItRuns;

    impl BatchWriter<u32, u32> for WhereItRuns {
        type Turn = ();

        async fn turn(&self) -> Result<(), RepoError> {
            Ok(())
        }

        async fn write(&self, items: Vec<u32>, (): ()) -> Vec<Result<u32, RepoError>> {
            let seen = CALLER.try_with(|caller| *caller).unwrap_or(0);
            items.into_iter().map(|_| Ok(seen)).collect()
        }
    }

    #[tokio::test]
    async fn a_lone_write_is_written_in_its_callers_own_task() {
        let group = GroupCommit::new(WhereItRuns, 1, 64);
        let seen = CALLER.scope(7, group.write(1)).await.expect("written");
        assert_eq!(seen, 7, "no hand-off to a writer task");
    }

    #[tokio::test]
    async fn a_write_that_finds_another_pending_is_handed_to_a_writer_task() {
        let group = GroupCommit::new(WhereItRuns, 1, 64);
        // Another write is pending (being written or queued) all along.
        let _other = Pending::enter(&group.pending);
        let seen = CALLER.scope(7, group.write(2)).await.expect("written");
        assert_eq!(seen, 0, "written by a writer task, not in the caller's");
    }

    #[tokio::test]
    async fn a_batch_that_panics_fails_its_callers_and_the_writer_goes_on() {
        let recorder = recorder();
        recorder.gate.add_permits(10);
        let group = GroupCommit::new(Arc::clone(&recorder), 1, 1);
        // Alone, in the caller's task.
        assert!(matches!(
            group.write(99).await,
            Err(RepoError::Unavailable(_))
        ));
        // With another pending, in the writer task, which goes on after it.
        let _other = Pending::enter(&group.pending);
        assert!(matches!(
            group.write(99).await,
            Err(RepoError::Unavailable(_))
        ));
        assert_eq!(group.write(7).await.expect("written after the panic"), 70);
    }

    #[tokio::test]
    async fn batches_hold_at_most_the_maximum() {
        let recorder = recorder();
        let group = Arc::new(GroupCommit::new(Arc::clone(&recorder), 1, 3));
        let tasks: Vec<_> = (1..=7)
            .map(|i| {
                let group = Arc::clone(&group);
                tokio::spawn(async move { group.write(i).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        recorder.gate.add_permits(10);
        for task in tasks {
            task.await.expect("task").expect("written");
        }
        let batches = recorder.batches.lock().expect("batches").clone();
        assert!(batches.iter().all(|b| b.len() <= 3), "{batches:?}");
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 7);
    }
}
