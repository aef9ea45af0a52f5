//! The task journal (`[worker] journal`): what survives a SIGKILL, an OOM kill or a lost
//! container. A task's token is written and synced before its guest starts, its outcome
//! before its report is sent, and its entry is marked done once the report landed (or Step
//! Functions said the task is over). On start, before polling, the worker replays what an
//! earlier worker left ([`replay`]): a recorded outcome is reported, a task without one is
//! failed with `Worker.Restarted` so that the state machine's Retry runs it again within
//! seconds, instead of after its HeartbeatSeconds or TimeoutSeconds.
//!
//! - `file`: the format (checksummed lines), reading an old journal, whole-file rewrites;
//! - `writer`: the thread that appends and syncs (one sync per batch of waiting records);
//! - `replay`: reporting what an earlier worker left.
//!
//! One worker per journal: a lock file beside it (`PATH.lock`) is held while the worker
//! runs. Tokens are secrets: the files are mode 0600 and no token is ever logged.

mod file;
mod replay;
mod writer;

pub use file::JournaledTask;
pub(crate) use replay::replay;

use crate::sandbox::Outcome;
use crate::worker::metrics::Metrics;
use anyhow::{bail, Context as _, Result};
use file::{Found, Header, Record};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::SystemTime;
use tokio::sync::oneshot;
use writer::{Request, Writer, WriterMetrics};

/// The journal's file name when `[worker] journal` names a directory.
pub const FILE_NAME: &str = "tasks.journal";

/// The journal a worker writes while it runs.
pub struct Journal {
    /// The journal file.
    path: PathBuf,
    requests: Sender<Request>,
    next_id: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The lock file, locked while this worker runs.
    _lock: File,
}

/// A task's entry in the journal.
pub(crate) struct EntryId(u64);

/// What an earlier worker left in the journal: its tasks without `done`, and the cause a
/// task without an outcome is failed with.
pub struct Unfinished {
    pub(crate) tasks: Vec<(EntryId, JournaledTask)>,
    /// `Worker.Restarted`'s cause: which worker stopped, and when.
    pub(crate) restart_cause: String,
}

