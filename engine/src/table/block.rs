//! Structure-of-arrays blocks of 64 server rows, and the helpers that turn a
//! column into a `u64` predicate mask.
//!
//! A block keeps two kinds of storage, because readers never lock:
//! * Columns only registrations and deltas write (`slots`, `cores`, `power`,
//!   `idle_power`, `load`, `mem`, label cells) are immutable plain arrays
//!   behind copy-on-write pointers ([`Rcu`]): a writer (serialised by its
//!   shard's mutex) copies the group, changes it and swaps it in. Readers pin
//!   once per scan and read `[u32; 64]`/`[f32; 64]` arrays, which the filter
//!   kernels compare four lanes at a time ([`crate::scan::simd`]). Columns that
//!   change with load (`load`, `idle_power`) are a small group of their own
//!   ([`Dynamic`]), so a typical delta copies 512 bytes.
//! * Columns that reservations take from with compare-and-swap
//!   (`slots_free`, `cores_free`, `mem_free`) stay atomics: they are the
//!   truth that keeps concurrent matchers from over-reserving. One row's three
//!   are adjacent ([`Cap`]), so checking a candidate touches one cache line.
//!   Matchers test them only for rows that passed the vectorised clauses.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crossbeam_epoch::Guard;

use crate::schema::{Column, BLOCK_ROWS};
use crate::table::arena::Pool;
use crate::table::minmax::range_f32;
use crate::table::rcu::Rcu;

/// The capacity reservations take from, for one row.
#[repr(C)]
#[derive(Default)]
pub(crate) struct Cap {
    pub slots_free: AtomicU32,
    pub cores_free: AtomicU32,
    pub mem_free: AtomicU64,
}

/// Capacity reserved through this table and not yet released, for one row
/// (for `allot status`; never read while matching).
#[repr(C)]
#[derive(Default)]
pub(crate) struct Reserved {
    pub slots: AtomicU32,
    pub cores: AtomicU32,
    pub mem: AtomicU64,
}

/// The columns that change with load: replaced on most deltas (the groups
/// come from the table's pools, so the alignment costs no allocator slow
/// path).
///
/// Line-aligned, columns first: `load` and `idle_power` are exactly eight
/// lines, which a match reading both (the usual `require` and `prefer`)
/// warms and reads; at an offset they would span nine.
#[repr(C, align(64))]
#[derive(Clone)]
pub(crate) struct Dynamic {
    pub load: [f32; BLOCK_ROWS],
    pub idle_power: [f32; BLOCK_ROWS],
    /// Smallest and largest non-NaN cell of each column (vacant rows
    /// included), kept by [`Dynamic::refresh`]: bounds for pruning, on a
    /// line of their own ([`Dynamic::RANGES`]), so a pruned block costs one
    /// line of the group.
    pub load_range: (f32, f32),
    pub idle_power_range: (f32, f32),
}

impl Default for Dynamic {
    fn default() -> Dynamic {
        Dynamic {
            load: [0.0; BLOCK_ROWS],
            idle_power: [0.0; BLOCK_ROWS],
            load_range: (0.0, 0.0),
            idle_power_range: (0.0, 0.0),
        }
    }
}

impl Dynamic {
    /// Where the column ranges are (for warming just them).
    pub(crate) const RANGES: usize = std::mem::offset_of!(Dynamic, load_range);

    /// Recomputes the column ranges; writers call it before publishing.
    pub(crate) fn refresh(&mut self) {
        self.load_range = range_f32(&self.load);
        self.idle_power_range = range_f32(&self.idle_power);
    }

    /// Sets `load` of row `i`, keeping its range.
    pub(crate) fn set_load(&mut self, i: usize, v: f32) {
        let old = std::mem::replace(&mut self.load[i], v);
        self.load_range = updated_range(self.load_range, old, v, &self.load);
    }

    /// Sets `idle_power` of row `i`, keeping its range.
    pub(crate) fn set_idle_power(&mut self, i: usize, v: f32) {
        let old = std::mem::replace(&mut self.idle_power[i], v);
        self.idle_power_range = updated_range(self.idle_power_range, old, v, &self.idle_power);
    }
}

