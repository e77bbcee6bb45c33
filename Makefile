# Two commands on a fresh machine: `make run` and `make test`. Both build .venv first when it is missing or
# older than pyproject.toml / constraints.txt, so a second call does not reinstall.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tests and smoke runs never reach the network: any accidental weight download fails at once.
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
# Keep later `pip install`s in this venv from swapping the CPU torch for a CUDA one.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: install test run clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/patch_torchvision.py
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing into $(VENV) (about a minute; log in $(VENV)/pip.log)"
	@$(PY) -m pip install --disable-pip-version-check -c constraints.txt -e '.[test]' > $(VENV)/pip.log 2>&1 \
		|| (tail -n 40 $(VENV)/pip.log >&2; exit 1)
	@$(PY) -c "import torch, bench" || (echo "install failed" >&2; exit 1)
	$(PY) scripts/patch_torchvision.py
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The flagship on the built-in synthetic THINGS-EEG (generated on first use into the cache), then its leaderboard.
run: $(STAMP)
	$(VENV)/bin/bench run --method mcdb --subjects all

clean-venv:
	rm -rf $(VENV)
