//! The persistent user DB and task-class DB, in one embedded redb file.
//!
//! Records are encoded by hand (a version byte, then fixed-width little-endian
//! numbers and length-prefixed strings) so that a damaged record is reported as
//! [`StoreError::Corrupt`] naming the table and key, never a panic. The file
//! carries a schema version in a `meta` table; opening a file of another
//! version or a file that is not an allot store fails with a clear error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, Durability, ReadableTable, TableDefinition};

use crate::schema::UserRecord;

const META: TableDefinition<&str, u64> = TableDefinition::new("allot_meta");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const CLASSES: TableDefinition<&str, &[u8]> = TableDefinition::new("task_classes");

/// The store's schema version.
pub const STORE_VERSION: u64 = 1;
const RECORD_VERSION: u8 = 1;
/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "allot.redb";

/// An error of the user or task-class DB.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, a damaged file, the file locked by another process).
    #[error("store {path}: {context}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// The redb error.
        source: Box<redb::Error>,
    },
    /// The file was written by another version of allot.
    #[error("store {path} has schema version {found}, this allot reads version {expected}; use a matching allot or move the file away")]
    WrongVersion {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u64,
        /// Version this build reads.
        expected: u64,
    },
    /// The file is a redb database but not an allot store.
    #[error(
        "{path} is not an allot store (no allot_meta table); point the data directory elsewhere"
    )]
    NotAllotStore {
        /// The file.
        path: PathBuf,
    },
    /// A record could not be decoded.
    #[error("store {path}: corrupt record {key:?} in table {table}: {reason}; delete or rewrite the record")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The record key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The file is damaged beyond what redb repairs by itself.
    #[error("store {path} is damaged: {reason}; restore it from a backup or move it away to start empty")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The opened store file, shared by a [`UserDb`] and a [`TaskClassDb`].
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in data directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        Store::open_file(dir.join(STORE_FILE))
    }

    /// Opens (creating if needed) the store file at `path`.
    pub fn open_file(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        let err = |context: &'static str| {
            let path = path.clone();
            move |e: redb::Error| StoreError::Db {
                path,
                context,
                source: Box::new(e),
            }
        };
        precheck(&path).map_err(|reason| StoreError::Damaged {
            path: path.clone(),
            reason,
        })?;
        // redb asserts on some inconsistent headers; `precheck` rules out the
        // ones we know of, and this turns any other panic into an error where
        // panics unwind (tests, benches; release builds of the nodes abort).
        let db = std::panic::catch_unwind(|| Database::create(&path))
            .map_err(|_| StoreError::Damaged {
                path: path.clone(),
                reason: "the database engine rejected the file header".into(),
            })?
            .map_err(|e| err("opening")(e.into()))?;
        let store = Store {
            db: Arc::new(db),
            path: Arc::new(path.clone()),
        };
        // Check or stamp the version.
        let rtx = store
            .db
            .begin_read()
            .map_err(|e| err("reading")(e.into()))?;
        let found = match rtx.open_table(META) {
            Ok(t) => t
                .get("version")
                .map_err(|e| err("reading the version")(e.into()))?
                .map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(err("reading the version")(e.into())),
        };
        match found {
            Some(v) if v == STORE_VERSION => {}
            Some(v) => {
                return Err(StoreError::WrongVersion {
                    path,
                    found: v,
                    expected: STORE_VERSION,
                })
            }
            None => {
                let empty = rtx
                    .list_tables()
                    .map_err(|e| err("listing tables")(e.into()))?
                    .next()
                    .is_none();
                if !empty {
                    return Err(StoreError::NotAllotStore { path });
                }
                drop(rtx);
                let w = store
                    .db
                    .begin_write()
                    .map_err(|e| err("writing")(e.into()))?;
                {
                    let mut t = w.open_table(META).map_err(|e| err("writing")(e.into()))?;
                    t.insert("version", STORE_VERSION)
                        .map_err(|e| err("writing the version")(e.into()))?;
                    w.open_table(USERS)
                        .map_err(|e| err("creating users")(e.into()))?;
                    w.open_table(CLASSES)
                        .map_err(|e| err("creating task_classes")(e.into()))?;
                }
                w.commit().map_err(|e| err("committing")(e.into()))?;
            }
        }
        Ok(store)
    }

    /// The user DB.
    pub fn users(&self) -> UserDb {
        UserDb { s: self.clone() }
    }

    /// The task-class DB.
    pub fn task_classes(&self) -> TaskClassDb {
        TaskClassDb { s: self.clone() }
    }

    fn db_err(&self, context: &'static str) -> impl Fn(redb::Error) -> StoreError + '_ {
        move |e| StoreError::Db {
            path: (*self.path).clone(),
            context,
            source: Box::new(e),
        }
    }

    fn corrupt(&self, table: &'static str, key: &str, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: (*self.path).clone(),
            table,
            key: key.to_string(),
            reason,
        }
    }

    fn get(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let e = self.db_err("reading");
        let rtx = self.db.begin_read().map_err(|x| e(x.into()))?;
        let t = rtx.open_table(table).map_err(|x| e(x.into()))?;
        let v = t.get(key).map_err(|x| e(x.into()))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn list(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let e = self.db_err("listing");
        let rtx = self.db.begin_read().map_err(|x| e(x.into()))?;
        let t = rtx.open_table(table).map_err(|x| e(x.into()))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|x| e(x.into()))? {
            let (k, v) = item.map_err(|x| e(x.into()))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn put_many(
        &self,
        table: TableDefinition<&str, &[u8]>,
        items: &[(&str, Vec<u8>)],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let e = self.db_err("writing");
        let mut w = self.db.begin_write().map_err(|x| e(x.into()))?;
        w.set_durability(durability);
        {
            let mut t = w.open_table(table).map_err(|x| e(x.into()))?;
            for (k, v) in items {
                t.insert(*k, v.as_slice()).map_err(|x| e(x.into()))?;
            }
        }
        w.commit().map_err(|x| e(x.into()))
    }

    fn remove(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool, StoreError> {
        let e = self.db_err("removing");
        let w = self.db.begin_write().map_err(|x| e(x.into()))?;
        let found = {
            let mut t = w.open_table(table).map_err(|x| e(x.into()))?;
            let r = t.remove(key).map_err(|x| e(x.into()))?;
            r.is_some()
        };
        w.commit().map_err(|x| e(x.into()))?;
        Ok(found)
    }
}

/// Users: priority, in-flight quota, allowed apps, default expressions.
#[derive(Clone, Debug)]
pub struct UserDb {
    s: Store,
}

impl UserDb {
    /// Opens (creating if needed) a store file and returns its user DB.
    pub fn open(path: impl AsRef<Path>) -> Result<UserDb, StoreError> {
        Ok(Store::open_file(path)?.users())
    }

    /// A user by name.
    pub fn get(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        match self.s.get(USERS, name)? {
            None => Ok(None),
            Some(b) => decode_user(&b)
                .map(Some)
                .map_err(|r| self.s.corrupt("users", name, r)),
        }
    }

    /// Creates or replaces a user (durably committed).
    pub fn put(&self, u: &UserRecord) -> Result<(), StoreError> {
        self.s
            .put_many(USERS, &[(&u.name, encode_user(u))], Durability::Immediate)
    }

    /// Deletes a user; false if there was none.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        self.s.remove(USERS, name)
    }

    /// Every user, by name.
    pub fn list(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.s
            .list(USERS)?
            .into_iter()
            .map(|(k, v)| decode_user(&v).map_err(|r| self.s.corrupt("users", &k, r)))
            .collect()
    }
}

/// Per-app defaults and learned runtime statistics.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TaskClass {
    /// The app.
    pub app: String,
    /// Default cores demand for tasks that give none.
    pub default_cores: u32,
    /// Default memory demand in bytes.
    pub default_mem: u64,
    /// Default slots demand.
    pub default_slots: u32,
    /// Successful completions counted in the runtime statistics.
    pub runs: u64,
    /// Mean runtime of successful runs, seconds.
    pub mean: f64,
    /// Welford's running sum of squared deviations (see [`TaskClass::variance`]).
    pub m2: f64,
    /// Failed runs.
    pub failures: u64,
}