/// The range after one cell changed from `old` to `new`: widened to take
/// `new` (cheap, and a wider range is still a bound), or recomputed when
/// `old` was an end of it, so that ranges do not only ever grow.
#[inline]
fn updated_range((lo, hi): (f32, f32), old: f32, new: f32, col: &[f32; BLOCK_ROWS]) -> (f32, f32) {
    if old == lo || old == hi {
        range_f32(col)
    } else {
        (lo.min(new), hi.max(new))
    }
}

fn range_int<T: Copy + Ord + Into<f64>>(x: &[T; BLOCK_ROWS]) -> (f64, f64) {
    let lo = x.iter().copied().min().map_or(0.0, Into::into);
    let hi = x.iter().copied().max().map_or(0.0, Into::into);
    (lo, hi)
}

/// The columns that change on registration and seldom otherwise.
#[repr(C)]
#[derive(Clone)]
pub(crate) struct Fixed {
    /// As in [`Dynamic`]: `power`, then `slots`, `cores`, `mem` widened.
    pub power_range: (f32, f32),
    pub int_ranges: [(f64, f64); 3],
    pub power: [f32; BLOCK_ROWS],
    pub slots: [u32; BLOCK_ROWS],
    pub cores: [u32; BLOCK_ROWS],
    pub mem: [u64; BLOCK_ROWS],
}

impl Fixed {
    /// Where the column ranges are (for warming just them).
    pub(crate) const RANGES: usize = std::mem::offset_of!(Fixed, power_range);
}

impl Default for Fixed {
    fn default() -> Fixed {
        Fixed {
            power: [0.0; BLOCK_ROWS],
            slots: [0; BLOCK_ROWS],
            cores: [0; BLOCK_ROWS],
            mem: [0; BLOCK_ROWS],
            power_range: (0.0, 0.0),
            int_ranges: [(0.0, 0.0); 3],
        }
    }
}

impl Fixed {
    /// Recomputes the column ranges; writers call it before publishing.
    pub(crate) fn refresh(&mut self) {
        self.power_range = range_f32(&self.power);
        self.int_ranges[0] = range_int(&self.slots);
        self.int_ranges[1] = range_int(&self.cores);
        let lo = self.mem.iter().copied().min().unwrap_or(0);
        let hi = self.mem.iter().copied().max().unwrap_or(0);
        // `as f64` rounds to nearest, and every cell converts the same way
        // when scored, so the rounded extremes bound the rounded cells.
        self.int_ranges[2] = (lo as f64, hi as f64);
    }
}

/// What a reader sees of a block whose group was never written (cannot
/// happen for a live row; it keeps the accessors total without a panic).
static NO_DYNAMIC: Dynamic = Dynamic {
    load: [0.0; BLOCK_ROWS],
    idle_power: [0.0; BLOCK_ROWS],
    load_range: (0.0, 0.0),
    idle_power_range: (0.0, 0.0),
};
static NO_FIXED: Fixed = Fixed {
    power: [0.0; BLOCK_ROWS],
    slots: [0; BLOCK_ROWS],
    cores: [0; BLOCK_ROWS],
    mem: [0; BLOCK_ROWS],
    power_range: (0.0, 0.0),
    int_ranges: [(0.0, 0.0); 3],
};

/// One block of 64 rows: about 37 bytes per row here, plus 28 in the two
/// column groups. The first cache line holds everything a scan reads before
/// it knows which rows pass.
#[repr(C, align(64))]
pub(crate) struct Block {
    /// Rows that hold a server.
    pub live: AtomicU64,
    /// Live rows in state `Up`.
    pub up: AtomicU64,
    /// Live rows in state `Draining`.
    pub draining: AtomicU64,
    pub dynamic: Rcu<Dynamic>,
    pub fixed: Rcu<Fixed>,
    pub cap: [Cap; BLOCK_ROWS],
    /// Bumped when a row is (re)occupied or vacated; a reservation remembers
    /// it so that a late release cannot touch the next occupant.
    pub gen: [AtomicU32; BLOCK_ROWS],
    pub reserved: [Reserved; BLOCK_ROWS],
}

