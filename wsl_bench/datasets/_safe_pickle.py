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

Allowed classes alone do not bound what a pickle *builds*: ``bytearray(6 * 2**30)`` is a 34-byte
pickle, a counted-bytes opcode declaring 6 GiB makes the C unpickler allocate it before reading,
and a memo index of 2**31 grows the memo table to match. So, before anything is unpickled, the
opcode stream is scanned (``pickletools.genops``, iterative, reading no more than the data holds):
a file above ``max_bytes``, more than ``max_objects`` opcodes, a counted string/bytes longer than
the data, a memo index beyond the opcodes seen, out-of-band buffers and persistent ids are refused.
The container stand-ins refuse any argument but an existing container (``bytearray(n)`` and
``set(n)`` with a size are refused, never called), and the result may nest at most ``max_depth``
containers (checked without recursion; cycles are refused), so code walking it never recurses
deeper than that. Nor may it *expand* beyond a bound proportional to its size
(:data:`wsl_bench.limits.MAX_PICKLE_EXPANSION`): shared references let ``x = [x, x]`` nested 45 deep
stand for 2**46 objects in 591 bytes, and any code that walks the exam list as a tree (a ``repr``
in an error message, a JSON copy) would expand them.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

from wsl_bench.limits import MAX_PICKLE_EXPANSION, MIN_PICKLE_EXPANSION
from wsl_bench.regular_files import NotARegularFile, open_regular

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_OBJECTS", "UnsafePickleError", "load", "loads"]

MAX_BYTES = 256 * 2**20
"""Largest pickle accepted (bytes of the file). The published exam lists are a few kilobytes."""
MAX_OBJECTS = 8_000_000
"""Most opcodes (so at most this many objects) a pickle may hold: bounds memory to well under 1 GB."""
MAX_DEPTH = 64
"""Deepest nesting of containers accepted (an exam list nests 4 deep)."""

# Opcodes that hand the unpickler something other than the pickle's own bytes.
_REFUSED_OPCODES = frozenset({"PERSID", "BINPERSID", "NEXT_BUFFER", "READONLY_BUFFER"})
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle that needs something other than plain containers and scalars, or is malformed.

    The message names the file and, when one was refused, the global (``module.name``).
    """


def _safe_container(kind: type) -> Any:
    """Stand-in for ``set``/``frozenset``: built only from a container the pickle already holds."""

    def build(*args: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset))):
            given = ", ".join(type(a).__name__ for a in args)
            raise UnsafePickleError(
                f"{kind.__name__}({given}) refused: {kind.__name__} is only accepted from a list, tuple or set"
            )
        return kind(args[0]) if args else kind()

    return build


def _safe_bytearray(*args: Any) -> bytearray:
    """Stand-in for ``bytearray``: only as pickle writes it — ``()``, ``(bytes,)`` or ``(str, 'latin-1')``.

    An integer argument (a size: ``bytearray(6 * 2**30)`` allocates 6 GiB) is refused, never called.
    """
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin-1", "latin1"):
        return bytearray(args[0], "latin-1")
    given = ", ".join(type(a).__name__ for a in args)
    raise UnsafePickleError(
        f"bytearray({given}) refused: only bytearray(bytes) or bytearray(str, 'latin-1') are accepted "
        "(a size argument would allocate memory the file does not hold)"
    )


_BUILTIN_CONTAINERS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): _safe_container(set),
    ("builtins", "frozenset"): _safe_container(frozenset),
    ("builtins", "bytearray"): _safe_bytearray,
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


def _scan(data: bytes, source: str, max_objects: int) -> None:
    """Check the opcode stream before unpickling (see the module docstring); iterative, allocates nothing big.

    Raises:
        UnsafePickleError: naming ``source`` and what was refused.
    """
    count = 0
    try:
        for opcode, arg, position in pickletools.genops(data):
            count += 1
            if count > max_objects:
                raise UnsafePickleError(
                    f"{source}: more than {max_objects:,} opcodes; refused (limit max_objects={max_objects:,})"
                )
            name = opcode.name
            if name in _REFUSED_OPCODES:
                raise UnsafePickleError(f"{source}: refused opcode {name} at byte {position}: not plain data")
            if name in _MEMO_PUTS and name != "MEMOIZE" and not (0 <= int(arg) <= count):
                # the C unpickler sizes its memo table by the index: 2**31 would allocate 16 GiB
                raise UnsafePickleError(f"{source}: memo index {arg} at byte {position} is out of range; refused")
            if name == "STOP":
                return
    except UnsafePickleError:
        raise
    except Exception as exc:  # a declared length beyond the data, an unknown opcode, ...
        raise UnsafePickleError(f"{source}: truncated or malformed pickle ({type(exc).__name__}: {exc})") from exc
    raise UnsafePickleError(f"{source}: truncated or malformed pickle (no STOP opcode)")


def loads(
    data: bytes,
    source: str = "<bytes>",
    max_bytes: int = MAX_BYTES,
    max_objects: int = MAX_OBJECTS,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Unpickle ``data`` allowing only plain containers and scalars, within size limits.

    Args:
        data: the pickle bytes.
        source: name used in error messages (a file path).
        max_bytes: largest accepted ``len(data)``.
        max_objects: most opcodes (objects) accepted.
        max_depth: deepest accepted nesting of containers.

    Raises:
        UnsafePickleError: the pickle imports a refused global, calls a constructor with a size,
            exceeds a limit, or is truncated/malformed.
    """
    if len(data) > max_bytes:
        raise UnsafePickleError(f"{source}: {len(data):,} bytes, above the limit of {max_bytes:,} bytes; refused")
    _scan(data, source, max_objects)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError as exc:
        if str(exc).startswith(source):
            raise
        raise UnsafePickleError(f"{source}: {exc}") from exc
    except Exception as exc:  # EOFError, UnpicklingError, ValueError, ... from a damaged file
        raise UnsafePickleError(f"{source}: truncated or malformed pickle ({type(exc).__name__}: {exc})") from exc
    _check_plain(obj, source, max_depth)
    limit = MAX_PICKLE_EXPANSION * len(data) + MIN_PICKLE_EXPANSION
    if _expanded_size(obj, limit) > limit:
        raise UnsafePickleError(
            f"{source}: its data expands to more than {limit:,} objects and characters (a shared reference "
            f"counted each time it is reached), above the limit of wsl_bench.limits.MAX_PICKLE_EXPANSION = "
            f"{MAX_PICKLE_EXPANSION} times its {len(data):,} bytes plus MIN_PICKLE_EXPANSION = "
            f"{MIN_PICKLE_EXPANSION:,}; refused")
    return obj


