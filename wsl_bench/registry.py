"""Name → factory registries for methods and datasets, with entry-point plugins.

One registry per kind of plugin. Built-in plugins register with a decorator that names them
explicitly; third-party packages expose theirs through the entry-point groups
``wsl_bench.methods`` and ``wsl_bench.datasets`` (the entry point's name is the registered name,
its object the class or factory), loaded the first time a registry is queried. A registry remembers
which names came from entry points and from which package and version (:meth:`Registry.plugins`):
the pipeline leaves plugin methods out of runs that do not ask for them, and manifests record them.

Names may carry a variant tag after a dot, ``gmic.m1``: a variant is registered as its own name,
so listing ``gmic*`` shows every variant.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.metadata
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from wsl_bench.saliency import ExplainedClassifier

_NAME = re.compile(r"[A-Za-z0-9_+\-.@]{1,100}")
"""What a registered name may hold (it becomes a folder name of a run, and wildcards match it)."""

T = TypeVar("T")

log = logging.getLogger(__name__)


class RegistryError(KeyError):
    """An unknown or duplicate name. ``str()`` gives the readable message (KeyError quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownNameError(RegistryError):
    """A name that is not registered; the message lists the known names."""


class DuplicateNameError(RegistryError):
    """A second registration under a name already taken."""


def closest_names(name: str, known: Iterable[str], count: int = 3) -> list[str]:
    """The known names most like ``name`` (a typo's likely intent), closest first; ignores case."""
    by_lower = {k.lower(): k for k in known}
    return [by_lower[k] for k in difflib.get_close_matches(name.lower(), list(by_lower), n=count, cutoff=0.6)]


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown method 'glma' (did you mean glam?); known methods: ...``: the closest names first,
    then every known one."""
    known = list(known)
    close = closest_names(name, known)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; known {kind}s: {', '.join(known) or '(none)'}"


class Registry(Generic[T]):
    """A mapping from names to factories (usually classes) of one kind of plugin.

    Args:
        kind: what the registry holds, for messages ("method", "dataset").
        entry_point_group: the ``importlib.metadata`` entry-point group scanned for plugins.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Callable[..., T]] = {}
        self._entry_points_loaded = False
        self._plugins: dict[str, dict[str, Any]] = {}

    # -- registration -----------------------------------------------------------------------
    def register(self, name: str, factory: Callable[..., T] | None = None):
        """Register ``factory`` under ``name``; usable as ``@registry.register("name")``.

        Raises:
            DuplicateNameError: ``name`` is already registered.
            ValueError: ``name`` is empty or contains characters that would break wildcards.
        """
        if not _NAME.fullmatch(name or "") or name.startswith("."):
            # names become folder names in a run (maps/<method>/): no separators, no leading dot
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, '_', '-', '+', '.', '@'")

        def decorator(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name] is not obj:
                raise DuplicateNameError(f"{self.kind} {name!r} is already registered (by {self._entries[name]!r})")
            self._entries[name] = obj
            return obj

        return decorator(factory) if factory is not None else decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests that register temporary plugins)."""
        self._entries.pop(name, None)

    # -- lookup -------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            source = _plugin_source(ep)
            if ep.name in self._entries:
                # a built-in name wins; a plugin cannot silently replace it
                log.warning("%s plugin %r from %s is ignored: the name is taken", self.kind, ep.name, ep.value)
                self._plugins[ep.name] = {**source, "status": "ignored: the name is taken"}
                continue
            try:
                self.register(ep.name, ep.load())
            except Exception as exc:  # a broken plugin must not break the whole suite
                log.warning("could not load %s plugin %r from %s: %s", self.kind, ep.name, ep.value, exc)
                self._plugins[ep.name] = {**source, "status": f"failed: {exc}"}
            else:
                self._plugins[ep.name] = {**source, "status": "loaded"}

    def is_plugin(self, name: str) -> bool:
        """Whether ``name`` was registered from an installed package's entry point (not by the suite)."""
        self._load_entry_points()
        return self._plugins.get(name, {}).get("status") == "loaded" and name in self._entries

    def plugins(self) -> dict[str, dict[str, Any]]:
        """Every entry point of the group, by name: ``{"package", "version", "entry_point", "status"}``
        (``status``: ``"loaded"``, ``"ignored: the name is taken"`` or ``"failed: <error>"``).
        Run manifests record it, so a result can name the plugin code that produced it."""
        self._load_entry_points()
        return {name: dict(info) for name, info in sorted(self._plugins.items())}

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``.

        Raises:
            UnknownNameError: with the list of known names.
        """
        self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, sorted(self._entries))) from None

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def list(self, pattern: str | Iterable[str] = "*") -> list[str]:
        """Registered names matching one or several ``fnmatch`` patterns, sorted, without repeats.

        A pattern without wildcards must name a registered entry exactly (else UnknownNameError),
        so a typo in ``--methods`` is reported instead of silently selecting nothing.
        """
        self._load_entry_points()
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        selected: list[str] = []
        for pat in patterns:
            pat = pat.strip()
            if not pat:
                continue
            if any(ch in pat for ch in "*?["):
                matches = sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pat))
                if not matches:
                    known = ", ".join(sorted(self._entries))
                    raise UnknownNameError(f"no {self.kind} matches {pat!r}; known {self.kind}s: {known}")
            else:
                self.get(pat)
                matches = [pat]
            selected.extend(m for m in matches if m not in selected)
        return selected

    def describe(self, name: str) -> str:
        """The one-line description of an entry: its ``description`` attribute or docstring's first line."""
        obj: Any = self.get(name)
        text = getattr(obj, "description", None) or (obj.__doc__ or "").strip().splitlines()[:1]
        if isinstance(text, list):
            text = text[0] if text else ""
        return str(text).strip()


