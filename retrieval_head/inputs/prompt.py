"""Prompts built in token space: exact lengths, needle at a sentence end, no re-encoding.

What "context length" counts: the number of tokens of the **whole prompt** fed to the
model (special tokens, chat template, haystack, needle, question and "Answer:"), so
``len(prompt.ids) == context_length`` always. The haystack is trimmed to fill exactly
what the template and the needle leave.

Depth: the needle goes right after the last sentence end at or before ``depth%`` of the
trimmed haystack (position 0 when there is none). A sentence end is a token whose text
ends in ``.``, ``!`` or ``?`` and whose next token starts with whitespace, so "3.5" is
no sentence end. The needle is tokenized with its leading space and spliced in as ids.

Worked example (tokens shown as words)::

    haystack  = [It, is, late, ., We, left, ., Then]      depth 50% of 8 -> index 4
    last sentence end at or before 4 -> after "." (index 3) -> insert at 4
    prompt    = prefix + [It, is, late, .] + needle + [We, left, ., Then] + suffix
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .haystack import Needle

CONTEXT_SENTINEL = "\u2063RH_CONTEXT\u2063"  # invisible separator: never in real text
PLAIN_TEMPLATE = "<book>{context}</book>\nBased on the content of the book, Question: {question}\nAnswer:"
SENTENCE_PUNCT = (".", "!", "?")


@dataclass(frozen=True)
class Prompt:
    """One trial's prompt: ``ids`` of length ``context_length``, answer span [s, e)."""

    ids: list[int]
    needle_span: tuple[int, int]
    insert_at: int  # index into the trimmed haystack where the needle went
    haystack_tokens: int
    question_span: tuple[int, int] | None = None  # the question's tokens [s, e) (None: no offsets)
    context_end: int | None = None  # where the template's part after the context starts (the question's part)


def uses_chat_template(tokenizer, mode: str) -> bool:
    """Resolve ``--chat_template auto|on|off|none|FILE`` (none = off; a FILE's Jinja template
    becomes the tokenizer's)."""
    if mode not in ("auto", "on", "off", "none"):
        try:
            tokenizer.chat_template = Path(mode).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--chat_template {mode}: cannot read it ({e}); pass a UTF-8 Jinja template file") from None
        return True
    has = getattr(tokenizer, "chat_template", None) is not None
    if mode == "on" and not has:
        raise UserError("--chat_template on, but the tokenizer has no chat template; use auto or off")
    return has if mode == "auto" else mode == "on"


def user_prompt(tokenizer, text: str, question: str | None, chat: bool) -> tuple[list[int], int]:
    """Token ids of a user's ``text`` followed by ``question`` (on a line of its own), through
    the chat template as one user message when ``chat`` (the assistant's turn opened, as
    ``apply_chat_template(..., add_generation_prompt=True)`` gives), else plain (with the BOS
    the tokenizer adds by itself); and the context's length: the ids before the question
    (all of them without one)."""
    content = text if question is None else f"{text}{CONTEXT_SENTINEL}\n{question}"
    if chat:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                 add_generation_prompt=True)
        bos = []
    else:
        rendered, bos = content, _bos(tokenizer)
    before, _, after = rendered.partition(CONTEXT_SENTINEL)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
    context = bos + enc(before)
    if question is None:
        return context, len(context)
    return context + enc(after), len(context)


