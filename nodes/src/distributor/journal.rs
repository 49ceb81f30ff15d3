//! The job journal on disk: one redb file in the data directory, written by
//! the shell in batches the core hands out ([`Core::poll_journal`]), read
//! back whole at start ([`Journal::open`]).
//!
//! Each batch is one write transaction with redb's default durability (the
//! commit returns once the data is on disk), so a batch is all there or not
//! at all after a crash. The task changes of one job in one batch are one
//! row (a chunk, keyed by the job and a number that grows with each
//! chunk), not a row per task: a batch of thousands of task ends costs a
//! few B-tree inserts. Read back, later chunks override earlier ones for
//! the same task, as the batches did. Records are postcard-encoded; a
//! record that does not decode is reported as [`JournalError::Corrupt`]
//! naming the file, the table and the key, never a panic.
//!
//! [`Core::poll_journal`]: super::Core::poll_journal

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};

use super::jobs::record::{JobRecord, JournalOp, Replay, ReplayJob, TaskRecord};

const META: TableDefinition<&str, u64> = TableDefinition::new("jobs_meta");
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const CURSORS: TableDefinition<u64, u64> = TableDefinition::new("job_cursors");
const CANCELLED: TableDefinition<u64, u64> = TableDefinition::new("jobs_cancelled");
/// (job, chunk) to the task changes of that job in one batch.
const TASKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("job_task_chunks");

/// The journal's schema version.
pub const JOURNAL_VERSION: u64 = 2;
/// Its file name in the data directory.
pub const JOURNAL_FILE: &str = "jobs.redb";

/// Why the journal could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// redb failed.
    #[error("job journal {path}: {context}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// The redb error.
        source: Box<redb::Error>,
    },
    /// The file is damaged or is not a redb file.
    #[error("job journal {path} is damaged: {reason}; move it away to start without its jobs, or restore it from a backup")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Written by another version of allot.
    #[error("job journal {path} has version {found}, this allot reads version {expected}")]
    WrongVersion {
        /// The file.
        path: PathBuf,
        /// In the file.
        found: u64,
        /// Read by this build.
        expected: u64,
    },
    /// A record does not decode.
    #[error("job journal {path}: corrupt record {key} in table {table}: {reason}; move the file away to start without its jobs")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The data directory could not be made.
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The open journal file.
pub struct Journal {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in data directory `dir` and
    /// reads back everything in it.
    pub fn open(dir: &Path) -> Result<(Journal, Replay), JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(JOURNAL_FILE);
        allot_engine::precheck_redb_file(&path).map_err(|reason| JournalError::Damaged {
            path: path.clone(),
            reason,
        })?;
        // redb asserts on some inconsistent files; where panics unwind this
        // turns one into an error (release builds of the nodes abort).
        let db = std::panic::catch_unwind(|| Database::create(&path))
            .map_err(|_| JournalError::Damaged {
                path: path.clone(),
                reason: "the database engine rejected the file".into(),
            })?
            .map_err(|e| db_err(&path, "opening", e.into()))?;
        let j = Journal { db, path };
        let replay = j.init_and_read()?;
        Ok((j, replay))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, context: &'static str) -> impl Fn(redb::Error) -> JournalError + '_ {
        move |e| db_err(&self.path, context, e)
    }

