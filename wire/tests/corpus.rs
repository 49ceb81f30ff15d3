//! Replays the committed fuzz seed corpora through the fuzz targets' own
//! functions on stable, so a regression on a known input fails `cargo test`.
//!
//! Every `seed-*` file in a target's folder is replayed (the folder is read,
//! not a list), so a new seed, a regenerated one or a minimised crash
//! (`seed-crash-*`) is covered as soon as it is committed. Files that are not
//! seeds (a fuzzer's local working corpus, which git ignores) are skipped so
//! that the test sees what a clean clone sees. Both wire corpora must hold a
//! valid message of every `MessageKind::ALL`, so a kind added to the protocol
//! without a seed fails here.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};

use allot_wire::fuzzing::{Outcome, FUZZ_MAX_FRAME};
use allot_wire::{FrameDecoder, MessageKind};

/// The `seed-*` files of a target's corpus folder, sorted by name.
fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seed-"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no seed-* files", dir.display());
    files
}

/// Runs `f` on every seed of `target`; a panic names the seed it came from.
/// Returns each seed's bytes with what the target made of it.
fn replay(target: &str, f: fn(&[u8]) -> Outcome) -> Vec<(Vec<u8>, Outcome)> {
    seeds(target)
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).unwrap();
            match catch_unwind(|| f(&data)) {
                Ok(out) => (data, out),
                Err(panic) => {
                    eprintln!("{target}: seed {} panicked", path.display());
                    resume_unwind(panic)
                }
            }
        })
        .collect()
}

fn all_kinds() -> BTreeSet<u8> {
    MessageKind::ALL.iter().map(|k| *k as u8).collect()
}

#[test]
fn decode_frame_corpus_replays() {
    let runs = replay("decode_frame", allot_wire::fuzzing::decode_frame);
    let mut kinds = BTreeSet::new();
    for (data, _) in &runs {
        // Which kinds the seed holds a valid frame of, decoded as the target
        // does (first byte is the read size, irrelevant here).
        let mut dec = FrameDecoder::new(FUZZ_MAX_FRAME);
        dec.feed(&data[1.min(data.len())..]);
        while let Ok(Some(frame)) = dec.next_frame() {
            if frame.kind().validate(frame.body()).is_ok() {
                kinds.insert(frame.kind() as u8);
            }
        }
    }
    let valid: usize = runs.iter().map(|(_, o)| o.valid).sum();
    assert!(
        runs.len() > MessageKind::ALL.len(),
        "{} seeds: one per kind and the stream expected",
        runs.len()
    );
    assert!(
        valid >= 2 * MessageKind::ALL.len(),
        "{valid} frames validated"
    );
    assert_eq!(kinds, all_kinds(), "kinds with a valid decode_frame seed");
}

#[test]
fn validate_message_corpus_replays() {
    let runs = replay("validate_message", allot_wire::fuzzing::validate_message);
    // The first byte picks the kind, as in `fuzzing::validate_message`.
    let kinds: BTreeSet<u8> = runs
        .iter()
        .filter(|(data, o)| !data.is_empty() && o.valid == 1)
        .map(|(data, _)| MessageKind::ALL[usize::from(data[0]) % MessageKind::ALL.len()] as u8)
        .collect();
    assert!(
        runs.len() >= MessageKind::ALL.len(),
        "{} seeds for {} kinds",
        runs.len(),
        MessageKind::ALL.len()
    );
    assert_eq!(
        kinds,
        all_kinds(),
        "kinds with a valid validate_message seed"
    );
}
