"""What a sweep says while it runs: a line for each phase until its first trial finishes,
then a bar over its trials.

Before the first trial (the first prompts prefilled, a batch of them decoded) a bar would sit
at 0 and then date its rate and ETA from the load; so there is no bar until a trial has
finished, and the bar starts at the trials done then (tqdm's ``initial``, which its rate
leaves out). Until then each phase is one line to ``status``: the commands print it (on
stderr); without one, the library logs it at INFO.

    >>> seen = []
    >>> with Progress(3, "detect", enabled=False, status=seen.append) as p:
    ...     p.say("prefilling prompt 1 of 3 (263 tokens)")
    ...     p.update(2)                      # the first batch: 2 trials
    ...     p.say("prefilling prompt 3 of 3 (263 tokens)")   # a trial finished: the bar shows it
    ...     p.update(1)
    >>> seen, p.done
    (['prefilling prompt 1 of 3 (263 tokens)'], 3)
"""

from __future__ import annotations

import logging
from typing import Callable

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

Status = Callable[[str], None]


def count(n: int, noun: str) -> str:
    """``n`` and its noun, plural unless one: ``count(1, "row")`` is "1 row"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def silent(message: str) -> None:
    """A status no one listens to."""


def tell(status: Status | None, message: str) -> None:
    """One phase line: to ``status`` when someone listens, else to the log at INFO."""
    if status is not None:
        status(message)
    else:
        log.info(message)


class Progress:
    """One sweep's progress: ``say`` a phase until the first ``update``, which opens the bar.

    total: the trials to run; unit: what the bar counts (``tqdm``'s unit); enabled: False
    draws no bar (``--quiet``); status: where phase lines go (None: logged at INFO).
    """

    def __init__(self, total: int, desc: str, unit: str = "trial", enabled: bool = True,
                 status: Status | None = None):
        self.total, self.desc, self.unit, self.enabled, self.status = total, desc, unit, enabled, status
        self.bar: tqdm | None = None
        self.done = 0

    def say(self, message: str) -> None:
        """A phase before the first trial; once one has finished the bar tells the rest."""
        if not self.done:
            tell(self.status, message)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:  # created now: its clock starts at the first finished trial, not the load
            self.bar = tqdm(total=self.total, initial=n, desc=self.desc, unit=self.unit)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
