//! The server table: sharded structure-of-arrays blocks that matchers read
//! without locks while writers (registration, deltas, state changes) update
//! them in place.
//!
//! Concurrency design:
//! * Readers (matching, reservation, release, `state`) never lock. They load
//!   a block's `live`/`up` masks with `Acquire` and its columns with `Relaxed`
//!   atomic loads.
//! * Writers serialise per shard on a mutex (the name index and the string
//!   interners have their own mutexes; lock order is names, shard, strings).
//!   A writer fills a row's columns before it publishes the row with a
//!   `Release` store of the `live`/`up` bits.
//! * Growth never moves anything: each shard has a directory of block cells
//!   sized for its capacity, a block is allocated on first use and freed only
//!   when the table drops ([`crate::lazy::LazyBlocks`]).
//! * Capacity (slots, cores, memory) is reserved with compare-and-swap, so
//!   concurrent matchers never take more than a server has.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::block::{label, new_label_block, Block, LabelBlock};
use crate::error::{truncated, EngineError};
use crate::expr::compile::label_value;
use crate::inflight::InFlight;
use crate::intern::Interner;
use crate::lazy::LazyBlocks;
use crate::names::Names;
use crate::schema::{
    Change, DeltaOutcome, LabelValue, ServerId, ServerRecord, ServerState, BLOCK_ROWS, MAX_APPS,
    MAX_CAPACITY, MAX_LABEL_KEYS, MAX_LABEL_STRINGS, MAX_NAME_LEN, MAX_SHARDS,
};

/// Sizing of a [`ServerTable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableConfig {
    /// Number of shards (1..=256). Shards let writers to different shards
    /// proceed in parallel and let sampled matching start anywhere.
    pub shards: usize,
    /// Most servers the table holds (rounded up to a multiple of
    /// `64 * shards`). Beyond it `insert` fails with
    /// [`EngineError::TableFull`]. Memory is allocated per 64-row block as
    /// rows are used, plus 16 bytes of directory per possible block.
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
}

/// One shard: a range of rows with its own blocks and writer lock.
pub(crate) struct Shard {
    blocks: LazyBlocks<Block>,
    /// Blocks allocated so far; readers scan `0..nblocks`.
    nblocks: AtomicUsize,
    /// Per app: one mask per block of the rows that have the app. Allocated
    /// the first time a server in this shard has the app.
    apps: Box<[OnceLock<Box<[AtomicU64]>>]>,
    /// Per label key: the key's cells, per block, allocated on first use.
    labels: Box<[OnceLock<LazyBlocks<LabelBlock>>]>,
    writer: Mutex<ShardWriter>,
    max_blocks: usize,
}

