# Dr.Tech — the two commands a new user runs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROTOS := $(wildcard protos/drtech/v1/*.proto)
GENERATED := $(PROTOS:.proto=_pb2.py)

# One pip at a time in the one venv, whatever -j says.
.NOTPARALLEL:

.PHONY: run test protos install-run install-test install-bench test-fast bench bench-runtimes clean help

help:
	@echo "make run    - set up and serve the whole platform at http://127.0.0.1:$${DRTECH_HTTP_PORT:-8000}"
	@echo "make test   - set up and run the test suite"
	@echo "make protos - regenerate gRPC code from protos/"
	@echo "make bench  - measure serving throughput/latency against the baselines (not a test)"

run: install-run protos
	$(PY) -m services.supervisor

test: install-test protos
	$(PY) -m pytest

# Unit tests only: no sockets, no subprocesses.
test-fast: install-test protos
	$(PY) -m pytest tests/unit

# A venv that failed halfway (no venv module, an old Python) is removed, so the next try starts clean.
$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Dr.Tech needs Python 3.11 or newer; $(PYTHON) is " + sys.version.split()[0] + ": run make PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(PY) -m pip install --quiet --upgrade pip || { rm -rf $(VENV); exit 1; }

# Stamps so a second `make run` does not reinstall; they are redone when pyproject.toml changes.
$(VENV)/.run-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[serving,auth,gateway]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[serving,auth,gateway,training,dev]'
	touch $@ $(VENV)/.run-installed

$(VENV)/.bench-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[serving,auth,gateway,training,bench,dev]'
	touch $@

install-run: $(VENV)/.run-installed
install-bench: $(VENV)/.bench-installed
install-test: $(VENV)/.test-installed

protos: $(GENERATED)

# One rule per .proto, so protoc runs once for each (an explicit rule with several targets ran the
# whole command once per target), after the install that brings grpc_tools.
protos/drtech/v1/%_pb2.py: protos/drtech/v1/%.proto | $(VENV)/.run-installed
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $<

# The serving path against the model alone and the baselines (TF runtime service, Flask + per-request
# Keras load); writes benchmarks/results/serving-*.{json,md}. Not a test. BENCH_ARGS="--seconds 2" shortens it.
bench: install-bench protos
	$(PY) -m benchmarks.serving $(BENCH_ARGS)

# Runtime comparison (TensorFlow vs LiteRT vs ONNX Runtime) on this machine; not a test.
bench-runtimes: install-test protos
	$(PY) -m benchmarks.runtimes

clean:
	rm -rf $(VENV) var protos/drtech/v1/*_pb2*.py protos/drtech/v1/*_pb2*.pyi
