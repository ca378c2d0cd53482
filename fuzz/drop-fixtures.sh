#!/usr/bin/env bash
# Removes from the given folders every file that is, or was made from, a real-device
# fixture: the same SHA-256 as a fixture, or any run of 48 bytes in common with one (a
# mutated copy still carries a device's certificate and attributes), not counting runs that
# otad's own testdata/ and seeds (fuzz/seeds/) hold too, such as Apple's plist DOCTYPE. The
# fixtures must never be committed, not even as corpus files. Usage: drop-fixtures.sh DIR...
set -euo pipefail
fixtures="${OTAD_FIXTURES:-$(dirname "$0")/../../shared/fixtures}"
if [ ! -d "$fixtures" ]; then
    echo "drop-fixtures: no fixtures at $fixtures: nothing to compare with" >&2
    exit 0
fi
here="$(cd "$(dirname "$0")" && pwd)"
python3 - "$fixtures" "$here/../testdata" "$here/seeds" "$@" <<'PY'
import hashlib, os, sys

WINDOW = 48
fixtures, ours, dirs = sys.argv[1], sys.argv[2:4], sys.argv[4:]
digests, windows = set(), set()
for root, _, files in os.walk(fixtures):
    for name in files:
        data = open(os.path.join(root, name), "rb").read()
        if name == "README.md":
            continue
        digests.add(hashlib.sha256(data).digest())
        for i in range(0, max(len(data) - WINDOW, 0) + 1):
            windows.add(data[i:i + WINDOW])
for folder in ours:
    for root, _, files in os.walk(folder):
        for name in files:
            data = open(os.path.join(root, name), "rb").read()
            for i in range(0, max(len(data) - WINDOW, 0) + 1):
                windows.discard(data[i:i + WINDOW])
dropped = 0
for folder in dirs:
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        data = open(path, "rb").read()
        near = any(data[i:i + WINDOW] in windows for i in range(0, len(data) - WINDOW + 1))
        if hashlib.sha256(data).digest() in digests or near:
            os.remove(path)
            dropped += 1
print(f"drop-fixtures: removed {dropped} file(s) made from a fixture")
PY
