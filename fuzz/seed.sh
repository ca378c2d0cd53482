#!/usr/bin/env bash
# (Re)creates the seed inputs of every fuzz target in fuzz/seeds/<target>/ with otad's own
# code (examples/fuzz_seeds.rs, stable toolchain). The real-device fixtures are not copied:
# `make fuzz` hands their folder to libFuzzer as one more read-only corpus at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf fuzz/seeds
cargo run --quiet --example fuzz_seeds -- fuzz/seeds