impl Block {
    /// A block with no rows, its column groups in `dynamic` and `fixed`
    /// (the pools of the recyclers that will replace them).
    pub(crate) fn new(dynamic: &Pool<Dynamic>, fixed: &Pool<Fixed>) -> Block {
        Block {
            live: AtomicU64::new(0),
            up: AtomicU64::new(0),
            draining: AtomicU64::new(0),
            dynamic: Rcu::new_in(Dynamic::default(), dynamic),
            fixed: Rcu::new_in(Fixed::default(), fixed),
            cap: std::array::from_fn(|_| Cap::default()),
            gen: std::array::from_fn(|_| AtomicU32::new(0)),
            reserved: std::array::from_fn(|_| Reserved::default()),
        }
    }

    #[inline(always)]
    pub(crate) fn dynamic<'g>(&'g self, g: &'g Guard) -> &'g Dynamic {
        self.dynamic.get(g).unwrap_or(&NO_DYNAMIC)
    }

    #[inline(always)]
    pub(crate) fn fixed<'g>(&'g self, g: &'g Guard) -> &'g Fixed {
        self.fixed.get(g).unwrap_or(&NO_FIXED)
    }
}

/// One block's columns as a reader sees them: the column groups as of the
/// moment the view was taken (coherent per group), and the live atomics.
#[derive(Copy, Clone)]
pub(crate) struct Cols<'g> {
    pub block: &'g Block,
    pub dynamic: &'g Dynamic,
    pub fixed: &'g Fixed,
}

impl<'g> Cols<'g> {
    #[inline(always)]
    pub(crate) fn of(block: &'g Block, g: &'g Guard) -> Cols<'g> {
        Cols {
            block,
            dynamic: block.dynamic(g),
            fixed: block.fixed(g),
        }
    }

    /// A plain `u32` column.
    #[inline(always)]
    pub(crate) fn u32s(&self, c: Column) -> Option<&'g [u32; BLOCK_ROWS]> {
        match c {
            Column::Slots => Some(&self.fixed.slots),
            Column::Cores => Some(&self.fixed.cores),
            _ => None,
        }
    }

    /// A plain `f32` column.
    #[inline(always)]
    pub(crate) fn f32s(&self, c: Column) -> Option<&'g [f32; BLOCK_ROWS]> {
        match c {
            Column::Power => Some(&self.fixed.power),
            Column::IdlePower => Some(&self.dynamic.idle_power),
            Column::Load => Some(&self.dynamic.load),
            _ => None,
        }
    }

    /// Bounds on the values of column `c` in this block as `f64` (every
    /// cell, as expressions widen it, lies within them; NaN cells excepted),
    /// or `None` for the reservation columns, which change without a copy.
    #[inline(always)]
    pub(crate) fn range(&self, c: Column) -> Option<(f64, f64)> {
        let f = |(lo, hi): (f32, f32)| Some((lo as f64, hi as f64));
        match c {
            Column::Load => f(self.dynamic.load_range),
            Column::IdlePower => f(self.dynamic.idle_power_range),
            Column::Power => f(self.fixed.power_range),
            Column::Slots => Some(self.fixed.int_ranges[0]),
            Column::Cores => Some(self.fixed.int_ranges[1]),
            Column::Mem => Some(self.fixed.int_ranges[2]),
            Column::SlotsFree | Column::CoresFree | Column::MemFree => None,
        }
    }

    /// An integer cell (`u32` and `u64` columns), widened.
    #[inline(always)]
    pub(crate) fn int(&self, c: Column, i: usize) -> u64 {
        match c {
            Column::Slots => self.fixed.slots[i] as u64,
            Column::Cores => self.fixed.cores[i] as u64,
            Column::Mem => self.fixed.mem[i],
            Column::SlotsFree => self.block.cap[i].slots_free.load(Relaxed) as u64,
            Column::CoresFree => self.block.cap[i].cores_free.load(Relaxed) as u64,
            Column::MemFree => self.block.cap[i].mem_free.load(Relaxed),
            Column::Power | Column::IdlePower | Column::Load => 0,
        }
    }

    /// The value of one cell widened to `f64`, as expressions see it.
    #[inline(always)]
    pub(crate) fn value(&self, c: Column, i: usize) -> f64 {
        match c {
            Column::Power => self.fixed.power[i] as f64,
            Column::IdlePower => self.dynamic.idle_power[i] as f64,
            Column::Load => self.dynamic.load[i] as f64,
            _ => self.int(c, i) as f64,
        }
    }
}

