//! Replays every committed fuzz corpus and regression input (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`), and the real-device fixtures when present, through the same
//! `otad::fuzzing` functions the cargo-fuzz targets call, on the stable toolchain
//! (`make fuzz-replay`). An input passes when its target returns: a panic fails the test.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use otad::fuzzing::TARGETS;
use otad::pki::cert;

/// The fuzz project beside the crate.
fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files directly inside `dir`, sorted; none if it does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `run` on `input`, naming the file if it panics.
fn replay(target: &str, run: otad::fuzzing::Target, path: &Path, input: &[u8]) {
    let outcome = std::panic::catch_unwind(|| run(input));
    assert!(
        outcome.is_ok(),
        "fuzz target {target} panicked on {}",
        path.display()
    );
}

#[test]
fn every_target_has_a_corpus_and_it_replays() {
    let mut total = 0;
    for (target, run) in TARGETS {
        let corpus = files_in(&fuzz_dir().join("corpus").join(target));
        assert!(
            corpus.len() >= 3,
            "fuzz/corpus/{target} holds {} inputs: run `make fuzz TARGET={target}` and commit \
             its minimised corpus",
            corpus.len()
        );
        for path in &corpus {
            replay(target, *run, path, &fs::read(path).unwrap());
        }
        total += corpus.len();
    }
    eprintln!(
        "fuzz replay: {total} corpus inputs over {} targets",
        TARGETS.len()
    );
}

#[test]
fn regressions_replay() {
    let mut total = 0;
    for (target, run) in TARGETS {
        for path in files_in(&fuzz_dir().join("regressions").join(target)) {
            replay(target, *run, &path, &fs::read(&path).unwrap());
            total += 1;
        }
    }
    eprintln!("fuzz replay: {total} regression inputs");
}

#[test]
fn fixtures_replay_through_every_target() {
    let dir = common::fixtures_dir();
    let Some(body) = common::fixture("ota/phase2-macos-vm.der") else {
        return;
    };
    let mut inputs = vec![(dir.join("ota/phase2-macos-vm.der"), body)];
    for path in files_in(&dir.join("apple")) {
        let pem = fs::read(&path).unwrap();
        let der = cert::pem_to_der(std::str::from_utf8(&pem).unwrap()).unwrap();
        inputs.push((path.clone(), pem));
        inputs.push((path, der));
    }
    assert_eq!(
        inputs.len(),
        11,
        "the phase 2 body and five certificates, PEM and DER"
    );
    for (target, run) in TARGETS {
        for (path, input) in &inputs {
            replay(target, *run, path, input);
        }
    }
}
