//! Replays the engine's committed fuzz seeds (`fuzz/corpus/expr_parse`,
//! `fuzz/corpus/delta_apply`) through the functions the fuzz targets run,
//! on stable, so a seed that once found a bug keeps guarding against it.

use std::path::Path;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("seed"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[test]
fn expr_parse_seeds_replay() {
    for (name, data) in seeds("expr_parse") {
        eprintln!("expr_parse {name}");
        allot_engine::fuzzing::expr_parse(&data);
    }
}

#[test]
fn delta_apply_seeds_replay() {
    for (name, data) in seeds("delta_apply") {
        eprintln!("delta_apply {name}");
        allot_engine::fuzzing::delta_apply(&data);
    }
}