/// Packs 64 booleans (bytes of 0 or 1) into a mask, bit `i` for byte `i`.
///
/// For eight bytes each 0 or 1, multiplying by `0x0102_0408_1020_4080` moves
/// byte `i` to bit `56 + i` with no carries between the partial products.
#[inline(always)]
pub(crate) fn pack(bits: &[u8; BLOCK_ROWS]) -> u64 {
    let mut m = 0u64;
    for (c, chunk) in bits.chunks_exact(8).enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        m |= (x.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (c * 8);
    }
    m
}

/// The mask of rows for which `f` holds: a branch-free loop over a local
/// array (vectorised), then [`pack`].
#[inline(always)]
pub(crate) fn mask_of<T: Copy>(x: &[T; BLOCK_ROWS], f: impl Fn(T) -> bool) -> u64 {
    let mut b = [0u8; BLOCK_ROWS];
    for (o, &v) in b.iter_mut().zip(x.iter()) {
        *o = f(v) as u8;
    }
    pack(&b)
}

/// As [`mask_of`], over two arrays.
#[inline(always)]
pub(crate) fn mask_of2<T: Copy>(
    x: &[T; BLOCK_ROWS],
    y: &[T; BLOCK_ROWS],
    f: impl Fn(T, T) -> bool,
) -> u64 {
    let mut b = [0u8; BLOCK_ROWS];
    for ((o, &v), &w) in b.iter_mut().zip(x.iter()).zip(y.iter()) {
        *o = f(v, w) as u8;
    }
    pack(&b)
}

/// The canonical encoding of one label cell as a `u64` (how values are
/// resolved before they are stored, and how they are compared across
/// labels): a number is its `f64` bits (NaN canonicalised), a string is a
/// tagged NaN carrying the interned id, a missing label is another NaN.
pub(crate) mod label {
    /// No value.
    pub(crate) const MISSING: u64 = u64::MAX;
    /// No value, in a [`super::LabelCells`] id.
    pub(crate) const MISSING32: u32 = u32::MAX;
    /// A number (in the block's number plane), in a [`super::LabelCells`] id.
    pub(crate) const NUM32: u32 = u32::MAX - 1;
    /// The largest string id a cell can hold (ids are below
    /// [`crate::schema::MAX_LABEL_STRINGS`]).
    pub(crate) const MAX_STR32: u32 = u32::MAX - 2;
    const STR_TAG: u64 = 0xFFFE_0000_0000_0000;
    const TAG_MASK: u64 = 0xFFFF_0000_0000_0000;

    pub(crate) fn num(x: f64) -> u64 {
        if x.is_nan() {
            f64::NAN.to_bits()
        } else {
            x.to_bits()
        }
    }
    pub(crate) fn str(id: u32) -> u64 {
        STR_TAG | id as u64
    }
    #[inline(always)]
    pub(crate) fn is_str(v: u64) -> bool {
        v & TAG_MASK == STR_TAG
    }
    #[inline(always)]
    pub(crate) fn is_num(v: u64) -> bool {
        v & TAG_MASK != STR_TAG && v != MISSING
    }
    /// The number in a cell, NaN if it is a string or missing (so arithmetic
    /// on it yields NaN and comparisons fail).
    #[inline(always)]
    pub(crate) fn as_f64(v: u64) -> f64 {
        if is_num(v) {
            f64::from_bits(v)
        } else {
            f64::NAN
        }
    }
    pub(crate) fn str_id(v: u64) -> Option<u32> {
        is_str(v).then_some(v as u32)
    }
}

