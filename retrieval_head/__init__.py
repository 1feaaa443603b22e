"""retrieval-head: find the attention heads that copy facts out of long contexts, and
prove what they do by masking them (Wu et al. 2024, arXiv 2404.15574).

Pipeline, one module per stage:
  haystack -> prompt -> attention (probe, head mask) -> decode -> scoring -> detect
  -> niah (masked needle test) -> scores_io -> plot / heads -> cli_*
"""

from .attention import ArgmaxProbe, HeadMask, intervene
from .detect import DetectionResult, DetectSettings, detect
from .errors import UnsupportedModelError, UserError
from .models import ModelSpec, load_model
from .scores_io import load_head_scores, top_heads

__version__ = "0.1.0"

__all__ = [
    "ArgmaxProbe", "HeadMask", "intervene", "DetectionResult", "DetectSettings", "detect", "UnsupportedModelError",
    "UserError", "ModelSpec", "load_model", "load_head_scores", "top_heads",
]
