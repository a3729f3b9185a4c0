# Two commands on a fresh Debian machine:  make demo   and   make test
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
APT_PKGS := libpmem1 qemu-system-x86 busybox-static cpio gcc libc6-dev
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup deps demo test lint bench clean

deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; fi

$(BIN)/provisor: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: deps $(BIN)/provisor

demo: setup
	$(BIN)/python -m provisor.demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/ring.py
	$(BIN)/python bench/daemon.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/query.py
	$(BIN)/python bench/vmi.py

# the C plugin's copy of the syscall table, generated (stdlib only: no venv needed)
hv/plugin/syscalls.h: provisor/syscalls.py provisor/abi.py
	$(PY) -m provisor.syscalls --c-header $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
