# Two commands on a fresh Debian machine:  make demo   and   make test
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
APT_PKGS := libpmem1 libpmem-dev libglib2.0-dev pkg-config xz-utils busybox-static cpio gcc \
            libc6-dev postgresql python3-dev libsqlite3-dev
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT     := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -y -qq --no-install-recommends

# QEMU 10 (plugin API 4: registers and guest memory from a plugin) from Debian's
# bookworm-backports; the plugin header comes from that version's upstream tarball, pinned by
# its sha256 (docs/DECISIONS.md, "The plugin header").
QEMU_VERSION   := 1:10.0.2+ds-2+deb13u1~bpo12+1
QEMU_ORIG      := qemu_10.0.2+ds.orig.tar.xz
QEMU_ORIG_SHA  := 0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
QEMU_HDR_SHA   := ceca12f3ba448340b38223617b1c66d7b92e0e0d78687d1e108c42287542836e
BPO_SOURCES    := /etc/apt/sources.list.d/provisor-bookworm-backports.sources

PLUGIN_DIR   := hv/plugin
PLUGIN_BUILD := $(PLUGIN_DIR)/build
PLUGIN       := $(PLUGIN_BUILD)/libprovisor.so
PLUGIN_HDR   := $(PLUGIN_BUILD)/include/qemu-plugin.h
NATIVE_DIR   := provisor/native
PLUGIN_LIB_SRC := $(addprefix $(PLUGIN_DIR)/,ring.c linux.c event.c offsets.c) $(NATIVE_DIR)/crc32c.c
PLUGIN_HDRS  := $(wildcard $(PLUGIN_DIR)/*.h) $(NATIVE_DIR)/crc32c.h
CFLAGS_PV    := -O2 -g -std=gnu11 -Wall -Wextra -Werror -fPIC -fvisibility=hidden -I$(NATIVE_DIR)

.PHONY: setup deps qemu plugin native demo test lint bench clean

deps: qemu
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && $(APT) install $$missing; fi

# QEMU 10 from bookworm-backports (adds the suite, with deb-src for the plugin header, once)
qemu:
	@if ! dpkg-query -W -f='$${Version}' qemu-system-x86 2>/dev/null | grep -q '^1:10\.'; then \
	  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then \
	    echo "adding Debian's bookworm-backports suite ($(BPO_SOURCES))"; \
	    printf 'Types: deb deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	      | $(SUDO) tee $(BPO_SOURCES) >/dev/null; fi; \
	  echo "installing qemu-system-x86 $(QEMU_VERSION) from bookworm-backports"; \
	  $(SUDO) apt-get update -qq && $(APT) install -t bookworm-backports qemu-system-x86; fi

# the one upstream header the plugin compiles against, checked by sha256 (tarball and header)
$(PLUGIN_HDR):
	@mkdir -p $(PLUGIN_BUILD)/src $(dir $@)
	@if ! grep -rqs 'deb-src' /etc/apt/sources.list.d/ /etc/apt/sources.list || \
	    ! grep -rqs 'bookworm-backports' /etc/apt/sources.list.d/ /etc/apt/sources.list; then \
	  printf 'Types: deb deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	    | $(SUDO) tee $(BPO_SOURCES) >/dev/null; $(SUDO) apt-get update -qq; fi
	@test -f $(PLUGIN_BUILD)/src/$(QEMU_ORIG) || (cd $(PLUGIN_BUILD)/src && \
	  apt-get source --download-only qemu=$(QEMU_VERSION) >/dev/null 2>&1; \
	  test -f $(QEMU_ORIG) || { echo "cannot download $(QEMU_ORIG) (apt-get source qemu=$(QEMU_VERSION))"; exit 1; })
	@echo "$(QEMU_ORIG_SHA)  $(PLUGIN_BUILD)/src/$(QEMU_ORIG)" | sha256sum -c --quiet
	@tar -xJf $(PLUGIN_BUILD)/src/$(QEMU_ORIG) -O qemu-10.0.2/include/qemu/qemu-plugin.h > $@.tmp
	@echo "$(QEMU_HDR_SHA)  $@.tmp" | sha256sum -c --quiet && mv $@.tmp $@
	@rm -f $(PLUGIN_BUILD)/src/$(QEMU_ORIG)
	@echo "plugin header: $@ (QEMU 10.0.2, plugin API 4)"

$(PLUGIN): $(PLUGIN_DIR)/plugin.c $(PLUGIN_LIB_SRC) $(PLUGIN_HDRS) $(PLUGIN_HDR)
	gcc $(CFLAGS_PV) -shared -I$(PLUGIN_BUILD)/include $$(pkg-config --cflags glib-2.0) \
	  $(PLUGIN_DIR)/plugin.c $(PLUGIN_LIB_SRC) -o $@ -lpmem

# test harnesses over the same sources: the ring producer, and the decoder fed garbage memory
$(PLUGIN_BUILD)/pv-ringtool: $(PLUGIN_DIR)/ringtool.c $(PLUGIN_LIB_SRC) $(PLUGIN_HDRS)
	gcc $(CFLAGS_PV) $(PLUGIN_DIR)/ringtool.c $(PLUGIN_LIB_SRC) -o $@ -lpmem
$(PLUGIN_BUILD)/pv-fuzz: $(PLUGIN_DIR)/fuzz.c $(PLUGIN_LIB_SRC) $(PLUGIN_HDRS)
	gcc $(CFLAGS_PV) -fsanitize=address,undefined -fno-sanitize-recover=all \
	  $(PLUGIN_DIR)/fuzz.c $(PLUGIN_LIB_SRC) -o $@ -lpmem

plugin: deps $(PLUGIN) $(PLUGIN_BUILD)/pv-ringtool $(PLUGIN_BUILD)/pv-fuzz

$(BIN)/provisor: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# the daemon's hot loop (ring scan, CRC, event decode) as a C extension of the venv's Python
NATIVE := $(NATIVE_DIR)/_native.so
NATIVE_SRC := $(addprefix $(NATIVE_DIR)/,native.c sqlite_rows.c canon.c crc32c.c)
$(NATIVE): $(NATIVE_SRC) $(NATIVE_DIR)/native.h $(NATIVE_DIR)/crc32c.h $(BIN)/provisor
	gcc $(CFLAGS_PV) -Wno-missing-field-initializers -shared \
	  -I$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \
	  $(NATIVE_SRC) -lsqlite3 -ldl -o $@

native: $(NATIVE)

setup: deps $(BIN)/provisor plugin $(NATIVE)

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
	$(BIN)/python bench/fleet.py

# the C plugin's copy of the syscall table, generated (stdlib only: no venv needed)
hv/plugin/syscalls.h: provisor/syscalls.py provisor/abi.py
	$(PY) -m provisor.syscalls --c-header $@

clean:
	rm -rf $(VENV) $(PLUGIN_BUILD) $(NATIVE) *.egg-info .pytest_cache .ruff_cache
