//! Replays the committed fuzz seed corpora through the fuzz targets' own
//! functions on stable, so a regression on a known input fails `cargo test`.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8]) -> allot_wire::fuzzing::Outcome) -> (usize, usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files = 0;
    let mut valid = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        valid += f(&data).valid;
        files += 1;
    }
    (files, valid)
}

#[test]
fn decode_frame_corpus_replays() {
    let (files, valid) = replay("decode_frame", allot_wire::fuzzing::decode_frame);
    assert!(files >= 15, "seed corpus has {files} files");
    assert!(
        valid >= 15,
        "the seeds hold a valid frame of every kind, {valid} validated"
    );
}

#[test]
fn validate_message_corpus_replays() {
    let (files, valid) = replay("validate_message", allot_wire::fuzzing::validate_message);
    assert!(files >= 15, "seed corpus has {files} files");
    assert!(
        valid >= 15,
        "the seeds hold a valid body of every kind, {valid} validated"
    );
}