def load(
    path: str | os.PathLike,
    max_bytes: int = MAX_BYTES,
    max_objects: int = MAX_OBJECTS,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Read a pickle file allowing only plain containers and scalars, within size limits (see :func:`loads`).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafePickleError: see :func:`loads`, or a file larger than ``max_bytes`` (refused before
            it is read); the message names ``path``.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UnsafePickleError(f"{path}: {size:,} bytes, above the limit of {max_bytes:,} bytes; refused")
    try:
        with open_regular(path) as fh:  # a FIFO or a device would never end
            data = fh.read(max_bytes + 1)  # the file may have grown since stat
    except NotARegularFile as exc:
        raise UnsafePickleError(str(exc)) from None
    return loads(data, source=str(path), max_bytes=max_bytes, max_objects=max_objects, max_depth=max_depth)


_PLAIN_SCALARS = (str, int, float, bool, bytes, bytearray, type(None))
_CONTAINERS = (dict, list, tuple, set, frozenset)


def _children(container: Any) -> list[Any]:
    if isinstance(container, dict):
        return [*container.keys(), *container.values()]
    return list(container)


def _scalar_size(value: Any) -> int:
    return 1 + len(value) if isinstance(value, (str, bytes, bytearray)) else 1


def _expanded_size(obj: Any, limit: int) -> int:
    """How big ``obj`` is written out as a tree: containers and scalars count 1, strings and bytes
    1 + their length, and a shared object counts each time it is reached. Computed on the graph
    (each container once, post-order, iterative) and capped at ``limit + 1``, so a pickle standing
    for 2**46 objects costs no more than its own containers to measure. ``obj`` has no cycles
    (:func:`_check_plain` refuses them first)."""
    if not isinstance(obj, _CONTAINERS):
        return _scalar_size(obj)
    sizes: dict[int, int] = {}
    stack = [obj]
    while stack:
        item = stack[-1]
        if id(item) in sizes:
            stack.pop()
            continue
        children = _children(item)
        pending = [c for c in children if isinstance(c, _CONTAINERS) and id(c) not in sizes]
        if pending:
            stack.extend(pending)
            continue
        total = 1 + sum(sizes[id(c)] if isinstance(c, _CONTAINERS) else _scalar_size(c) for c in children)
        sizes[id(item)] = min(total, limit + 1)
        stack.pop()
    return sizes[id(obj)]


def _check_plain(obj: Any, source: str, max_depth: int = MAX_DEPTH) -> Any:
    """Reject any object left over from the numpy stand-ins (e.g. a bare dtype), containers nested
    deeper than ``max_depth`` and cycles; return ``obj``. Iterative: never recurses on the data."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    depth_seen: dict[int, int] = {}
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _PLAIN_SCALARS):
            continue
        if depth > max_depth:
            raise UnsafePickleError(
                f"{source}: containers nested deeper than {max_depth} levels (or a cycle); refused"
            )
        # a container reached again is walked again only when reached deeper (bounds the walk;
        # a cycle keeps getting deeper and is refused above)
        if depth_seen.get(id(item), -1) >= depth:
            continue
        depth_seen[id(item)] = depth
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item.keys())
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in item)
        else:
            raise UnsafePickleError(f"{source}: pickle holds a {type(item).__name__}, not plain data")
    return obj
