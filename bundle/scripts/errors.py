# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""What a user sees when a bundle run fails: one line naming the file or key and what is wrong, not the ~150 lines
of MONAI's config resolver, ignite and the transforms; the full traceback goes to a log file.

The configs call :func:`install_error_summary` as the first step of ``run`` (``error_summary``), so it covers
everything the run does.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Iterator, List

__all__ = ["install_error_summary", "error_summary", "one_line"]

# Messages of the layers that only wrap an error on its way up (MONAI's config resolver and Compose).
WRAPPERS = ("Failed to evaluate", "Failed to instantiate", "applying transform", "Component to instantiate")


def one_line(message: object) -> str:
    """A whole message on one line (a CSV cell, a log line): its lines stripped and joined, none dropped, so a
    reader's list of missing decoders survives."""
    return " ".join(line.strip() for line in str(message).strip().splitlines() if line.strip())


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: List[int] = []
    while err is not None and id(err) not in seen:
        seen.append(id(err))
        yield err
        err = err.__cause__ or err.__context__


def error_summary(err: BaseException) -> str:
    """``<Type>: <first line>`` of the outermost error in ``err``'s chain that is not a wrapper."""
    for link in _chain(err):
        text = str(link).strip().splitlines()
        if text and not text[0].startswith(WRAPPERS):
            return f"{type(link).__name__}: {text[0]}"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def install_error_summary(log_file: os.PathLike) -> None:
    """From now on an uncaught error prints one line (:func:`error_summary`) and writes its full traceback to
    ``log_file``; the process still exits non-zero. Ctrl-C, and an error whose log cannot be written, print as
    usual."""
    previous = sys.excepthook
    log_file = Path(log_file)

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            return previous(kind, value, tb)
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("w") as f:
                traceback.print_exception(kind, value, tb, file=f)
        except OSError:
            return previous(kind, value, tb)
        sys.stderr.write(f"ERROR {error_summary(value)}\n(full traceback in {log_file})\n")

    sys.excepthook = hook