    fn init_and_read(&self) -> Result<Replay, JournalError> {
        let w = self
            .db
            .begin_write()
            .map_err(|e| self.err("writing")(e.into()))?;
        {
            let mut meta = w
                .open_table(META)
                .map_err(|e| self.err("opening")(e.into()))?;
            let found = meta
                .get("version")
                .map_err(|e| self.err("reading")(e.into()))?
                .map(|v| v.value());
            match found {
                None => {
                    meta.insert("version", JOURNAL_VERSION)
                        .map_err(|e| self.err("writing")(e.into()))?;
                }
                Some(v) if v == JOURNAL_VERSION => {}
                Some(found) => {
                    return Err(JournalError::WrongVersion {
                        path: self.path.clone(),
                        found,
                        expected: JOURNAL_VERSION,
                    })
                }
            }
            w.open_table(JOBS)
                .map_err(|e| self.err("opening")(e.into()))?;
            w.open_table(CURSORS)
                .map_err(|e| self.err("opening")(e.into()))?;
            w.open_table(CANCELLED)
                .map_err(|e| self.err("opening")(e.into()))?;
            w.open_table(TASKS)
                .map_err(|e| self.err("opening")(e.into()))?;
        }
        w.commit().map_err(|e| self.err("committing")(e.into()))?;

        let r = self
            .db
            .begin_read()
            .map_err(|e| self.err("reading")(e.into()))?;
        let rd = |e: redb::Error| db_err(&self.path, "reading", e);
        let meta = r.open_table(META).map_err(|e| rd(e.into()))?;
        let next_num = meta
            .get("next_num")
            .map_err(|e| rd(e.into()))?
            .map_or(1, |v| v.value());
        let jobs_t = r.open_table(JOBS).map_err(|e| rd(e.into()))?;
        let cursors = r.open_table(CURSORS).map_err(|e| rd(e.into()))?;
        let cancelled = r.open_table(CANCELLED).map_err(|e| rd(e.into()))?;
        let tasks = r.open_table(TASKS).map_err(|e| rd(e.into()))?;
        let mut jobs = Vec::new();
        for row in jobs_t.iter().map_err(|e| rd(e.into()))? {
            let (k, v) = row.map_err(|e| rd(e.into()))?;
            let num = k.value();
            let rec: JobRecord =
                postcard::from_bytes(v.value()).map_err(|e| JournalError::Corrupt {
                    path: self.path.clone(),
                    table: "jobs",
                    key: num.to_string(),
                    reason: e.to_string(),
                })?;
            let cursor = cursors
                .get(num)
                .map_err(|e| rd(e.into()))?
                .map_or(0, |v| v.value());
            let is_cancelled = cancelled.get(num).map_err(|e| rd(e.into()))?.is_some();
            // Chunks in the order they were written: a later record of a
            // task overrides an earlier one.
            let mut ts = std::collections::BTreeMap::new();
            for row in tasks
                .range((num, 0)..=(num, u64::MAX))
                .map_err(|e| rd(e.into()))?
            {
                let (k, v) = row.map_err(|e| rd(e.into()))?;
                let (_, chunk) = k.value();
                let records: Vec<(u64, TaskRecord)> =
                    postcard::from_bytes(v.value()).map_err(|e| JournalError::Corrupt {
                        path: self.path.clone(),
                        table: "job_task_chunks",
                        key: format!("({num}, {chunk})"),
                        reason: e.to_string(),
                    })?;
                ts.extend(records);
            }
            let ts: Vec<(u64, TaskRecord)> = ts.into_iter().collect();
            jobs.push(ReplayJob {
                num,
                rec,
                cursor,
                cancelled: is_cancelled,
                tasks: ts,
            });
        }
        let next_num = jobs.iter().map(|j| j.num + 1).fold(next_num, u64::max);
        Ok(Replay { next_num, jobs })
    }

