//! The vectorised filter kernels: 64 plain cells compared into a `u64` mask.
//!
//! On x86_64 each kernel compares four lanes per SSE2 instruction, narrows
//! four comparison results to 16 bytes with two saturating packs, and takes
//! 16 mask bits with one `pmovmskb`: about 14 instructions per 16 rows, no
//! branches (the loop shown in `BENCHMARKS.md`). SSE2 is part of the x86_64
//! baseline, so no run-time detection is needed. Other targets use the
//! portable byte loop plus [`crate::table::block::pack`], which the compiler
//! vectorises as far as the target allows; the tests check both against a
//! plain scalar loop.

#![allow(unsafe_code)]

use crate::expr::op::CmpOp;
use crate::schema::BLOCK_ROWS;

/// Rows where `x == v`.
#[inline]
pub(crate) fn eq_u32(x: &[u32; BLOCK_ROWS], v: u32) -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is enabled for every x86_64 target (it is in the baseline
    // instruction set), which is all `#[target_feature(enable = "sse2")]`
    // requires of the caller.
    return unsafe { sse2::eq_u32(x, v) };
    #[cfg(not(target_arch = "x86_64"))]
    return portable::eq_u32(x, v);
}

/// Rows where `lo <= x <= lo + span` (unsigned, `span = hi - lo`).
#[inline]
pub(crate) fn range_u32(x: &[u32; BLOCK_ROWS], lo: u32, span: u32) -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `eq_u32`: SSE2 is always enabled on x86_64.
    return unsafe { sse2::range_u32(x, lo, span) };
    #[cfg(not(target_arch = "x86_64"))]
    return portable::range_u32(x, lo, span);
}

/// Rows where `x <= max && x != v`: for label cells, "is a string other than
/// `v`" (string ids are the cells up to `max`).
#[inline]
pub(crate) fn le_and_ne_u32(x: &[u32; BLOCK_ROWS], max: u32, v: u32) -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `eq_u32`: SSE2 is always enabled on x86_64.
    return unsafe { sse2::le_and_ne_u32(x, max, v) };
    #[cfg(not(target_arch = "x86_64"))]
    return portable::le_and_ne_u32(x, max, v);
}

/// Rows where the byte `x == v` (block-local label codes).
#[inline]
pub(crate) fn eq_u8(x: &[u8; BLOCK_ROWS], v: u8) -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `eq_u32`: SSE2 is always enabled on x86_64.
    return unsafe { sse2::eq_u8(x, v) };
    #[cfg(not(target_arch = "x86_64"))]
    return portable::eq_u8(x, v);
}