impl Unfinished {
    /// How many tasks the earlier worker left.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether it left none.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Journal {
    /// Opens the journal at `path` (a file, or a directory to hold [`FILE_NAME`]) for the
    /// worker `worker_name`: locks it, reads what an earlier worker left, and rewrites it
    /// with only that. Fails if another worker holds it or it cannot be read or written; a
    /// foreign file is moved aside and unreadable lines are skipped, each with a warning.
    pub fn open(
        path: &Path,
        worker_name: &str,
        metrics: &Metrics,
    ) -> Result<(Journal, Unfinished)> {
        let path = if path.is_dir() {
            path.join(FILE_NAME)
        } else {
            path.to_path_buf()
        };
        let lock = lock(&path, worker_name)?;
        let shown = path.display();
        let found = file::read(&path).with_context(|| {
            format!("cannot read the task journal {shown}: fix its permissions, or point `[worker] journal` elsewhere")
        })?;
        let now = SystemTime::now();
        let (tasks, restart_cause) = match found {
            Found::Nothing => (Vec::new(), String::new()),
            Found::Foreign(why) => {
                let aside = file::with_suffix(
                    &path,
                    &format!(
                        ".foreign-{}-{}",
                        humantime::format_rfc3339_seconds(now),
                        std::process::id()
                    ),
                );
                std::fs::rename(&path, &aside).with_context(|| {
                    format!("the task journal {shown} is not a journal ({why}) and cannot be moved aside")
                })?;
                tracing::error!(
                    journal = %shown,
                    moved_to = %aside.display(),
                    "the task journal is not one ({why}): moved it aside and started a new one; \
                     look at it, then delete it"
                );
                (Vec::new(), String::new())
            }
            Found::Journal(old) => {
                for (line, why) in &old.skipped {
                    tracing::warn!(journal = %shown, line, "skipped a journal line: {why}");
                }
                let cause = format!(
                    "the worker that ran this task ({}, pid {}, started {}) stopped before its \
                     guest ended; its journal was last written at {}. Worker {worker_name} \
                     failed the task when it started at {}, so that a Retry can run it again",
                    old.header.worker,
                    old.header.pid,
                    old.header.started,
                    humantime::format_rfc3339_seconds(old.last_write),
                    humantime::format_rfc3339_seconds(now),
                );
                (old.tasks, cause)
            }
        };
        // The new journal: this worker's header and the tasks left, renumbered.
        let header = Header::now(worker_name);
        let mut bytes = file::encode(&Record::Header(header.clone()));
        let mut open = std::collections::BTreeMap::new();
        for (id, task) in (0u64..).zip(&tasks) {
            let mut lines = file::encode(&Record::Started {
                id,
                activity: task.activity.clone(),
                token: task.token.clone(),
            });
            if let Some(outcome) = &task.outcome {
                lines.extend(file::encode(&Record::Outcome {
                    id,
                    outcome: outcome.into(),
                }));
            }
            bytes.extend_from_slice(&lines);
            open.insert(id, lines);
        }
        let file = file::JournalFile::create(&path, &bytes)
            .with_context(|| format!("cannot write the task journal {shown}"))?;
        let open_entries = metrics.journal_open_entries.clone();
        open_entries.set(open.len() as i64);
        let writer = Writer {
            path: path.clone(),
            header,
            file,
            open,
            compact_after: writer::COMPACT_AFTER,
            metrics: WriterMetrics {
                syncs: metrics.journal_syncs.clone(),
                open_entries,
            },
        };
        let (requests, received) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run(received))
            .context("cannot start the journal's writer thread")?;
        let unfinished = Unfinished {
            tasks: (0u64..).map(EntryId).zip(tasks).collect(),
            restart_cause,
        };
        let journal = Journal {
            next_id: AtomicU64::new(unfinished.tasks.len() as u64),
            path,
            requests,
            writer: Mutex::new(Some(writer)),
            _lock: lock,
        };
        Ok((journal, unfinished))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that a task of `activity` with `token` arrived; returns once it is synced (or
    /// the writer has logged why it could not be: the task then goes on without it).
    pub(crate) async fn started(&self, activity: &str, token: &str) -> EntryId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.append_synced(Record::Started {
            id,
            activity: activity.to_string(),
            token: token.to_string(),
        })
        .await;
        EntryId(id)
    }

    /// Records the outcome of the task of `entry`; returns once it is synced (or the writer
    /// has logged why not).
    pub(crate) async fn outcome(&self, entry: &EntryId, outcome: &Outcome) {
        self.append_synced(Record::Outcome {
            id: entry.0,
            outcome: outcome.into(),
        })
        .await;
    }

    /// Marks the task of `entry` done (not synced: replaying it again is harmless, as Step
    /// Functions refuses a second report on a closed task).
    pub(crate) fn done(&self, entry: EntryId) {
        let _ = self.requests.send(Request::Append {
            record: Record::Done { id: entry.0 },
            synced: None,
        });
    }

    /// Appends `record` and waits for the sync (the writer logs a failure).
    async fn append_synced(&self, record: Record) {
        let (synced, done) = oneshot::channel();
        let sent = self.requests.send(Request::Append {
            record,
            synced: Some(synced),
        });
        if sent.is_ok() {
            let _ = done.await;
        }
    }

    /// Stops the writer, leaving the file with only the entries still open (none after a
    /// full drain); later records are dropped.
    pub fn close(&self) {
        let _ = self.requests.send(Request::Close);
        if let Some(writer) = self.writer.lock().unwrap().take() {
            let _ = writer.join();
        }
    }
}

/// Locks `PATH.lock` for this worker, or says which worker holds it.
fn lock(path: &Path, worker_name: &str) -> Result<File> {
    let lock_path = file::with_suffix(path, ".lock");
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| {
            format!(
                "cannot open the task journal's lock file {}: `[worker] journal` must be on a \
                 writable local disk",
                lock_path.display()
            )
        })?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            bail!(
                "the task journal {} is in use by another worker ({}): give each worker its own \
                 `[worker] journal`",
                path.display(),
                holder.trim()
            );
        }
        Err(TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{worker_name}, pid {}", std::process::id())?;
    Ok(lock)
}
