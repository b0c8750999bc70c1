# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo demo-translate test venv lint bench clean

venv: $(STAMP)

# torch is installed first and pinned, or deepspeed's sdist pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==$(TORCH_VERSION)
	$(VPY) -m pip install -q torch==$(TORCH_VERSION) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VPY) -m launch.demo

demo-translate: $(STAMP)
	$(VPY) -m launch.translate_demo

test: $(STAMP)
	$(VPY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VPY) -m ruff check .

bench: $(STAMP)
	$(VPY) benchmarks/shard_throughput.py
	$(VPY) benchmarks/loader_throughput.py
	$(VPY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) demo
