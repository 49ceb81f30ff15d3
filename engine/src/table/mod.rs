//! The server table: sharded structure-of-arrays blocks that matchers read
//! without locks while writers (registration, deltas, state changes) update
//! them in place.
//!
//! This is the storage layer; nothing in it knows about expressions or
//! matching. [`ServerTable`] and its shards are here; the parts they are
//! built from are below it:
//!
//! * [`block`]: one block of 64 rows: its masks, column groups, reservation
//!   cells and label cells, and how label values are encoded in a cell.
//! * [`rcu`]: the copy-on-write cells column groups live in, read without
//!   locks under an epoch and reclaimed or recycled when no reader can see
//!   them; [`lazy`]: the directory of blocks allocated on first use;
//!   [`arena`]: the huge-page chunks all of these are carved from.
//! * [`minmax`]: the per-block column ranges a writer keeps, which let the
//!   exact scan skip blocks.
//! * [`intern`] and [`names`]: the bounded string interners and the name
//!   index of the table.
//! * [`user_inflight`]: the per-user count of tasks in flight, for the
//!   `max_in_flight` quota, held by the table so every compiled query of a
//!   user shares one counter.
//!
//! Concurrency design:
//! Concurrency design:
//! * Readers (matching, reservation, release, `state`) never lock. They pin
//!   an epoch once per operation, load a block's `live`/`up` masks with
//!   `Acquire`, read its column groups and label cells as immutable plain
//!   arrays ([`crate::table::rcu`]), and its reservation columns with atomic loads.
//! * Writers serialise per shard on a mutex (the name index and the string
//!   interners have their own mutexes; lock order is names, shard, strings).
//!   A writer copies a column group, changes the copy and swaps it in (one
//!   copy per group per delta, into a recycled allocation); the old copy is
//!   reused ([`crate::table::rcu::Recycler`]) once no reader can see it. A row's columns are written before the row is published with a
//!   `Release` store of the `live`/`up` bits.
//! * Growth never moves anything: each shard has a directory of block cells
//!   sized for its capacity, a block is allocated on first use and freed only
//!   when the table drops ([`crate::table::lazy::LazyBlocks`]). Blocks, column
//!   groups and label cells live in one arena of 2 MiB-aligned,
//!   `MADV_HUGEPAGE` chunks ([`crate::table::arena`]), so a scan at a million
//!   servers does not pay a TLB miss per block.
//! * Capacity (slots, cores, memory) is reserved with compare-and-swap, so
//!   concurrent matchers never take more than a server has.

pub(crate) mod arena;
pub(crate) mod block;
pub(crate) mod intern;
pub(crate) mod lazy;
pub(crate) mod minmax;
pub(crate) mod names;
pub(crate) mod rcu;
pub(crate) mod user_inflight;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crossbeam_epoch::{self as epoch, Guard};
use crossbeam_utils::CachePadded;

use crate::error::{truncated, EngineError};
use crate::schema::{
    Change, DeltaOutcome, LabelValue, ServerId, ServerRecord, ServerState, BLOCK_ROWS, MAX_APPS,
    MAX_CAPACITY, MAX_LABEL_KEYS, MAX_LABEL_STRINGS, MAX_NAME_LEN, MAX_SHARDS,
};
use crate::table::arena::{Arena, Pool, Pools};
use crate::table::block::{label, Block, Cols, Dynamic, Fixed, LabelCells};
use crate::table::intern::Interner;
use crate::table::lazy::LazyBlocks;
use crate::table::names::Names;
use crate::table::rcu::{Fresh, Rcu, Recycler};
use crate::table::user_inflight::UserInFlight;

/// Sizing of a [`ServerTable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableConfig {
    /// Number of shards (1..=256). Shards let writers to different shards
    /// proceed in parallel and let sampled matching start anywhere.
    pub shards: usize,
    /// Most servers the table holds (rounded up to a multiple of
    /// `64 * shards`). Beyond it `insert` fails with
    /// [`EngineError::TableFull`]. Memory is allocated per 64-row block as
    /// rows are used (from the table's huge-page arena, in
    /// chunks of up to 2 MiB), plus 16 bytes of directory per possible block.
    pub capacity: usize,
}

impl Default for TableConfig {
    fn default() -> TableConfig {
        TableConfig {
            shards: 4,
            capacity: 1 << 16,
        }
    }
}

/// Interned strings of a table.
pub(crate) struct Strings {
    pub(crate) apps: Interner,
    pub(crate) keys: Interner,
    pub(crate) values: Interner,
}

struct ShardWriter {
    /// Vacated rows, reused first (bounded by the shard's rows).
    free: Vec<u32>,
    /// Rows below this have been used.
    next_row: u32,
    /// Last applied delta sequence number per row (bounded by the rows used).
    seq: Vec<u64>,
    /// Allocations of replaced column groups, reused for the next copies
    /// (bounded: see [`Recycler`]).
    dynamic: Recycler<Dynamic>,
    fixed: Recycler<Fixed>,
}

