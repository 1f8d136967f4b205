# PMIPv6 multicast laboratory. Every target installs what it needs (Debian 12).
# The lab (experiment, test, bench, topo) needs root; figures, report, lint and list do not.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON  ?= $(firstword $(wildcard /usr/bin/python3) python3)
PY      := .venv/bin/python
STAMP   := .venv/.installed
# What the lab needs from Debian. Python packages (scapy included) come from PyPI into .venv;
# only Debian's mininet module is linked in (it goes with Debian's mnexec).
SYSPKGS := mininet python3-venv iproute2 iputils-ping tcpdump iperf igmpproxy procps

SCENARIO ?=
KIND     ?= all
PEERING  ?= both
REPS     ?= 10
DURATION ?= 3
SEED     ?= 1
QUICK    ?=
SET      ?=
RESULTS  ?= results
PREFIX   ?= pml

.PHONY: help install sysdeps lab test lint experiment list figures report paper bench \
	bench-links clean topo

# Stock-kernel lane: tests in a user-mode Linux guest (README "Stock-kernel lane").
STOCK_TESTS    ?= tests/stock tests/netns/test_links.py
STOCK_KERNEL   ?= auto
STOCK_TIMEOUT  ?= 1500
STOCK_SYSPKGS  := user-mode-linux gcc libc6-dev openvswitch-switch bridge-utils
KERNEL_SYSPKGS := linux-source-6.1 gcc make bc flex bison libelf-dev libssl-dev xz-utils kmod
.PHONY: uml-kernel test-stock

help:
	@echo "make experiment SCENARIO=multi-lma-lte   run a scenario (peering on and off, REPS runs; root)"
	@echo "make test                                install everything and run the test suite (root)"
	@echo "make test-stock [STOCK_TESTS=...]        the stock-kernel suites in a user-mode Linux guest"
	@echo "make figures | report                    figures and REPORT.md from RESULTS=$(RESULTS) (no root)"
	@echo "make list | paper | bench | bench-links | topo TOPO=... | clean | lint"

install: $(STAMP)

# Installs the missing ones of SYSPKGS; needs root only when something is missing.
sysdeps:
	@missing=$$(for p in $(SYSPKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "error: missing system packages:" $$missing "(run as root to install them)" >&2; exit 2; fi; \
	  echo "installing system packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Debian's mininet module, linked into .venv (the venv has no system site packages).
define LINK_MININET
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	if [ ! -e "$$site/mininet" ]; then \
	  src=$$($(PYTHON) -c 'import mininet, os; print(os.path.dirname(mininet.__file__))' 2>/dev/null) \
	  && ln -sfn "$$src" "$$site/mininet" || true; fi
endef

# A venv made by an older Makefile with --system-site-packages is made anew: Debian's scipy
# and a PyPI numpy in one environment do not fit together.
$(STAMP): pyproject.toml
	@if grep -qs '^include-system-site-packages = true' .venv/pyvenv.cfg; then \
	  echo "recreating .venv without system site packages"; rm -rf .venv; fi
	@if [ ! -x $(PY) ]; then \
	  $(PYTHON) -c 'import ensurepip' 2>/dev/null || $(MAKE) --no-print-directory sysdeps SYSPKGS=python3-venv; \
	  $(PYTHON) -m venv .venv; fi
	$(PY) -m pip install -q --disable-pip-version-check --use-pep517 -e '.[lab,dev]'
	$(LINK_MININET)
	@touch $@

# What every lab target needs: the system packages, the venv, and mininet in it.
lab: sysdeps $(STAMP)
	$(LINK_MININET)

test: lab
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

list: lab
	$(PY) -m experiments list

experiment: lab
	@if [ -z "$(SCENARIO)" ]; then echo "error: give SCENARIO=name (see 'make list')" >&2; exit 2; fi
	@rc=0; $(PY) -m experiments run $(SCENARIO) --kind $(KIND) --peering $(PEERING) \
	  --reps $(REPS) --duration $(DURATION) --seed $(SEED) --results "$(RESULTS)" \
	  $(if $(BACKEND),--backend $(BACKEND)) $(if $(TUNNELS),--tunnels $(TUNNELS)) \
	  --prefix $(PREFIX) $(foreach s,$(SET),--set $(s)) $(if $(FORCE),--force,--resume) || rc=$$?; \
	if [ $$rc -ne 130 ] && [ -d "$(RESULTS)/$(SCENARIO)" ]; then \
	  $(PY) -m analysis summary "$(RESULTS)/$(SCENARIO)" && \
	  $(PY) -m analysis figures --results "$(RESULTS)" && \
	  $(PY) -m analysis report --results "$(RESULTS)" || echo "figures not drawn" >&2; \
	fi; exit $$rc

figures: $(STAMP)
	$(PY) -m analysis figures --results "$(RESULTS)"
	$(PY) -m analysis report --results "$(RESULTS)"

report: $(STAMP)
	$(PY) -m analysis report --results "$(RESULTS)"

paper: lab
	for s in single-lma-lte single-lma-umts multi-lma-lte multi-lma-umts; do \
	  $(PY) -m experiments run $$s --reps $(REPS) --duration $(DURATION) --seed $(SEED) \
	    --results "$(RESULTS)" --resume || exit 1; done
	$(MAKE) --no-print-directory bench
	$(PY) -m analysis figures --results "$(RESULTS)"
	$(PY) -m analysis report --results "$(RESULTS)"

bench: lab
	$(PY) -m benchmarks all $(if $(QUICK),--quick)

bench-links: lab
	$(PY) -m benchmarks.links $(if $(QUICK),--quick) $(if $(BACKEND),--backend $(BACKEND))

topo: lab
	$(PY) -m experiments topo $(or $(TOPO),single-lma) $(if $(BACKEND),--backend $(BACKEND))

clean:
	@if [ -x $(PY) ]; then $(PY) -m lab.clean; fi
	rm -rf .pytest_cache .ruff_cache

uml-kernel:
	@if [ ! -x "$$(stock/build-kernel --dir)/linux" ]; then \
	  $(MAKE) --no-print-directory sysdeps SYSPKGS="$(KERNEL_SYSPKGS)"; fi
	stock/build-kernel

test-stock: lab $(if $(filter debian,$(STOCK_KERNEL)),,uml-kernel)
	@$(MAKE) --no-print-directory sysdeps SYSPKGS="$(STOCK_SYSPKGS)"
	$(PY) -m stock run --kernel $(STOCK_KERNEL) --timeout $(STOCK_TIMEOUT) -- \
	  $(PY) -m pytest -q -p no:cacheprovider -rs $(STOCK_TESTS)