def _plugin_source(ep: importlib.metadata.EntryPoint) -> dict[str, Any]:
    """The distribution (package name and version) that declares the entry point ``ep``."""
    dist = getattr(ep, "dist", None)
    name = dist.metadata["Name"] if dist is not None else None
    return {"package": name, "version": dist.version if dist is not None else None, "entry_point": ep.value}


METHODS: Registry = Registry("method", "wsl_bench.methods")
DATASETS: Registry = Registry("dataset", "wsl_bench.datasets")


# ----------------------------------------------------------------------------- front doors
BUILTIN_PACKAGES = ("wsl_bench.datasets", "wsl_bench.methods")
"""The packages of the built-in plugins (importing each registers its members)."""

_builtins_loaded = False


def load_builtins() -> None:
    """Import the built-in plugin packages once (they register themselves).

    They are imported by name, like entry-point plugins: the registry sits below every method and
    dataset in the import graph (``tests/test_architecture.py``), and finds them at run time."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for package in BUILTIN_PACKAGES:
            importlib.import_module(package)


def split_method_name(name: str) -> tuple[str, dict[str, Any]]:
    """``"gradcam@gmic"`` → ``("gradcam", {"classifier": "gmic"})``: the ``explainer@classifier``
    shorthand for a post-hoc explainer's ``classifier`` option (command lines and run method names);
    other names pass through."""
    if "@" in name:
        base, classifier = name.split("@", 1)
        return base, {"classifier": classifier}
    return name, {}


COMMON_OPTIONS = ("device", "seed", "image_size")
"""Options every method takes; a post-hoc explainer and the classifier method it explains both get them."""


def constructor_options(factory: Callable[..., Any]) -> frozenset[str]:
    """The keyword options ``factory`` names: its constructor's parameters, and those of the
    constructors above it for as long as each passes ``**kwargs`` on (``super().__init__(**kwargs)``)."""
    names: set[str] = set()
    if isinstance(factory, type):
        callables = [vars(cls)["__init__"] for cls in factory.__mro__ if "__init__" in vars(cls)]
    else:
        callables = [factory]
    for function in callables:
        parameters = inspect.signature(function).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return frozenset(names)


def explained_classifier_name(name: str, options: Mapping[str, Any]) -> str | None:
    """The method whose classifier the post-hoc explainer ``name`` explains with ``options``: the
    ``classifier`` option, else the ``explainer@classifier`` spelling, else the explainer's
    ``default_classifier``; ``None`` when ``name`` is not an explainer (its factory sets no
    ``default_classifier``)."""
    load_builtins()
    base, implied = split_method_name(name)
    default = getattr(METHODS.get(base), "default_classifier", None)
    if default is None:
        return None
    chosen = {**implied, **options}.get("classifier") or default
    return chosen.name if isinstance(chosen, ExplainedClassifier) else str(chosen)


def create_method_with_classifier(name: str, **options: Any) -> tuple[Any, Any | None]:
    """Instantiate the method registered as ``name`` and, for a post-hoc explainer, the method whose
    classifier it explains.

    A post-hoc explainer (a factory with a ``default_classifier``) takes ``classifier``, an
    :class:`~wsl_bench.saliency.ExplainedClassifier`. Given one, it is passed on as it is; given a
    registered name (:func:`explained_classifier_name`), that method is created first, with the
    :data:`COMMON_OPTIONS` and every option the explainer's constructors do not name (``config``,
    ``weights``, ...), and its ``classifier()`` is handed to the explainer with the options they do
    name (``target_layer``, ``memory_budget_mb``, ``n_steps``, ...).

    Returns:
        ``(method, classifier method)``: the classifier method is ``None`` unless one was created here.

    Raises:
        UnknownNameError: listing the known method names.
        ValueError: the classifier's method is not a trainable method (it has no classifier).
    """
    classifier_method = create_classifier_method(name, **options)
    base, implied = split_method_name(name)
    factory = METHODS.get(base)
    options = {**implied, **options}
    if classifier_method is not None:
        own = constructor_options(factory)
        options = {k: v for k, v in options.items() if k in own}
        options["classifier"] = ExplainedClassifier.of(classifier_method)
    method = factory(**options)
    method.name = name
    return method, classifier_method


def create_classifier_method(name: str, **options: Any) -> Any | None:
    """The method whose classifier the post-hoc explainer ``name`` explains, created with its share of
    ``options`` as :func:`create_method_with_classifier` creates it, but without the explainer (whose
    constructor may run the classifier: seconds). ``None`` when ``name`` is not an explainer or
    ``options`` hand it a ready :class:`~wsl_bench.saliency.ExplainedClassifier`."""
    classifier_name = explained_classifier_name(name, options)
    base, implied = split_method_name(name)
    options = {**implied, **options}
    if classifier_name is None or isinstance(options.get("classifier"), ExplainedClassifier):
        return None
    own = constructor_options(METHODS.get(base))
    return create_method(classifier_name, **{k: v for k, v in options.items() if k not in own or k in COMMON_OPTIONS})


def create_method(name: str, **options: Any) -> Any:
    """Instantiate the method registered as ``name`` with ``options`` (device, seed, image_size, ...).

    A post-hoc explainer's classifier may be named (``create_method("gradcam", classifier="gmic")``
    or ``"gradcam@gmic"``): see :func:`create_method_with_classifier`. The instance's ``name`` is the
    full name asked for (records and reports use it).

    Raises:
        UnknownNameError: listing the known method names.
    """
    return create_method_with_classifier(name, **options)[0]


def create_dataset(name: str, **options: Any) -> Any:
    """Instantiate the dataset registered as ``name`` (root, split, image_size, ...)."""
    load_builtins()
    return DATASETS.get(name)(**options)


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching an ``fnmatch`` pattern."""
    load_builtins()
    return METHODS.list(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching an ``fnmatch`` pattern."""
    load_builtins()
    return DATASETS.list(pattern)
