# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv
# and installs what it needs (the package is compiled by pip: cffi + a C extension).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest -q -rs -p no:cacheprovider --durations=10
GUEST  := tests/uml/run-in-guest.sh

.PHONY: demo test test-host test-pythons test-guest test-peers bench docs clean

$(STAMP): pyproject.toml setup.py aiozcrx/_abi_build.py $(wildcard aiozcrx/_c/*.c aiozcrx/_c/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,uvloop,anyio]'
	touch $@

demo: $(STAMP)
	$(BIN)/python examples/loopback_demo.py

# The guest (one UML CPU) and the other Pythons' host suites run side by side on a
# 2-core machine: about 5 minutes less than one after the other; the peer suite
# takes the first of the two places to come free. --output-sync keeps each one's
# output in one piece, printed when it ends.
test: test-host
	$(MAKE) --no-print-directory -j2 --output-sync=target test-pythons test-guest test-peers

test-host: $(STAMP)
	@scripts/ensure-apt.sh ip:iproute2 curl:curl
	$(PYTEST)

# The host suite again on every other CPython >= 3.10 the machine has (pyenv's, or
# python3.X on PATH), each in its own .venv-3.X: requires-python is a promise. Then on
# each of SID_PYTHONS the machine lacks, Debian sid's, in a root of its own
# (scripts/sid-python.sh; skipped with the reason where that cannot work).
# The last local one runs with the wake-up path that engine "auto" does not take on
# this kernel (AIOZCRX_WAKE: the eventfd where the kernel signals it late, else
# the sockets), so that both paths are tested on every machine (docs/concepts.md,
# "Wake-ups").
SID_PYTHONS ?= 3.14
OTHER_WAKE = -c "import aiozcrx.engines.wake as w; print(w.other_path())"
test-pythons: $(STAMP)
	@pys=$$(scripts/other-pythons.sh $(BIN)/python); have=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	if [ -z "$$pys" ]; then echo "test-pythons: no other CPython >= 3.10 on this machine"; fi; \
	last=$$(echo $$pys | tr ' ' '\n' | tail -n 1); \
	for py in $$pys; do \
		have="$$have $$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
		wake=auto; [ "$$py" = "$$last" ] && wake=$$($(BIN)/python $(OTHER_WAKE)); \
		scripts/host-suite.sh $$py $$wake || exit 1; \
	done; \
	for v in $(SID_PYTHONS); do \
		case " $$have " in *" $$v "*) continue ;; esac; \
		if why=$$(scripts/sid-python.sh --check $$v); then \
			scripts/sid-python.sh $$v -- scripts/host-suite.sh /usr/bin/python$$v auto || exit 1; \
		else echo "host suite on Python $$v SKIPPED: $$why"; fi; \
	done

# The 7.x kernel tier (User-Mode Linux): the real zcrx path, on the project's own
# guest kernel (built on first use: tests/uml/build-kernel.sh, minutes) with the
# simulated NIC for the nic tests. Skipped, with the reason printed, where the
# runner cannot work.
test-guest: $(STAMP)
	@if why=$$($(GUEST) --nic --check); then \
		$(GUEST) --nic --timeout 3300 -- '$(PYTEST) -o faulthandler_timeout=300 -m "(guest or engines or nic) and not workers" && \
			echo "== zcrx-copy tests again with AIOZCRX_WAKE=$$($(BIN)/python $(OTHER_WAKE))" && \
			AIOZCRX_WAKE=$$($(BIN)/python $(OTHER_WAKE)) $(PYTEST) -o faulthandler_timeout=300 -m "guest and not nic"' && \
		$(GUEST) --nic --nic-queues 5 --timeout 1800 -- '$(PYTEST) -o faulthandler_timeout=300 -m workers'; \
	else \
		echo "guest suite SKIPPED: $$why"; \
	fi

# The peers' own suites: uvloop's test suite (the tests/ of its source distribution,
# fetched by pip into build/peer/ on first use, then cached) on the drop-in loop,
# over the uvloop base and over the stock base. A test that passes on the base loop
# and fails on aiozcrx's fails this target unless tests/peer/uvloop-not-applicable.txt
# lists it with the reason; prints run / passed / failed / listed / skipped per base.
# SKIPPED (exit 0), with the reason, where the sdist cannot be fetched. About 3 minutes.
test-peers: $(STAMP)
	$(BIN)/python tests/peer/run_uvloop_suite.py

docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -b html docs build/docs

# matplotlib only for the plots: installed by this target, not by demo/test
$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,uvloop,anyio,bench]'
	touch $@

# wrk (the load generator of the small-request case) and perf (syscall counts per
# wake-up) come from Debian; without them those rows say why they did not run.
# BENCH_QUICK=1 make bench: every case once, tiny sizes, nothing written (< 1 minute)
bench: $(VENV)/.bench-installed
	@scripts/ensure-apt.sh wrk:wrk perf:linux-perf taskset:util-linux
	$(BIN)/python benchmarks/run.py $(if $(filter 1,$(BENCH_QUICK)),--quick)

clean:
	rm -rf $(VENV) .venv-3.* build *.egg-info aiozcrx/*.so aiozcrx/_abi.c
