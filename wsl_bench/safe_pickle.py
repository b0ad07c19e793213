"""A restricted unpickler for index files that must hold only plain data.

Published mammography exam lists (the NYU/GMIC/GLAM ``data.pkl`` format) are pickles. Plain
``pickle.load`` runs whatever the file asks for, so a downloaded exam list could execute code.
:func:`load` reads only plain containers and scalars — ``dict``, ``list``, ``tuple``, ``set``,
``frozenset``, ``str``, ``int``, ``float``, ``bool``, ``None``, ``bytes``,
``bytearray`` — and refuses every other global the pickle tries to import, naming the file and the
global, before anything is called.

Two narrow exceptions keep real exam lists readable, each an exact (module, name) pair:

- ``builtins.set`` / ``builtins.frozenset`` / ``builtins.bytearray``: protocols 0–3 (the default of
  the Python 3.6 that wrote the published lists) pickle these containers through their global.
- numpy *numeric scalars* (``numpy.core.multiarray.scalar`` with ``numpy.dtype``): exam lists
  produced by the NYU pipeline hold window coordinates computed with numpy. They are replaced by
  safe stand-ins that accept only boolean, integer and float dtypes given by a type code
  string, and return plain Python ``bool``/``int``/``float``. Arrays, object dtypes and
  anything else from numpy are refused.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from pathlib import Path
from typing import Any

__all__ = ["UnsafePickleError", "load", "loads"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle that needs something other than plain containers and scalars, or is malformed.

    The message names the file and, when one was refused, the global (``module.name``).
    """


_BUILTIN_CONTAINERS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    # protocol 0–2 write ``bytes`` objects as _codecs.encode(text, "latin1"); only that codec is accepted
    ("_codecs", "encode"): None,  # filled below with a checked stand-in
    # protocol 2 writes ``set()`` as copyreg._reconstructor only for subclasses, so it is not listed
}

# dtype kinds of numeric scalars accepted from numpy pickles: bool, signed, unsigned, float
_NUMERIC_KINDS = frozenset("biuf")
_NUMPY_SCALAR_NAMES = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
_NUMPY_DTYPE_NAMES = {("numpy", "dtype")}


def _safe_codecs_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` accepting only how protocols 0–2 store ``bytes``."""
    if not isinstance(text, str) or encoding != "latin1" or errors != "strict":
        raise UnsafePickleError(f"_codecs.encode is only accepted as encode(str, 'latin1'), got encoding {encoding!r}")
    return text.encode("latin1")


def _safe_numpy_dtype(code: Any, align: Any = False, copy: Any = False) -> Any:
    """Stand-in for ``numpy.dtype`` accepting only numeric type codes such as ``'f8'``, ``'<i8'``."""
    import numpy as np

    if not isinstance(code, str):
        raise UnsafePickleError(f"numpy.dtype is only accepted with a type-code string, got {type(code).__name__}")
    try:
        dtype = np.dtype(code)
    except TypeError as exc:
        raise UnsafePickleError(f"numpy.dtype({code!r}) is not a known type code") from exc
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafePickleError(f"numpy dtype {code!r} is not a plain numeric scalar type")
    return _CheckedDtype(dtype)


class _CheckedDtype:
    """A numeric dtype produced by :func:`_safe_numpy_dtype`; accepts dtype ``__setstate__`` (byte order)."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        # numpy pickles dtypes as dtype(code, False, True) + BUILD(state); state[1] is the byte order.
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.dtype = self.dtype.newbyteorder(state[1]) if state[1] in "<>" else self.dtype


def _safe_numpy_scalar(dtype: Any, data: Any = None) -> bool | int | float:
    """Stand-in for ``numpy.core.multiarray.scalar``: a numeric scalar as the equivalent Python value."""
    import numpy as np

    if not isinstance(dtype, _CheckedDtype):
        raise UnsafePickleError("numpy scalar with a dtype that was not read as a plain numeric type")
    if isinstance(data, str):  # numpy writes the raw bytes as latin1 text under protocol 0–2
        data = data.encode("latin1")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.dtype.itemsize:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype.dtype} with malformed data")
    return np.frombuffer(bytes(data), dtype=dtype.dtype)[0].item()


_BUILTIN_CONTAINERS[("_codecs", "encode")] = _safe_codecs_encode


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` accepts only the allow-list above."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 era names (protocols 0-2): the same renaming ``pickle`` itself applies.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key in _BUILTIN_CONTAINERS:
            return _BUILTIN_CONTAINERS[key]
        if key in _NUMPY_SCALAR_NAMES:
            return _safe_numpy_scalar
        if key in _NUMPY_DTYPE_NAMES:
            return _safe_numpy_dtype
        raise UnsafePickleError(
            f"{self._source}: refused to load global {module}.{name}: this pickle may hold only plain "
            "containers and scalars (dict, list, tuple, set, str, int, float, bool, None, bytes); "
            "loading it could run code"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused persistent id {pid!r}: not plain data")


def loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` allowing only plain containers and scalars.

    Args:
        data: the pickle bytes.
        source: name used in error messages (a file path).

    Raises:
        UnsafePickleError: the pickle imports a refused global, or is truncated/malformed.
    """
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError as exc:
        if str(exc).startswith(source):
            raise
        raise UnsafePickleError(f"{source}: {exc}") from exc
    except Exception as exc:  # EOFError, UnpicklingError, ValueError, ... from a damaged file
        raise UnsafePickleError(f"{source}: truncated or malformed pickle ({type(exc).__name__}: {exc})") from exc
    return _check_plain(obj, source)


def load(path: str | os.PathLike) -> Any:
    """Read a pickle file allowing only plain containers and scalars.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafePickleError: see :func:`loads`; the message names ``path``.
    """
    path = Path(path)
    return loads(path.read_bytes(), source=str(path))


_PLAIN_SCALARS = (str, int, float, bool, bytes, bytearray, type(None))


def _check_plain(obj: Any, source: str) -> Any:
    """Reject any object left over from the numpy stand-ins (e.g. a bare dtype) and return ``obj``."""
    stack = [obj]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, _PLAIN_SCALARS):
            continue
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        else:
            raise UnsafePickleError(f"{source}: pickle holds a {type(item).__name__}, not plain data")
    return obj