/// Distinct strings a block's cells for one key give one-byte codes
/// ([`LabelCells::codes`]); a block with more compares the `u32` ids.
pub(crate) const DICT: usize = 15;

/// The code of a row that holds no string (no value, or a number).
pub(crate) const CODE_NONE: u8 = u8::MAX;

/// [`LabelCells::dict_len`] of a block whose rows held more than [`DICT`]
/// distinct strings at once: its codes are not kept, the scan compares ids.
const DICT_OVERFLOW: u32 = u32::MAX;

/// How the scan finds the rows whose string is `id` in one block's cells
/// ([`LabelCells::code_of`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    /// The rows with this code.
    Is(u8),
    /// No row holds it.
    Absent,
    /// Codes are not kept: compare the ids.
    Ids,
}

/// The cells of one label key in one block, immutable once published: a
/// `u32` per row (string id, [`label::NUM32`] or [`label::MISSING32`]), and
/// only in blocks that have numeric values for the key, their `f64`s. String
/// labels (`region`, `arch`) thus cost 4 bytes per row; numbers keep full
/// precision.
///
/// For the scan, each row's string also has a one-byte code, an index into
/// the block's own dictionary of up to [`DICT`] strings: `label == "eu"`
/// reads the dictionary and the codes, the first two lines of the cells,
/// instead of the 256 bytes of ids (four or five lines), and compares 16
/// rows per instruction. At a million servers a sampled match is bound by
/// the lines it reads (BENCHMARKS.md), and a label clause was the largest
/// part of them. Codes are derived from the ids whenever a row changes.
#[repr(C, align(64))]
#[derive(Clone)]
pub(crate) struct LabelCells {
    /// Per row, the index in `dict` of its string, or [`CODE_NONE`].
    pub codes: [u8; BLOCK_ROWS],
    /// The string ids the codes stand for (the first `dict_len`; entries
    /// no row uses any more are dropped when the dictionary fills up).
    dict: [u32; DICT],
    dict_len: u32,
    pub ids: [u32; BLOCK_ROWS],
    pub nums: Option<Box<[f64; BLOCK_ROWS]>>,
    /// The smallest and largest number of the rows that hold one (NaN left
    /// out; `(inf, -inf)` when none): what the exact scan bounds a `prefer`
    /// reading the label with. Kept by [`LabelCells::set`], the only
    /// writer; in the struct's padding, so it costs no memory.
    pub num_range: (f64, f64),
}

impl Default for LabelCells {
    fn default() -> LabelCells {
        LabelCells {
            codes: [CODE_NONE; BLOCK_ROWS],
            dict: [0; DICT],
            dict_len: 0,
            ids: [label::MISSING32; BLOCK_ROWS],
            nums: None,
            num_range: (f64::INFINITY, f64::NEG_INFINITY),
        }
    }
}

impl LabelCells {
    /// Bytes of the cells the scan reads for string comparisons: the codes
    /// and the dictionary (for prefetching).
    pub(crate) const SCAN_BYTES: usize = std::mem::offset_of!(LabelCells, ids);

    /// The code of string `id` in this block.
    #[inline(always)]
    pub(crate) fn code_of(&self, id: u32) -> Code {
        if self.dict_len == DICT_OVERFLOW {
            return Code::Ids;
        }
        let n = (self.dict_len as usize).min(DICT);
        match self.dict[..n].iter().position(|&d| d == id) {
            Some(c) => Code::Is(c as u8),
            None => Code::Absent,
        }
    }

    /// Gives row `i` the code of its id, adding the id to the dictionary
    /// (rebuilt from the ids when full; overflowed for good, until the
    /// block's cells are freed, when more than [`DICT`] strings are live).
    fn recode(&mut self, i: usize) {
        let id = self.ids[i];
        if id > label::MAX_STR32 {
            self.codes[i] = CODE_NONE;
            return;
        }
        match self.code_of(id) {
            Code::Ids => {}
            Code::Is(c) => self.codes[i] = c,
            Code::Absent if (self.dict_len as usize) < DICT => {
                self.dict[self.dict_len as usize] = id;
                self.codes[i] = self.dict_len as u8;
                self.dict_len += 1;
            }
            Code::Absent => self.rebuild(),
        }
    }

