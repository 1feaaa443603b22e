"""Write ``requirements.lock``: the exact versions installed in the venv that runs this script.

``make lock`` runs it with a venv's Python (``$(VENV)``, or ``LOCK_FROM=.venv-latest`` after a
green ``make test-latest``) and writes its output to ``requirements.lock``; ``make install``
then installs through it as pip constraints (``pip install -c requirements.lock ...``)::

    .venv/bin/python scripts/lock.py --exclude needlehaystack==0.1.0 > requirements.lock

Every installed distribution is pinned (``name==version``, with the installed packages that
require it), except:

- ``torch``: its version is the Makefile's ``TORCH_VERSION`` (``TORCH_SPEC``'s CPU default),
  so a GPU machine can choose another build without contradicting the lock; this script
  prints it in the header and fails when the venv's differs from ``--torch`` (and its Python
  from ``--python``, the Makefile's ``LOCK_PYTHON``: the lock is used only on that Python);
- pip, and the package itself (an editable install of this checkout);
- what the Makefile installs with ``--no-deps`` at pinned versions: ``--exclude`` (the haystack
  package) and every embedded model's packages (``retrieval_head.models.embedded.EMBEDDED``).

The distributions that only torch needs (neither the package nor its ``test`` extra does) come
last, after ``TORCH_ONLY``: another torch build brings its own (torch 2.6 pins ``sympy==1.13.1``),
so the Makefile drops that section from the constraints when ``TORCH_SPEC`` or ``TORCH_INDEX``
is given or a GPU is present.
"""

from __future__ import annotations

import argparse
import platform
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PACKAGE, EXTRAS = "retrieval-head", ("test",)
TORCH_ONLY = "# ---- torch-only: what only torch requires; left out where another torch build is chosen"
SKIP = {"pip", PACKAGE}


def installed() -> dict[str, metadata.Distribution]:
    return {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}


def requires(dist: metadata.Distribution, extras: tuple[str, ...] = ()) -> list[str]:
    """The canonical names ``dist`` requires in this environment (with ``extras``)."""
    out = []
    for line in dist.requires or []:
        req = Requirement(line)
        envs = [{"extra": e} for e in ("", *extras)]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            out.append(canonicalize_name(req.name))
    return out


def closure(dists: dict[str, metadata.Distribution], roots: list[str], stop: set[str]) -> set[str]:
    """Every installed distribution reached from ``roots`` (not through ``stop``)."""
    seen, todo = set(), [r for r in roots if r not in stop]
    while todo:
        name = todo.pop()
        if name in seen or name not in dists:
            continue
        seen.add(name)
        todo += [r for r in requires(dists[name]) if r not in stop]
    return seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exclude", nargs="*", default=[], help="requirements installed --no-deps by the Makefile")
    p.add_argument("--torch", help="the torch version the Makefile installs (TORCH_VERSION); checked")
    p.add_argument("--python", help="the Python the Makefile uses the lock with (LOCK_PYTHON, major.minor); checked")
    args = p.parse_args(argv)
    from retrieval_head.models.embedded import EMBEDDED

    dists = installed()
    pinned_elsewhere = {canonicalize_name(Requirement(r).name) for r in args.exclude}
    pinned_elsewhere |= {canonicalize_name(Requirement(r).name) for m in EMBEDDED.values() for r in m.packages}
    torch = dists.get("torch")
    if torch is None:
        raise SystemExit("torch is not installed in this venv")
    torch_version = torch.version.split("+")[0]
    if args.torch and torch_version != args.torch:
        raise SystemExit(f"this venv has torch {torch.version}, the Makefile's TORCH_VERSION is {args.torch}")
    py = platform.python_version_tuple()
    if args.python and f"{py[0]}.{py[1]}" != args.python:
        raise SystemExit(f"this venv runs Python {py[0]}.{py[1]}, the Makefile's LOCK_PYTHON is {args.python}")
    ours = dists[canonicalize_name(PACKAGE)]
    roots = [r for r in requires(ours, EXTRAS) if r != "torch"]
    needed = closure(dists, roots, stop={"torch"})
    torch_only = closure(dists, requires(torch), stop=set()) - needed - {"torch"}
    required_by: dict[str, set[str]] = {}
    for name, d in dists.items():
        if name in pinned_elsewhere:  # installed --no-deps: what it declares is not installed for it
            continue
        for r in requires(d, EXTRAS if name == canonicalize_name(PACKAGE) else ()):
            required_by.setdefault(r, set()).add(d.metadata["Name"])

    def line(name: str) -> str:
        d = dists[name]
        via = ", ".join(sorted(required_by.get(name, {"nothing installed: installed by hand?"}), key=str.lower))
        return f"{d.metadata['Name']}=={d.version}  # {via}"

    keep = sorted((n for n in dists if n not in SKIP | pinned_elsewhere | {"torch"}), key=str.lower)
    print(f"""# requirements.lock: the exact versions the test suite passed with, as pip constraints.
# Made by `make lock` (scripts/lock.py) on CPython {py[0]}.{py[1]}, {platform.system()} {platform.machine()}, torch \
{torch_version} (CPU).
# Used by make install / test / demo and CI (.ci/run): pip install -c requirements.lock ...
# Not here: torch ({torch_version}: the Makefile's TORCH_VERSION, TORCH_SPEC's CPU default), pip, the package
# itself, and the packages the Makefile installs --no-deps at pinned versions (haystack, embedded models).
# Refresh: make test-latest (newest versions, no lock), and when it passes:
#   make lock LOCK_FROM=.venv-latest && make test      # then commit this file
# Each pin names the installed packages that require it.""")
    for name in keep:
        if name not in torch_only:
            print(line(name))
    print(TORCH_ONLY)
    for name in keep:
        if name in torch_only:
            print(line(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
