# The two commands a newcomer needs: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.attnlab-installed
PYTEST_WORKERS ?= 2

.PHONY: demo test install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Re-install whenever the project's declared dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/attnlab explain "The animal did not cross the street because it was too tired ." --out explain.png

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -p no:cacheprovider tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