/// One label key's cells in one shard: a slot per block, empty where no row
/// of the block has the key.
type LabelDir = Box<[Rcu<LabelCells>]>;

/// One shard: a range of rows with its own blocks and writer lock.
pub(crate) struct Shard {
    blocks: LazyBlocks<Block>,
    /// Blocks allocated so far; readers scan `0..nblocks`.
    nblocks: AtomicUsize,
    /// Per app: one mask per block of the rows that have the app. Allocated
    /// the first time a server in this shard has the app.
    apps: Box<[OnceLock<Box<[AtomicU64]>>]>,
    /// Per label key: the key's cells, per block (empty where no row of the
    /// block has the key). The directory is allocated on the key's first use.
    labels: Box<[OnceLock<LabelDir>]>,
    /// Where the label cells live (shared by the table's shards).
    label_pool: Arc<Pool<LabelCells>>,
    writer: Mutex<ShardWriter>,
    /// Deltas applied and dropped as stale in this shard.
    applied: WriterCount,
    stale: WriterCount,
    max_blocks: usize,
}

/// A counter that only the holder of its shard's writer lock increments
/// (a plain load and store, no locked read-modify-write on every delta) and
/// anyone may read.
#[derive(Default)]
struct WriterCount(AtomicU64);

impl WriterCount {
    /// Adds one; callers hold the shard's writer lock.
    #[inline]
    fn bump(&self) {
        self.0.store(self.0.load(Relaxed) + 1, Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

impl Shard {
    fn new(max_blocks: usize, pools: &TablePools) -> Shard {
        Shard {
            blocks: LazyBlocks::new(max_blocks, &pools.blocks),
            nblocks: AtomicUsize::new(0),
            apps: (0..MAX_APPS).map(|_| OnceLock::new()).collect(),
            labels: (0..MAX_LABEL_KEYS).map(|_| OnceLock::new()).collect(),
            label_pool: pools.labels.clone(),
            writer: Mutex::new(ShardWriter {
                free: Vec::new(),
                next_row: 0,
                seq: Vec::new(),
                dynamic: Recycler::new(&pools.dynamic),
                fixed: Recycler::new(&pools.fixed),
            }),
            applied: WriterCount::default(),
            stale: WriterCount::default(),
            max_blocks,
        }
    }

    /// Blocks readers should scan.
    #[inline]
    pub(crate) fn nblocks(&self) -> usize {
        self.nblocks.load(Acquire)
    }

    #[inline]
    pub(crate) fn block(&self, b: usize) -> Option<&Block> {
        self.blocks.get(b)
    }

    /// Rows of block `b` that have app `app`.
    #[inline]
    pub(crate) fn app_mask(&self, app: u32, b: usize) -> u64 {
        match self.apps.get(app as usize).and_then(|c| c.get()) {
            Some(masks) => masks[b].load(Acquire),
            None => 0,
        }
    }

    /// The address of the directory slot of block `b` (for prefetching).
    #[inline]
    pub(crate) fn block_slot_addr(&self, b: usize) -> *const u8 {
        self.blocks.slot_addr(b)
    }

    /// The cells of label `key` in block `b`, as of now.
    #[inline]
    pub(crate) fn label_cells<'g>(
        &'g self,
        key: u32,
        b: usize,
        guard: &'g Guard,
    ) -> Option<&'g LabelCells> {
        self.labels.get(key as usize)?.get()?.get(b)?.get(guard)
    }

    /// App `app`'s mask words, one per block, if any server of this shard
    /// ever had the app (the scan resolves this once per shard).
    #[inline]
    pub(crate) fn app_words(&self, app: u32) -> Option<&[AtomicU64]> {
        self.apps.get(app as usize)?.get().map(|m| &m[..])
    }

    /// Label `key`'s directory, one slot per block, if the key ever had a
    /// value in this shard (the scan resolves this once per shard).
    #[inline]
    pub(crate) fn label_dir(&self, key: u32) -> Option<&[Rcu<LabelCells>]> {
        self.labels.get(key as usize)?.get().map(|d| &d[..])
    }

    fn app_masks(&self, app: u32) -> &[AtomicU64] {
        self.apps[app as usize]
            .get_or_init(|| (0..self.max_blocks).map(|_| AtomicU64::new(0)).collect())
    }

    /// Sets row `i` of label `key` in block `b` to `cell` (canonical
    /// encoding), copying the block's cells for the key; nothing is copied
    /// if the row already holds the value. Writers hold the shard lock.
    fn set_label(&self, key: u32, b: usize, i: usize, cell: u64, guard: &Guard) {
        let Some(dir_cell) = self.labels.get(key as usize) else {
            return;
        };
        let current = self
            .label_cells(key, b, guard)
            .map_or(label::MISSING, |c| c.cell(i));
        if current == cell {
            return;
        }
        let dir = dir_cell.get_or_init(|| (0..self.max_blocks).map(|_| Rcu::null()).collect());
        let Some(slot) = dir.get(b) else {
            return;
        };
        let mut cells = slot.get(guard).cloned().unwrap_or_default();
        cells.set(i, cell);
        // A block left with no value for the key frees its cells.
        let empty = cells.ids.iter().all(|&x| x == label::MISSING32);
        slot.store((!empty).then_some(cells), &self.label_pool, guard);
    }

    fn lock(&self) -> MutexGuard<'_, ShardWriter> {
        // A writer never panics while holding the lock (it only stores
        // values), so poisoning cannot leave a half-written row; carry on.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_app(&self, app: u32, b: usize, bit: u64, on: bool) {
        let m = &self.app_masks(app)[b];
        if on {
            m.fetch_or(bit, Release);
        } else {
            m.fetch_and(!bit, Release);
        }
    }

