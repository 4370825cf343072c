"""The small error family medseg raises for bad input.

Every message names the file or argument at fault, echoes the value, and says how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["DataError", "MedsegError", "look_up_option"]


class MedsegError(Exception):
    """Base class of the errors medseg raises on purpose."""


class DataError(MedsegError, ValueError):
    """A file or a dataset is missing, unreadable or inconsistent."""


def look_up_option(value: str, options: Iterable[str], *, argument: str) -> str:
    """Return ``value`` if it is one of ``options``, else raise a "did you mean" ``ValueError``.

    Args:
        value: the user's choice (compared case-insensitively, ``-`` and ``_`` alike).
        options: the valid names.
        argument: the argument's name, quoted in the message.

    Example:
        >>> look_up_option("Unet", ["unet", "fastfcn"], argument="architecture")
        'unet'
    """
    options = list(options)
    key = str(value).lower().replace("-", "_")
    for option in options:
        if option.lower().replace("-", "_") == key:
            return option
    close = difflib.get_close_matches(key, options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"Unknown {argument} {value!r}.{hint} Valid choices: {', '.join(sorted(options))}."
    )
