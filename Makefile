# The two set-up commands (see README.md):
#   make run    venv + install + build the bundled demo data if missing + serve the app
#   make test   venv + install (with test tools and Debian chromium) + the whole test suite
#   make test-fast   the edit-test loop: everything but the slow and browser tests
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data
PORT   ?= 7860
TORCH  ?= torch==2.13.0

.PHONY: run test test-fast venv install install-dev browser data lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[viz]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[viz,r2,diffusers,dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

data: install
	$(VENV)/bin/diffviews build-demo --data-dir $(DATA) --threads 1

# MALLOC_ARENA_MAX=2: one glibc heap per request thread only grows (visualization/limits.py)
run: data
	MALLOC_ARENA_MAX=2 $(VENV)/bin/diffviews viz --data-dir $(DATA) --port $(PORT)

browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: browser tests will be skipped (apt-get install chromium)"; fi; }

lint: install-dev
	$(VENV)/bin/ruff check .

test: install-dev browser lint
	$(PY) -m pytest -q

test-fast: install-dev
	$(PY) -m pytest -q -m "not slow and not browser"

clean:
	rm -rf $(VENV) $(DATA) artifacts .pytest_cache
