"""Loading jaxvoice's optional compiled kernels (the .cc files here, built by setup.py as `jaxvoice._<name>`)."""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
from pathlib import Path


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The extension `jaxvoice._<name>` as a ctypes library, or None where it was not built or does not load."""
    package = Path(__file__).parent.parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = package / f"_{name}{suffix}"
        if path.exists():
            try:
                return ctypes.CDLL(str(path))
            except OSError:
                return None
    return None