def _bos(tokenizer) -> list[int]:
    """[bos] when the tokenizer prepends one by itself (plain prompts keep that habit)."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and probe and probe[0] == bos else []


class PromptBuilder:
    """Builds trial prompts over one haystack for one tokenizer."""

    def __init__(self, tokenizer, haystack_text: str, chat_template: bool):
        self.tok = tokenizer
        self.chat = chat_template
        self.haystack = np.asarray(tokenizer(haystack_text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        self._sentence_end = self._find_sentence_ends(self.haystack)

    def _find_sentence_ends(self, ids: np.ndarray) -> np.ndarray:
        """bool[n]: token i ends a sentence (punctuation, then whitespace or the end)."""
        uniq = np.unique(ids)
        texts = self.tok.batch_decode([[int(i)] for i in uniq])
        ends = np.zeros(int(uniq.max()) + 1, dtype=bool)
        starts_ws = np.zeros_like(ends)
        for i, t in zip(uniq, texts):
            ends[i] = t.endswith(SENTENCE_PUNCT)
            starts_ws[i] = t[:1].isspace()
        nxt = np.append(starts_ws[ids[1:]], True)
        return ends[ids] & nxt

    def template(self, question: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the context for this question."""
        before, after, _ = self._template(question)
        return before, after

    def layout(self, question: str) -> tuple[list[int], list[int], tuple[int, int] | None]:
        """``template``, and the question's token span within the ids after the context."""
        return self._template(question)

    def _template(self, question: str) -> tuple[list[int], list[int], tuple[int, int] | None]:
        """``template``, and the question's token span within the ids after the context."""
        if self.chat:
            content = PLAIN_TEMPLATE.format(context=CONTEXT_SENTINEL, question=question)
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
            before, after = text.split(CONTEXT_SENTINEL)
            bos = []
        else:
            before, after = PLAIN_TEMPLATE.format(context=CONTEXT_SENTINEL, question=question).split(CONTEXT_SENTINEL)
            bos = _bos(self.tok)
        enc = lambda s: self.tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        after_ids = enc(after)
        return bos + enc(before), after_ids, self._locate(after, after_ids, question)

    def _locate(self, text: str, ids: list[int], question: str) -> tuple[int, int] | None:
        """The tokens of ``ids`` (``text`` encoded) that overlap the question's characters;
        None where the tokenizer gives no offsets (or encodes differently with them)."""
        at = text.find(question.strip())
        if at < 0 or not question.strip():
            return None
        try:
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:
            return None
        if list(enc["input_ids"]) != list(ids):
            return None
        end = at + len(question.strip())
        inside = [i for i, (x, y) in enumerate(enc["offset_mapping"]) if y > x and x < end and y > at]
        return (inside[0], inside[-1] + 1) if inside else None

    def needle_tokens(self, needle: Needle) -> tuple[list[int], tuple[int, int]]:
        """The needle's ids (with leading space) and the answer's token span within them."""
        return self.sentence_tokens(needle.needle, needle.answer_span(), f"needle {needle.needle_id}")

    def sentence_tokens(self, sentence: str, answer: tuple[int, int], what: str = "needle"
                        ) -> tuple[list[int], tuple[int, int]]:
        """Ids of `` sentence`` (with its leading space) and the token span of its characters
        ``answer`` [a, b): every token overlapping them."""
        text = " " + sentence
        try:
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:
            raise UserError("the tokenizer gives no character offsets, so the needle cannot be located; "
                            "use a fast tokenizer") from None
        a, b = answer[0] + 1, answer[1] + 1  # the leading space
        inside = [i for i, (x, y) in enumerate(enc["offset_mapping"]) if y > x and x < b and y > a]
        if not inside:
            raise UserError(f"{what}: its answer cannot be located after tokenization")
        return list(enc["input_ids"]), (inside[0], inside[-1] + 1)

    def overhead(self, needle: Needle) -> int:
        """Tokens of a prompt that are not haystack: the shortest possible context length."""
        before, after = self.template(needle.question)
        return len(before) + len(after) + len(self.needle_tokens(needle)[0])

    def insertion_point(self, n: int, depth_percent: float) -> int:
        """Where in a haystack trimmed to n tokens the needle goes (see module doc)."""
        k = int(n * depth_percent / 100)
        ends = np.flatnonzero(self._sentence_end[:k])
        return int(ends[-1]) + 1 if len(ends) else 0

    def build(self, needle: Needle, context_length: int, depth_percent: float) -> Prompt:
        """The prompt of one trial, exactly ``context_length`` tokens long."""
        before, after, q = self._template(needle.question)
        nids, (a, b) = self.needle_tokens(needle)
        n = context_length - len(before) - len(after) - len(nids)
        if n < 0:
            raise UserError(
                f"context length {context_length} is below the prompt's fixed overhead "
                f"({context_length - n} tokens); raise --s"
            )
        if n > len(self.haystack):
            raise UserError(
                f"the haystack has {len(self.haystack)} tokens, too short for context length {context_length}; "
                "lower --e or pass a larger --haystack_dir"
            )
        at = self.insertion_point(n, depth_percent)
        ctx = self.haystack[:n].tolist()
        ids = before + ctx[:at] + nids + ctx[at:] + after
        s = len(before) + at + a
        q0 = len(ids) - len(after)
        question = (q0 + q[0], q0 + q[1]) if q is not None else None
        return Prompt(ids=ids, needle_span=(s, s + b - a), insert_at=at, haystack_tokens=n, question_span=question,
                      context_end=q0)
