"""Errors a user can act on.

Library code raises :class:`ImgclsError` for bad input (a path that does not exist, a
nonsense argument, a data set with one class). The CLI prints its message on one line and
exits with status 2; Python callers get an ordinary ``ValueError`` subclass.
"""

from __future__ import annotations


class ImgclsError(ValueError):
    """A problem with the user's input, described in one line.

    The message names the argument or file and what was expected, e.g.
    ``"`epochs` must be a positive integer. Received: epochs=0"``.
    """


def check(condition: bool, message: str) -> None:
    """Raise :class:`ImgclsError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ImgclsError(message)


def require(*modules: str, why: str, extra: str) -> None:
    """Raise :class:`ImgclsError` naming the ``imgcls[extra]`` to install when one of
    ``modules`` (top-level names) that ``why`` needs is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    check(not missing, f"{why} needs {', '.join(missing)}: pip install 'imgcls[{extra}]'")