impl TaskClass {
    /// A class with no defaults and no history.
    pub fn new(app: impl Into<String>) -> TaskClass {
        TaskClass {
            app: app.into(),
            ..TaskClass::default()
        }
    }

    /// Sample variance of runtimes (seconds squared); 0 with fewer than two
    /// runs.
    pub fn variance(&self) -> f64 {
        if self.runs < 2 {
            0.0
        } else {
            self.m2 / (self.runs - 1) as f64
        }
    }

    /// Folds one completion in (Welford's online update, numerically stable).
    pub fn record(&mut self, runtime: Duration, ok: bool) {
        if !ok {
            self.failures += 1;
            return;
        }
        let x = runtime.as_secs_f64();
        self.runs += 1;
        let d = x - self.mean;
        self.mean += d / self.runs as f64;
        self.m2 += d * (x - self.mean);
    }
}

/// Task classes per app.
#[derive(Clone, Debug)]
pub struct TaskClassDb {
    s: Store,
}

impl TaskClassDb {
    /// Opens (creating if needed) a store file and returns its task-class DB.
    pub fn open(path: impl AsRef<Path>) -> Result<TaskClassDb, StoreError> {
        Ok(Store::open_file(path)?.task_classes())
    }

    /// The class of `app`.
    pub fn get(&self, app: &str) -> Result<Option<TaskClass>, StoreError> {
        match self.s.get(CLASSES, app)? {
            None => Ok(None),
            Some(b) => decode_class(app, &b)
                .map(Some)
                .map_err(|r| self.s.corrupt("task_classes", app, r)),
        }
    }

