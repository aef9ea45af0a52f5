//! The journal's writer: one thread that appends records and syncs them, one sync for every
//! record waiting at that moment (group commit: at 64 tasks at once, one `fdatasync` covers
//! many), and rewrites the file down to its open entries once it has grown past
//! [`COMPACT_AFTER`] and is mostly done entries.

use super::file::{self, Header, JournalFile, Record};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use tokio::sync::oneshot;

/// The size of the records in the file past which it is rewritten with only its open entries
/// (when they are less than half of it).
pub(super) const COMPACT_AFTER: u64 = 4 << 20;

/// What the writer is asked to do.
pub(super) enum Request {
    /// Append `record`; if `synced` is given, sync the file and then answer there.
    Append {
        record: Record,
        synced: Option<oneshot::Sender<io::Result<()>>>,
    },
    /// Rewrite the file with only its open entries and stop.
    Close,
}

/// Counters the writer keeps up to date.
pub(super) struct WriterMetrics {
    /// Syncs of the journal file.
    pub(super) syncs: Counter,
    /// Tasks the journal holds without `done`.
    pub(super) open_entries: Gauge,
}

/// The writer's state: the file, and each open entry's lines (for rewriting).
pub(super) struct Writer {
    pub(super) path: PathBuf,
    pub(super) header: Header,
    pub(super) file: JournalFile,
    /// Each open entry's lines, by id: its `started` record, then its `outcome`.
    pub(super) open: BTreeMap<u64, Vec<u8>>,
    /// When to rewrite the file ([`COMPACT_AFTER`]; smaller in tests).
    pub(super) compact_after: u64,
    pub(super) metrics: WriterMetrics,
}

impl Writer {
    /// Serves `requests` until [`Request::Close`] or every sender is gone.
    pub(super) fn run(mut self, requests: Receiver<Request>) {
        let mut batch = Vec::new();
        loop {
            let Ok(first) = requests.recv() else {
                self.close();
                return;
            };
            batch.push(first);
            let mut closing = false;
            loop {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closing = true;
                        break;
                    }
                }
            }
            closing |= self.write_batch(&mut batch);
            if closing {
                self.close();
                return;
            }
        }
    }

    /// Appends every record of `batch` in one write, syncs once if any asks for it, answers
    /// them; returns whether a close was asked for.
    fn write_batch(&mut self, batch: &mut Vec<Request>) -> bool {
        let mut bytes = Vec::new();
        let mut waiting = Vec::new();
        let mut closing = false;
        for request in batch.drain(..) {
            match request {
                Request::Append { record, synced } => {
                    let line = file::encode(&record);
                    self.track(&record, &line);
                    bytes.extend_from_slice(&line);
                    waiting.extend(synced);
                }
                Request::Close => closing = true,
            }
        }
        let mut result = self.file.append(&bytes);
        if result.is_ok() && !waiting.is_empty() {
            result = self.file.sync();
            self.metrics.syncs.inc();
        }
        if let Err(err) = &result {
            // The file may now miss this batch or hold part of it: write it whole again from
            // the open entries (this batch's included) before going on.
            tracing::error!(
                journal = %self.path.display(),
                error = %err,
                "cannot write the task journal; rewriting it from the open entries"
            );
            result = self.rewrite();
        }
        for synced in waiting {
            let _ = synced.send(match &result {
                Ok(()) => Ok(()),
                Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
            });
        }
        self.metrics.open_entries.set(self.open.len() as i64);
        let written = self.file.written();
        if written > self.compact_after && self.open_bytes() * 2 < written {
            let _ = self.rewrite(); // logged; the file keeps growing until one succeeds
        }
        closing
    }

    /// Keeps `line` with its entry while the entry is open.
    fn track(&mut self, record: &Record, line: &[u8]) {
        match record {
            Record::Started { id, .. } => {
                self.open.insert(*id, line.to_vec());
            }
            Record::Outcome { id, .. } => {
                if let Some(lines) = self.open.get_mut(id) {
                    lines.extend_from_slice(line);
                }
            }
            Record::Done { id } => {
                self.open.remove(id);
            }
            Record::Header(_) => {}
        }
    }

    /// Bytes of the open entries' lines.
    fn open_bytes(&self) -> u64 {
        self.open.values().map(|lines| lines.len() as u64).sum()
    }

    /// Replaces the file with its header and open entries (synced).
    fn rewrite(&mut self) -> io::Result<()> {
        let mut bytes = file::encode(&Record::Header(self.header.clone()));
        for lines in self.open.values() {
            bytes.extend_from_slice(lines);
        }
        match JournalFile::create(&self.path, &bytes) {
            Ok(file) => {
                self.file = file;
                Ok(())
            }
            Err(err) => {
                tracing::error!(
                    journal = %self.path.display(),
                    error = %err,
                    "cannot rewrite the task journal: tasks in flight may not be replayed after a crash"
                );
                Err(err)
            }
        }
    }

    /// Leaves the file with only its open entries (none after a full drain).
    fn close(&mut self) {
        let _ = self.rewrite(); // logged
        self.metrics.open_entries.set(self.open.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::journal::file::{read, Found};

    #[test]
    fn a_rewrite_keeps_the_open_entries_and_their_ids_and_drops_the_done_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.journal");
        let header = Header::now("w");
        let file =
            JournalFile::create(&path, &file::encode(&Record::Header(header.clone()))).unwrap();
        let writer = Writer {
            path: path.clone(),
            header,
            file,
            open: BTreeMap::new(),
            compact_after: 2_000, // a few dozen records
            metrics: WriterMetrics {
                syncs: Counter::default(),
                open_entries: Gauge::default(),
            },
        };
        let (requests, received) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || writer.run(received));
        let append = |record| {
            requests
                .send(Request::Append {
                    record,
                    synced: None,
                })
                .unwrap()
        };
        for id in 0..200 {
            append(Record::Started {
                id,
                activity: "arn:a".into(),
                token: format!("token-{id}"),
            });
            if id % 50 != 7 {
                append(Record::Done { id });
            }
        }
        // Two synced records, one after the other: once the second is answered, the batch
        // before it (and its rewrite) is done.
        for id in [998, 999] {
            let (synced, done) = oneshot::channel();
            let record = Record::Done { id };
            requests
                .send(Request::Append {
                    record,
                    synced: Some(synced),
                })
                .unwrap();
            done.blocking_recv().unwrap().unwrap();
        }
        let size = std::fs::read(&path)
            .unwrap()
            .iter()
            .filter(|b| **b != 0)
            .count();
        assert!(size < 6_000, "not rewritten: {size} bytes of records");
        let Found::Journal(old) = read(&path).unwrap() else {
            panic!("not a journal");
        };
        let tokens: Vec<&str> = old.tasks.iter().map(|t| t.token.as_str()).collect();
        assert_eq!(tokens, ["token-7", "token-57", "token-107", "token-157"]);
        requests.send(Request::Close).unwrap();
        thread.join().unwrap();
    }
}
