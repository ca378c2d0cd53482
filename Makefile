# otad: build, run and test. `make run` and `make test` are the two commands a fresh
# machine needs (see README.md).

CARGO    ?= cargo
STATE    ?= ./state
URL      ?= http://127.0.0.1:8080
# Empty: serve on http.listen from the config (127.0.0.1:8080 as `otad init` writes it).
LISTEN   ?=
TARGET   := $(or $(CARGO_TARGET_DIR),target)
BIN      := $(TARGET)/release/otad
PREFIX   ?= /usr/local
DESTDIR  ?=
GNU      := x86_64-unknown-linux-gnu
MUSL     := x86_64-unknown-linux-musl
FIXTURES := $(or $(OTAD_FIXTURES),../shared/fixtures)

.PHONY: all build run test lint audit check-units static musl install clean fuzz fuzz-cmin \
	fuzz-replay

all: build

build:
	$(CARGO) build --release --locked

# Creates $(STATE) with `otad init --url $(URL)` on first use, then serves. URL only
# matters when the state is created; afterwards change server.url in $(STATE)/otad.toml.
run: build
	@test -f $(STATE)/otad.toml || $(BIN) init --state $(STATE) --url $(URL)
	$(BIN) serve --config $(STATE)/otad.toml $(if $(LISTEN),--listen $(LISTEN))

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test: lint
	@test -d $(FIXTURES) || echo "WARNING: no real-device fixtures at $(FIXTURES):" \
		"the tests that need them will pass as SKIP (set OTAD_FIXTURES=DIR)"
	$(CARGO) test --locked

# Replays the committed fuzz corpus and regressions (and the fixtures, when present) through
# otad::fuzzing on the stable toolchain: no nightly, no cargo-fuzz.
fuzz-replay:
	$(CARGO) test --locked --test fuzz_replay

# Fuzzing needs nightly and cargo-fuzz (`cargo install --locked cargo-fuzz`). `make fuzz
# TARGET=ber TIME=600` fuzzes one target at low priority: new inputs go to fuzz/work/TARGET,
# the committed corpus, the seeds (fuzz/seed.sh, made on first use) and the fixtures are read.
# `make fuzz-cmin TARGET=ber` then minimises all of it into fuzz/corpus/TARGET.
TARGET_FUZZ = $(if $(filter command line environment,$(origin TARGET)),$(TARGET),ber)
TIME        ?= 600
FUZZ_FIXTURES = $(if $(filter ber signed scep_message,$(TARGET_FUZZ)),$(wildcard $(abspath $(FIXTURES))/ota))
FUZZ_DICT = $(if $(wildcard fuzz/dicts/$(TARGET_FUZZ).dict),-dict=dicts/$(TARGET_FUZZ).dict)
fuzz:
	@test -d fuzz/seeds/$(TARGET_FUZZ) || fuzz/seed.sh
	mkdir -p fuzz/work/$(TARGET_FUZZ) fuzz/corpus/$(TARGET_FUZZ)
	cd fuzz && nice -n 19 cargo +nightly fuzz run $(TARGET_FUZZ) work/$(TARGET_FUZZ) \
		corpus/$(TARGET_FUZZ) seeds/$(TARGET_FUZZ) $(FUZZ_FIXTURES) -- $(FUZZ_DICT) \
		-max_total_time=$(TIME) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1

