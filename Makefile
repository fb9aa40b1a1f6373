# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test lint strip-notebooks
install: $(VENV)/.installed

# Offline machines need the weights in a folder: MODELS_DIR=/path (the dev machines' ../shared/models is used
# when present); with internet the demo downloads its models on first use (RetinaFace and YOLOX-Nano, and three
# MediaPipe files from the pinned mediapipe wheel; all sha256-checked).
MODELS_DIR ?= $(wildcard ../shared/models)

demo: $(VENV)/.installed
	$(PY) -m curate.run pipeline=sample $(if $(MODELS_DIR),models.dir=$(abspath $(MODELS_DIR)))

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q

# Notebook outputs may show people: never commit them (tests/test_review.py fails on any).
strip-notebooks: $(VENV)/.installed
	$(PY) -m curate.review.strip notebooks/*.ipynb