/// Rows where `x op c`, with Rust's float semantics (NaN compares false,
/// `!=` included, as the expression language requires).
#[inline]
pub(crate) fn cmp_f32(x: &[f32; BLOCK_ROWS], op: CmpOp, c: f32) -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `eq_u32`: SSE2 is always enabled on x86_64.
    return unsafe { sse2::cmp_f32(x, op, c) };
    #[cfg(not(target_arch = "x86_64"))]
    return portable::cmp_f32(x, op, c);
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    use crate::expr::op::CmpOp;
    use crate::schema::BLOCK_ROWS;

    /// Flips the sign bit so that signed compares order unsigned values.
    const SIGN: i32 = i32::MIN;

    /// Four cells `j..j + 4` as a vector.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn load_u32(x: &[u32; BLOCK_ROWS], j: usize) -> __m128i {
        let four: &[u32; 4] = x[j..j + 4].try_into().expect("4 lanes");
        // SAFETY: `four` is a valid reference to 16 readable bytes, and the
        // unaligned load has no alignment requirement.
        unsafe { _mm_loadu_si128(four.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn load_f32(x: &[f32; BLOCK_ROWS], j: usize) -> __m128 {
        let four: &[f32; 4] = x[j..j + 4].try_into().expect("4 lanes");
        // SAFETY: as in `load_u32`.
        unsafe { _mm_loadu_ps(four.as_ptr()) }
    }

    /// The 64-bit mask of 16 vectors of four 32-bit lanes, each lane all ones
    /// (true) or all zeros: two saturating packs make 16 bytes of 0/-1 out of
    /// four vectors, and `pmovmskb` takes their top bits.
    ///
    /// Always inlined into its kernel: as a `target_feature` function the
    /// compiler kept it out of line, and the call was a large share of the
    /// kernel's work per block.
    #[inline(always)]
    fn mask64(lanes: impl Fn(usize) -> __m128i) -> u64 {
        let mut m = 0u64;
        for g in 0..BLOCK_ROWS / 16 {
            let j = g * 16;
            let (a, b, c, d) = (lanes(j), lanes(j + 4), lanes(j + 8), lanes(j + 12));
            // SAFETY: the SSE2 intrinsics only need SSE2, which every
            // x86_64 target enables (it is in the baseline instruction set).
            let bits = unsafe {
                let ab = _mm_packs_epi32(a, b);
                let cd = _mm_packs_epi32(c, d);
                _mm_movemask_epi8(_mm_packs_epi16(ab, cd)) as u32 & 0xFFFF
            };
            m |= (bits as u64) << j;
        }
        m
    }

    /// One compare and one `pmovmskb` per 16 rows.
    #[target_feature(enable = "sse2")]
    pub(super) fn eq_u8(x: &[u8; BLOCK_ROWS], v: u8) -> u64 {
        let v = _mm_set1_epi8(v as i8);
        let mut m = 0u64;
        for (g, sixteen) in x.chunks_exact(16).enumerate() {
            // SAFETY: `sixteen` is 16 readable bytes (`chunks_exact`), and
            // the unaligned load has no alignment requirement.
            let c = unsafe { _mm_loadu_si128(sixteen.as_ptr().cast()) };
            let bits = _mm_movemask_epi8(_mm_cmpeq_epi8(c, v)) as u32 & 0xFFFF;
            m |= (bits as u64) << (g * 16);
        }
        m
    }

    #[target_feature(enable = "sse2")]
    pub(super) fn eq_u32(x: &[u32; BLOCK_ROWS], v: u32) -> u64 {
        let v = _mm_set1_epi32(v as i32);
        mask64(|j| _mm_cmpeq_epi32(load_u32(x, j), v))
    }

    #[target_feature(enable = "sse2")]
    pub(super) fn range_u32(x: &[u32; BLOCK_ROWS], lo: u32, span: u32) -> u64 {
        // `x - lo <= span` unsigned is `!((x - lo) ^ SIGN > span ^ SIGN)`
        // signed; the negation is taken once on the mask.
        let lo = _mm_set1_epi32(lo as i32);
        let sign = _mm_set1_epi32(SIGN);
        let span = _mm_set1_epi32(span as i32 ^ SIGN);
        !mask64(|j| {
            let d = _mm_xor_si128(_mm_sub_epi32(load_u32(x, j), lo), sign);
            _mm_cmpgt_epi32(d, span)
        })
    }

    #[target_feature(enable = "sse2")]
    pub(super) fn le_and_ne_u32(x: &[u32; BLOCK_ROWS], max: u32, v: u32) -> u64 {
        let sign = _mm_set1_epi32(SIGN);
        let max = _mm_set1_epi32(max as i32 ^ SIGN);
        let v = _mm_set1_epi32(v as i32);
        !mask64(|j| {
            let c = load_u32(x, j);
            let above = _mm_cmpgt_epi32(_mm_xor_si128(c, sign), max);
            _mm_or_si128(above, _mm_cmpeq_epi32(c, v))
        })
    }

    #[target_feature(enable = "sse2")]
    pub(super) fn cmp_f32(x: &[f32; BLOCK_ROWS], op: CmpOp, c: f32) -> u64 {
        let k = _mm_set1_ps(c);
        let lanes = |j: usize| {
            let v = load_f32(x, j);
            _mm_castps_si128(match op {
                CmpOp::Eq => _mm_cmpeq_ps(v, k),
                // Unordered compares true for NaN: keep ordered lanes only.
                CmpOp::Ne => _mm_and_ps(_mm_cmpneq_ps(v, k), _mm_cmpord_ps(v, v)),
                CmpOp::Lt => _mm_cmplt_ps(v, k),
                CmpOp::Le => _mm_cmple_ps(v, k),
                CmpOp::Gt => _mm_cmpgt_ps(v, k),
                CmpOp::Ge => _mm_cmpge_ps(v, k),
            })
        };
        // One loop per operator, so no branch is left inside the loop.
        match op {
            CmpOp::Eq => mask64(lanes),
            CmpOp::Ne => mask64(lanes),
            CmpOp::Lt => mask64(lanes),
            CmpOp::Le => mask64(lanes),
            CmpOp::Gt => mask64(lanes),
            CmpOp::Ge => mask64(lanes),
        }
    }
}

/// The same kernels as a byte per row plus [`crate::table::block::pack`]: the
/// fallback on targets without SSE2, and the oracle of the tests.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(crate) mod portable {
    use crate::expr::op::CmpOp;
    use crate::schema::BLOCK_ROWS;
    use crate::table::block::mask_of;

    pub(crate) fn eq_u32(x: &[u32; BLOCK_ROWS], v: u32) -> u64 {
        mask_of(x, |a| a == v)
    }

    pub(crate) fn eq_u8(x: &[u8; BLOCK_ROWS], v: u8) -> u64 {
        let mut m = 0u64;
        for (i, &a) in x.iter().enumerate() {
            m |= u64::from(a == v) << i;
        }
        m
    }

    pub(crate) fn range_u32(x: &[u32; BLOCK_ROWS], lo: u32, span: u32) -> u64 {
        mask_of(x, |a| a.wrapping_sub(lo) <= span)
    }

    pub(crate) fn le_and_ne_u32(x: &[u32; BLOCK_ROWS], max: u32, v: u32) -> u64 {
        mask_of(x, |a| a <= max && a != v)
    }

    pub(crate) fn cmp_f32(x: &[f32; BLOCK_ROWS], op: CmpOp, c: f32) -> u64 {
        match op {
            CmpOp::Eq => mask_of(x, |a| a == c),
            CmpOp::Ne => mask_of(x, |a| a != c && !a.is_nan()),
            CmpOp::Lt => mask_of(x, |a| a < c),
            CmpOp::Le => mask_of(x, |a| a <= c),
            CmpOp::Gt => mask_of(x, |a| a > c),
            CmpOp::Ge => mask_of(x, |a| a >= c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask a plain scalar loop computes.
    fn scalar<T: Copy>(x: &[T; BLOCK_ROWS], f: impl Fn(T) -> bool) -> u64 {
        let mut m = 0u64;
        for (i, &v) in x.iter().enumerate() {
            if f(v) {
                m |= 1 << i;
            }
        }
        m
    }

    fn cells(seed: u64, pool: &[u32]) -> [u32; BLOCK_ROWS] {
        let mut r = seed | 1;
        std::array::from_fn(|_| {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            pool[(r % pool.len() as u64) as usize]
        })
    }

    const U32S: [u32; 10] = [
        0,
        1,
        2,
        7,
        0x7FFF_FFFF,
        0x8000_0000,
        0x8000_0001,
        u32::MAX - 1,
        u32::MAX,
        1 << 20,
    ];

    #[test]
    fn u32_kernels_agree_with_scalar_loops() {
        // Under Miri (slow) every kernel still runs, on fewer constants.
        let (seeds, consts) = if cfg!(miri) {
            (1, &U32S[..4])
        } else {
            (40, &U32S[..])
        };
        for seed in 0..seeds {
            let x = cells(seed, &U32S);
            for &v in consts {
                let want = scalar(&x, |a| a == v);
                assert_eq!(eq_u32(&x, v), want);
                assert_eq!(portable::eq_u32(&x, v), want);
                for &lo in consts {
                    for &hi in consts {
                        let span = hi.wrapping_sub(lo);
                        let want = scalar(&x, |a| a.wrapping_sub(lo) <= span);
                        assert_eq!(range_u32(&x, lo, span), want, "{lo} {hi}");
                        assert_eq!(portable::range_u32(&x, lo, span), want);
                    }
                    let want = scalar(&x, |a| a <= lo && a != v);
                    assert_eq!(le_and_ne_u32(&x, lo, v), want);
                    assert_eq!(portable::le_and_ne_u32(&x, lo, v), want);
                }
            }
        }
    }

    #[test]
    fn byte_kernel_agrees_with_a_scalar_loop() {
        let pool = [0u32, 1, 2, 14, 127, 128, 254, 255];
        for seed in 0..if cfg!(miri) { 2 } else { 40 } {
            let x: [u8; BLOCK_ROWS] = cells(seed, &pool).map(|c| c as u8);
            for v in pool.map(|c| c as u8) {
                let want = scalar(&x, |a| a == v);
                assert_eq!(eq_u8(&x, v), want, "{v}");
                assert_eq!(portable::eq_u8(&x, v), want, "{v}");
            }
        }
    }

    #[test]
    fn f32_kernel_agrees_with_scalar_loops() {
        let pool = [
            0.0f32,
            -0.0,
            0.5,
            0.8,
            0.79999995,
            1.0,
            -1.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        let seeds = if cfg!(miri) { 2 } else { 30 };
        for seed in 0..seeds {
            let idx = cells(seed, &(0..pool.len() as u32).collect::<Vec<_>>());
            let x: [f32; BLOCK_ROWS] = std::array::from_fn(|i| pool[idx[i] as usize]);
            for &c in &pool {
                for op in [
                    CmpOp::Eq,
                    CmpOp::Ne,
                    CmpOp::Lt,
                    CmpOp::Le,
                    CmpOp::Gt,
                    CmpOp::Ge,
                ] {
                    // `!=` keeps only ordered lanes: with a NaN constant it
                    // means "any number" (see `Pred::F32`).
                    let want = scalar(&x, |a| match op {
                        CmpOp::Ne => a != c && !a.is_nan(),
                        _ => crate::expr::op::cmp_f64(op, a as f64, c as f64),
                    });
                    assert_eq!(cmp_f32(&x, op, c), want, "{op:?} {c}");
                    assert_eq!(portable::cmp_f32(&x, op, c), want, "{op:?} {c}");
                }
            }
        }
    }
}
