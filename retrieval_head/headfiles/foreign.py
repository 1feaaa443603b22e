"""Head files in: the formats other tools read and write head lists in, told apart by
content, read into one typed result (``HeadFile``) and fitted to a model, converted between
query heads and KV heads. Holds ``detect_format``, ``read_head_file_any`` and the
per-format readers, ``to_query`` / ``to_kv`` and ``fit``; writing them back out
(``python -m retrieval_head.heads export``) is ``export``; ``load.load_head_scores`` reads
a head file and fits it in one call.

==========  =====================================================  ======  ========================
format      content                                                unit    scores
==========  =====================================================  ======  ========================
original    ``{"<layer>-<head>": [score per trial]}``, one line     query   mean over trials
duo         DuoAttention's pattern folder: ``full_attention_       kv      as given, in [0, 1]
            heads.tsv`` (a row per layer, a tab-separated value           (1 = full attention, a
            per KV head) + ``config.json`` (``sink_size``,                retrieval head; 0 =
            ``recent_size``); the folder or the TSV itself                streaming)
razor       RazorAttention's ``{"<layer>": [KV head ids kept]}``    kv      keep-set: 1 listed, 0 not
qrhead      QRHead's ranked ``[["<layer>-<head>", score], ...]``   query   as given; unlisted: 0
layers      ``{"layer_<i>": [head ids kept]}`` (SparseMM users)    query   keep-set: 1 listed, 0 not
==========  =====================================================  ======  ========================

Detection (``detect_format``): a folder is a DuoAttention pattern folder; a file whose text
starts with ``{`` or ``[`` is JSON: an array is QRHead's list, an object is told by its keys
(all ``layer-head``: original; all digits: razor; all ``layer_<i>``: layers; keys of two
kinds, or ``{}`` / ``[]``, are refused as ambiguous); any other file whose first line holds
tab-separated numbers (or is named ``*.tsv``) is DuoAttention's TSV. Each format is then
checked whole; a defect is a ``UserError`` naming the file, the place and the fix.

A file's own grid: the original, duo and a complete QRHead list (every head of a
``layers x heads`` grid, as QRHead writes them) state the model's shape, which must then
match exactly. The keep-sets (razor, layers) and a partial QRHead list name only some heads
(RazorAttention drops layers that keep none), so they fit any model whose shape holds every
id they name; without a model, their grid is the highest ids named.

Units (the project's ``kv_max`` convention): a KV-unit file read per query head gives each
query head its KV head's score (``repeat_interleave(group)``); a query-unit file read per
KV head takes the max over each KV head's group.

Worked example: a 2-layer model with 4 query heads and 2 KV heads (group 2); RazorAttention
kept KV head 1 of layer 0 and nothing in layer 1::

    >>> import tempfile
    >>> from retrieval_head.models.shape import ModelShape
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "razor.json").write_text('{"0": [1], "1": []}')
    >>> hf = read_head_file_any(d / "razor.json")
    >>> hf.format, hf.unit, hf.scores.tolist()
    ('razor', 'kv', [[0.0, 1.0], [0.0, 0.0]])
    >>> shape = ModelShape(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, max_positions=None,
    ...                    windows=(None, None))
    >>> fit(hf, "query", shape.num_layers, shape.num_heads, shape.num_kv_heads).tolist()
    [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    >>> to_kv(torch.tensor([[0.1, 0.5, 0.2, 0.0], [0.0, 0.0, 0.3, 0.9]], dtype=torch.float64), 2).tolist()
    [[0.5, 0.2], [0.0, 0.9]]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..vocabulary import UNITS  # noqa: E402
from .original import FORMAT, mean_grid, validate_head_scores
from .validate import HEAD_KEY, REGENERATE, DuplicateKey, describe, finite_number, no_duplicate_keys

KEEP_SETS = ("razor", "layers")
TSV_NAME, CONFIG_NAME = "full_attention_heads.tsv", "config.json"
# DuoAttention's own defaults (duo_attn/utils.py: --sink_size 64, --recent_size 256); its
# published patterns were trained with sink_size 128.
from ..vocabulary import DUO_RECENT, DUO_SINK  # noqa: E402,F401 (re-exported)

# DuoAttention's trained gates stray just outside [0, 1] (e.g. -1.4e-3 in its published
# Llama-2-7B-32K pattern) and its loader clips them; further out is not a gate.
DUO_SLACK = 0.01

FORMATS = {  # format: (its content, as the messages spell it; its unit)
    "original": (FORMAT, "query"),
    "duo": (f"DuoAttention's {TSV_NAME} (a row per layer, a tab-separated value in [0, 1] per KV head) "
            f"+ {CONFIG_NAME}", "kv"),
    "razor": ('RazorAttention\'s {"layer": [KV head ids]}', "kv"),
    "qrhead": ('QRHead\'s [["layer-head", score], ...]', "query"),
    "layers": ('{"layer_<i>": [head ids]}', "query"),
}
OTHERS = ("a DuoAttention pattern folder, RazorAttention's {\"layer\": [KV heads]}, QRHead's "
          "[[\"layer-head\", score], ...] or {\"layer_<i>\": [heads]}")
ACCEPTED = f"{FORMAT}, {OTHERS}"
NOT_JSON = "is not one line of JSON; expected " + FORMAT + " (or " + OTHERS + ")"
_DIGITS = re.compile(r"[0-9]+")
_LAYER_KEY = re.compile(r"layer_([0-9]+)")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_KEY_KINDS = (("original", HEAD_KEY, "'0-1'"), ("razor", _DIGITS, "'0'"), ("layers", _LAYER_KEY, "'layer_0'"))


@dataclass(frozen=True, eq=False)
class HeadFile:
    """One head file, read and checked.

    scores:   float64 ``[layers, units]``: the file's own grid (see the module docstring).
    unit:     "query" or "kv": what a column is.
    format:   one of ``FORMATS``.
    extra:    what else the file says: duo ``sink_size``/``recent_size``; original ``trials``.
    complete: the file states its model's grid (original, duo, a full QRHead list); False for
              files that name only some heads (razor, layers, a partial QRHead list).
    path:     the path as given.
    """

    scores: torch.Tensor
    unit: str
    format: str
    extra: dict = field(default_factory=dict)
    complete: bool = True
    path: Path = Path("<data>")

    @property
    def keep_set(self) -> bool:
        """Its scores are 1 for the heads it keeps and 0 for the rest."""
        return self.format in KEEP_SETS

    @property
    def where(self) -> str:
        return f"head_score file {self.path}"


def unit_noun(unit: str, n: int = 2) -> str:
    """What a column of a grid in ``unit`` is called, plural unless ``n`` is 1.

    >>> unit_noun("kv"), unit_noun("query", 1)
    ('KV heads', 'head')
    """
    return ("KV head" if unit == "kv" else "head") + ("s" if n != 1 else "")


# ---------------------------------------------------------------- reading


def _read_text(path: Path, shown: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read head_score file {shown}: {e.strerror or e}; check its permissions") from None
    except UnicodeDecodeError:
        raise UserError(f"head_score file {shown} {NOT_JSON.replace('JSON;', 'JSON (not UTF-8 text);', 1)}"
                        ) from None


def _first_line(text: str) -> str:
    return next((ln for ln in text.splitlines() if ln.strip()), "")


def _sniff(text: str, path: Path) -> str:
    """"json", "duo" (a TSV) or "unknown", from the text (the name only for ``*.tsv``)."""
    head = text.lstrip()
    if head and head[0] in "{[":
        return "json"
    first = _first_line(text)
    if path.suffix == ".tsv" or "\t" in first or (first and all(_NUMBER.fullmatch(f.strip())
                                                               for f in first.split("\t"))):
        return "duo"
    return "unknown"


def _tsv_of(path: Path) -> Path:
    """The TSV of a DuoAttention folder or path, checked to exist."""
    if path.is_dir():
        tsv = path / TSV_NAME
        if not tsv.is_file():
            raise UserError(f"head_score path {path} is a folder, not a file, and holds no {TSV_NAME} (a DuoAttention "
                            f"pattern folder); pass --head_score FILE (a head_score/*.json) or a pattern folder")
        return tsv
    if not path.is_file():
        raise UserError(f"head_score file {path} does not exist; run retrieval_head_detection.py first or pass "
                        "--head_score")
    return path


def _parse_json(text: str, path: Path):
    """The original's one line of JSON, else the whole text (the other tools indent theirs);
    an object key written twice is an error (``json.loads`` keeps the last silently)."""
    lines = text.splitlines()
    for attempt in (lines[0] if lines else "", text):
        try:
            return json.loads(attempt, object_pairs_hook=no_duplicate_keys)
        except json.JSONDecodeError:
            continue
        except DuplicateKey as e:
            raise UserError(f"head_score file {path} names key {e.args[0]!r} twice; a merged or hand-edited file? "
                            f"{REGENERATE}") from None
    raise UserError(f"head_score file {path} {NOT_JSON}")


def _json_format(data, path: Path) -> str:
    """Which JSON format ``data`` is, from its type and keys; ambiguous data is refused."""
    where = f"head_score file {path}"
    if isinstance(data, list):
        if not data:
            raise UserError(f"{where} holds no heads ([] is empty: no format and no head can be told from it); "
                            f"expected {ACCEPTED}")
        return "qrhead"
    if not isinstance(data, dict):
        raise UserError(f"{where} holds no heads (it is {describe(data)}); expected {ACCEPTED}")
    if not data:
        raise UserError(f"{where} holds no heads ({{}} is empty: no format and no head can be told from it); "
                        f"expected {ACCEPTED}")
    kinds = {}
    for k in data:
        for kind, pattern, _ in _KEY_KINDS:
            if isinstance(k, str) and pattern.fullmatch(k):
                kinds.setdefault(kind, k)
    if len(kinds) > 1:
        (a, ka), (b, kb) = list(kinds.items())[:2]
        raise UserError(f"{where} mixes keys of two formats ({ka!r}: {FORMATS[a][0]}; {kb!r}: {FORMATS[b][0]}); "
                        "a merged or hand-edited file? pass a file of one format")
    return next(iter(kinds), "original")


def detect_format(path: Path | str) -> str:
    """The format of a head file or folder, from its content (see the module docstring).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "q.json").write_text('[["0-1", 0.5], ["0-0", 0.25]]')
    >>> _ = (d / "l.json").write_text('{"layer_0": [1]}')
    >>> detect_format(d / "q.json"), detect_format(d / "l.json")
    ('qrhead', 'layers')
    """
    path = Path(path)
    tsv = _tsv_of(path)
    if tsv != path:
        return "duo"
    text = _read_text(path, path)
    kind = _sniff(text, path)
    if kind == "json":
        return _json_format(_parse_json(text, path), path)
    if kind == "duo":
        return "duo"
    raise UserError(f"head_score file {path} {NOT_JSON}")


def read_head_file_any(path: Path | str, file_unit: str | None = None,
                       grid: tuple[int, int] | None = None) -> HeadFile:
    """Read and check a head file of any accepted format (detected by content).

    ``file_unit`` says what the original format's columns are where the caller knows
    better than the format (``<model>.kv_max.json`` is per KV head); the other formats fix
    their unit, and a different ``file_unit`` is refused. ``grid`` (the model's
    ``[layers, units]``) is checked first for the original format, before its values, as
    ``validate_head_scores`` does; for the others see ``fit``.
    """
    path = Path(path)
    if file_unit is not None and file_unit not in UNITS:
        raise ValueError(f"file_unit must be one of {UNITS}, got {file_unit!r}")
    tsv = _tsv_of(path)
    if tsv != path:
        hf = _read_duo(tsv, path)
    else:
        text = _read_text(path, path)
        kind = _sniff(text, path)
        if kind == "duo":
            hf = _read_duo(path, path)
        elif kind == "unknown":
            raise UserError(f"head_score file {path} {NOT_JSON}")
        else:
            data = _parse_json(text, path)
            fmt = _json_format(data, path)
            if fmt == "original":
                hf = _read_original(data, path, file_unit or "query", grid)
            elif fmt == "qrhead":
                hf = _read_qrhead(data, path)
            else:
                hf = _read_keep_lists(data, path, fmt)
    if file_unit is not None and file_unit != hf.unit:
        raise UserError(f"{hf.where} is {FORMATS[hf.format][0]}, per {unit_noun(hf.unit, 1)} by its format; "
                        f"--unit {file_unit} contradicts it (--unit is for the original format only)")
    return hf


def _read_original(data: dict, path: Path, unit: str, grid) -> HeadFile:
    keys = validate_head_scores(data, path, grid)
    out = torch.tensor(mean_grid(keys, path), dtype=torch.float64)
    return HeadFile(out, unit, "original", {"trials": len(next(iter(keys.values())))}, True, path)


def _read_qrhead(data: list, path: Path) -> HeadFile:
    where, fmt = f"head_score file {path}", FORMATS["qrhead"][0]
    seen: dict[tuple[int, int], int] = {}
    scores: dict[tuple[int, int], float] = {}
    for i, e in enumerate(data):
        if not isinstance(e, list) or len(e) != 2:
            what = f"a list of {len(e)}" if isinstance(e, list) else describe(e)
            raise UserError(f"{where}: entry {i} is {what}, not a [\"layer-head\", score] pair; expected {fmt}")
        k, s = e
        m = HEAD_KEY.fullmatch(k) if isinstance(k, str) else None
        if m is None:
            raise UserError(f"{where}: entry {i} names {describe(k)}, not 'layer-head' (two non-negative integers, "
                            f"e.g. '0-3'); expected {fmt}")
        lh = (int(m[1]), int(m[2]))
        if lh in seen:
            raise UserError(f"{where} names head {lh[0]}-{lh[1]} twice (entries {seen[lh]} and {i}); a merged or "
                            "hand-edited file? pass the list QRHead wrote")
        if not finite_number(s):
            raise UserError(f"{where}: entry {i} ({k}) scores {describe(s)}; every score must be a finite number")
        seen[lh], scores[lh] = i, float(s)
    layers, heads = (1 + max(x) for x in zip(*scores))
    out = torch.zeros(layers, heads, dtype=torch.float64)
    for (l, h), s in scores.items():
        out[l, h] = s
    return HeadFile(out, "query", "qrhead", {}, len(scores) == layers * heads, path)


def _read_keep_lists(data: dict, path: Path, fmt: str) -> HeadFile:
    """razor ``{"<layer>": [KV heads]}`` or layers ``{"layer_<i>": [heads]}``: a keep-set."""
    where, spelled, unit = f"head_score file {path}", FORMATS[fmt][0], FORMATS[fmt][1]
    pattern, key_is = (_DIGITS, "a layer number") if fmt == "razor" else (_LAYER_KEY, "'layer_<i>'")
    noun = unit_noun(unit, 1)
    kept: dict[int, list[int]] = {}
    named: dict[int, str] = {}
    for k, v in data.items():
        m = pattern.fullmatch(k)
        if m is None:
            raise UserError(f"{where}: key {k!r} is not {key_is}; expected {spelled}")
        layer = int(m[1] if fmt == "layers" else m[0])
        if layer in kept:
            raise UserError(f"{where} names layer {layer} twice ({named[layer]!r} and {k!r}); a merged or "
                            "hand-edited file? pass one list per layer")
        if not isinstance(v, list):
            raise UserError(f"{where}: layer {k!r} is {describe(v)}, not a list of {noun} ids; expected {spelled}")
        for x in v:
            if type(x) is not int or x < 0:  # bool is an int subclass; 1.0 is not an id
                raise UserError(f"{where}: layer {k!r} lists {describe(x)}, not a {noun} id (a non-negative "
                                f"integer); expected {spelled}")
        dup = next((x for i, x in enumerate(v) if x in v[:i]), None)
        if dup is not None:
            raise UserError(f"{where}: layer {k!r} lists {noun} {dup} twice; a merged or hand-edited file? "
                            "list each kept head once")
        kept[layer], named[layer] = v, k
    ids = [x for v in kept.values() for x in v]
    if not ids:
        raise UserError(f"{where} keeps no heads at all (every layer's list is empty): there is nothing to rank; "
                        "pass a file that keeps some")
    out = torch.zeros(1 + max(kept), 1 + max(ids), dtype=torch.float64)
    for layer, v in kept.items():
        out[layer, v] = 1.0
    return HeadFile(out, unit, fmt, {}, False, path)


def _read_duo(tsv: Path, shown: Path) -> HeadFile:
    where = f"head_score file {shown}"
    text = _read_text(tsv, shown)
    rows: list[list[float]] = []
    first_line = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue  # numpy.loadtxt skips blank lines too
        fields = line.split("\t")
        if first_line is None:
            first_line = n
        elif len(fields) != len(rows[0]):
            raise UserError(f"{where}: line {n} has {len(fields)} value{'s' * (len(fields) != 1)}, line {first_line} "
                            f"has {len(rows[0])} "
                            f"(a ragged {TSV_NAME}); every layer needs one value per KV head")
        row = []
        for c, f in enumerate(fields, 1):
            if not _NUMBER.fullmatch(f.strip()):
                raise UserError(f"{where}: line {n}, column {c} is {f.strip()[:30]!r}, not a number; expected "
                                f"{FORMATS['duo'][0]}")
            x = float(f)
            if not -DUO_SLACK <= x <= 1 + DUO_SLACK:
                raise UserError(f"{where}: line {n}, column {c} holds {f.strip()}, outside [0, 1]; DuoAttention's "
                                "values are full-attention gates (1 = full attention, 0 = streaming)")
            row.append(min(1.0, max(0.0, x)))  # clipped, as DuoAttention's loader does
        rows.append(row)
    if not rows:
        raise UserError(f"head_score file {shown} holds no heads ({TSV_NAME} is empty); expected {FORMATS['duo'][0]}")
    extra = _read_duo_config(tsv, where)
    return HeadFile(torch.tensor(rows, dtype=torch.float64), "kv", "duo", extra, True, shown)


def _read_duo_config(tsv: Path, where: str) -> dict:
    """``sink_size`` and ``recent_size`` from the ``config.json`` beside ``tsv``, checked."""
    config = tsv.parent / CONFIG_NAME
    cfg_where = f"{CONFIG_NAME} beside {tsv}"
    if not config.is_file():
        raise UserError(f"{where} has no {cfg_where} (DuoAttention's loader reads sink_size and recent_size from "
                        "it); pass the whole pattern folder")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{cfg_where} is not JSON; DuoAttention's pattern folder holds a {CONFIG_NAME} with "
                        "sink_size and recent_size") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_where} is {describe(cfg)}, not an object with sink_size and recent_size")
    extra = {}
    for key in ("sink_size", "recent_size"):
        if key not in cfg:
            raise UserError(f"{cfg_where} has no {key}; DuoAttention's loader needs sink_size and recent_size "
                            "(tokens a streaming head keeps at the start and at the end)")
        v = cfg[key]
        if type(v) is not int or v < 0:
            raise UserError(f"{cfg_where}: {key} is {describe(v)}, not a number of tokens (a non-negative integer)")
        extra[key] = v
    return extra


# ---------------------------------------------------------------- units and shapes


def to_query(scores: torch.Tensor, group: int) -> torch.Tensor:
    """Per-KV-head scores ``[layers, kv_heads]`` per query head: each query head gets its KV
    head's score.

    >>> to_query(torch.tensor([[0.5, 1.0]]), 2).tolist()
    [[0.5, 0.5, 1.0, 1.0]]
    """
    return scores.repeat_interleave(group, dim=1)


def to_kv(scores: torch.Tensor, group: int) -> torch.Tensor:
    """Per-query-head scores ``[layers, heads]`` per KV head: the max over each group (the
    ``kv_max`` convention)."""
    layers, heads = scores.shape
    return scores.reshape(layers, heads // group, group).amax(-1)


MODEL_HINT = "pass the model's ModelShape as shape, or convert the file with python -m retrieval_head.heads export"


def fit(hf: HeadFile, unit: str = "query", layers: int | None = None, heads: int | None = None,
        kv_heads: int | None = None, hint: str = MODEL_HINT) -> torch.Tensor:
    """``hf``'s scores as a float64 ``[layers, units]`` grid in ``unit``, for a model of which
    ``layers``, ``heads`` (query) and ``kv_heads`` are known where not None.

    A file that states its grid must match the model; one that names only some heads must
    fit in it (and is padded with zeros to it). A conversion needs the group (query heads per
    KV head): from the model's counts, or from the file where it states its own count;
    ``hint`` says how to supply a count that is missing.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    s, where = hf.scores, hf.where
    file_layers, file_units = s.shape
    model_units = heads if hf.unit == "query" else kv_heads  # the model's count in the file's unit
    if model_units is None and hf.complete:
        model_units = file_units
    noun = unit_noun(hf.unit)
    if hf.complete:
        if (layers is not None and file_layers != layers) or file_units != model_units:
            raise UserError(f"{where} is for {file_layers} layers x {file_units} {noun}, the model has "
                            f"{layers if layers is not None else file_layers} layers x {model_units} {noun}; "
                            "pass the file made for this model")
    else:
        if layers is not None and file_layers > layers:
            raise UserError(f"{where} names layer {file_layers - 1}, the model has {layers} layers; pass the file "
                            "made for this model")
        if model_units is not None and file_units > model_units:
            raise UserError(f"{where} names {unit_noun(hf.unit, 1)} {file_units - 1}, the model has {model_units} "
                            f"{noun} per layer; pass the file made for this model")
        pad_l = (layers if layers is not None else file_layers) - file_layers
        pad_u = (model_units if model_units is not None else file_units) - file_units
        s = torch.nn.functional.pad(s, (0, pad_u, 0, pad_l))
    if unit == hf.unit:
        return s
    return _convert(hf, s, unit, model_units, heads, kv_heads, hint)


