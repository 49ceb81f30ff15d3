//! Software prefetch: asking for cache lines before they are needed.
//!
//! A sampled match at a million servers starts at a random block, whose lines
//! are almost never in cache; the exact scan walks blocks whose column groups
//! sit wherever the allocator put them. Both know their next addresses ahead
//! of time and hint them here, so the loads find the lines on arrival.

#![allow(unsafe_code)]

/// Bytes per cache line on the targets we tune for.
pub(crate) const LINE: usize = 64;

/// Hints that the line holding `p` will be read soon. Any address is fine,
/// null included.
#[inline(always)]
pub(crate) fn line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is a hint: it never faults, whatever the address
    // (null, unmapped or freed), and changes no memory a program can observe;
    // SSE is in the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Hints every line that holds one of the `bytes` bytes from `p` (nothing
/// for null). The range need not start on a line: a column of 64 `f32`s in
/// a group at an arbitrary offset spans five lines, not four, and a missed
/// last line is a demand miss on the rows at its end.
#[inline(always)]
pub(crate) fn lines<T>(p: *const T, bytes: usize) {
    if p.is_null() || bytes == 0 {
        return;
    }
    let p = p.cast::<u8>();
    let (lead, count) = span(p as usize, bytes);
    let first = p.wrapping_sub(lead);
    for l in 0..count {
        line(first.wrapping_add(l * LINE));
    }
}

/// For `bytes > 0` bytes at address `addr`: how far `addr` is past the
/// start of its line, and how many lines the bytes touch.
#[inline(always)]
fn span(addr: usize, bytes: usize) -> (usize, usize) {
    let lead = addr % LINE;
    (lead, (lead + bytes).div_ceil(LINE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_hints_every_line_it_touches() {
        // A 64-float column at an aligned address: four lines.
        assert_eq!(span(0x1000, 256), (0, 4));
        // The same column 16 bytes into a line (the `load` column of a
        // column group placed at an arbitrary offset): five.
        assert_eq!(span(0x1010, 256), (16, 5));
        // One byte, at the start or the end of a line: one.
        assert_eq!(span(0x1000, 1), (0, 1));
        assert_eq!(span(0x103f, 1), (63, 1));
        // Two bytes straddling a line boundary: two.
        assert_eq!(span(0x103f, 2), (63, 2));
    }

    #[test]
    fn prefetching_any_address_is_harmless() {
        let v = [7u64; 100];
        lines(v.as_ptr(), 800);
        lines(std::ptr::null::<u8>(), 4096);
        line(std::ptr::null::<u8>());
        line(usize::MAX as *const u8);
        let freed = Box::into_raw(Box::new([1u8; 256]));
        // SAFETY: `freed` came from `Box::into_raw` just above.
        drop(unsafe { Box::from_raw(freed) });
        lines(freed, 256);
        assert_eq!(v[99], 7);
    }
}
