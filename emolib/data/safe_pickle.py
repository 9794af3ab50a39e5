"""Restricted unpickling for metadata pickles we did not write (Dai's ``meta.pkl``).

``pickle.load`` runs whatever callable a pickle names, so a downloaded ``meta.pkl`` could run
``os.system`` on load. Dai's metadata only needs plain containers (dict / list / tuple / str / int /
float / bool / None), which protocol 2+ pickles encode with opcodes, not globals. The unpickler below
therefore resolves no global at all, except:

* a few harmless builtin constructors that older protocols use for plain values
  (``set``, ``frozenset``, ``bytearray``, ``complex``, ``_codecs.encode`` for protocol-2 ``bytes``,
  ``collections.OrderedDict``);
* when ``allow_numpy`` is true (the default), numpy scalars and arrays (``numpy.dtype``,
  ``numpy.ndarray``, ``numpy.*.multiarray.scalar`` / ``_reconstruct``). Dai's MOSEI labels come out of
  pandas sums, so a real ``meta.pkl`` may hold ``numpy.int64`` values. These constructors only build
  data from bytes; object-dtype contents are themselves unpickled by this restricted unpickler.

Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, arbitrary classes via
``copyreg._reconstructor``) raises :class:`ForbiddenGlobalError` naming the file and the global, before
it is called.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "BASE_ALLOWED",
    "NUMPY_ALLOWED",
    "ForbiddenGlobalError",
    "RestrictedUnpickler",
    "load_restricted",
    "loads_restricted",
]

BASE_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }
)

# numpy 1.x pickles name ``numpy.core``; numpy 2 moved it to ``numpy._core`` (both are accepted and resolved
# to the numpy 2 object so that no DeprecationWarning is raised).
NUMPY_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
    }
)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global that is not on the allow-list."""

    def __init__(self, source: str, module: str, name: str) -> None:
        self.source = source
        self.module = module
        self.name = name
        super().__init__(
            f"{source}: forbidden global '{module}.{name}' in pickle (the restricted unpickler only "
            "rebuilds plain containers and numpy scalars/arrays; refusing to call anything else)"
        )


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only allow-listed globals."""

    def __init__(
        self,
        file: io.BufferedIOBase,
        *,
        source: str = "<bytes>",
        allow_numpy: bool = True,
        extra_allowed: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(file)
        self.source = source
        allowed = set(BASE_ALLOWED) | set(extra_allowed)
        if allow_numpy:
            allowed |= NUMPY_ALLOWED
        self.allowed = frozenset(allowed)

    def find_class(self, module: str, name: str) -> Any:
        module, name = _python3_name(module, name)
        if (module, name) not in self.allowed:
            raise ForbiddenGlobalError(self.source, module, name)
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _python3_name(module: str, name: str) -> tuple[str, str]:
    # Protocol < 3 pickles may use Python 2 names (``__builtin__.set``); the stock find_class maps them,
    # so the allow-list check has to see the mapped names too. The C unpickler hides the protocol, but
    # the mapping only renames Python 2 modules, which no Python 3 pickle names.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def loads_restricted(
    data: bytes,
    *,
    source: str = "<bytes>",
    allow_numpy: bool = True,
    extra_allowed: Iterable[tuple[str, str]] = (),
) -> Any:
    """Unpickle ``data`` allowing only plain containers (and numpy values when ``allow_numpy``).

    Raises :class:`ForbiddenGlobalError` for any other global and ``ValueError`` naming ``source`` for a
    damaged pickle.
    """
    unpickler = RestrictedUnpickler(
        io.BytesIO(data), source=source, allow_numpy=allow_numpy, extra_allowed=extra_allowed
    )
    try:
        return unpickler.load()
    except ForbiddenGlobalError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def load_restricted(
    path: str | os.PathLike,
    *,
    allow_numpy: bool = True,
    extra_allowed: Iterable[tuple[str, str]] = (),
) -> Any:
    """Read the pickle at ``path`` with :func:`loads_restricted`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return loads_restricted(
        path.read_bytes(), source=str(path), allow_numpy=allow_numpy, extra_allowed=extra_allowed
    )
