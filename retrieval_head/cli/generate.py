"""``retrieval-head generate``: answer a prompt with a head-wise KV cache (the top heads keep
every key, the others only their sink and recent keys) and report the memory it held.

    retrieval-head generate prompt.txt --keep_fraction 0.25          # head_score/<model>.json ranks
    retrieval-head generate prompt.txt --head_score head_score/M.kv_max.json --keep_full 9 27
    cat prompt.txt | retrieval-head generate - --question "What is the code?" --phase context
    retrieval-head generate prompt.txt --press snapkv --budget 0.25 0.1       # a press, its real cache

The prompt goes through the model's chat template as one user message (``--chat_template
auto``, as ``detect`` and ``mask``), ``--question`` on a line after it. The answer is printed
as it is generated, then one line: the cache's bytes against a full cache of the same length,
and the process's peak memory. Several ``--keep_full`` / ``--keep_fraction`` values answer
once each (one model load). With neither, every head keeps its whole cache: exactly
transformers' own greedy ``generate``. ``--press NAME --budget F...`` answers under a press
instead, on its real cache (``core.pressed.PressedCache``: the prompt's cache compressed once
after its prefill, or the context's with ``--phase context``, each KV head keeping its own
keys; token for token the press's masked simulation, tests/test_pressed_cache.py); its
memory line is the bytes the cache holds, measured. Every input is checked before the weights load.
"""

from __future__ import annotations

import resource
import sys
from functools import partial
from pathlib import Path

from ..errors import UserError
from ..experiments.settings import check_chat_template, check_press
from ..models.spec import ModelSpec
from ..options import from_args
from . import parsers
from .common import apply_threads, load_checked, open_checked, run_cli, setup_logging

PROG = "retrieval-head generate"


GROUPS = parsers.GROUPS["generate"]


def parser(prog: str = PROG):
    return parsers.generate(prog)


def read_prompt(name: str) -> str:
    """The prompt's text: a UTF-8 file, or standard input for ``-``; refused when empty."""
    if name == "-":
        text, where = sys.stdin.read(), "standard input"
    else:
        path = Path(name)
        if not path.is_file():
            what = "is a folder, not a file" if path.exists() else "does not exist"
            raise UserError(f"prompt file {path} {what}; pass a UTF-8 text file (or - for standard input)")
        try:
            text, where = path.read_text(encoding="utf-8"), f"prompt file {path}"
        except UnicodeDecodeError:
            raise UserError(f"prompt file {path} is not UTF-8 text; re-save it as UTF-8") from None
    if not text.strip():
        raise UserError(f"{where} is empty; pass the text to answer")
    return text


def check_args(o: parsers.GenerateOptions) -> None:
    """What can be checked from the command line alone."""
    if o.sink < 0 or o.recent < 1:
        raise UserError(f"--sink {o.sink} --recent {o.recent}: streaming needs sink >= 0 and recent >= 1")
    if o.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens {o.max_new_tokens}: pass a positive count")
    if o.threads is not None and o.threads < 1:
        raise UserError(f"--threads {o.threads}: pass a positive count")
    if o.keep_full is not None and o.keep_fraction is not None:
        raise UserError("give --keep_full K or --keep_fraction F, not both")
    if any(k < 0 for k in o.keep_full or ()):
        raise UserError("--keep_full counts the top heads kept full; pass K >= 0 (random heads are mask's)")
    if any(not 0.0 <= f <= 1.0 for f in o.keep_fraction or ()):
        raise UserError("--keep_fraction is a share of the heads; pass values in 0..1")
    check_press(o.press, o.budget, o.press_args, o.phase)
    if o.press and (o.keep_full is not None or o.keep_fraction is not None):
        raise UserError("give --press NAME or --keep_full / --keep_fraction (streamed heads), not both")
    if o.phase == "context" and o.question is None:
        raise UserError("--phase context compresses the prompt as the context and appends the question whole: "
                        "pass --question TEXT")
    check_chat_template(o.chat_template)


