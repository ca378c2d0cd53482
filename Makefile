# otad: build, run and test. `make run` and `make test` are the two commands a fresh
# machine needs (see README.md).

CARGO    ?= cargo
STATE    ?= ./state
URL      ?= http://127.0.0.1:8080
# Empty: serve on http.listen from the config (127.0.0.1:8080 as `otad init` writes it).
LISTEN   ?=
TARGET   := $(or $(CARGO_TARGET_DIR),target)
BIN      := $(TARGET)/release/otad
FIXTURES := $(or $(OTAD_FIXTURES),../shared/fixtures)

.PHONY: all build run test lint audit clean

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

# The offline RustSec database beside the checkout (../shared/advisory-db).
audit:
	$(CARGO) audit --db ../shared/advisory-db --no-fetch

clean:
	$(CARGO) clean