    /// Clears a row's apps, and sets each of its labels to the value in
    /// `labels` (missing if absent).
    fn reset_row_extras(
        &self,
        b: usize,
        i: usize,
        apps: usize,
        keys: usize,
        labels: &[(u32, u64)],
        guard: &Guard,
    ) {
        let bit = 1u64 << i;
        for cell in self.apps.iter().take(apps) {
            if let Some(masks) = cell.get() {
                masks[b].fetch_and(!bit, Release);
            }
        }
        for k in 0..keys as u32 {
            // The last value given for a key wins, as when applied in order.
            let want = labels
                .iter()
                .rev()
                .find(|(key, _)| *key == k)
                .map_or(label::MISSING, |&(_, v)| v);
            self.set_label(k, b, i, want, guard);
        }
    }
}

/// Label and app changes resolved to ids before anything is written, so that
/// a limit error leaves the row untouched.
enum Resolved {
    Label(u32, u64),
    LabelRemoved(Option<u32>),
    App(u32, bool),
    AppRemovedUnknown,
}

/// The server-attribute table of a distributor. `Send + Sync`: any number of
/// threads may match and reserve while others apply deltas.
pub struct ServerTable {
    pub(crate) shards: Box<[Shard]>,
    rows_per_shard: u32,
    capacity: usize,
    names: Mutex<Names>,
    pub(crate) strings: Mutex<Strings>,
    pub(crate) inflight: UserInFlight,
    live: AtomicUsize,
    seed: u64,
    /// Where ties on `prefer` start: the id after the last server a match
    /// reserved (see [`crate::matcher`]'s tie order). On a line of its
    /// own: every reservation writes it.
    pub(crate) tie: CachePadded<AtomicU32>,
    /// Blocks, column groups and label cells (huge-page backed).
    arena: Arc<Arena>,
}

/// The pools of a table's arena.
type TablePools = Pools<Block, Dynamic, Fixed, LabelCells>;

/// Arena bytes a table expects per 64-row block (block, both column groups,
/// one label's cells), to size its chunks.
const ARENA_PER_BLOCK: usize = 4608;

/// Counts and sums over a table (see [`ServerTable::totals`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableTotals {
    /// Servers up.
    pub up: u32,
    /// Servers down.
    pub down: u32,
    /// Servers draining.
    pub draining: u32,
    /// Slots of the servers up.
    pub slots: u32,
    /// Their free slots, net of reservations.
    pub slots_free: u32,
    /// Their free cores, net of reservations.
    pub cores_free: u32,
    /// Their free memory in bytes, net of reservations.
    pub mem_free: u64,
    /// The apps some server up offers, sorted.
    pub apps: Vec<String>,
}

/// One server in a [`ServerTable::snapshot`], for `allot status`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerSnapshot {
    /// Row id.
    pub id: ServerId,
    /// Name.
    pub name: String,
    /// State.
    pub state: ServerState,
    /// Attributes as last reported (and as reduced by reservations).
    pub record: ServerRecord,
    /// `cores_free` (not part of the worker's record).
    pub cores_free: u32,
    /// Slots reserved through this table and not yet released.
    pub reserved_slots: u32,
    /// Cores reserved and not yet released.
    pub reserved_cores: u32,
    /// Memory reserved and not yet released.
    pub reserved_mem: u64,
    /// Last applied delta sequence number.
    pub seq: u64,
}

