# Thin entry points; see README.md. Everything runs inside .venv, created on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: book test sync bench data install clean

book: data
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

test: install
	$(PY) -m pytest tests --nbval-lax --nbval-current-env notebooks

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

data: install  # the Debian package is installed when missing and we are root; then the cache is filled
	[ -d $(FMNIST) ] || [ "$$(id -u)" != 0 ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist)
	$(PY) -m nbsupport.data

sync: install
	$(VENV)/bin/jupytext --sync notebooks/*.md

bench: install
	for f in benchmarks/[!_]*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(PY) "$$f" || exit 1; done

clean:
	rm -rf _build