    /// Writes `ops` in one durable transaction.
    pub fn commit(&self, ops: &[JournalOp]) -> Result<(), JournalError> {
        let w = self
            .db
            .begin_write()
            .map_err(|e| self.err("writing")(e.into()))?;
        {
            let e = |e: redb::Error| db_err(&self.path, "writing", e);
            let mut meta = w.open_table(META).map_err(|x| e(x.into()))?;
            let mut jobs = w.open_table(JOBS).map_err(|x| e(x.into()))?;
            let mut cursors = w.open_table(CURSORS).map_err(|x| e(x.into()))?;
            let mut cancelled = w.open_table(CANCELLED).map_err(|x| e(x.into()))?;
            let mut tasks = w.open_table(TASKS).map_err(|x| e(x.into()))?;
            // A change to a job the file does not hold is dropped, so that
            // no row outlives its job (the rules of `Replay::apply`).
            let mut known: std::collections::HashMap<u64, bool> = Default::default();
            let held = |known: &mut std::collections::HashMap<u64, bool>,
                        jobs: &redb::Table<u64, &[u8]>,
                        num: u64|
             -> Result<bool, JournalError> {
                if let Some(&h) = known.get(&num) {
                    return Ok(h);
                }
                let h = jobs
                    .get(num)
                    .map(|v| v.is_some())
                    .map_err(|x| e(x.into()))?;
                known.insert(num, h);
                Ok(h)
            };
            // Task changes by job, written as one chunk per job at the end.
            let mut chunks: std::collections::BTreeMap<u64, Vec<(u64, &TaskRecord)>> =
                Default::default();
            let mut buf = Vec::new();
            for op in ops {
                match op {
                    JournalOp::Created { num, rec } => {
                        buf.clear();
                        let bytes = postcard::to_extend(rec.as_ref(), std::mem::take(&mut buf))
                            .map_err(|x| self.encode_err("jobs", *num, x))?;
                        jobs.insert(*num, bytes.as_slice())
                            .map_err(|x| e(x.into()))?;
                        buf = bytes;
                        let next = meta
                            .get("next_num")
                            .map_err(|x| e(x.into()))?
                            .map_or(1, |v| v.value());
                        meta.insert("next_num", next.max(num + 1))
                            .map_err(|x| e(x.into()))?;
                        known.insert(*num, true);
                    }
                    JournalOp::Cursor { num, cursor } => {
                        if !held(&mut known, &jobs, *num)? {
                            continue;
                        }
                        cursors.insert(*num, *cursor).map_err(|x| e(x.into()))?;
                    }
                    JournalOp::Task { num, offset, rec } => {
                        if !held(&mut known, &jobs, *num)? {
                            continue;
                        }
                        chunks
                            .entry(*num)
                            .or_default()
                            .push((*offset, rec.as_ref()));
                    }
                    JournalOp::Cancelled { num } => {
                        if !held(&mut known, &jobs, *num)? {
                            continue;
                        }
                        cancelled.insert(*num, 1).map_err(|x| e(x.into()))?;
                    }
                    JournalOp::Removed { num } => {
                        chunks.remove(num);
                        known.insert(*num, false);
                        jobs.remove(*num).map_err(|x| e(x.into()))?;
                        cursors.remove(*num).map_err(|x| e(x.into()))?;
                        cancelled.remove(*num).map_err(|x| e(x.into()))?;
                        tasks
                            .retain_in((*num, 0)..=(*num, u64::MAX), |_, _| false)
                            .map_err(|x| e(x.into()))?;
                    }
                }
            }
            if !chunks.is_empty() {
                let mut chunk = meta
                    .get("next_chunk")
                    .map_err(|x| e(x.into()))?
                    .map_or(0, |v| v.value());
                for (num, records) in &chunks {
                    buf.clear();
                    let bytes = postcard::to_extend(records, std::mem::take(&mut buf))
                        .map_err(|x| self.encode_err("job_task_chunks", *num, x))?;
                    tasks
                        .insert((*num, chunk), bytes.as_slice())
                        .map_err(|x| e(x.into()))?;
                    buf = bytes;
                    chunk += 1;
                }
                meta.insert("next_chunk", chunk).map_err(|x| e(x.into()))?;
            }
        }
        w.commit().map_err(|e| self.err("committing")(e.into()))
    }

    fn encode_err(&self, table: &'static str, num: u64, e: postcard::Error) -> JournalError {
        JournalError::Corrupt {
            path: self.path.clone(),
            table,
            key: num.to_string(),
            reason: format!("cannot encode: {e}"),
        }
    }
}

fn db_err(path: &Path, context: &'static str, source: redb::Error) -> JournalError {
    JournalError::Db {
        path: path.to_path_buf(),
        context,
        source: Box::new(source),
    }
}
