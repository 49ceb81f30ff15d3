//! Structure-of-arrays blocks of 64 server rows, and the helpers that turn a
//! column into a `u64` predicate mask.
//!
//! Every column that a delta may change while matchers read it is an atomic,
//! because readers never lock: a relaxed atomic load is a plain `mov` on x86
//! and ARM, but the compiler will not combine atomic loads into vector loads.
//! So a filter is a branch-free loop of 64 loads and compares writing one
//! byte per row, and the 64 bytes are packed into a `u64` eight at a time
//! with a multiply (`pack`); loops over local arrays (the `prefer`
//! arithmetic, comparisons of computed numbers) are vectorised by the
//! compiler. See `BENCHMARKS.md` for the inner loops as compiled.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::schema::{Column, BLOCK_ROWS};

/// One block of 64 rows. About 48 bytes per row.
pub(crate) struct Block {
    /// Rows that hold a server.
    pub live: AtomicU64,
    /// Live rows in state `Up`.
    pub up: AtomicU64,
    /// Live rows in state `Draining`.
    pub draining: AtomicU64,
    pub slots: [AtomicU32; BLOCK_ROWS],
    pub slots_free: [AtomicU32; BLOCK_ROWS],
    pub cores: [AtomicU32; BLOCK_ROWS],
    pub cores_free: [AtomicU32; BLOCK_ROWS],
    /// `f32` bits.
    pub power: [AtomicU32; BLOCK_ROWS],
    /// `f32` bits.
    pub idle_power: [AtomicU32; BLOCK_ROWS],
    /// `f32` bits.
    pub load: [AtomicU32; BLOCK_ROWS],
    pub mem: [AtomicU64; BLOCK_ROWS],
    pub mem_free: [AtomicU64; BLOCK_ROWS],
    /// Bumped when a row is (re)occupied or vacated; a reservation remembers
    /// it so that a late release cannot touch the next occupant.
    pub gen: [AtomicU32; BLOCK_ROWS],
    /// Capacity currently reserved through this table (for `allot status`).
    pub res_slots: [AtomicU32; BLOCK_ROWS],
    pub res_cores: [AtomicU32; BLOCK_ROWS],
    pub res_mem: [AtomicU64; BLOCK_ROWS],
}

fn a32() -> [AtomicU32; BLOCK_ROWS] {
    std::array::from_fn(|_| AtomicU32::new(0))
}
fn a64() -> [AtomicU64; BLOCK_ROWS] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl Block {
    pub(crate) fn new() -> Block {
        Block {
            live: AtomicU64::new(0),
            up: AtomicU64::new(0),
            draining: AtomicU64::new(0),
            slots: a32(),
            slots_free: a32(),
            cores: a32(),
            cores_free: a32(),
            power: a32(),
            idle_power: a32(),
            load: a32(),
            mem: a64(),
            mem_free: a64(),
            gen: a32(),
            res_slots: a32(),
            res_cores: a32(),
            res_mem: a64(),
        }
    }

    /// The storage of a `u32` or `f32` column.
    pub(crate) fn col32(&self, c: Column) -> &[AtomicU32; BLOCK_ROWS] {
        match c {
            Column::Slots => &self.slots,
            Column::SlotsFree => &self.slots_free,
            Column::Cores => &self.cores,
            Column::CoresFree => &self.cores_free,
            Column::Power => &self.power,
            Column::IdlePower => &self.idle_power,
            Column::Load => &self.load,
            // Callers dispatch on `Column::kind`; u64 columns never get here,
            // but answering with a column keeps this total.
            Column::Mem | Column::MemFree => &self.slots,
        }
    }

    /// The storage of a `u64` column.
    pub(crate) fn col64(&self, c: Column) -> &[AtomicU64; BLOCK_ROWS] {
        match c {
            Column::MemFree => &self.mem_free,
            _ => &self.mem,
        }
    }

    /// The value of one cell widened to `f64`, as expressions see it.
    pub(crate) fn value(&self, c: Column, i: usize) -> f64 {
        use crate::schema::ColumnKind;
        match c.kind() {
            ColumnKind::U32 => self.col32(c)[i].load(Relaxed) as f64,
            ColumnKind::F32 => f32::from_bits(self.col32(c)[i].load(Relaxed)) as f64,
            ColumnKind::U64 => self.col64(c)[i].load(Relaxed) as f64,
        }
    }
}

/// Copies a `u64` column out of its atomics.
#[inline(always)]
pub(crate) fn load_u64(col: &[AtomicU64; BLOCK_ROWS]) -> [u64; BLOCK_ROWS] {
    std::array::from_fn(|i| col[i].load(Relaxed))
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

/// Label cells are `u64`s: a number is its `f64` bits (NaN canonicalised), a
/// string is a tagged NaN carrying the interned id, a missing label is another
/// NaN. One word per cell keeps a label column as dense as a numeric one.
pub(crate) mod label {
    /// No value.
    pub(crate) const MISSING: u64 = u64::MAX;
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

/// The 64 cells of one label key in one block.
pub(crate) type LabelBlock = [AtomicU64; BLOCK_ROWS];

pub(crate) fn new_label_block() -> LabelBlock {
    std::array::from_fn(|_| AtomicU64::new(label::MISSING))
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
