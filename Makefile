# otad: build, run and test. `make run` and `make test` are the two commands a fresh
# machine needs (see README.md).

CARGO  ?= cargo
STATE  ?= ./state
URL    ?= http://127.0.0.1:8080
LISTEN ?= 127.0.0.1:8080
BIN    := target/release/otad

.PHONY: all build run test lint audit clean

all: build

build:
	$(CARGO) build --release --locked

# Creates $(STATE) with `otad init` on first use, then serves on $(LISTEN).
run: build
	@test -f $(STATE)/otad.toml || $(BIN) init --state $(STATE) --url $(URL)
	$(BIN) serve --config $(STATE)/otad.toml --listen $(LISTEN)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test: lint
	$(CARGO) test --locked

# The offline RustSec database beside the checkout (../shared/advisory-db).
audit:
	$(CARGO) audit --db ../shared/advisory-db --no-fetch

clean:
	$(CARGO) clean
