# Dr.Tech — the two commands a new user runs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROTOS := $(wildcard protos/drtech/v1/*.proto)
GENERATED := $(PROTOS:.proto=_pb2.py)

# One pip at a time in the one venv, whatever -j says.
.NOTPARALLEL:

.PHONY: run test soak protos install-run install-test install-bench install-checkov test-fast bench bench-runtimes lock clean help

help:
	@echo "make run    - set up and serve the whole platform at http://127.0.0.1:$${DRTECH_HTTP_PORT:-8000}"
	@echo "make test   - set up and run the test suite (every tier)"
	@echo "make test-fast - the unit tier only (no sockets, processes or TensorFlow; under a minute)"
	@echo "make soak   - the long load and hostile-input runs (minutes; not part of make test)"
	@echo "make protos - regenerate gRPC code from protos/"
	@echo "make bench  - measure serving throughput/latency against the baselines (not a test)"
	@echo "make lock   - re-resolve requirements/*.txt from pyproject.toml (UPGRADE=1: newest versions)"

run: install-run protos
	$(PY) -m services.supervisor

# checkov (the k8s policy check) as CI has it; a failed install only skips its one test, with the reason.
test: install-test protos
	@$(MAKE) --no-print-directory install-checkov >/dev/null || echo "checkov could not be installed: its test will be skipped" >&2
	$(PY) -m pytest

# The long versions of the load test (2,000 diagnoses at concurrency 32, SQLite and PostgreSQL) and
# of the hostile-input suite (~11,000 generated bad inputs); prints their figures. README.md, "Tests".
soak: install-test protos
	DRTECH_SOAK=1 $(PY) -m pytest -s -p no:logging --timeout 3600 \
		tests/integration/test_gateway_load.py tests/integration/test_gateway_hostile_inputs.py

# The unit tier only: in process, no sockets, no subprocesses, no TensorFlow (tests/unit/conftest.py
# fails a test that tries); under a minute on two cores. README.md, "Tests".
test-fast: install-test protos
	$(PY) -m pytest tests/unit

# Every install comes from a lock in requirements/ (exact versions with hashes, made by `make lock`);
# the project itself then goes in with --no-deps, so nothing unpinned is resolved on the way.
LOCKS := requirements
PIP_LOCKED := $(PY) -m pip install --quiet --require-hashes
INSTALL_SELF := $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .

