# eventpipe — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO ?= demo
DEMO_EVENTS ?= 2000
SEED ?= 0
ARGS ?=

# python3.10 on PATH, else a pyenv-installed 3.10 (TFX 1.16 needs Python >=3.9,<3.11).
PYTHON310 ?= $(shell for c in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do \
	"$$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo "$$c"; break; }; done)

.PHONY: setup run test test-fast lint bench bench-simulator bench-ingest bench-train bench-productionize bench-serving bench-warmup bench-quality bench-labels bench-chaos stage-times clean

setup: $(STAMP)

$(STAMP): requirements.lock setup.py
	@# tflite-support's metadata writers load libusb-1.0 when imported (Debian package libusb-1.0-0).
	@if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libusb-1\.0\.so'; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libusb-1.0-0 >/dev/null \
			|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libusb-1.0-0 >/dev/null; } \
			|| { echo "could not install libusb-1.0-0 (Debian package) that tflite-support needs" >&2; exit 2; }; \
		else echo "eventpipe needs libusb-1.0 (tflite-support's metadata writers load it): install the Debian package libusb-1.0-0 (sudo apt-get install libusb-1.0-0) and run make setup again" >&2; exit 2; fi; \
	fi
	@if [ -z "$(PYTHON310)" ]; then echo "eventpipe needs Python 3.10 (TFX 1.16 supports >=3.9,<3.11): install python3.10 or set PYTHON310=/path/to/python3.10" >&2; exit 2; fi
	@if [ -x $(PY) ] && ! $(PY) -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then echo "$(VENV) is not Python 3.10; recreating it"; rm -rf $(VENV); fi
	[ -x $(PY) ] || $(PYTHON310) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip wheel setuptools
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/eventpipe generate --out $(DEMO)/events --events $(DEMO_EVENTS) --seed $(SEED)
	$(VENV)/bin/eventpipe run --data $(DEMO)/events --workdir $(DEMO)/work $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m unit tests $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check contract ondevice simulator trainer serving components pipeline fixtures tests benchmarks setup.py
	$(VENV)/bin/ruff format --check contract ondevice simulator trainer serving components pipeline fixtures tests benchmarks setup.py

bench: bench-simulator bench-ingest bench-train bench-productionize bench-serving bench-warmup bench-quality

bench-simulator: $(STAMP)
	$(PY) benchmarks/bench_simulator.py $(ARGS)

bench-ingest: $(STAMP)
	$(PY) benchmarks/bench_ingest.py $(ARGS)

bench-train: $(STAMP)
	$(PY) benchmarks/bench_train.py $(ARGS)

bench-productionize: $(STAMP)
	$(PY) benchmarks/bench_productionize.py $(ARGS)

bench-serving: $(STAMP)
	$(PY) benchmarks/bench_serving.py $(ARGS)

bench-warmup: $(STAMP)
	$(PY) benchmarks/bench_warmup.py $(ARGS)

bench-quality: $(STAMP)
	$(PY) benchmarks/bench_quality.py $(ARGS)

# Label efficiency with and without self-supervised pre-training (not part of `make bench`: ~40 min).
bench-labels: $(STAMP)
	$(PY) benchmarks/bench_labels.py $(ARGS)

# SIGKILL `eventpipe run` in every stage (docs/benchmarks.md, "Chaos"); exits 1 if anything was lost.
bench-chaos: $(STAMP)
	$(PY) benchmarks/bench_chaos.py $(ARGS)

# Per-component start and duration of the latest run in a workdir (default: the demo's), from ML Metadata.
stage-times: $(STAMP)
	$(PY) benchmarks/stage_times.py $(or $(WORKDIR),$(DEMO)/work)

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info
