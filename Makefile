# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
# pytest-xdist workers for `make test` (tests/conftest.py keeps a file, and a real service, on one
# worker): 3 where there are 2 cores or more, 0 (one process) on a single core. The workers
# overlap one test's waits on servers, signals, disks and single-threaded start-ups with the
# others' work. Measured one after the other on a 2-core Xeon (3, 2, 3, 2 workers): 212, 221,
# 218, 229 s; one process is about 1.5x slower than 2 workers.
TEST_WORKERS ?= $(shell [ "$$(nproc 2>/dev/null || echo 1)" -ge 2 ] && echo 3 || echo 0)

.PHONY: demo demo-translate test venv lint bench gpu-wheels clean sysdeps

# System packages the tests start as real servers: SLURM (launch slurm), sshd + pdsh (launch
# hostfile), Ceph RGW (S3 data). Installed only when a binary is missing and only as root; tests
# never run apt themselves (a missing package fails its fixture naming this target).
# ARROWTRAIN_NO_APT=1 skips the install (the tests that need a missing server then fail).
SYSDEPS := slurmctld slurmd slurm-client munge openssh-server pdsh ceph-mon ceph-osd radosgw
SYSDEP_BINARIES := slurmctld slurmd sbatch munged sshd pdsh ceph-mon ceph-osd radosgw radosgw-admin monmaptool

venv: $(STAMP)

# torch is installed first and pinned, or deepspeed's sdist pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==$(TORCH_VERSION)
	$(VPY) -m pip install -q torch==$(TORCH_VERSION) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VPY) -m arrowtrain.demos.demo

demo-translate: $(STAMP)
	$(VPY) -m arrowtrain.demos.translate_demo

# `env -u PYTHONDONTWRITEBYTECODE`: the suite starts hundreds of Python processes; with the
# variable set (some images do) each compiles this repository's modules again and pytest
# rewrites every test file again on each run (collection: 21 s against 9 s here).
test: $(STAMP) sysdeps
	env -u PYTHONDONTWRITEBYTECODE $(VPY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

sysdeps:
	@missing=""; for b in $(SYSDEP_BINARIES); do \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ -n "$(ARROWTRAIN_NO_APT)" ]; then \
	  echo "sysdeps: missing$$missing; ARROWTRAIN_NO_APT is set, not installing (tests needing them will fail)"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "sysdeps: missing$$missing; run 'make sysdeps' as root (apt-get install $(SYSDEPS)), or set ARROWTRAIN_NO_APT=1 to go on without"; exit 1; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "sysdeps: missing$$missing and no apt-get: install $(SYSDEPS) with this system's package manager"; exit 1; fi; \
	echo "sysdeps: installing $(SYSDEPS) (missing:$$missing)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get -o DPkg::Lock::Timeout=300 update -q && \
	apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends $(SYSDEPS)

lint: $(STAMP)
	$(VPY) -m ruff check .

bench: $(STAMP)
	$(VPY) benchmarks/shard_throughput.py
	$(VPY) benchmarks/loader_throughput.py
	$(VPY) benchmarks/train_throughput.py

# DeepSpeed (pure-Python build) and the packages the lent GPU image lacks, as wheels in .whl/
# (ignored by git): benchmarks/gpu_check.sh installs them to /tmp/site when deepspeed is not
# importable there. Pass carry: [".whl"] with the device call. Python 3.12 / x86_64 wheels.
GPU_PY ?= 3.12
gpu-wheels: $(STAMP)
	DS_BUILD_OPS=0 $(VPY) -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
	$(VPY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4 pydantic_core==2.50.5 \
	  annotated-types==0.8.0 typing-inspection==0.4.5 hjson==3.1.0 PyYAML==6.0.4 tqdm==4.70.1

clean:
	rm -rf $(VENV) demo
