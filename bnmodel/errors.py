"""The kinds of failure the ``bnmodel`` command tells apart by exit code (bnmodel/cli.py).

    0    success
    1    the command ran and failed on its data, model or files: a bad cell, a missing
         column, an unreadable checkpoint, an export mismatch, an unreachable server,
         a diverged run (the message names the file, column and row)
    2    the command cannot run as given: an unknown or malformed flag (argparse), a flag
         value out of range or flags that do not go together (``UsageError``, naming the
         flag), or a subcommand that needs ``bnmodel[train]`` in a serving-only install
    130  interrupted (Ctrl-C)

Imports nothing: the server and the top-level command import it.
"""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "UsageError"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """Flags that cannot work (a value out of range, a combination, a refused --out); the
    message names the flag. From Python it is a ValueError like any bad argument."""