fuzz-cmin:
	mkdir -p fuzz/work/$(TARGET_FUZZ)
	cp fuzz/corpus/$(TARGET_FUZZ)/* fuzz/seeds/$(TARGET_FUZZ)/* fuzz/work/$(TARGET_FUZZ)/ \
		2>/dev/null || true
	cd fuzz && nice -n 19 cargo +nightly fuzz cmin $(TARGET_FUZZ) work/$(TARGET_FUZZ) -- \
		-use_counters=0
	fuzz/drop-fixtures.sh fuzz/work/$(TARGET_FUZZ)
	rm -rf fuzz/corpus/$(TARGET_FUZZ) && cp -r fuzz/work/$(TARGET_FUZZ) fuzz/corpus/$(TARGET_FUZZ)
	@echo "fuzz/corpus/$(TARGET_FUZZ): $$(ls fuzz/corpus/$(TARGET_FUZZ) | wc -l) inputs," \
		"$$(cat fuzz/corpus/$(TARGET_FUZZ)/* | wc -c) bytes"

# The offline RustSec database beside the checkout (../shared/advisory-db), and the crates
# the crypto policy keeps out: `rsa` (RUSTSEC-2023-0071), any OpenSSL binding, rustls before
# 0.23.18 (RUSTSEC-2024-0336 once came in through tiny_http's ssl-rustls and its rustls 0.20;
# otad no longer uses tiny_http).
ADVISORY_DB ?= ../shared/advisory-db
audit:
	$(CARGO) audit --db $(ADVISORY_DB) --no-fetch --deny warnings
	@for crate in rsa openssl openssl-sys native-tls; do \
		if $(CARGO) tree --locked -e normal,build -i $$crate >/dev/null 2>&1; then \
			echo "crypto policy: $$crate is in the dependency tree"; exit 1; fi; done
	@$(CARGO) tree --locked -e normal,build --prefix none -f '{p}' | \
		awk '$$1 == "rustls" { split(substr($$2, 2), v, "."); \
			if (v[1] == 0 && (v[2] < 23 || (v[2] == 23 && v[3] < 18))) bad = $$2 } \
			END { if (bad) { print "crypto policy: rustls " bad " < 0.23.18"; exit 1 } }'
	@echo "supply chain: ok (no advisories, no rsa/openssl, rustls >= 0.23.18 or absent)"

# The systemd units, checked with ExecStart pointing at this build's binary.
check-units: build
	@command -v systemd-analyze >/dev/null || { echo "SKIP: no systemd-analyze"; exit 0; }; \
	dir=$$(mktemp -d) && trap 'rm -rf "$$dir"' EXIT && \
	sed 's|^ExecStart=/usr/local/bin/otad|ExecStart=$(abspath $(BIN))|' \
		contrib/otad.service > "$$dir/otad.service" && \
	cp contrib/otad.socket "$$dir/" && \
	systemd-analyze verify "$$dir/otad.service" "$$dir/otad.socket" && echo "units: ok"

# A statically linked binary on the gnu target (glibc linked in): target/$(GNU)/release/otad.
static:
	RUSTFLAGS="$(RUSTFLAGS) -C target-feature=+crt-static" \
		$(CARGO) build --release --locked --target $(GNU)
	@ls -l $(TARGET)/$(GNU)/release/otad

# A musl binary, where that target is installed (`rustup target add $(MUSL)`; aws-lc builds
# with the C compiler, so `apt-get install musl-tools` may be needed too).
musl:
	@rustup target list --installed 2>/dev/null | grep -qx $(MUSL) || { \
		echo "the $(MUSL) target is not installed: rustup target add $(MUSL)"; exit 1; }
	$(CARGO) build --release --locked --target $(MUSL)
	@ls -l $(TARGET)/$(MUSL)/release/otad

# Binary, units, sysusers entry and README under $(DESTDIR)$(PREFIX). The units name
# /usr/local/bin/otad; with another PREFIX their ExecStart is rewritten to match.
install: build
	install -Dm755 $(BIN) $(DESTDIR)$(PREFIX)/bin/otad
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	sed 's|/usr/local/|$(PREFIX)/|g' contrib/otad.service \
		> $(DESTDIR)$(PREFIX)/lib/systemd/system/otad.service
	install -m644 contrib/otad.socket $(DESTDIR)$(PREFIX)/lib/systemd/system/otad.socket
	install -Dm644 contrib/otad.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/otad.conf
	install -Dm644 README.md $(DESTDIR)$(PREFIX)/share/doc/otad/README.md

clean:
	$(CARGO) clean