    /// Creates or replaces a class (durably committed).
    pub fn put(&self, c: &TaskClass) -> Result<(), StoreError> {
        self.s
            .put_many(CLASSES, &[(&c.app, encode_class(c))], Durability::Immediate)
    }

    /// Every class, by app.
    pub fn list(&self) -> Result<Vec<TaskClass>, StoreError> {
        self.s
            .list(CLASSES)?
            .into_iter()
            .map(|(k, v)| decode_class(&k, &v).map_err(|r| self.s.corrupt("task_classes", &k, r)))
            .collect()
    }

    /// Records one completion of `app` and returns the updated class.
    pub fn record_completion(
        &self,
        app: &str,
        runtime: Duration,
        ok: bool,
    ) -> Result<TaskClass, StoreError> {
        let mut v = self.record_completions(&[(app, runtime, ok)])?;
        Ok(v.pop().unwrap_or_else(|| TaskClass::new(app)))
    }

    /// Records many completions in one transaction (what a distributor
    /// should do: one commit per batch, not per task). Bound: one class per
    /// app; record only completions of tasks that ran, whose app is known to
    /// the server table (at most [`crate::schema::MAX_APPS`]), never app
    /// names taken straight from client input. Learned statistics
    /// are committed with eventual durability: a crash may lose the last
    /// batch, which only makes the estimates slightly older.
    pub fn record_completions(
        &self,
        items: &[(&str, Duration, bool)],
    ) -> Result<Vec<TaskClass>, StoreError> {
        let mut classes: Vec<TaskClass> = Vec::new();
        for (app, runtime, ok) in items {
            let i = match classes.iter().position(|c| c.app == *app) {
                Some(i) => i,
                None => {
                    classes.push(self.get(app)?.unwrap_or_else(|| TaskClass::new(*app)));
                    classes.len() - 1
                }
            };
            classes[i].record(*runtime, *ok);
        }
        let enc: Vec<(&str, Vec<u8>)> = classes
            .iter()
            .map(|c| (c.app.as_str(), encode_class(c)))
            .collect();
        self.s.put_many(CLASSES, &enc, Durability::Eventual)?;
        Ok(classes)
    }
}

/// Checks the parts of a redb header that redb 2 asserts on (instead of
/// returning an error) before redb reads the file: the magic number, the page
/// size, and that the file is as long as its header says. An empty or missing
/// file is fine (redb initialises it).
/// Checks a redb file's header before redb opens it (redb asserts on some
/// inconsistent headers rather than returning an error): `Err` says what
/// is wrong. A missing or empty file passes (redb creates it).
pub fn precheck(path: &Path) -> Result<(), String> {
    use std::io::Read;
    const MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
    const PAGE: u64 = 4096;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let len = f
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?
        .len();
    if len == 0 {
        return Ok(());
    }
    let mut h = [0u8; 32];
    if len < PAGE || f.read_exact(&mut h).is_err() {
        return Err(format!("{len} bytes is shorter than a database header"));
    }
    if h[..9] != MAGIC {
        return Err("no redb magic number at the start (not a database file)".into());
    }
    let u = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]) as u128;
    let (page, header_pages, max_pages, full, trailing) = (u(12), u(16), u(20), u(24), u(28));
    if page != PAGE as u128 {
        return Err(format!("page size {page} in the header, expected {PAGE}"));
    }
    if full == 0 && trailing == 0 {
        return Err("the header describes no regions".into());
    }
    let full_len = (header_pages + max_pages) * page;
    let need = page
        + full * full_len
        + if trailing > 0 {
            (header_pages + trailing) * page
        } else {
            0
        };
    if need > len as u128 {
        return Err(format!(
            "the header describes {need} bytes but the file has {len} (truncated?)"
        ));
    }
    Ok(())
}