impl ServerTable {
    /// An empty table.
    pub fn new(config: TableConfig) -> Result<ServerTable, EngineError> {
        if config.shards == 0 || config.shards > MAX_SHARDS {
            return Err(EngineError::BadConfig(format!(
                "shards must be 1..={MAX_SHARDS}, got {}",
                config.shards
            )));
        }
        if config.capacity == 0 || config.capacity > MAX_CAPACITY {
            return Err(EngineError::BadConfig(format!(
                "capacity must be 1..={MAX_CAPACITY}, got {}",
                config.capacity
            )));
        }
        let per_shard = config.capacity.div_ceil(config.shards);
        let max_blocks = per_shard.div_ceil(BLOCK_ROWS);
        let rows_per_shard = max_blocks * BLOCK_ROWS;
        let pools = TablePools::new(max_blocks * config.shards * ARENA_PER_BLOCK);
        Ok(ServerTable {
            shards: (0..config.shards)
                .map(|_| Shard::new(max_blocks, &pools))
                .collect(),
            arena: pools.arena.clone(),
            rows_per_shard: rows_per_shard as u32,
            capacity: rows_per_shard * config.shards,
            names: Mutex::new(Names::new()),
            strings: Mutex::new(Strings {
                apps: Interner::new(
                    MAX_APPS,
                    "apps",
                    "fewer distinct application names are needed",
                ),
                keys: Interner::new(
                    MAX_LABEL_KEYS,
                    "label keys",
                    "use fewer distinct label names",
                ),
                values: Interner::new(
                    MAX_LABEL_STRINGS,
                    "label string values",
                    "use fewer distinct label values",
                ),
            }),
            inflight: UserInFlight::new(),
            live: AtomicUsize::new(0),
            seed: RandomState::new().hash_one(0x5eed_u64),
            tie: CachePadded::new(AtomicU32::new(0)),
        })
    }

    /// The table's capacity after rounding.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Servers in the table (any state).
    pub fn len(&self) -> usize {
        self.live.load(Relaxed)
    }

    /// Whether the table has no servers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deltas applied so far.
    pub fn deltas_applied(&self) -> u64 {
        self.shards.iter().map(|s| s.applied.get()).sum()
    }

    /// Deltas dropped as stale or reordered so far.
    pub fn deltas_stale(&self) -> u64 {
        self.shards.iter().map(|s| s.stale.get()).sum()
    }

