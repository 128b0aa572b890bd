# whichmodel: the two commands.
#   make quickstart   venv + install + offline zoo + quickstart sweep + regret report
#   make test         venv + install with test extras + the linter + the whole test suite (CI runs this)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
export WHICHMODEL_HOME ?= $(CURDIR)/.whichmodel

.PHONY: quickstart test install install-test system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall only when the project's metadata changes. --no-compile: pip's byte-compiling of every
# installed file took half of the install (99 s vs 48 s with pip's cache warm on 2 cores); Python
# compiles what it imports when it first imports it.
$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --no-compile -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q --no-compile -e '.[test]'
	touch $@

# Debian packages the cluster tests use: PostgreSQL (the tracking server's backend store),
# Chromium (the MLflow UI test), and for the `ray up` test (tests/cluster/test_ray_up.py) an SSH
# server that the test runs on loopback itself (openssh-server), rsync (Ray's file_mounts) and
# netcat (the test's ssh_proxy_command). Installed only when missing; needs root or sudo. A
# policy-rc.d guard, while apt runs, keeps Debian from starting the packages' own services (an
# sshd on port 22 of every address, a PostgreSQL): the tests start theirs, on loopback.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromium >/dev/null \
		|| ! test -x /usr/sbin/sshd || ! command -v rsync >/dev/null || ! command -v nc >/dev/null; then \
		guard=; if [ ! -e /usr/sbin/policy-rc.d ]; then guard=1; \
			printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; \
			$(SUDO) chmod 755 /usr/sbin/policy-rc.d; fi; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql chromium \
			openssh-server rsync netcat-openbsd >/dev/null; \
		status=$$?; [ -z "$$guard" ] || $(SUDO) rm -f /usr/sbin/policy-rc.d; exit $$status; \
	fi

# The tracking server on this machine (mlflow_server/README.md): PostgreSQL, moto's S3 and MLflow
# with basic auth on 127.0.0.1, in the foreground; Ctrl-C stops all three. It prints the tracking
# URI and what a client needs; the password is in $(WHICHMODEL_HOME)/mlflow-server/secrets.env.
.PHONY: mlflow-server
mlflow-server: install-test system-deps
	$(BIN)/python -m mlflow_server.local --dir $(WHICHMODEL_HOME)/mlflow-server $(MLFLOW_SERVER_ARGS)

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Counted from when make started, so the last line's quickstart_s includes the install.
QUICKSTART_STARTED := $(shell date +%s)
quickstart: install
	$(BIN)/python -m sweeps.quickstart --started $(QUICKSTART_STARTED)

test: install-test system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .whichmodel reports
