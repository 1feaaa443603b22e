"""retrieval-head: find the attention heads that copy facts out of long contexts, and
prove what they do by masking them (Wu et al. 2024, arXiv 2404.15574).

The modules, in pipeline order::

  inputs      options        settings dataclasses -> command-line options (one source of defaults)
              default_model  the embedded models (a table: SmolLM2, Gemma-3), converted once
              models         loading any HF causal LM in two steps: config + tokenizer, then weights
              shape          ModelShape: layers, heads, KV heads, windows... read once from the config
              haystack       haystack text and needles files
              prompt         trial prompts in token space (exact lengths, the needle's span)
              sweep          the grid, trial keys, haystacks, every up-front check (both experiments)
  the method  attention      ArgmaxProbe and HeadMask, scoped through transformers' attention interface
              decode         prefill and greedy decoding (one prompt, or rows of one length)
              scoring        the retrieval score of one trial (exact fractions) and the ROUGE check
              detect         experiment 1: detection (prompt -> prefill -> probed decode -> score)
              niah           experiment 2: the needle test with heads masked (top-K, random-K, none)
  methods     methods        the head-identification methods side by side: names, files, data needed
              tap            the attention tap: per-head mass of chosen query rows, reduced on the spot
              scores_focus   query-focus (QRHead-style) and needle-mass (HeadKV-R2-style), from detection's trials
              scores_repeat  induction and echo, from one pass over repeated random tokens
              judge          masked NIAH with each method's top-K heads and random-K, in one run
  speed       schedule       the levers beneath both experiments, behind Job -> Decoded:
              prefix           prefix reuse across prompts
              batching         which prompts decode together within a budget of cached tokens
              kvcache          the in-place KV cache, snapshots, stacked rows
  outputs     scores_io      head-score files (validated whole), trial logs, atomic writes
              head_files     other tools' head files, read and fitted to a model; head_export writes them
              manifest       provenance of every run
              shard          splitting a sweep over processes, merged from files
              plot, heads    NIAH heatmaps; head tables, heatmaps, comparisons
              stability      how sure a head score is: the trial bootstrap (intervals, P(top-K))
              convergence    the top K as trials accrue; how many trials were enough
              adaptive       --until_stable: coarse-to-fine rounds, stopped by the bootstrap
  commands    cli_common, cli_detect, cli_niah, cli (the `retrieval-head` console command)
  data        families       the architecture matrix the tests and the support table run
              data/needles.jsonl  the default needles (package data: a wheel has them too)
"""

from .core.intervene import intervene
from .core.mask import HeadMask
from .core.probe import ArgmaxProbe
from .errors import UnsupportedModelError, UserError
from .experiments.detect import DetectionResult, DetectSettings, detect
from .experiments.mask import NiahSettings, make_conditions, run_niah
from .headfiles.load import load_head_scores
from .headfiles.ranking import top_heads
from .models.loading import ModelSpec, load_model
from .models.shape import ModelShape

__version__ = "0.1.0"

__all__ = [
    "ArgmaxProbe", "HeadMask", "intervene", "DetectionResult", "DetectSettings", "detect", "UnsupportedModelError",
    "UserError", "ModelSpec", "load_model", "NiahSettings", "make_conditions", "run_niah", "load_head_scores",
    "top_heads", "ModelShape",
]
