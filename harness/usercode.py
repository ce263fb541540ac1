"""A spec's own Python code: ``imports:``, the digest of the model's code, and shipping it to Ray.

- ``import_modules``: a spec's ``imports`` are imported from the spec file's folder or the
  environment (in the driver before validation, in every trial before the model is built), so
  what they register with ``gsf.register_module`` / ``register_backbone`` exists everywhere.
- ``code_sources``: the bytes of the code that defines a model (the ``gsf`` package and, for a
  model that uses them, the user's modules) as one sha256 per file; a trial's identity includes
  their digest, so editing a module re-runs the trials that use its code and keeps the others.
- ``py_modules``: the user's files that the environment does not provide, for Ray's
  ``runtime_env``, so that the workers of another node import the same code.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import site
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

MODEL_PACKAGES = ("gsf",)  # the project's code that defines a model
PROJECT_PACKAGES = ("gsf", "harness", "reports")
_brought_in: dict[str, set[str]] = {}  # import name -> the user's top-level modules it imported


class ImportFailed(Exception):
    """One of a spec's imports failed: ``index``, ``name`` and the error's last line."""

    def __init__(self, index: int, name: str, reason: str):
        super().__init__(f"imports[{index}]: cannot import {name!r}: {reason}")
        self.index, self.name, self.reason = index, name, reason
        self.not_found = reason.startswith("ModuleNotFoundError")


def import_modules(names: list[str], folder: str | Path | None, first: bool = True) -> list[str]:
    """Import ``names`` with ``folder`` on the path (``first``: before the environment, as a
    script's folder is; else last, where a Ray worker finds the copies its runtime_env shipped
    first); returns the top-level modules whose code they brought in from outside the
    environment (theirs and the local helpers they import)."""
    if folder is not None and first and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    elif folder is not None and not first:
        # Ray hands workers the driver's sys.path, this folder included: move it behind the copies
        # runtime_env shipped, which are the driver's files on any node.
        while str(folder) in sys.path:
            sys.path.remove(str(folder))
        sys.path.append(str(folder))
    tops: set[str] = set()
    for i, name in enumerate(names):
        if name not in _brought_in:
            before = set(sys.modules)
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 (whatever the user's code raises, it is one line here)
                raise ImportFailed(i, name, last_line(e)) from None
            except SystemExit as e:
                raise ImportFailed(i, name, f"SystemExit({e.code!r}) at import") from None
            new = {m.partition(".")[0] for m in set(sys.modules) - before} | {name.partition(".")[0]}
            _brought_in[name] = {t for t in new if t not in PROJECT_PACKAGES and _is_users(sys.modules.get(t))}
        tops |= _brought_in[name]
    return sorted(tops)


def last_line(error: BaseException) -> str:
    """``Type: message``, the message's last line (a SyntaxError's names the file and line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__


def _files(module: ModuleType) -> list[tuple[str, Path]]:
    """(name relative to the module's parent folder, path) of every .py file of a module or package."""
    if hasattr(module, "__path__"):
        root = Path(next(iter(module.__path__)))
        return [(f"{root.name}/{p.relative_to(root).as_posix()}", p) for p in sorted(root.rglob("*.py"))
                if "__pycache__" not in p.parts]
    path = Path(module.__file__)
    return [(path.name, path)]


def code_sources(user_modules: list[str]) -> dict[str, str]:
    """File -> sha256 of its bytes, for ``gsf`` and the user's top-level ``user_modules``."""
    out = {}
    for name in [*MODEL_PACKAGES, *user_modules]:
        module = sys.modules.get(name) or importlib.import_module(name)
        for rel, path in _files(module):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return dict(sorted(out.items()))


def uses(objects, user_modules: list[str]) -> bool:
    """Whether any of ``objects`` (module factories, backbone builders) is defined in the user's
    code. A trial whose model uses it has all of the user's modules in its identity (their
    helpers may be shared), one built from gsf alone has none: editing your module re-runs the
    rows it is in, not TSN's."""
    tops = {(getattr(getattr(o, "func", o), "__module__", None) or "").partition(".")[0] for o in objects}
    return bool(tops & set(user_modules))


def digest(sources: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()[:12]


def files_of(sources: dict[str, str], user_modules) -> dict[str, str]:
    """The entries of ``sources`` that belong to gsf and to the top-level ``user_modules``."""
    tops = (*MODEL_PACKAGES, *user_modules)
    return {k: v for k, v in sources.items() if k.partition("/")[0] in tops or k.removesuffix(".py") in tops}


def listing(sources: dict[str, str]) -> dict[str, str]:
    """``sources`` with each sha256 cut to 16 hex digits: what a run's ``model_code_sources`` tag
    lists (MLflow holds at most 8,000 characters a tag; the digest stays the identity)."""
    return {k: v[:16] for k, v in sources.items()}


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def py_modules(user_modules: list[str]) -> list[str]:
    """The paths (a package folder or a .py file) of the user's imported modules: what Ray's
    ``runtime_env["py_modules"]`` ships from the driver, and (a trial's ``user_code`` tag) where a
    worker found them."""
    out = []
    for name in user_modules:
        module = sys.modules[name]
        out.append(str(Path(next(iter(module.__path__)))) if hasattr(module, "__path__") else module.__file__)
    return out


def _is_users(module: ModuleType | None) -> bool:
    """A module from a file outside the environment (not the standard library, not site-packages)."""
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py"):
        return False
    path = Path(file).resolve()
    installed = [*site.getsitepackages(), site.getusersitepackages(), sysconfig.get_paths()["stdlib"],
                 sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return not any(path.is_relative_to(Path(p).resolve()) for p in installed if p)
