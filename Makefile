# pybaremetal: `make run` and `make test` set everything up on a fresh machine themselves:
# Debian packages (only those missing), a .venv with the Python dependencies, the C core.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# gcc, binutils: the C core, C apps and flat binaries; nasm: assembly apps; iproute2/iputils-ping/curl: network tests; tcpdump: reading --pcap captures in tests; fio: the drive benchmark's
# peer; util-linux: losetup for block-device tests; procps: ps/top for tests;
# xvfb, xdotool, x11-apps, x11-utils: the screen window test (a virtual X server); gdb: the debugging tests
DEBIAN_PACKAGES := gcc libc6-dev binutils make nasm iproute2 iputils-ping curl tcpdump fio util-linux procps xvfb xdotool x11-apps x11-utils gdb
NATIVE := $(wildcard native/*.c native/*.h native/*.cdef) native/build.py setup.py pyproject.toml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# what the package's "test" extra asks for, read from the installed metadata (setup.py is
# the one list)
TEST_REQUIREMENTS := from importlib.metadata import requires; \
  print(" ".join(r.split(";")[0].strip() for r in requires("pybaremetal") if "extra == \"test\"" in r))

.PHONY: run test bench setup clean

run: setup
	$(VENV)/bin/baremetal run examples/sysinfo.py

test: setup $(VENV)/.test
	$(PY) -m pytest tests

bench: setup $(VENV)/.test
	$(PY) -m pytest bench -q -s --benchmark-json=bench/results/pytest-benchmark.json

setup: $(VENV)/.built

$(VENV)/.debian:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi
	@mkdir -p $(VENV) && touch $@

# the build requirements (pyproject.toml): the C core is built without build isolation
$(VENV)/.python: $(VENV)/.debian
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel "cffi>=1.16"
	@touch $@

# the one editable install: the package, what running needs, the C core (again when native/ changes)
$(VENV)/.built: $(VENV)/.python $(NATIVE)
	$(PY) -m pip install -q --no-build-isolation -e .
	@touch $@

# the test extra's packages, for make test and make bench only
$(VENV)/.test: $(VENV)/.built setup.py
	$(PY) -m pip install -q $$($(PY) -I -c '$(TEST_REQUIREMENTS)')
	@touch $@

clean:
	rm -rf $(VENV) build *.egg-info pybaremetal/_native*.so pybaremetal/_native.c
