"""The commands: ``retrieval-head`` (``commands``) and each subcommand's options and outputs."""

from .commands import main

__all__ = ["main"]
