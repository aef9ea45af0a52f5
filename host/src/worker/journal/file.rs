//! The journal's file: one record per line, `CRC32 JSON` (the checksum, as 8 hex digits, of
//! the JSON text after it), the first line a header naming the worker that writes it. A
//! task's records share its entry id: `started` (activity and token), `outcome` (what its
//! report says) and `done` (the report landed, or Step Functions said the task is over).
//! Written with mode 0600 (a token reports on its task), in place into space allocated
//! ahead, which reads as NUL bytes after the last record.

use crate::sandbox::Outcome;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::SystemTime;

/// The header's `journal` field: what tells a journal from a foreign file.
const FORMAT: &str = "sfn-wasm-worker journal";
/// The format version this worker writes and reads.
const VERSION: u32 = 1;

/// One line of the journal.
#[derive(Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub(super) enum Record {
    /// The first line.
    Header(Header),
    /// A task arrived; written before its guest starts.
    Started {
        id: u64,
        activity: String,
        token: String,
    },
    /// A task's guest ended with this outcome; written before its report is sent.
    Outcome { id: u64, outcome: RecordedOutcome },
    /// A task's report landed, or Step Functions said the task is over.
    Done { id: u64 },
}

/// Which worker writes the journal.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Header {
    journal: String,
    version: u32,
    /// The worker's name (`workerName` on its polls).
    pub(super) worker: String,
    pub(super) pid: u32,
    /// When it opened the journal (RFC 3339).
    pub(super) started: String,
}

impl Header {
    /// The header of this process, the worker `worker`.
    pub(super) fn now(worker: &str) -> Header {
        Header {
            journal: FORMAT.to_string(),
            version: VERSION,
            worker: worker.to_string(),
            pid: std::process::id(),
            started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }
}

/// A task's outcome as recorded (the output as text, so that it is sent back byte for byte).
#[derive(Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub(super) enum RecordedOutcome {
    Succeeded { output: String },
    Failed { error: String, cause: String },
}

impl From<&Outcome> for RecordedOutcome {
    fn from(outcome: &Outcome) -> RecordedOutcome {
        match outcome {
            Outcome::Succeeded { output } => RecordedOutcome::Succeeded {
                output: output.clone(),
            },
            Outcome::Failed { error, cause } => RecordedOutcome::Failed {
                error: error.clone(),
                cause: cause.clone(),
            },
        }
    }
}

impl From<RecordedOutcome> for Outcome {
    fn from(recorded: RecordedOutcome) -> Outcome {
        match recorded {
            RecordedOutcome::Succeeded { output } => Outcome::Succeeded { output },
            RecordedOutcome::Failed { error, cause } => Outcome::Failed { error, cause },
        }
    }
}

/// A task the journal holds that has no `done`: its guest was running, or its report was
/// not known to have landed, when the journal was last written. Its `Debug` never shows the
/// token.
pub struct JournaledTask {
    /// The activity's ARN.
    pub activity: String,
    /// The token that reports on it.
    pub token: String,
    /// Its outcome, if its guest had ended.
    pub outcome: Option<Outcome>,
}

impl std::fmt::Debug for JournaledTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournaledTask")
            .field("activity", &self.activity)
            .field("task_id", &crate::worker::sfn::task_id(&self.token))
            .field("outcome", &self.outcome)
            .finish()
    }
}

/// One line of the journal, newline included.
pub(super) fn encode(record: &Record) -> Vec<u8> {
    let json = serde_json::to_string(record).expect("a journal record serializes");
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes())).into_bytes()
}

/// A line (without its newline) back into its record, or why it cannot be read.
fn decode(line: &[u8]) -> Result<Record, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let (checksum, json) = text
        .split_once(' ')
        .ok_or_else(|| "no checksum".to_string())?;
    let checksum = u32::from_str_radix(checksum, 16).map_err(|_| "bad checksum".to_string())?;
    if checksum != crc32fast::hash(json.as_bytes()) {
        return Err("checksum mismatch (a torn or altered line)".to_string());
    }
    serde_json::from_str(json).map_err(|err| format!("not a record: {err}"))
}

