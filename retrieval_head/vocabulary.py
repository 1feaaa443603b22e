"""One vocabulary for every command: each concept has one flag, one meaning, one unit.

The table below is the source of ``docs/cli.md``'s vocabulary table and of every parser's
spelling of these concepts (``options.option(term=...)``, ``options.add_term``). An old
spelling (``aliases``) still parses to the same value, hidden from ``--help``; using it
prints one line naming the new flag.

    >>> TERMS["phase"].flag, TERMS["phase"].aliases
    ('--phase', ('--mask_phase',))
    >>> alias_of("--mask_topk")
    'mask_top'

The choice lists that several layers need (phases, units, mask modes) live here too, the
lowest layer, so a parser can be built without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("decode", "all", "context")  # decode: kvpress press; all: DuoAttention; context: kvpress pipeline
MASK_PHASES = ("decode", "all")  # a masked (not streamed) head: decode steps only, or the prefill too
UNITS = ("query", "kv")
MASK_MODES = ("uniform", "zero")  # the ablations (--mask_mode)
SCORE_MODES = ("count", "set")
CACHE_CHOICES = ("auto", "real", "masked")
CHAT_TEMPLATE = ("auto", "on", "off", "none")  # or a path to a Jinja template file; none = off
MAX_DRAWS = 100_000  # the commands' cap on --draws: intervals settle long before; more only costs memory
MAX_ORDERS = 100_000  # random trial orders of the convergence curve (a Python loop each)
SIDE_BY_SIDE = "results/graph/side_by_side.png"  # `plot`'s figure of several folders
DUO_SINK, DUO_RECENT = 64, 256  # DuoAttention's defaults (its config.json sink_size / recent_size)
# the presses (presses.registry.PRESSES, which imports torch: its names are listed here for the parsers)
PRESSES = ("streaming_llm", "snapkv", "pyramidkv", "adakv", "knorm", "duo", "headkv")
RANKED_PRESSES = ("duo", "headkv")  # the presses that rank heads by a head file (--head_score)


@dataclass(frozen=True)
class Term:
    """One concept: its flag (``--name``), meaning, unit, and old spellings still parsed."""

    name: str
    concept: str
    meaning: str
    unit: str
    aliases: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """The flag as ``--help`` shows it: a setting that is on by default is turned off by
        ``--no_<name>`` (its old ``--<name> on|off`` still parses)."""
        return f"--no_{self.name}" if self.unit == "on by default" else f"--{self.name}"


_TERMS = [
    Term("head_score", "head file", "a head-score file of any accepted format (several where a command compares "
         "them); none: head_score/<model>.json", "path", ("--head_scores",)),
    Term("unit", "unit", "what a head count or a file's column counts: query heads or KV heads (GQA groups); "
         "none: the head file's own (a <model>.kv_max.json, duo and razor files are per KV head)", "query | kv",
         ("--mask_unit",)),
    Term("phase", "phase", "when heads are masked or streamed: decode (after the prompt's prefill; a kvpress "
         "press), all (from the first token; DuoAttention), context (the context compressed, the question "
         "appended whole; kvpress's pipeline)", "decode | all | context", ("--mask_phase",)),
    Term("mask_top", "heads masked", "K>0: the top-K heads masked; K<0: |K| random heads; 0: none "
         "(several values: one condition each)", "heads (--unit)", ("--mask_topk", "--k")),
    Term("keep_full", "heads kept full", "K>0: the top-K heads keep their whole KV cache, every other head "
         "only --sink + --recent keys; K<0: |K| random heads; 0: every head streamed", "heads (--unit)"),
    Term("keep_fraction", "share kept full", "as --keep_full, as a share of all heads (rounded); "
         "F<0: random heads", "fraction of heads (--unit)"),
    Term("sink", "sink", "the first keys every streamed head keeps (attention sinks)", "tokens"),
    Term("recent", "recent", "the last keys every streamed head keeps (the query included)", "tokens"),
    Term("top", "top K", "the K highest-scoring heads (rows printed, heads compared or kept)", "heads"),
    Term("output_dir", "output folder", "the folder a command writes its files into", "path"),
    Term("out", "output file", "the one file a command writes (overrides its name in --output_dir)", "path"),
    Term("seed", "seed", "the seed of the command's random draws (random heads, bootstrap resamples, "
         "trial orders); decoding is greedy", "integer"),
    Term("seeds", "seeds", "several seeds, one result (folder or row) each", "integers"),
    Term("question", "question", "the question asked after the context", "text"),
    Term("task", "task", "the retrieval task (single: one needle; the others RULER-style, docs/tasks.md)",
         "name"),
    Term("chat_template", "chat template", "auto: the tokenizer's when it has one; on; off (or none); or a "
         "Jinja template file", "auto | on | off | FILE"),
    Term("max_new_tokens", "answer length", "tokens generated at most (greedy)", "tokens"),
    Term("threads", "threads", "torch threads for this process (recorded: thread counts can change float bits)",
         "integer"),
    Term("press", "press", "a KV-cache press: which keys each KV head keeps once the prompt is in the cache "
         f"({', '.join(PRESSES)}; docs/presses.md; several where a command compares them)", "name"),
    Term("budget", "budget", "the share of the KV cache a press keeps, its bytes counted, in (0, 1] (several "
         "values: one condition each)", "fraction of the cache"),
    Term("press_args", "press parameters", "the press's parameters as key=value, its dataclass fields "
         "(docs/presses.md), e.g. window=32 or press=knorm for adakv", "key=value"),
    Term("prefix_reuse", "prefix reuse", "run prompts in insertion order, prefilling only what follows the "
         "prefix they share", "on by default"),
]
TERMS = {t.name: t for t in _TERMS}
ALIASES = {a: t.name for t in _TERMS for a in t.aliases}


def alias_of(flag: str) -> str | None:
    """The term an old spelling stands for (None for a current flag)."""
    return ALIASES.get(flag)
