"""``prunetune``: the command line (``search.cli.main.main``, the console script)."""

from search.cli.main import main

__all__ = ["main"]
