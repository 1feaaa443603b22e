"""KV-cache presses: which keys each KV head keeps once the context is in the cache.

One file per press, each a dataclass that keeps ``core.seen.Press``'s contract (``name``,
``window``, ``layer_shares``, ``keep``) and says in its docstring which kvpress press it follows
and where it differs: ``streaming_llm``, ``duo``, ``snapkv``, ``knorm``, ``pyramidkv``,
``adakv``, ``headkv``; ``choose``: what they share (the budget check, splitting a row's keys over
heads, choosing keys by score or by place); ``registry``: name -> press, ``make_press`` for the
command line. ``docs/presses.md`` compares them (and says why there is no expected-attention press).
"""