/// What was found at the journal's path.
pub(super) enum Found {
    /// Nothing (no file, or an empty one): a first start.
    Nothing,
    /// Not a journal of this worker's format; the reason.
    Foreign(String),
    /// A journal.
    Journal(OldJournal),
}

/// A journal an earlier worker left.
pub(super) struct OldJournal {
    /// Who wrote it.
    pub(super) header: Header,
    /// When it was last written: about when that worker stopped.
    pub(super) last_write: SystemTime,
    /// Its tasks without `done`, in the order they arrived.
    pub(super) tasks: Vec<JournaledTask>,
    /// Lines that could not be read and were skipped: (line number, why).
    pub(super) skipped: Vec<(usize, String)>,
}

/// Reads the journal at `path`.
pub(super) fn read(path: &Path) -> io::Result<Found> {
    let mut bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(err) => return Err(err),
    };
    // The records end where the space allocated after them (NUL bytes) begins; a NUL
    // inside a line makes that line unreadable, not what follows it.
    let end = bytes
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |last| last + 1);
    bytes.truncate(end);
    if bytes.is_empty() {
        return Ok(Found::Nothing);
    }
    let last_write = std::fs::metadata(path)?.modified()?;
    let mut lines = bytes.split_inclusive(|byte| *byte == b'\n');
    let first = lines.next().unwrap_or_default(); // not empty: there is a first line
    let header = match decode(first.strip_suffix(b"\n").unwrap_or(first)) {
        Ok(Record::Header(header)) if header.journal == FORMAT => header,
        Ok(_) => {
            return Ok(Found::Foreign(
                "its first line is not a journal header".into(),
            ))
        }
        Err(why) => {
            return Ok(Found::Foreign(format!(
                "its first line is not a journal header ({why})"
            )))
        }
    };
    if header.version > VERSION {
        return Ok(Found::Foreign(format!(
            "it is format version {} (this worker reads version {VERSION})",
            header.version
        )));
    }
    let mut open: BTreeMap<u64, JournaledTask> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (index, line) in lines.enumerate() {
        let number = index + 2;
        let Some(line) = line.strip_suffix(b"\n") else {
            skipped.push((
                number,
                "truncated (the worker stopped while writing it)".into(),
            ));
            continue;
        };
        match decode(line) {
            Ok(Record::Started {
                id,
                activity,
                token,
            }) => {
                open.insert(
                    id,
                    JournaledTask {
                        activity,
                        token,
                        outcome: None,
                    },
                );
            }
            Ok(Record::Outcome { id, outcome }) => match open.get_mut(&id) {
                Some(task) => task.outcome = Some(outcome.into()),
                None => skipped.push((
                    number,
                    format!("an outcome for entry {id}, which has not started"),
                )),
            },
            Ok(Record::Done { id }) => {
                open.remove(&id);
            }
            Ok(Record::Header(_)) => skipped.push((number, "a second header".into())),
            Err(why) => skipped.push((number, why)),
        }
    }
    Ok(Found::Journal(OldJournal {
        header,
        last_write,
        tasks: open.into_values().collect(),
        skipped,
    }))
}

/// Room made ahead of the records (the file's size set past them: a hole until written), so
/// that a sync after a write in place need not also record a new file size (BENCHMARKS.md
/// §10: about half the cost of an appending sync). It reads as NUL bytes, trimmed on reading.
const ALLOCATE_AHEAD: u64 = 1 << 20;

/// The journal file being written: records go at `written`, into space allocated ahead.
pub(super) struct JournalFile {
    file: File,
    /// Bytes of records in the file.
    written: u64,
    /// The file's size: records and the space allocated after them.
    allocated: u64,
    /// Whether the size changed since the last sync (the next one must record it).
    grown: bool,
}

