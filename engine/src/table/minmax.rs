//! The smallest and largest non-NaN cell of a 64-cell `f32` column: the
//! bounds a column group keeps for block pruning. Writers recompute one on
//! most deltas (whenever the changed cell was an end of its range), so it is
//! a kernel of its own: on x86_64 16 unaligned loads and 32 `minps`/`maxps`
//! in four independent chains, about 60 instructions for 64 cells (the
//! portable loop compiled to ~430, with lane shuffles). SSE2 is part of the
//! x86_64 baseline; other targets use the portable loop, and the tests check
//! both against a scalar fold.

#![allow(unsafe_code)]

use crate::schema::BLOCK_ROWS;

/// `(min, max)` of the non-NaN cells, `(inf, -inf)` if there are none.
#[inline]
pub(crate) fn range_f32(x: &[f32; BLOCK_ROWS]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is enabled for every x86_64 target (it is in the baseline
    // instruction set), which is all `#[target_feature(enable = "sse2")]`
    // requires of the caller.
    return unsafe { sse2::range_f32(x) };
    #[cfg(not(target_arch = "x86_64"))]
    return portable::range_f32(x);
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    use crate::schema::BLOCK_ROWS;

    /// Four cells `j..j + 4` as a vector.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn load(x: &[f32; BLOCK_ROWS], j: usize) -> __m128 {
        let four: &[f32; 4] = x[j..j + 4].try_into().expect("4 lanes");
        // SAFETY: `four` is a valid reference to 16 readable bytes, and the
        // unaligned load has no alignment requirement.
        unsafe { _mm_loadu_ps(four.as_ptr()) }
    }

    /// `minps(v, lo)` is `v < lo ? v : lo` per lane, so a NaN cell keeps `lo`
    /// (likewise `maxps`), and the accumulators, which start at `±inf`, never
    /// hold a NaN.
    #[inline]
    #[target_feature(enable = "sse2")]
    pub(super) fn range_f32(x: &[f32; BLOCK_ROWS]) -> (f32, f32) {
        let mut lo = [_mm_set1_ps(f32::INFINITY); 4];
        let mut hi = [_mm_set1_ps(f32::NEG_INFINITY); 4];
        for g in 0..BLOCK_ROWS / 16 {
            for (k, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                let v = load(x, g * 16 + k * 4);
                *l = _mm_min_ps(v, *l);
                *h = _mm_max_ps(v, *h);
            }
        }
        let l = _mm_min_ps(_mm_min_ps(lo[0], lo[1]), _mm_min_ps(lo[2], lo[3]));
        let h = _mm_max_ps(_mm_max_ps(hi[0], hi[1]), _mm_max_ps(hi[2], hi[3]));
        let l = _mm_min_ps(l, _mm_movehl_ps(l, l));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let l = _mm_min_ss(l, _mm_shuffle_ps::<1>(l, l));
        let h = _mm_max_ss(h, _mm_shuffle_ps::<1>(h, h));
        (_mm_cvtss_f32(l), _mm_cvtss_f32(h))
    }
}

#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
mod portable {
    use crate::schema::BLOCK_ROWS;

    pub(crate) fn range_f32(x: &[f32; BLOCK_ROWS]) -> (f32, f32) {
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for &v in x {
            lo = if v < lo { v } else { lo };
            hi = if v > hi { v } else { hi };
        }
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(x: &[f32; BLOCK_ROWS]) -> (f32, f32) {
        let v = x.iter().copied().filter(|v| !v.is_nan());
        let lo = v.clone().fold(f32::INFINITY, f32::min);
        let hi = v.fold(f32::NEG_INFINITY, f32::max);
        (lo, hi)
    }

    #[test]
    fn minmax_agrees_with_a_scalar_fold() {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
        ];
        let mut r = 0x2545_F491_4F6C_DD1Du64;
        let cases = if cfg!(miri) { 20 } else { 5_000 };
        for case in 0..cases {
            let x: [f32; BLOCK_ROWS] = std::array::from_fn(|_| {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                match (r >> 32) % 8 {
                    // Mostly NaN in some cases, so that few numbers are left.
                    0 if case % 3 == 0 => f32::NAN,
                    0 | 1 => specials[(r % specials.len() as u64) as usize],
                    _ => (r % 20_001) as f32 / 100.0 - 100.0,
                }
            });
            let want = scalar(&x);
            for got in [range_f32(&x), portable::range_f32(&x)] {
                // `-0.0 == 0.0`: either sign is a correct bound.
                assert_eq!(got, want, "case {case}: {x:?}");
            }
        }
        assert_eq!(
            range_f32(&[f32::NAN; BLOCK_ROWS]),
            (f32::INFINITY, f32::NEG_INFINITY)
        );
        let mut x = [f32::NAN; BLOCK_ROWS];
        x[63] = 3.0;
        assert_eq!(range_f32(&x), (3.0, 3.0));
        x[0] = -1.0;
        assert_eq!(range_f32(&x), (-1.0, 3.0));
    }
}
