//! Group commit: writes of one kind that arrive while the last ones are being written are gathered
//! and written together, in one database call and one commit. Each caller is answered with its
//! own outcome, and only once the write that holds it has committed (or failed).
//!
//! Nothing waits for a batch to fill: a write that finds the writers idle goes at once, alone, so
//! a lone caller pays two task hand-offs and no delay. Under load, the writes that queue behind
//! one in flight go together next: one round trip, one commit and one turn of each lock they
//! take, where each would have paid its own.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, mpsc, oneshot};

use super::error::RepoError;

/// One queued write and where its outcome goes.
type Queued<I, O> = (I, oneshot::Sender<Result<O, RepoError>>);

/// Writes a batch; returns one outcome per item, in the items' order.
pub trait BatchWriter<I, O>: Send + Sync + 'static {
    fn write(&self, items: Vec<I>) -> impl Future<Output = Vec<Result<O, RepoError>>> + Send;
}

/// The queue of one kind of write and its writer tasks, started on first use.
pub struct GroupCommit<I, O, W> {
    writer: Arc<W>,
    /// Writes in flight at once: each writer task writes one batch at a time.
    writers: usize,
    /// The most items in one batch.
    max_batch: usize,
    queue: OnceLock<mpsc::UnboundedSender<Queued<I, O>>>,
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
        }
    }

    /// Writes `item` with whatever else is queued; answers once that write has committed.
    ///
    /// # Errors
    /// The item's own outcome; `Unavailable` when the writer is gone (the runtime is shutting
    /// down), or when its batch failed as a whole (a panic): the item was not written.
    pub async fn write(&self, item: I) -> Result<O, RepoError> {
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

/// One writer task: takes what is queued (waiting for the first item), writes it, answers, and
/// goes again until every sender is gone.
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
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
        let count = items.len();
        // Its own task, so that a panic fails this batch's callers and not the writer.
        let written = {
            let writer = Arc::clone(&writer);
            tokio::spawn(async move { writer.write(items).await }).await
        };
        let outcomes = match written {
            Ok(outcomes) if outcomes.len() == count => outcomes,
            Ok(outcomes) => (0..count)
                .map(|_| {
                    Err(RepoError::Other(format!(
                        "a batch of {count} writes came back with {} outcomes",
                        outcomes.len()
                    )))
                })
                .collect(),
            Err(err) => (0..count)
                .map(|_| Err(RepoError::Unavailable(format!("the batch failed: {err}"))))
                .collect(),
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

    /// Records the batches it is given, each once its gate lets it through; an item `0` fails
    /// alone, an item `99` panics its batch.
    struct Recorder {
        batches: StdMutex<Vec<Vec<u32>>>,
        gate: tokio::sync::Semaphore,
    }

    impl BatchWriter<u32, u32> for Arc<Recorder> {
        async fn write(&self, items: Vec<u32>) -> Vec<Result<u32, RepoError>> {
            let _open = self.gate.acquire().await.expect("gate");
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

    #[tokio::test]
    async fn a_lone_write_goes_alone_and_those_queued_behind_it_go_together() {
        let recorder = recorder();
        let group = Arc::new(GroupCommit::new(Arc::clone(&recorder), 1, 64));
        recorder.gate.add_permits(1);
        assert_eq!(group.write(1).await.expect("written"), 10);
        // The next write holds the writer (the gate is shut) while five more queue behind it.
        let first = tokio::spawn({
            let group = Arc::clone(&group);
            async move { group.write(2).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let queued: Vec<_> = [3, 0, 4, 5, 6]
            .into_iter()
            .map(|i| {
                let group = Arc::clone(&group);
                tokio::spawn(async move { group.write(i).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        recorder.gate.add_permits(2);
        assert_eq!(first.await.expect("task").expect("written"), 20);
        let mut outcomes = Vec::new();
        for task in queued {
            outcomes.push(task.await.expect("task"));
        }
        assert!(matches!(outcomes[1], Err(RepoError::Precondition(_))));
        let values: Vec<_> = outcomes.into_iter().filter_map(Result::ok).collect();
        assert_eq!(values, [30, 40, 50, 60], "each its own outcome");
        let batches = recorder.batches.lock().expect("batches").clone();
        assert_eq!(batches[0], [1]);
        assert_eq!(batches[1], [2]);
        assert_eq!(
            batches[2].len(),
            5,
            "the queued ones in one batch: {batches:?}"
        );
    }

    #[tokio::test]
    async fn a_batch_that_panics_fails_its_callers_and_the_writer_goes_on() {
        let recorder = recorder();
        recorder.gate.add_permits(10);
        let group = GroupCommit::new(Arc::clone(&recorder), 1, 1);
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