def _convert(hf: HeadFile, s: torch.Tensor, unit: str, model_units: int | None, heads: int | None,
             kv_heads: int | None, hint: str) -> torch.Tensor:
    """``fit``'s last step: ``s`` (``hf``'s grid, fitted) from ``hf.unit`` to the other unit."""
    where = hf.where
    if model_units is None:
        raise UserError(f"{where} is per {unit_noun(hf.unit, 1)} and names only some, so how many the model has per "
                        f"layer is unknown and it cannot be read per {unit_noun(unit, 1)}; {hint}")
    if hf.unit == "kv":
        if heads is None:
            raise UserError(f"{where} is per KV head; reading it per query head needs the model's number of query "
                            f"heads; {hint}")
        if heads % model_units:
            raise UserError(f"{where} has {model_units} KV heads per layer, which does not divide the model's "
                            f"{heads} query heads; pass the file made for this model")
        return to_query(s, heads // model_units)
    if kv_heads is None:
        raise UserError(f"{where} is per query head; reading it per KV head needs the model's number of KV heads; "
                        f"{hint}")
    if kv_heads < 1 or model_units % kv_heads:
        raise UserError(f"{where} has {model_units} query heads per layer, which {kv_heads} KV heads do not divide; "
                        "pass the number of KV heads of the model the file was made for")
    return to_kv(s, model_units // kv_heads)
