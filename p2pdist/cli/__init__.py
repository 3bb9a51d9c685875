"""The ``p2pdist`` command line: thin wrappers over the library functions a program would call.

``app`` holds the group, its error handling and the entry point; each other module holds
the commands of one concern (``keys``, ``store``, ``transfer``, ``serve``); the tracker's
commands come from ``p2pdist.tracker.cli``.
"""

from p2pdist.cli.app import cli, main

__all__ = ["cli", "main"]
