"""Errors that cross the library boundary.

``UsageError`` is a problem with what the user asked for (a bad name, a ratio out of
range, a missing data directory). The CLI prints its message on one line and exits 2.
``TrialError`` is a trial that ran and failed (NaN loss, a group pruned to nothing);
a search records it in the ledger and goes on.
"""


class UsageError(ValueError):
    """Bad input: the message names the bad value and the valid choices."""


class TrialError(RuntimeError):
    """A trial that started but cannot produce a result."""