def keep_sets(o: parsers.GenerateOptions, shape, name: str) -> list[tuple[str, object]]:
    """``[(label, bool keep set)]``, one per value asked: ``[layers, heads]`` per query head,
    ``[layers, kv_heads]`` per KV head (``--unit``, else the head file's own); every KV head
    full when no value is given."""
    import torch

    from ..headfiles.load import load_ranking
    from ..headfiles.ranking import select_top

    asked = o.keep_full if o.keep_full is not None else o.keep_fraction
    if asked is None:
        return [("every head full", torch.ones(shape.num_layers, shape.num_kv_heads, dtype=torch.bool))]
    unit = o.unit or "query"
    scores = None
    if any(asked):
        default = Path("head_score") / (f"{name}.kv_max.json" if o.unit == "kv" else f"{name}.json")
        scores, unit = load_ranking(Path(o.head_score or default), shape, o.unit)
    units = shape.num_layers * (shape.num_kv_heads if unit == "kv" else shape.num_heads)
    noun = "KV heads" if unit == "kv" else "query heads"
    out = []
    for v in asked:
        k = v if o.keep_full is not None else round(v * units)
        if k > units:
            raise UserError(f"--keep_full {k}: the model has {units} {noun}")
        grid = (shape.num_layers, units // shape.num_layers)
        keep = select_top(scores, k, "--keep_full") if k else torch.zeros(grid, dtype=torch.bool)
        out.append((f"top {k} of {units} {noun} full", keep))
    return out


def check_fits(o: parsers.GenerateOptions, shape, prompt_len: int) -> None:
    """The prompt and its answer within the model's positions; something left to stream."""
    n = shape.max_positions
    if n and prompt_len + o.max_new_tokens > n:
        raise UserError(f"the prompt is {prompt_len} tokens; with --max_new_tokens {o.max_new_tokens} that passes "
                        f"the model's {n} positions: shorten the prompt or lower --max_new_tokens")
    streams = o.keep_full is not None or o.keep_fraction is not None
    if n and streams and o.sink + o.recent >= n:
        raise UserError(f"--sink {o.sink} + --recent {o.recent} cover the model's {n} positions: no key would ever "
                        "be streamed; pass smaller values")


def memory_line(cache, shape, itemsize: int) -> str:
    import torch

    from ..core.keep import cache_bytes

    length = cache.get_seq_length()
    full = cache_bytes(shape, None, 1, length, itemsize)
    kept = cache.nbytes()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    cuda = f", CUDA peak {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB" if torch.cuda.is_available() else ""
    return (f"memory: KV cache {kept / 2**20:.2f} MiB held of {full / 2**20:.2f} MiB full "
            f"({kept / full:.1%}) at {length} tokens, {int(cache.keep.sum())}/{cache.keep.numel()} KV heads full; "
            f"peak RSS {peak:.0f} MiB{cuda}")


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = parser(prog).parse_args(argv)
    o, spec = from_args(parsers.GenerateOptions, args), from_args(ModelSpec, args)
    setup_logging(o.verbose)
    check_args(o)
    text = read_prompt(args.prompt_file)
    from ..inputs.prompt import user_prompt, uses_chat_template
    from ..models.loading import model_name

    opened = open_checked(spec, 1)
    shape, tok = opened.shape, opened.tokenizer
    name = model_name(spec.model_path)
    keeps = press_masks(o, shape, name) if o.press else keep_sets(o, shape, name)
    ids, context = user_prompt(tok, text, o.question, uses_chat_template(tok, o.chat_template))
    check_fits(o, shape, len(ids))
    apply_threads(o.threads)
    model, _ = load_checked(opened)
    for label, keep in keeps:
        if len(keeps) > 1:
            print(f"== {label} ==")
        (answer_pressed if o.press else answer)(model, tok, shape, keep, ids, context, o)
    return 0


def press_masks(o: parsers.GenerateOptions, shape, name: str) -> list[tuple[str, object]]:
    """``[(label, PressMask)]``, one per ``--budget``; duo and headkv rank heads by ``--head_score``
    per KV head (none: ``head_score/<model>.kv_max.json``)."""
    from ..experiments.press import kv_scores, press_conditions
    from ..vocabulary import RANKED_PRESSES

    scores = None
    if o.press in RANKED_PRESSES:
        path = Path(o.head_score or Path("head_score") / f"{name}.kv_max.json")
        if o.head_score is None and not path.exists():
            raise UserError(f"--press {o.press} ranks heads by a head file: pass --head_score FILE (there is no "
                            f"{path})")
        scores = kv_scores(path, shape)
    conditions = press_conditions(name, o.press, o.budget, shape, scores, o.press_args, o.phase)
    return [(c.label(), c.mask) for c in conditions]


def answer_pressed(model, tok, shape, mask, ids: list[int], context: int, o: parsers.GenerateOptions) -> None:
    """Generate greedily on the press's real cache (``core.pressed.PressedCache``: each KV head
    keeps its own keys, the rest freed), printing the answer as it comes, then the memory line:
    the bytes the cache holds (measured) against a full cache of the same length."""
    import torch
    from transformers import TextStreamer

    from ..core.headwise_attend import generate
    from ..core.keep import cache_bytes
    from ..core.pressed import PressedCache

    at = context if o.phase == "context" else len(ids)
    cache = PressedCache(shape, mask.planned(at), mask.budget, o.phase, context if o.phase == "context" else None,
                         reserve=o.max_new_tokens)
    x = torch.tensor([ids], device=next(model.parameters()).device)
    with torch.no_grad():
        generate(model, cache, input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=o.max_new_tokens,
                 do_sample=False, streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True),
                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    length, itemsize = cache.get_seq_length(), next(model.parameters()).element_size()
    held, full = cache.nbytes(), cache_bytes(shape, None, 1, length, itemsize)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"memory: KV cache {held / 2**20:.2f} MiB held of {full / 2**20:.2f} MiB full ({held / full:.1%}) at "
          f"{length} tokens: {mask.press.name} at a budget of {mask.budget:.0%} of the {at} tokens before its "
          f"compression point, every later token whole; peak RSS {peak:.0f} MiB")


def answer(model, tok, shape, keep, ids: list[int], context: int, o: parsers.GenerateOptions) -> None:
    """Generate greedily under one keep set, printing the answer as it comes, then the memory line."""
    import torch
    from transformers import TextStreamer

    from ..core.headwise import HeadwiseCache
    from ..core.headwise_attend import generate

    cache = HeadwiseCache(shape, keep, o.sink, o.recent, o.phase, context if o.phase == "context" else None)
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    with torch.no_grad():
        generate(model, cache, input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=o.max_new_tokens,
                 do_sample=False, streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True),
                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    print(memory_line(cache, shape, next(model.parameters()).element_size()))


def cli(argv: list[str] | None = None, prog: str = PROG) -> int:
    return run_cli(partial(main, prog=prog), argv, resumable=False)


if __name__ == "__main__":
    sys.exit(cli())
