//! What this machine's memory system can deliver to one core, for reading
//! the engine's figures at a million servers against a ceiling measured on
//! the same machine in the same minutes (`memory_system [MiB]`, default
//! 256, well past the last-level cache):
//!
//! * latency: one chain of dependent loads over random lines;
//! * random lines per second with `c` independent chains (the memory-level
//!   parallelism a prefetching scan or sampled match can have at best);
//! * sequential bandwidth: one load per line, in address order.
//!
//! A sampled match at a million servers reads a few dozen random lines and
//! the unpruned exact scan about fifteen lines per 64-row block, so these
//! numbers bound what the engine can do there whatever its instruction
//! count (BENCHMARKS.md, "The memory system's ceiling").
use std::time::Instant;

const LINE_WORDS: usize = 8;

/// A buffer of `words` u64s in 2 MiB-aligned memory marked for huge pages
/// (as the engine's arena is), so that the figures are not TLB-bound where
/// the engine's are not.
struct Buffer {
    words: Vec<u64>,
    /// Index of the first 2 MiB-aligned word.
    start: usize,
    len: usize,
}

impl Buffer {
    fn new(bytes: usize) -> Buffer {
        let align_words = (2 << 20) / 8;
        let len = bytes / 8;
        let words = vec![0u64; len + align_words];
        let addr = words.as_ptr() as usize;
        let start = (addr.next_multiple_of(2 << 20) - addr) / 8;
        #[cfg(target_os = "linux")]
        // SAFETY: the range lies inside `words`' allocation (`start + len`
        // words, `align_words` spare); `madvise` with `MADV_HUGEPAGE` only
        // changes how the kernel backs those pages, never their contents.
        unsafe {
            libc::madvise(
                words.as_ptr().add(start) as *mut libc::c_void,
                len * 8,
                libc::MADV_HUGEPAGE,
            );
        }
        Buffer { words, start, len }
    }

    fn slice(&mut self) -> &mut [u64] {
        &mut self.words[self.start..self.start + self.len]
    }
}

/// xorshift64.
fn next(r: &mut u64) -> u64 {
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    *r
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let mut buf = Buffer::new(mib << 20);
    let words = buf.slice();
    let lines = words.len() / LINE_WORDS;
    // One random cycle through every line: each line's first word holds
    // the index of the next line's first word.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut r = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..lines).rev() {
        let j = (next(&mut r) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    for w in 0..lines {
        words[order[w] * LINE_WORDS] = (order[(w + 1) % lines] * LINE_WORDS) as u64;
    }
    println!("buffer {mib} MiB, {lines} lines of 64 bytes, huge pages requested");
    let steps_total = 4_000_000usize;
    for chains in [1usize, 4, 8, 16, 24, 32] {
        let mut at: Vec<usize> = (0..chains)
            .map(|c| order[c * (lines / chains)] * LINE_WORDS)
            .collect();
        let steps = steps_total / chains;
        let t = Instant::now();
        for _ in 0..steps {
            for a in at.iter_mut() {
                *a = words[*a] as usize;
            }
        }
        let ns = t.elapsed().as_secs_f64() * 1e9 / (steps * chains) as f64;
        let check: usize = at.iter().sum();
        println!(
            "random lines, {chains:2} independent chains: {ns:6.1} ns per line = {:5.1}M lines/s (check {})",
            1e3 / ns,
            check % 2
        );
    }
    let mut best = f64::MAX;
    let mut sum = 0u64;
    for _ in 0..5 {
        let t = Instant::now();
        for l in 0..lines {
            sum = sum.wrapping_add(words[l * LINE_WORDS]);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "sequential, one load per line: {:.1} GB/s = {:.2} ns per line (check {})",
        (lines * 64) as f64 / best / 1e9,
        best * 1e9 / lines as f64,
        sum % 2
    );
}