impl Shard {
    fn new(max_blocks: usize) -> Shard {
        Shard {
            blocks: LazyBlocks::new(max_blocks),
            nblocks: AtomicUsize::new(0),
            apps: (0..MAX_APPS).map(|_| OnceLock::new()).collect(),
            labels: (0..MAX_LABEL_KEYS).map(|_| OnceLock::new()).collect(),
            writer: Mutex::new(ShardWriter {
                free: Vec::new(),
                next_row: 0,
                seq: Vec::new(),
            }),
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

    #[inline]
    pub(crate) fn label_block(&self, key: u32, b: usize) -> Option<&LabelBlock> {
        self.labels.get(key as usize)?.get()?.get(b)
    }

    fn app_masks(&self, app: u32) -> &[AtomicU64] {
        self.apps[app as usize]
            .get_or_init(|| (0..self.max_blocks).map(|_| AtomicU64::new(0)).collect())
    }

    fn label_cells(&self, key: u32, b: usize) -> &LabelBlock {
        let dir = self.labels[key as usize].get_or_init(|| LazyBlocks::new(self.max_blocks));
        // `b < max_blocks` for every row of the shard.
        dir.get_or_init(b, new_label_block)
            .expect("block index within the shard")
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

    /// Clears a row's apps and labels.
    fn clear_row_extras(&self, b: usize, i: usize, apps: usize, keys: usize) {
        let bit = 1u64 << i;
        for cell in self.apps.iter().take(apps) {
            if let Some(masks) = cell.get() {
                masks[b].fetch_and(!bit, Release);
            }
        }
        for cell in self.labels.iter().take(keys) {
            if let Some(blocks) = cell.get().and_then(|d| d.get(b)) {
                blocks[i].store(label::MISSING, Relaxed);
            }
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
    pub(crate) inflight: InFlight,
    applied: AtomicU64,
    stale: AtomicU64,
    live: AtomicUsize,
    seed: u64,
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

fn f32_bits(x: f64) -> u32 {
    (x as f32).to_bits()
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
        Ok(ServerTable {
            shards: (0..config.shards).map(|_| Shard::new(max_blocks)).collect(),
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
            inflight: InFlight::new(),
            applied: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            seed: RandomState::new().hash_one(0x5eed_u64),
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
        self.applied.load(Relaxed)
    }

    /// Deltas dropped as stale or reordered so far.
    pub fn deltas_stale(&self) -> u64 {
        self.stale.load(Relaxed)
    }

    /// The in-flight tracker (per-user task counts for quotas).
    pub fn in_flight(&self) -> &InFlight {
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
            if shard.blocks.get_or_init(b, Block::new).is_none() {
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
        block.slots[i].store(rec.slots, Relaxed);
        block.slots_free[i].store(rec.slots_free, Relaxed);
        block.cores[i].store(rec.cores, Relaxed);
        block.cores_free[i].store(rec.cores, Relaxed);
        block.power[i].store(f32_bits(rec.power), Relaxed);
        block.idle_power[i].store(f32_bits(rec.idle_power), Relaxed);
        block.load[i].store(f32_bits(rec.load), Relaxed);
        block.mem[i].store(rec.mem, Relaxed);
        block.mem_free[i].store(rec.mem_free, Relaxed);
        block.res_slots[i].store(0, Relaxed);
        block.res_cores[i].store(0, Relaxed);
        block.res_mem[i].store(0, Relaxed);
        let (napps, nkeys) = self.interned();
        shard.clear_row_extras(b, i, napps, nkeys);
        for &a in apps {
            shard.set_app(a, b, bit, true);
        }
        for &(k, v) in labels {
            shard.label_cells(k, b)[i].store(v, Relaxed);
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
        shard.clear_row_extras(b, i, napps, nkeys);
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
            self.stale.fetch_add(1, Relaxed);
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
        for c in changes {
            match c {
                Change::Slots(v) => block.slots[i].store(*v, Relaxed),
                Change::SlotsFree(v) => block.slots_free[i].store(*v, Relaxed),
                Change::Cores(v) => block.cores[i].store(*v, Relaxed),
                Change::CoresFree(v) => block.cores_free[i].store(*v, Relaxed),
                Change::Power(v) => block.power[i].store(f32_bits(*v), Relaxed),
                Change::IdlePower(v) => block.idle_power[i].store(f32_bits(*v), Relaxed),
                Change::Mem(v) => block.mem[i].store(*v, Relaxed),
                Change::MemFree(v) => block.mem_free[i].store(*v, Relaxed),
                Change::Load(v) => block.load[i].store(f32_bits(*v), Relaxed),
                _ => match resolved.next() {
                    Some(Resolved::Label(k, v)) => shard.label_cells(k, b)[i].store(v, Relaxed),
                    Some(Resolved::LabelRemoved(Some(k))) => {
                        if let Some(cells) = shard.label_block(k, b) {
                            cells[i].store(label::MISSING, Relaxed);
                        }
                    }
                    Some(Resolved::App(a, on)) => shard.set_app(a, b, bit, on),
                    Some(Resolved::LabelRemoved(None))
                    | Some(Resolved::AppRemovedUnknown)
                    | None => {}
                },
            }
        }
        w.seq[row] = seq;
        self.applied.fetch_add(1, Relaxed);
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
        block.slots_free[i].store(0, Release);
        Ok(())
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
            for b in 0..shard.nblocks() {
                let Some(block) = shard.block(b) else {
                    continue;
                };
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
                            let cell = shard.label_block(k, b)?[i].load(Relaxed);
                            Some((st.keys.name(k).to_string(), label_value(&st, cell)?))
                        })
                        .collect();
                    let f =
                        |c: &std::sync::atomic::AtomicU32| f32::from_bits(c.load(Relaxed)) as f64;
                    out.push(ServerSnapshot {
                        id,
                        name: names.name(id.0).unwrap_or("?").to_string(),
                        state,
                        record: ServerRecord {
                            name: names.name(id.0).unwrap_or("?").to_string(),
                            slots: block.slots[i].load(Relaxed),
                            slots_free: block.slots_free[i].load(Relaxed),
                            cores: block.cores[i].load(Relaxed),
                            power: f(&block.power[i]),
                            idle_power: f(&block.idle_power[i]),
                            mem: block.mem[i].load(Relaxed),
                            mem_free: block.mem_free[i].load(Relaxed),
                            load: f(&block.load[i]),
                            apps,
                            labels,
                        },
                        cores_free: block.cores_free[i].load(Relaxed),
                        reserved_slots: block.res_slots[i].load(Relaxed),
                        reserved_cores: block.res_cores[i].load(Relaxed),
                        reserved_mem: block.res_mem[i].load(Relaxed),
                        seq: w.seq.get(b * BLOCK_ROWS + i).copied().unwrap_or(0),
                    });
                }
            }
        }
        out
    }

    /// Approximate heap bytes held by the table (blocks, directories, app
    /// masks, label cells, names, sequence numbers).
    pub fn heap_bytes(&self) -> usize {
        let mut n = self.names().heap_bytes();
        for shard in self.shards.iter() {
            let nb = shard.nblocks();
            n += shard.max_blocks * 16 + (MAX_APPS + MAX_LABEL_KEYS) * 16;
            n += nb * std::mem::size_of::<Block>();
            n += shard.apps.iter().filter(|c| c.get().is_some()).count() * shard.max_blocks * 8;
            for cell in shard.labels.iter() {
                if let Some(dir) = cell.get() {
                    n += shard.max_blocks * 16;
                    n += (0..nb).filter(|&b| dir.get(b).is_some()).count() * BLOCK_ROWS * 8;
                }
            }
            let w = shard.lock();
            n += w.seq.capacity() * 8 + w.free.capacity() * 4;
        }
        n
    }
}

fn encode_label(st: &mut Strings, v: &LabelValue) -> Result<u64, EngineError> {
    Ok(match v {
        LabelValue::Num(x) => label::num(*x),
        LabelValue::Str(s) => label::str(st.values.intern(s)?),
    })
}

/// Spreads new servers over shards deterministically.
fn fnv1a(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in b {
        h = (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
