# whatsapp-identity-gateway: every command a developer or CI needs.
#   make run    start the bundled WhatsApp API emulator and the gateway on loopback
#   make test   install everything, check, and run every test
#   make proto  regenerate generated/ from protos/
#   make check  format, lint, type check, layer check, proto lint and the generated-code check

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_TOOLS := tools/node_modules/.installed
BUF := tools/node_modules/.bin/buf
NODE_CLIENT := clients/node/node_modules/.installed
PROTO := whatsapp/identity/v1/identity.proto
GATEWAY_PORT ?= 50051
EMULATOR_PORT ?= 9090

.PHONY: run test check proto proto-check lint-proto breaking-proto fmt clean bench bench-smoke soak

# The gateway with its dev extra, and the WhatsApp API emulator (a development tool: its own
# distribution in emulator/, never part of the gateway's).
$(STAMP): pyproject.toml emulator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]' -e ./emulator
	touch $@

$(NODE_TOOLS): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The Node.js client's packages, for tests/test_node_client.py.
$(NODE_CLIENT): clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(STAMP)
	@$(BIN)/python -m whatsapp_emulator.devserver --gateway-port $(GATEWAY_PORT) --emulator-port $(EMULATOR_PORT)

test: check $(NODE_CLIENT)
	$(BIN)/python -m pytest

check: $(STAMP) $(NODE_TOOLS) proto-check lint-proto breaking-proto
	$(BIN)/ruff format --check gateway tests bench emulator tools
	$(BIN)/ruff check gateway tests bench emulator tools
	$(BIN)/mypy
	$(BIN)/python tools/check_layers.py

fmt: $(STAMP)
	$(BIN)/ruff format gateway tests bench emulator tools
	$(BIN)/ruff check --fix gateway tests bench emulator tools

# The §5 figures: h2load (apt-get install nghttp2-client) or ghz if installed, else a Python
# driver. A few minutes; the table is printed and written to bench/results/.
bench: $(STAMP)
	$(BIN)/python bench/bench.py

bench-smoke: $(STAMP)
	$(BIN)/python bench/bench.py --smoke --out .bench-smoke

# Five minutes of mixed load while the emulator injects faults (not part of make test).
soak: $(STAMP)
	$(BIN)/python bench/soak.py --duration 300

# generated/ is committed; this rebuilds it with the pinned grpcio-tools.
proto: $(STAMP)
	$(BIN)/python tools/genproto.py generated

# Regenerate into a scratch folder and fail on any difference from the committed generated/.
proto-check: $(STAMP)
	@rm -rf .proto-check && $(BIN)/python tools/genproto.py .proto-check
	@diff -r --exclude=__pycache__ generated .proto-check || { echo "generated/ is stale: run 'make proto' and commit"; rm -rf .proto-check; exit 1; }
	@rm -rf .proto-check && echo "generated/ matches protos/"

lint-proto: $(NODE_TOOLS)
	$(BUF) lint

# The contract may grow but never break: compared with the released v1 (an image built from
# the commit that published it, kept in contract/).
breaking-proto: $(NODE_TOOLS)
	$(BUF) breaking --against contract/identity-v1.binpb

clean:
	rm -rf $(VENV) tools/node_modules clients/node/node_modules .proto-check .bench-smoke .mypy_cache .pytest_cache .ruff_cache
