# PMIPv6 multicast laboratory. Every target installs what it needs (Debian 12, as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY      := .venv/bin/python
STAMP   := .venv/.installed
SYSPKGS := mininet python3-scapy python3-venv iproute2 iputils-ping tcpdump iperf igmpproxy procps

SCENARIO ?=
KIND     ?= all
PEERING  ?= both
REPS     ?= 10
DURATION ?= 3
SEED     ?= 1
QUICK    ?=
SET      ?=
RESULTS  ?= results

.PHONY: help install sysdeps test lint experiment list figures paper bench bench-links clean topo

# Stock-kernel lane: tests in a user-mode Linux guest (README "Stock-kernel lane").
STOCK_TESTS    ?= tests/stock tests/netns/test_links.py
STOCK_KERNEL   ?= auto
STOCK_TIMEOUT  ?= 1500
STOCK_SYSPKGS  := user-mode-linux gcc libc6-dev openvswitch-switch bridge-utils
KERNEL_SYSPKGS := linux-source-6.1 gcc make bc flex bison libelf-dev libssl-dev xz-utils kmod
.PHONY: uml-kernel test-stock

help:
	@echo "make experiment SCENARIO=multi-lma-lte   run a scenario (peering on and off, REPS runs)"
	@echo "make test                                install everything and run the test suite"
	@echo "make test-stock [STOCK_TESTS=...]        the stock-kernel suites in a user-mode Linux guest"
	@echo "make list | figures | paper | bench | bench-links | topo TOPO=... | clean | lint"

install: $(STAMP)

sysdeps:
	@if [ "$$(id -u)" != 0 ]; then echo "error: run as root (network namespaces and apt-get need it)" >&2; exit 2; fi
	@missing=$$(for p in $(SYSPKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | sysdeps
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages .venv
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

test: sysdeps $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

list: sysdeps $(STAMP)
	$(PY) -m experiments list

experiment: sysdeps $(STAMP)
	@if [ -z "$(SCENARIO)" ]; then echo "error: give SCENARIO=name (see 'make list')" >&2; exit 2; fi
	@rc=0; $(PY) -m experiments run $(SCENARIO) --kind $(KIND) --peering $(PEERING) \
	  --reps $(REPS) --duration $(DURATION) --seed $(SEED) --results "$(RESULTS)" \
	  $(if $(BACKEND),--backend $(BACKEND)) $(if $(TUNNELS),--tunnels $(TUNNELS)) \
	  $(foreach s,$(SET),--set $(s)) $(if $(FORCE),--force,--resume) || rc=$$?; \
	if [ $$rc -ne 130 ] && [ -d "$(RESULTS)/$(SCENARIO)" ]; then \
	  $(PY) -m analysis summary "$(RESULTS)/$(SCENARIO)" && \
	  $(PY) -m analysis figures --results "$(RESULTS)" && \
	  $(PY) -m analysis report --results "$(RESULTS)" || echo "figures not drawn" >&2; \
	fi; exit $$rc

figures: $(STAMP)
	$(PY) -m analysis figures --results $(RESULTS)
	$(PY) -m analysis report --results $(RESULTS)

paper: sysdeps $(STAMP)
	for s in single-lma-lte single-lma-umts multi-lma-lte multi-lma-umts; do \
	  $(PY) -m experiments run $$s --reps $(REPS) --duration $(DURATION) --seed $(SEED) \
	    --results $(RESULTS) --resume || exit 1; done
	$(MAKE) --no-print-directory bench
	$(PY) -m analysis figures --results $(RESULTS)
	$(PY) -m analysis report --results $(RESULTS)

bench: sysdeps $(STAMP)
	$(PY) -m benchmarks all $(if $(QUICK),--quick)

bench-links: sysdeps $(STAMP)
	$(PY) -m benchmarks.links $(if $(QUICK),--quick) $(if $(BACKEND),--backend $(BACKEND))

topo: sysdeps $(STAMP)
	$(PY) -m experiments topo $(or $(TOPO),single-lma) $(if $(BACKEND),--backend $(BACKEND))

clean:
	@if [ -x $(PY) ]; then $(PY) -m lab.clean; fi
	rm -rf .pytest_cache .ruff_cache

uml-kernel:
	@if [ ! -x "$$(stock/build-kernel --dir)/linux" ]; then \
	  $(MAKE) --no-print-directory sysdeps SYSPKGS="$(KERNEL_SYSPKGS)"; fi
	stock/build-kernel

test-stock: sysdeps $(STAMP) $(if $(filter debian,$(STOCK_KERNEL)),,uml-kernel)
	@$(MAKE) --no-print-directory sysdeps SYSPKGS="$(STOCK_SYSPKGS)"
	$(PY) -m stock run --kernel $(STOCK_KERNEL) --timeout $(STOCK_TIMEOUT) -- \
	  $(PY) -m pytest -q -p no:cacheprovider -rs $(STOCK_TESTS)
