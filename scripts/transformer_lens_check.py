"""TransformerLens's induction-head detection on the embedded SmolLM2, for comparison with
ours (``--method induction``). Not a dependency: run it in a throwaway venv that has
``transformer-lens`` (4.3.0 was used), e.g.::

    python -m venv /tmp/tl && /tmp/tl/bin/pip install transformer-lens
    HF_HUB_OFFLINE=1 /tmp/tl/bin/python scripts/transformer_lens_check.py HAYSTACK.txt OUT.json
    python -m retrieval_head.cli.heads compare head_score/SmolLM2-135M-Instruct.induction.json OUT.json --top 11

It boots the converted folder offline (``TransformerBridge.boot_transformers``), runs
``detect_head(..., "induction_head", exclude_bos=True, error_measure="mul")`` on three texts of
120 random words repeated 3 times (TransformerLens needs text, not ids), averages the three
[layers, heads] grids and writes them in the original's format.
"""

import json
import random
import sys
from pathlib import Path

import torch
from transformer_lens.head_detector import detect_head
from transformer_lens.model_bridge import TransformerBridge


def main(text_file: str, out: str) -> None:
    torch.set_num_threads(1)
    path = str(Path.home() / ".cache/retrieval-head/models/SmolLM2-135M-Instruct")
    bridge = TransformerBridge.boot_transformers(path, device="cpu")
    bridge.enable_compatibility_mode()
    words = Path(text_file).read_text().split()[:5000]
    grids = []
    for seed in range(3):
        random.seed(seed)
        seq = (" " + " ".join(random.sample(words, 120))) * 3
        grids.append(detect_head(bridge, seq, "induction_head", exclude_bos=True, error_measure="mul").double())
    s = torch.stack(grids).mean(0)
    Path(out).write_text(json.dumps({f"{l}-{h}": [float(s[l, h])] for l in range(s.shape[0])
                                     for h in range(s.shape[1])}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