    /// The in-flight tracker (per-user task counts for quotas).
    pub fn in_flight(&self) -> &UserInFlight {
        &self.inflight
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    pub(crate) fn split(&self, id: ServerId) -> (usize, usize, usize) {
        let s = (id.0 / self.rows_per_shard) as usize;
        let row = (id.0 % self.rows_per_shard) as usize;
        (s, row / BLOCK_ROWS, row % BLOCK_ROWS)
    }

    pub(crate) fn id_of(&self, s: usize, b: usize, i: usize) -> ServerId {
        ServerId(s as u32 * self.rows_per_shard + (b * BLOCK_ROWS + i) as u32)
    }

    /// The block and bit of a live server.
    pub(crate) fn locate(&self, id: ServerId) -> Option<(&Shard, usize, &Block, usize)> {
        let (s, b, i) = self.split(id);
        let shard = self.shards.get(s)?;
        let block = shard.block(b)?;
        (block.live.load(Acquire) & (1 << i) != 0).then_some((shard, b, block, i))
    }

    fn names(&self) -> MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many apps and label keys are interned: only their columns can
    /// hold anything (ids are dense and never reused).
    fn interned(&self) -> (usize, usize) {
        let st = self.strings();
        (st.apps.len(), st.keys.len())
    }

    pub(crate) fn strings(&self) -> MutexGuard<'_, Strings> {
        self.strings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a server, or replaces the row of a server with the same name
    /// (a worker that reconnects): its capacity, apps, labels and delta
    /// sequence start afresh, its state becomes `Up`, and reservations made on
    /// the old row are no longer released into it.
    pub fn insert(&self, rec: ServerRecord) -> Result<ServerId, EngineError> {
        if rec.name.is_empty() || rec.name.len() > MAX_NAME_LEN {
            return Err(EngineError::BadName {
                name: truncated(&rec.name),
                reason: "a server name must be 1 to 255 bytes",
            });
        }
        let mut names = self.names();
        // Resolve strings first: a limit error must leave the table as it was.
        let (apps, labels) = {
            let mut st = self.strings();
            let apps = rec
                .apps
                .iter()
                .map(|a| st.apps.intern(a))
                .collect::<Result<Vec<u32>, _>>()?;
            let mut labels = Vec::with_capacity(rec.labels.len());
            for (k, v) in &rec.labels {
                labels.push((st.keys.intern(k)?, encode_label(&mut st, v)?));
            }
            (apps, labels)
        };
        if let Some(old) = names.lookup(&rec.name) {
            let id = ServerId(old);
            let (s, b, i) = self.split(id);
            let shard = &self.shards[s];
            let mut w = shard.lock();
            self.write_row(shard, &mut w, b, i, &rec, &apps, &labels);
            return Ok(id);
        }
        let n = self.shards.len();
        let start = (fnv1a(rec.name.as_bytes()) as usize) % n;
        for k in 0..n {
            let s = (start + k) % n;
            let shard = &self.shards[s];
            let mut w = shard.lock();
            let row = if let Some(r) = w.free.pop() {
                r
            } else if w.next_row < self.rows_per_shard {
                w.next_row += 1;
                w.next_row - 1
            } else {
                continue;
            };
            let (b, i) = (row as usize / BLOCK_ROWS, row as usize % BLOCK_ROWS);
            let new_block = || Block::new(w.dynamic.pool(), w.fixed.pool());
            if shard.blocks.get_or_init(b, new_block).is_none() {
                continue;
            }
            if shard.nblocks.load(Relaxed) <= b {
                shard.nblocks.store(b + 1, Release);
            }
            self.write_row(shard, &mut w, b, i, &rec, &apps, &labels);
            drop(w);
            let id = self.id_of(s, b, i);
            names.insert(&rec.name, id.0);
            self.live.fetch_add(1, Relaxed);
            return Ok(id);
        }
        Err(EngineError::TableFull {
            capacity: self.capacity,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn write_row(
        &self,
        shard: &Shard,
        w: &mut ShardWriter,
        b: usize,
        i: usize,
        rec: &ServerRecord,
        apps: &[u32],
        labels: &[(u32, u64)],
    ) {
        let Some(block) = shard.block(b) else { return };
        let bit = 1u64 << i;
        // Hide the row while it is rewritten (a replacement may be live).
        block.up.fetch_and(!bit, Release);
        block.draining.fetch_and(!bit, Release);
        block.gen[i].fetch_add(1, AcqRel);
        let guard = &epoch::pin();
        let mut d = w.dynamic.copy(block.dynamic(guard));
        d.load[i] = rec.load as f32;
        d.idle_power[i] = rec.idle_power as f32;
        d.refresh();
        block.dynamic.replace(d, &mut w.dynamic, guard);
        let mut f = w.fixed.copy(block.fixed(guard));
        f.slots[i] = rec.slots;
        f.cores[i] = rec.cores;
        f.power[i] = rec.power as f32;
        f.mem[i] = rec.mem;
        f.refresh();
        block.fixed.replace(f, &mut w.fixed, guard);
        let cap = &block.cap[i];
        cap.slots_free.store(rec.slots_free, Relaxed);
        cap.cores_free.store(rec.cores, Relaxed);
        cap.mem_free.store(rec.mem_free, Relaxed);
        let res = &block.reserved[i];
        res.slots.store(0, Relaxed);
        res.cores.store(0, Relaxed);
        res.mem.store(0, Relaxed);
        let (napps, nkeys) = self.interned();
        shard.reset_row_extras(b, i, napps, nkeys, labels, guard);
        for &a in apps {
            shard.set_app(a, b, bit, true);
        }
        let row = b * BLOCK_ROWS + i;
        if w.seq.len() <= row {
            w.seq.resize(row + 1, 0);
        }
        w.seq[row] = 0;
        block.live.fetch_or(bit, Release);
        block.up.fetch_or(bit, Release);
    }

    /// Removes a server. Its reservations become no-ops on release.
    pub fn remove(&self, id: ServerId) -> Result<(), EngineError> {
        let mut names = self.names();
        let (s, b, i) = self.split(id);
        let shard = self.shards.get(s).ok_or(EngineError::UnknownServer(id))?;
        let mut w = shard.lock();
        let block = shard
            .block(b)
            .filter(|bl| bl.live.load(Acquire) & (1 << i) != 0)
            .ok_or(EngineError::UnknownServer(id))?;
        let bit = 1u64 << i;
        block.up.fetch_and(!bit, Release);
        block.draining.fetch_and(!bit, Release);
        block.live.fetch_and(!bit, Release);
        block.gen[i].fetch_add(1, AcqRel);
        let (napps, nkeys) = self.interned();
        shard.reset_row_extras(b, i, napps, nkeys, &[], &epoch::pin());
        w.free.push((b * BLOCK_ROWS + i) as u32);
        names.remove(id.0);
        self.live.fetch_sub(1, Relaxed);
        Ok(())
    }

    /// The id of the server registered under `name`.
    pub fn lookup(&self, name: &str) -> Option<ServerId> {
        self.names().lookup(name).map(ServerId)
    }

    /// The name of a live server.
    pub fn name(&self, id: ServerId) -> Option<String> {
        self.locate(id)?;
        self.names().name(id.0).map(str::to_owned)
    }

    /// Applies a delta report. Deltas whose `seq` is not above the last one
    /// applied for this server (since it registered) are dropped and counted
    /// as stale: a reordered or duplicated delta never rolls a value back.
    pub fn apply_delta(
        &self,
        id: ServerId,
        seq: u64,
        changes: &[Change],
    ) -> Result<DeltaOutcome, EngineError> {
        let (s, b, i) = self.split(id);
        let shard = self.shards.get(s).ok_or(EngineError::UnknownServer(id))?;
        let mut w = shard.lock();
        let block = shard
            .block(b)
            .filter(|bl| bl.live.load(Acquire) & (1 << i) != 0)
            .ok_or(EngineError::UnknownServer(id))?;
        let row = b * BLOCK_ROWS + i;
        if seq <= w.seq[row] {
            shard.stale.bump();
            return Ok(DeltaOutcome::Stale);
        }
        let mut resolved = Vec::new();
        if changes.iter().any(|c| {
            matches!(
                c,
                Change::Label(..)
                    | Change::LabelRemoved(_)
                    | Change::AppAdded(_)
                    | Change::AppRemoved(_)
            )
        }) {
            let mut st = self.strings();
            for c in changes {
                resolved.push(match c {
                    Change::Label(k, v) => {
                        Resolved::Label(st.keys.intern(k)?, encode_label(&mut st, v)?)
                    }
                    Change::LabelRemoved(k) => Resolved::LabelRemoved(st.keys.get(k)),
                    Change::AppAdded(a) => Resolved::App(st.apps.intern(a)?, true),
                    Change::AppRemoved(a) => match st.apps.get(a) {
                        Some(id) => Resolved::App(id, false),
                        None => Resolved::AppRemovedUnknown,
                    },
                    _ => continue,
                });
            }
        }
        let mut resolved = resolved.into_iter();
        let bit = 1u64 << i;
        let guard = &epoch::pin();
        // Each column group is copied at most once per delta, and only if
        // the delta changes it.
        let (mut new_dynamic, mut new_fixed) = (None, None);
        let cap = &block.cap[i];
        let w = &mut *w;
        let (rd, rf) = (&mut w.dynamic, &mut w.fixed);
        for c in changes {
            match c {
                Change::Slots(v) => cow(&mut new_fixed, rf, block.fixed(guard)).slots[i] = *v,
                Change::Cores(v) => cow(&mut new_fixed, rf, block.fixed(guard)).cores[i] = *v,
                Change::Power(v) => {
                    cow(&mut new_fixed, rf, block.fixed(guard)).power[i] = *v as f32
                }
                Change::Mem(v) => cow(&mut new_fixed, rf, block.fixed(guard)).mem[i] = *v,
                Change::IdlePower(v) => {
                    cow(&mut new_dynamic, rd, block.dynamic(guard)).set_idle_power(i, *v as f32)
                }
                Change::Load(v) => {
                    cow(&mut new_dynamic, rd, block.dynamic(guard)).set_load(i, *v as f32)
                }
                Change::SlotsFree(v) => cap.slots_free.store(*v, Relaxed),
                Change::CoresFree(v) => cap.cores_free.store(*v, Relaxed),
                Change::MemFree(v) => cap.mem_free.store(*v, Relaxed),
                _ => match resolved.next() {
                    Some(Resolved::Label(k, v)) => shard.set_label(k, b, i, v, guard),
                    Some(Resolved::LabelRemoved(Some(k))) => {
                        shard.set_label(k, b, i, label::MISSING, guard)
                    }
                    Some(Resolved::App(a, on)) => shard.set_app(a, b, bit, on),
                    Some(Resolved::LabelRemoved(None))
                    | Some(Resolved::AppRemovedUnknown)
                    | None => {}
                },
            }
        }
        if let Some(d) = new_dynamic {
            block.dynamic.replace(d, rd, guard);
        }
        if let Some(mut f) = new_fixed {
            f.refresh();
            block.fixed.replace(f, rf, guard);
        }
        cap_by_reservations(block, i, changes, guard);
        w.seq[row] = seq;
        shard.applied.bump();
        Ok(DeltaOutcome::Applied)
    }

    /// Sets a server's state. Only `Up` servers are matched.
    pub fn set_state(&self, id: ServerId, state: ServerState) -> Result<(), EngineError> {
        let (s, b, i) = self.split(id);
        let shard = self.shards.get(s).ok_or(EngineError::UnknownServer(id))?;
        let _w = shard.lock();
        let (_, _, block, _) = self.locate(id).ok_or(EngineError::UnknownServer(id))?;
        let bit = 1u64 << i;
        debug_assert_eq!(b * BLOCK_ROWS + i, (id.0 % self.rows_per_shard) as usize);
        match state {
            ServerState::Up => {
                block.draining.fetch_and(!bit, Release);
                block.up.fetch_or(bit, Release);
            }
            ServerState::Down => {
                block.up.fetch_and(!bit, Release);
                block.draining.fetch_and(!bit, Release);
            }
            ServerState::Draining => {
                block.up.fetch_and(!bit, Release);
                block.draining.fetch_or(bit, Release);
            }
        }
        Ok(())
    }

    /// A server's state, `None` if it is not in the table. Lock-free.
    pub fn state(&self, id: ServerId) -> Option<ServerState> {
        let (_, _, block, i) = self.locate(id)?;
        let bit = 1u64 << i;
        Some(if block.up.load(Acquire) & bit != 0 {
            ServerState::Up
        } else if block.draining.load(Acquire) & bit != 0 {
            ServerState::Draining
        } else {
            ServerState::Down
        })
    }

    /// After a worker refused a placement because it is full: sets its free
    /// slots to 0 until its next delta says otherwise. Lock-free.
    pub fn mark_full(&self, id: ServerId) -> Result<(), EngineError> {
        let (_, _, block, i) = self.locate(id).ok_or(EngineError::UnknownServer(id))?;
        block.cap[i].slots_free.store(0, Release);
        Ok(())
    }

    /// Counts and sums over the whole table (what a distributor reports to
    /// the gateways as its share of its set), read from the columns and
    /// app masks without copying any row: cheap enough to take at every
    /// sweep. Free figures are net of reservations, as in [`Self::snapshot`].
    pub fn totals(&self) -> TableTotals {
        let mut t = TableTotals::default();
        let mut apps: Vec<bool> = Vec::new();
        for shard in self.shards.iter() {
            let _w = shard.lock();
            let st = self.strings();
            apps.resize(st.apps.len().max(apps.len()), false);
            let guard = &epoch::pin();
            for b in 0..shard.nblocks() {
                let Some(block) = shard.block(b) else {
                    continue;
                };
                let cols = Cols::of(block, guard);
                let live = block.live.load(Acquire);
                let up = block.up.load(Acquire) & live;
                let draining = block.draining.load(Acquire) & live & !up;
                t.up += up.count_ones();
                t.draining += draining.count_ones();
                t.down += (live & !up & !draining).count_ones();
                let mut rows = up;
                while rows != 0 {
                    let i = rows.trailing_zeros() as usize;
                    rows &= rows - 1;
                    let cap = &block.cap[i];
                    t.slots = t.slots.saturating_add(cols.fixed.slots[i]);
                    t.slots_free = t.slots_free.saturating_add(cap.slots_free.load(Relaxed));
                    t.cores_free = t.cores_free.saturating_add(cap.cores_free.load(Relaxed));
                    t.mem_free = t.mem_free.saturating_add(cap.mem_free.load(Relaxed));
                }
                for (a, seen) in apps.iter_mut().enumerate() {
                    if !*seen && shard.app_mask(a as u32, b) & up != 0 {
                        *seen = true;
                    }
                }
            }
        }
        let st = self.strings();
        t.apps = apps
            .iter()
            .enumerate()
            .filter(|(_, seen)| **seen)
            .map(|(a, _)| st.apps.name(a as u32).to_string())
            .collect();
        t.apps.sort();
        t
    }

    /// Every server with its attributes and reserved capacity, in id order.
    /// Takes the writer locks shard by shard (this is for `allot status`, not
    /// the hot path).
    pub fn snapshot(&self) -> Vec<ServerSnapshot> {
        let names = self.names();
        let mut out = Vec::with_capacity(self.len());
        for (s, shard) in self.shards.iter().enumerate() {
            let w = shard.lock();
            let st = self.strings();
            let guard = &epoch::pin();
            for b in 0..shard.nblocks() {
                let Some(block) = shard.block(b) else {
                    continue;
                };
                let cols = Cols::of(block, guard);
                let mut live = block.live.load(Acquire);
                while live != 0 {
                    let i = live.trailing_zeros() as usize;
                    live &= live - 1;
                    let id = self.id_of(s, b, i);
                    let bit = 1u64 << i;
                    let state = if block.up.load(Acquire) & bit != 0 {
                        ServerState::Up
                    } else if block.draining.load(Acquire) & bit != 0 {
                        ServerState::Draining
                    } else {
                        ServerState::Down
                    };
                    let apps = (0..st.apps.len() as u32)
                        .filter(|&a| shard.app_mask(a, b) & bit != 0)
                        .map(|a| st.apps.name(a).to_string())
                        .collect();
                    let labels = (0..st.keys.len() as u32)
                        .filter_map(|k| {
                            let cell = shard.label_cells(k, b, guard)?.cell(i);
                            Some((st.keys.name(k).to_string(), label_value(&st, cell)?))
                        })
                        .collect();
                    let (cap, res) = (&block.cap[i], &block.reserved[i]);
                    out.push(ServerSnapshot {
                        id,
                        name: names.name(id.0).unwrap_or("?").to_string(),
                        state,
                        record: ServerRecord {
                            name: names.name(id.0).unwrap_or("?").to_string(),
                            slots: cols.fixed.slots[i],
                            slots_free: cap.slots_free.load(Relaxed),
                            cores: cols.fixed.cores[i],
                            power: cols.fixed.power[i] as f64,
                            idle_power: cols.dynamic.idle_power[i] as f64,
                            mem: cols.fixed.mem[i],
                            mem_free: cap.mem_free.load(Relaxed),
                            load: cols.dynamic.load[i] as f64,
                            apps,
                            labels,
                        },
                        cores_free: cap.cores_free.load(Relaxed),
                        reserved_slots: res.slots.load(Relaxed),
                        reserved_cores: res.cores.load(Relaxed),
                        reserved_mem: res.mem.load(Relaxed),
                        seq: w.seq.get(b * BLOCK_ROWS + i).copied().unwrap_or(0),
                    });
                }
            }
        }
        out
    }

    /// Approximate heap bytes held by the table: the arena's reserved
    /// chunks (blocks, column groups and label cells, live, spare and
    /// retired; [`crate::table::arena`]), directories, app masks, numeric label
    /// planes, names and sequence numbers.
    pub fn heap_bytes(&self) -> usize {
        let mut n = self.names().heap_bytes() + self.arena.reserved_bytes();
        let guard = &epoch::pin();
        for shard in self.shards.iter() {
            let nb = shard.nblocks();
            n += shard.max_blocks * 16 + (MAX_APPS + MAX_LABEL_KEYS) * 16;
            n += shard.apps.iter().filter(|c| c.get().is_some()).count() * shard.max_blocks * 8;
            for (k, cell) in shard.labels.iter().enumerate() {
                if cell.get().is_some() {
                    n += shard.max_blocks * std::mem::size_of::<Rcu<LabelCells>>();
                    for b in 0..nb {
                        if let Some(c) = shard.label_cells(k as u32, b, guard) {
                            n += c.nums.as_ref().map_or(0, |_| BLOCK_ROWS * 8);
                        }
                    }
                }
            }
            let w = shard.lock();
            n += w.seq.capacity() * 8 + w.free.capacity() * 4;
        }
        n
    }
}

/// Renders a label value cell for messages and snapshots.
pub(crate) fn label_value(strings: &Strings, cell: u64) -> Option<LabelValue> {
    if cell == label::MISSING {
        None
    } else if let Some(id) = label::str_id(cell) {
        Some(LabelValue::Str(strings.values.name(id).to_string()))
    } else {
        Some(LabelValue::Num(f64::from_bits(cell)))
    }
}

fn encode_label(st: &mut Strings, v: &LabelValue) -> Result<u64, EngineError> {
    Ok(match v {
        LabelValue::Num(x) => label::num(*x),
        LabelValue::Str(s) => label::str(st.values.intern(s)?),
    })
}

/// The pending copy of a column group, made from `current` (in a recycled
/// allocation) on first use.
/// After a delta that set free capacity: the worker counted what it runs,
/// not this table's placements still on their way to it, so the free
/// figures are capped by the totals less what is reserved here (running
/// or on the way). With one distributor that is exact; with several it
/// still leaves out this one's own placements in flight, and what the
/// others placed is their affair (a busy refusal corrects it).
fn cap_by_reservations(block: &Block, i: usize, changes: &[Change], guard: &epoch::Guard) {
    let (mut slots, mut cores, mut mem) = (false, false, false);
    for c in changes {
        match c {
            Change::SlotsFree(_) => slots = true,
            Change::CoresFree(_) => cores = true,
            Change::MemFree(_) => mem = true,
            _ => {}
        }
    }
    if !(slots || cores || mem) {
        return;
    }
    let fixed = block.fixed(guard);
    let (cap, res) = (&block.cap[i], &block.reserved[i]);
    if slots {
        let most = fixed.slots[i].saturating_sub(res.slots.load(Relaxed));
        cap.slots_free.fetch_min(most, Relaxed);
    }
    if cores {
        let most = fixed.cores[i].saturating_sub(res.cores.load(Relaxed));
        cap.cores_free.fetch_min(most, Relaxed);
    }
    if mem {
        let most = fixed.mem[i].saturating_sub(res.mem.load(Relaxed));
        cap.mem_free.fetch_min(most, Relaxed);
    }
}

fn cow<'a, T: Clone + Send + Sync>(
    pending: &'a mut Option<Fresh<T>>,
    rec: &mut Recycler<T>,
    current: &T,
) -> &'a mut T {
    pending.get_or_insert_with(|| rec.copy(current))
}

/// Spreads new servers over shards deterministically.
fn fnv1a(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in b {
        h = (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