// ---- record encoding ----

struct Writer(Vec<u8>);
impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a> {
    b: &'a [u8],
}
impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.b.len() < n {
            return Err(format!(
                "truncated: needed {n} more bytes, {} left",
                self.b.len()
            ));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
    fn version(&mut self) -> Result<(), String> {
        match self.u8()? {
            RECORD_VERSION => Ok(()),
            v => Err(format!("record version {v}, expected {RECORD_VERSION}")),
        }
    }
    fn end(&self) -> Result<(), String> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.b.len()))
        }
    }
}

fn encode_user(u: &UserRecord) -> Vec<u8> {
    let mut w = Writer(vec![RECORD_VERSION]);
    w.str(&u.name);
    w.u32(u.priority as u32);
    w.u32(u.max_in_flight);
    w.u32(u.allowed_apps.len() as u32);
    for a in &u.allowed_apps {
        w.str(a);
    }
    w.str(&u.default_require);
    w.str(&u.default_prefer);
    w.0
}

fn decode_user(b: &[u8]) -> Result<UserRecord, String> {
    let mut r = Reader { b };
    r.version()?;
    let name = r.str()?;
    let priority = r.u32()? as i32;
    let max_in_flight = r.u32()?;
    let n = r.u32()? as usize;
    // Each app takes at least 4 bytes: a count larger than the record is a
    // lie, refused before allocating.
    if n > r.b.len() / 4 {
        return Err(format!("allowed_apps count {n} exceeds the record"));
    }
    let allowed_apps = (0..n).map(|_| r.str()).collect::<Result<Vec<_>, _>>()?;
    let default_require = r.str()?;
    let default_prefer = r.str()?;
    r.end()?;
    Ok(UserRecord {
        name,
        priority,
        max_in_flight,
        allowed_apps,
        default_require,
        default_prefer,
    })
}

fn encode_class(c: &TaskClass) -> Vec<u8> {
    let mut w = Writer(vec![RECORD_VERSION]);
    w.u32(c.default_cores);
    w.u64(c.default_mem);
    w.u32(c.default_slots);
    w.u64(c.runs);
    w.u64(c.mean.to_bits());
    w.u64(c.m2.to_bits());
    w.u64(c.failures);
    w.0
}

fn decode_class(app: &str, b: &[u8]) -> Result<TaskClass, String> {
    let mut r = Reader { b };
    r.version()?;
    let c = TaskClass {
        app: app.to_string(),
        default_cores: r.u32()?,
        default_mem: r.u64()?,
        default_slots: r.u32()?,
        runs: r.u64()?,
        mean: f64::from_bits(r.u64()?),
        m2: f64::from_bits(r.u64()?),
        failures: r.u64()?,
    };
    r.end()?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncation_is_an_error() {
        let u = UserRecord {
            name: "alice".into(),
            priority: -3,
            max_in_flight: 7,
            allowed_apps: vec!["echo".into(), "sum".into()],
            default_require: "server.load < 1".into(),
            default_prefer: "server.power".into(),
        };
        let b = encode_user(&u);
        assert_eq!(decode_user(&b), Ok(u));
        for n in 0..b.len() {
            assert!(decode_user(&b[..n]).is_err());
        }
        let mut c = TaskClass::new("echo");
        c.record(Duration::from_secs(1), true);
        let b = encode_class(&c);
        assert_eq!(decode_class("echo", &b), Ok(c));
        assert!(decode_class("echo", &b[..b.len() - 1]).is_err());
    }

    #[test]
    fn welford_matches_the_two_pass_formula() {
        let xs = [1.0, 2.0, 4.0, 7.5, 0.25];
        let mut c = TaskClass::new("a");
        for x in xs {
            c.record(Duration::from_secs_f64(x), true);
        }
        c.record(Duration::from_secs(100), false);
        let mean = xs.iter().sum::<f64>() / 5.0;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 4.0;
        assert!((c.mean - mean).abs() < 1e-9);
        assert!((c.variance() - var).abs() < 1e-9);
        assert_eq!(c.failures, 1);
        assert_eq!(c.runs, 5);
    }
}