impl JournalFile {
    /// Replaces the file at `path` with `lines`, whole or not at all (a new file, mode 0600,
    /// synced, renamed over it, the directory synced), with space allocated after them.
    pub(super) fn create(path: &Path, lines: &[u8]) -> io::Result<JournalFile> {
        let new = with_suffix(path, ".new");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&new)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(lines)?;
        let allocated = lines.len() as u64 + ALLOCATE_AHEAD;
        file.set_len(allocated)?;
        file.sync_all()?;
        std::fs::rename(&new, path)?;
        if let Err(err) = sync_directory(path) {
            // The rename is done: this file is the journal now, durable or not.
            tracing::warn!(journal = %path.display(), error = %err, "cannot sync the journal's directory");
        }
        Ok(JournalFile {
            file,
            written: lines.len() as u64,
            allocated,
            grown: false,
        })
    }

    /// Writes `bytes` after the last record, allocating more space first if they do not fit.
    pub(super) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let end = self.written + bytes.len() as u64;
        if end > self.allocated {
            self.allocated = end + ALLOCATE_AHEAD;
            self.file.set_len(self.allocated)?;
            self.grown = true;
        }
        self.file.write_all_at(bytes, self.written)?;
        self.written = end;
        Ok(())
    }

    /// Makes what was written durable: its data, and the file's size if it grew since.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        if self.grown {
            self.file.sync_all()?;
            self.grown = false;
            Ok(())
        } else {
            self.file.sync_data()
        }
    }

    /// Bytes of records in the file.
    pub(super) fn written(&self) -> u64 {
        self.written
    }
}

/// Syncs the directory holding `path`, so that a file created or renamed there survives a
/// crash.
pub(super) fn sync_directory(path: &Path) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)?.sync_all()
}

/// `path` with `suffix` added to its file name.
pub(super) fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(id: u64) -> Vec<u8> {
        encode(&Record::Started {
            id,
            activity: "arn:a".into(),
            token: format!("token-{id}"),
        })
    }

    #[test]
    fn records_written_in_place_read_back_up_to_the_allocated_space() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.journal");
        let mut file =
            JournalFile::create(&path, &encode(&Record::Header(Header::now("w")))).unwrap();
        for id in 0..3 {
            file.append(&started(id)).unwrap();
        }
        file.append(&encode(&Record::Done { id: 1 })).unwrap();
        let outcome = Outcome::failed("E", "c");
        file.append(&encode(&Record::Outcome {
            id: 2,
            outcome: (&outcome).into(),
        }))
        .unwrap();
        // Past the space allocated ahead: the file grows, the records stay readable.
        let big = "x".repeat(ALLOCATE_AHEAD as usize + 10);
        file.append(&encode(&Record::Started {
            id: 3,
            activity: big,
            token: "t".into(),
        }))
        .unwrap();
        file.sync().unwrap();
        let Found::Journal(old) = read(&path).unwrap() else {
            panic!("not read as a journal");
        };
        assert!(old.skipped.is_empty(), "{:?}", old.skipped);
        let tokens: Vec<&str> = old.tasks.iter().map(|t| t.token.as_str()).collect();
        assert_eq!(tokens, ["token-0", "token-2", "t"]);
        assert_eq!(old.tasks[1].outcome, Some(outcome));
    }

    #[test]
    fn a_torn_last_record_is_skipped_and_a_foreign_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.journal");
        let mut file =
            JournalFile::create(&path, &encode(&Record::Header(Header::now("w")))).unwrap();
        file.append(&started(0)).unwrap();
        let torn = started(1);
        file.append(&torn[..torn.len() / 2]).unwrap();
        let Found::Journal(old) = read(&path).unwrap() else {
            panic!("not read as a journal");
        };
        assert_eq!(old.tasks.len(), 1);
        assert_eq!(old.skipped.len(), 1);
        assert!(old.skipped[0].1.contains("truncated"));

        std::fs::write(&path, "[worker]\nname = 1\n").unwrap();
        assert!(matches!(read(&path).unwrap(), Found::Foreign(_)));
    }
}