    /// The dictionary and codes anew from the ids (stale entries dropped).
    fn rebuild(&mut self) {
        self.dict_len = 0;
        for i in 0..BLOCK_ROWS {
            let id = self.ids[i];
            if id > label::MAX_STR32 {
                self.codes[i] = CODE_NONE;
                continue;
            }
            let n = self.dict_len as usize;
            self.codes[i] = match self.dict[..n].iter().position(|&d| d == id) {
                Some(c) => c as u8,
                None if n < DICT => {
                    self.dict[n] = id;
                    self.dict_len += 1;
                    n as u8
                }
                None => {
                    self.dict_len = DICT_OVERFLOW;
                    self.codes = [CODE_NONE; BLOCK_ROWS];
                    return;
                }
            };
        }
    }

    /// Row `i` in the canonical `u64` encoding of [`label`].
    #[inline(always)]
    pub(crate) fn cell(&self, i: usize) -> u64 {
        match self.ids[i] {
            label::MISSING32 => label::MISSING,
            label::NUM32 => match &self.nums {
                Some(n) => label::num(n[i]),
                None => label::MISSING,
            },
            id => label::str(id),
        }
    }

    /// Row `i` as a number: NaN unless it holds one.
    #[inline(always)]
    pub(crate) fn num(&self, i: usize) -> f64 {
        match (&self.nums, self.ids[i]) {
            (Some(n), label::NUM32) => n[i],
            _ => f64::NAN,
        }
    }