# The venv is ready once its stamp is written, last. A venv cut off halfway (no venv module, an old
# Python, or make killed, even by SIGKILL, before ensurepip finished) has no stamp and no working pip:
# it is removed and made again. A working venv made before the stamp existed is kept as it is.
VENV_READY := $(VENV)/.created
$(VENV_READY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Dr.Tech needs Python 3.11 or newer; $(PYTHON) is " + sys.version.split()[0] + ": run make PYTHON=python3.11 (or newer)")'
	@if $(PY) -m pip --version >/dev/null 2>&1; then touch $@; else \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && $(PIP_LOCKED) -r $(LOCKS)/build.txt && touch $@ \
		|| { rm -rf $(VENV); exit 1; }; fi

# Stamps so a second `make run` does not reinstall; they are redone when a lock or pyproject.toml
# changes. build.txt (pip, setuptools) goes first: the editable install builds with the venv's own
# pinned setuptools (--no-build-isolation) instead of fetching the newest.
$(VENV)/.run-installed: $(LOCKS)/build.txt $(LOCKS)/run.txt pyproject.toml | $(VENV_READY)
	$(PIP_LOCKED) -r $(LOCKS)/build.txt
	$(PIP_LOCKED) -r $(LOCKS)/run.txt
	$(INSTALL_SELF)
	touch $@

$(VENV)/.test-installed: $(LOCKS)/build.txt $(LOCKS)/test.txt pyproject.toml | $(VENV_READY)
	$(PIP_LOCKED) -r $(LOCKS)/build.txt
	$(PIP_LOCKED) -r $(LOCKS)/test.txt
	$(INSTALL_SELF)
	touch $@ $(VENV)/.run-installed

$(VENV)/.bench-installed: $(LOCKS)/build.txt $(LOCKS)/bench.txt pyproject.toml | $(VENV_READY)
	$(PIP_LOCKED) -r $(LOCKS)/build.txt
	$(PIP_LOCKED) -r $(LOCKS)/bench.txt
	$(INSTALL_SELF)
	touch $@

# checkov (the policy check of the rendered Kubernetes overlays, tests/integration/test_k8s_overlays.py) in
# a venv of its own: it pins boto3, networkx<2.7 and packaging<24, which clash with the project's own
# dependencies (scikit-image needs networkx>=2.8), so it cannot share .venv.
CHECKOV_VENV := .venv-checkov
$(CHECKOV_VENV)/.installed: deploy/k8s/checkov-requirements.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r deploy/k8s/checkov-requirements.txt
	touch $@

install-checkov: $(CHECKOV_VENV)/.installed
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
# Then CPU per diagnosis by process and stage against the model alone, with py-spy profiles
# (benchmarks/results/cpu-*): CPU_ARGS="--exam-type bone_xray --diagnoses 200" for another run.
bench: install-bench protos
	$(PY) -m benchmarks.serving $(BENCH_ARGS)
	$(PY) -m benchmarks.cpu_cost $(CPU_ARGS)

# Runtime comparison (TensorFlow vs LiteRT vs ONNX Runtime) on this machine; not a test.
bench-runtimes: install-test protos
	$(PY) -m benchmarks.runtimes

# The locks: one resolution for Linux and macOS/Windows alike (uv's universal mode, markers where a
# platform differs) for CPython >= 3.11, with the hashes of every wheel of each pinned version, so
# x86_64 and aarch64 install from the same files. bench is resolved first and constrains the others,
# so a package has one version in every profile (test's venv is run's plus more). A plain
# `make lock` keeps every pin that still satisfies pyproject.toml and resolves only what changed;
# UPGRADE=1 moves everything to the newest allowed versions, UPGRADE_PACKAGE=name one package
# (then run `make test`).
UV := $(VENV)/bin/uv
UV_COMPILE = $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade) \
	$(if $(UPGRADE_PACKAGE),--upgrade-package $(UPGRADE_PACKAGE))
PROFILE_RUN   := --extra serving --extra auth --extra gateway
PROFILE_TEST  := $(PROFILE_RUN) --extra training --extra dev
PROFILE_BENCH := $(PROFILE_TEST) --extra bench
# The GPU image: serving-gpu (onnxruntime-gpu and NVIDIA's CUDA 12 wheels) in place of serving.
PROFILE_GPU   := --extra serving-gpu --extra auth --extra gateway

# uv itself comes from a hashed lock too (requirements/uv.txt), into this venv only.
$(VENV)/.uv-installed: $(LOCKS)/uv.txt | $(VENV_READY)
	$(PIP_LOCKED) -r $(LOCKS)/uv.txt
	touch $@

lock: $(VENV)/.uv-installed
	$(UV_COMPILE) $(LOCKS)/uv.in -o $(LOCKS)/uv.txt
	$(UV_COMPILE) $(LOCKS)/build.in -o $(LOCKS)/build.txt
	$(UV_COMPILE) pyproject.toml $(PROFILE_BENCH) -c $(LOCKS)/build.txt -o $(LOCKS)/bench.txt
	$(UV_COMPILE) pyproject.toml $(PROFILE_TEST) -c $(LOCKS)/bench.txt -o $(LOCKS)/test.txt
	$(UV_COMPILE) pyproject.toml $(PROFILE_RUN) -c $(LOCKS)/bench.txt -o $(LOCKS)/run.txt
	$(UV_COMPILE) pyproject.toml $(PROFILE_GPU) -c $(LOCKS)/bench.txt -o $(LOCKS)/gpu.txt

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) var protos/drtech/v1/*_pb2*.py protos/drtech/v1/*_pb2*.pyi
