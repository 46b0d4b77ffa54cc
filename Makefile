# Thin entry points; see README.md. Everything runs inside .venv, created on first use.
# Recipes run in bash with -e -u -o pipefail: any failing command (also inside $$(...) or a pipe)
# fails the target.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
# Extra pip options for the first install, e.g. a CPU-only torch index (README, "PyTorch").
PIP_EXTRA ?=

.PHONY: book test stamp sync bench data install lab clean

book: stamp
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

# Chapters executed by the build are reused (tests/book_cache.py); nbval executes the others.
test: stamp
	$(PY) -m pytest tests
	stale=$$($(PY) tests/book_cache.py --stale); [ -z "$$stale" ] || $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider $$stale

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_EXTRA) -e '.[dev]'
	touch $@

# The executed-notebook cache is keyed by the pages' code only: empty it (and Sphinx's doctrees, or
# only pages whose text changed would be re-read) when what the code reads changes: nbsupport's files,
# the installed versions, the data, the benchmark results (tests/book_cache.py --stamp says which).
stamp: data
	$(PY) tests/book_cache.py --stamp

data: install  # Debian's package is installed when missing (as root), else the command is printed
	fmnist=$$($(PY) -m nbsupport.data --system-dir); \
	[ -d "$$fmnist" ] || [ "$$(id -u)" != 0 ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist); \
	[ -d "$$fmnist" ] || [ "$$(id -u)" = 0 ] || echo "Fashion-MNIST: not root, so run: sudo apt-get install dataset-fashion-mnist" >&2
	$(PY) -m nbsupport.data

sync: install
	$(VENV)/bin/jupytext --sync notebooks/*.md

# JupyterLab on one chapter (CHAPTER=03_orthant_pmf ...); its .md opens as a notebook (settings in .jupyter/).
CHAPTER ?= 01_conditional_covariance
lab: install
	$(VENV)/bin/jupyter lab --LabApp.app_settings_dir=$(CURDIR)/.jupyter/lab/settings $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/$(CHAPTER).md

bench: install  # writes benchmarks/results/<script>.json, read by book/performance.md
	$(PY) -m pip install -q -e '.[bench]' || echo "Opacus/BackPACK not installed: their comparison is skipped"
	for f in benchmarks/[!_]*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(PY) "$$f" || exit 1; done

clean:
	rm -rf _build