    /// Sets row `i` from a canonical cell. The number plane is dropped when
    /// no number is left, so string-only blocks stay compact.
    pub(crate) fn set(&mut self, i: usize, cell: u64) {
        if let Some(id) = label::str_id(cell) {
            self.ids[i] = id;
        } else if cell == label::MISSING {
            self.ids[i] = label::MISSING32;
        } else {
            self.ids[i] = label::NUM32;
            self.nums
                .get_or_insert_with(|| Box::new([f64::NAN; BLOCK_ROWS]))[i] = f64::from_bits(cell);
        }
        self.recode(i);
        if self.nums.is_some() && !self.ids.contains(&label::NUM32) {
            self.nums = None;
        }
        // Label writes are rare (registration, a label delta): recomputed
        // whole, so a range never only grows.
        self.num_range = (0..BLOCK_ROWS)
            .map(|i| self.num(i))
            .filter(|x| !x.is_nan())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_puts_byte_i_at_bit_i() {
        for i in 0..64 {
            let mut b = [0u8; 64];
            b[i] = 1;
            assert_eq!(pack(&b), 1u64 << i);
        }
        assert_eq!(pack(&[1u8; 64]), u64::MAX);
        assert_eq!(pack(&[0u8; 64]), 0);
        let alt: [u8; 64] = std::array::from_fn(|i| (i % 2) as u8);
        assert_eq!(pack(&alt), 0xAAAA_AAAA_AAAA_AAAA);
    }

    #[test]
    fn mask_of_matches_a_scalar_loop() {
        let x: [u32; 64] = std::array::from_fn(|i| (i * 37 % 11) as u32);
        let mut want = 0u64;
        for (i, v) in x.iter().enumerate() {
            if *v >= 5 {
                want |= 1 << i;
            }
        }
        assert_eq!(mask_of(&x, |v| v >= 5), want);
        let y: [u32; 64] = std::array::from_fn(|i| i as u32 % 7);
        let mut want2 = 0u64;
        for i in 0..64 {
            if x[i] < y[i] {
                want2 |= 1 << i;
            }
        }
        assert_eq!(mask_of2(&x, &y, |a, b| a < b), want2);
    }

    #[test]
    fn ranges_skip_nan_and_cover_every_number() {
        let mut x = [f32::NAN; BLOCK_ROWS];
        assert_eq!(range_f32(&x), (f32::INFINITY, f32::NEG_INFINITY));
        x[5] = -2.0;
        x[63] = 7.5;
        x[0] = -0.0;
        assert_eq!(range_f32(&x), (-2.0, 7.5));
        let mut d = Dynamic::default();
        d.set_load(3, 0.5);
        assert_eq!(d.load_range, (0.0, 0.5));
        d.set_load(3, 0.25);
        assert_eq!(d.load_range, (0.0, 0.25));
        d.set_load(3, f32::NAN);
        assert_eq!(d.load_range, (0.0, 0.0));
    }

    /// The rows a scan finds through the codes are the rows whose id
    /// matches, as cells change: strings coming and going, numbers, missing
    /// values, stale dictionary entries, more distinct strings than the
    /// dictionary holds (the scan falls back to the ids) and back.
    #[test]
    fn label_codes_find_the_rows_the_ids_hold_and_number_ranges_hold_the_numbers() {
        let by_codes = |c: &LabelCells, id: u32| match c.code_of(id) {
            Code::Is(x) => crate::scan::simd::eq_u8(&c.codes, x),
            Code::Absent => 0,
            Code::Ids => crate::scan::simd::eq_u32(&c.ids, id),
        };
        let by_ids = |c: &LabelCells, id: u32| mask_of(&c.ids, |x| x == id);
        let mut r = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        let (mut coded, mut fell_back) = (0, 0);
        for round in 0..if cfg!(miri) { 2 } else { 60 } {
            let mut c = LabelCells::default();
            // Some rounds draw from a few strings, some from many (> DICT).
            let strings = if round % 3 == 0 { 40 } else { 6 };
            for _ in 0..if cfg!(miri) { 40 } else { 400 } {
                let i = (next() % BLOCK_ROWS as u64) as usize;
                let cell = match next() % 9 {
                    0 => label::MISSING,
                    1 => label::num(next() as f64),
                    2 => label::num(if next() % 4 == 0 {
                        f64::NAN
                    } else {
                        -(next() as f64)
                    }),
                    _ => label::str((next() % strings) as u32 * 7),
                };
                c.set(i, cell);
                // The number range holds every number and is attained
                // (never only grows); none: `(inf, -inf)`.
                let nums: Vec<f64> = (0..BLOCK_ROWS)
                    .map(|i| c.num(i))
                    .filter(|x| !x.is_nan())
                    .collect();
                let (lo, hi) = c.num_range;
                if nums.is_empty() {
                    assert_eq!((lo, hi), (f64::INFINITY, f64::NEG_INFINITY));
                } else {
                    assert!(nums.iter().all(|&x| lo <= x && x <= hi));
                    assert!(nums.contains(&lo) && nums.contains(&hi));
                }
                for id in (0..strings as u32).map(|s| s * 7) {
                    assert_eq!(by_codes(&c, id), by_ids(&c, id), "round {round} id {id}");
                }
                match c.code_of(0) {
                    Code::Ids => fell_back += 1,
                    _ => coded += 1,
                }
            }
        }
        assert!(
            coded > 0 && fell_back > 0,
            "{coded} coded, {fell_back} fell back"
        );
        // The codes and dictionary are the first two lines of the cells.
        assert_eq!(LabelCells::SCAN_BYTES, 128);
        assert_eq!(std::mem::align_of::<LabelCells>(), 64);
        // The number range sits in what was padding: seven lines, as before.
        assert_eq!(std::mem::size_of::<LabelCells>(), 448);
    }

    #[test]
    fn label_cells_distinguish_numbers_strings_and_missing() {
        assert!(label::is_str(label::str(7)));
        assert_eq!(label::str_id(label::str(7)), Some(7));
        assert!(!label::is_num(label::str(7)));
        assert!(!label::is_num(label::MISSING));
        assert!(!label::is_str(label::MISSING));
        assert!(label::is_num(label::num(-2.5)));
        assert_eq!(label::as_f64(label::num(-2.5)), -2.5);
        assert!(label::as_f64(label::num(f64::NAN)).is_nan());
        assert!(label::is_num(label::num(f64::NAN)));
        assert!(label::as_f64(label::MISSING).is_nan());
        assert!(label::is_num(label::num(f64::NEG_INFINITY)));
    }
}
