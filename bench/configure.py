"""Sets keys of an otad.toml that `otad init` wrote, for the bench scripts.

usage: configure.py OTAD_TOML SECTION.KEY=TOML_VALUE ...

Each key must already be in the file (init writes every key with its default), so a typo
fails instead of adding a key otad would refuse.
"""

import sys


def main(path, assignments):
    wanted = {}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        section, _, key = name.partition(".")
        if not key or not value:
            sys.exit(f"configure.py: {assignment!r} is not SECTION.KEY=VALUE")
        wanted[(section, key)] = value

    section, lines, done = None, [], set()
    for line in open(path).read().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        key = line.split("=", 1)[0].strip()
        if (section, key) in wanted and not line.startswith("#"):
            line = f"{key} = {wanted[(section, key)]}"
            done.add((section, key))
        lines.append(line)
    missing = sorted(f"{s}.{k}" for s, k in set(wanted) - done)
    if missing:
        sys.exit(f"configure.py: {path} has no {', '.join(missing)}")
    open(path, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
