"""Every patch lk_probe makes goes through here, so uninstall() restores exactly what install() changed."""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable

import wrapt

from ._errors import warn_once

# wrapt 2 moved the proxy base: FunctionWrapper derives from BaseObjectProxy, no longer from ObjectProxy
PROXY = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)

_lock = threading.Lock()
# (module name, "Class.attr" path) -> the object the attribute lives on
_patched: dict[tuple[str, str], Any] = {}


def find_target(module: str, path: str) -> tuple[Any, str, Any] | None:
    """(owner object, attribute name, current value) or None when the module or attribute does not exist."""
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - an optional target
        return None
    owner: Any = mod
    parts = path.split(".")
    for part in parts[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    if not hasattr(owner, parts[-1]):
        return None
    return owner, parts[-1], owner.__dict__.get(parts[-1], getattr(owner, parts[-1]))


def wrap(module: str, path: str, wrapper: Callable[..., Any], *, required: bool = True, feature: str = "") -> bool:
    """Wrap ``module.path`` with a wrapt function wrapper. A missing target warns once (if required) and is skipped."""
    with _lock:
        if (module, path) in _patched:
            return True
        found = find_target(module, path)
        if found is None:
            if required:
                warn_once(f"missing:{module}.{path}",
                          "lk_probe: %s.%s not found in this version; %s will not be traced (partial "
                          "instrumentation)", module, path, feature or path)
            return False
        owner, name, _ = found
        wrapt.wrap_function_wrapper(module, path, wrapper)
        _patched[(module, path)] = (owner, owner.__dict__.get(name))
        return True


def unwrap_all() -> None:
    with _lock:
        items = list(_patched.items())
        _patched.clear()
    for (module, path), (owner, ours) in items:
        name = path.split(".")[-1]
        current = owner.__dict__.get(name)
        if current is ours and isinstance(current, PROXY) and hasattr(current, "__wrapped__"):
            setattr(owner, name, current.__wrapped__)
        else:  # someone wrapped it after us: taking ours out would take theirs too
            warn_once(f"unwrap:{module}.{path}", "lk_probe: %s.%s was wrapped again by someone else after lk_probe; "
                      "leaving both in place", module, path)


def patched() -> list[tuple[str, str]]:
    with _lock:
        return list(_patched)
