"""The run's procedure file: what ``resume`` needs to rebuild the MSTs, from any folder.

The procedure (with ``make_estimator``) is pickled with cloudpickle into
``procedure.pkl`` in the run directory. The user's own modules that define the
factory or the procedure's class go by value, so loading the file does not
import them; ``modules.json`` beside it records the file of every user module
the pickle still names (a module the factory imports, for instance), and
``load_procedure`` puts their folders on ``sys.path``. So ``modelhopper resume
RUN`` works from any folder without ``PYTHONPATH``; when a module is gone, the
error names the file it was loaded from.

A user module is one that is not part of Python, of an installed package or of
modelhopper: a file of your project, a spec file, a test.
"""

from __future__ import annotations

import json
import pickletools
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

from modelhopper.errors import ConfigError, StoreError

__all__ = ["PROCEDURE_FILE", "MODULES_FILE", "dump_procedure", "load_procedure", "write_procedure"]

PROCEDURE_FILE = "procedure.pkl"
MODULES_FILE = "modules.json"
BY_VALUE_MAX_BYTES = 64 * 2**20  # beyond this, user modules stay references (paths recorded)

_PACKAGE = Path(__file__).resolve().parent
_PATHS = sysconfig.get_paths()
_SYSTEM = {
    Path(p).resolve()
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              *(_PATHS[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")))
    if Path(p).resolve() != Path(p).resolve().parent  # never the file system's root
}  # fmt: skip


def _user_file(module: ModuleType | None) -> Path | None:
    """The file of a user module; None for Python's, an installed package's or ours."""
    if module is None or module.__name__ == "__main__":
        return None
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    if "site-packages" in path.parts or "dist-packages" in path.parts:
        return None
    if path.is_relative_to(_PACKAGE) or any(path.is_relative_to(p) for p in _SYSTEM):
        return None
    return path


def _strings(blob: bytes) -> set[str]:
    """The strings a pickle holds (module names among them)."""
    found = set()
    try:
        for opcode, arg, _ in pickletools.genops(blob):
            if isinstance(arg, str) and "UNICODE" in opcode.name:
                found.add(arg)
    except Exception:  # not a pickle this module reads: it names nothing
        return set()
    return found


def _referenced(blob: bytes) -> dict[str, Path]:
    """User modules whose names the pickle holds, with their files."""
    found = {}
    for name in _strings(blob):
        path = _user_file(sys.modules.get(name))
        if path is not None:
            found[name] = path
    return found


def dump_procedure(procedure: Any) -> tuple[bytes, dict[str, str]]:
    """The pickled procedure, its factory's and class's user modules by value, and the
    files of the user modules it names (module name -> file)."""
    owners = {getattr(procedure.make_estimator, "__module__", None), type(procedure).__module__}
    registered = cloudpickle.list_registry_pickle_by_value()
    by_value = []
    for name in owners:
        module = sys.modules.get(name) if isinstance(name, str) else None
        if module is not None and name not in registered and _user_file(module) is not None:
            by_value.append(module)
    try:
        by_reference = cloudpickle.dumps(procedure)
    except Exception as e:
        raise ConfigError(
            f"the procedure cannot be saved with the run ({type(e).__name__}: {e}); build "
            "what make_estimator needs (models, data, locks, open files) inside it instead "
            "of capturing them from the enclosing scope"
        ) from e
    blob = by_reference
    if by_value:
        for module in by_value:
            cloudpickle.register_pickle_by_value(module)
        try:
            blob = cloudpickle.dumps(procedure)
        except Exception:  # a module-level object that cannot be pickled: keep references
            blob = by_reference
        finally:
            for module in by_value:
                cloudpickle.unregister_pickle_by_value(module)
        if blob is not by_reference and not _loads(blob, BY_VALUE_MAX_BYTES):
            blob = by_reference  # too big, or a module-level object that does not load back
    return blob, {name: str(path) for name, path in _referenced(blob).items()}


def _loads(blob: bytes, max_bytes: int) -> bool:
    if len(blob) > max_bytes:
        return False
    try:
        cloudpickle.loads(blob)
    except Exception:
        return False
    return True


def write_procedure(directory: Path, blob: bytes, modules: dict[str, str]) -> None:
    (directory / PROCEDURE_FILE).write_bytes(blob)
    (directory / MODULES_FILE).write_text(json.dumps(modules, indent=1, sort_keys=True))


def _root(name: str, file: Path) -> Path:
    """The folder to put on sys.path so that ``import name`` finds ``file``."""
    depth = name.count(".") + (file.name == "__init__.py")
    return file.parents[min(depth, len(file.parents) - 1)]


def load_procedure(directory: Path) -> Any:
    """The run's procedure; the folders of the user modules it needs go on ``sys.path``."""
    path = directory / PROCEDURE_FILE
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e}; was the run directory moved?") from e
    modules = _recorded(directory)
    for name, file in modules.items():
        root = str(_root(name, Path(file)))
        if name not in sys.modules and Path(file).is_file() and root not in sys.path:
            sys.path.append(root)  # after everything else: it shadows nothing installed
    try:
        return cloudpickle.loads(blob)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        top = missing.partition(".")[0]
        recorded = modules.get(missing) or modules.get(top)
        if recorded:
            raise StoreError(
                f"cannot load the run's procedure from {path}: it needs module {missing!r}, "
                f"recorded as {recorded}, which is missing; put the file back there (or make "
                f"module {missing!r} importable, e.g. with PYTHONPATH) and retry"
            ) from e
        raise StoreError(
            f"cannot load the run's procedure from {path}: no module named {missing!r}; make "
            "the module that defines make_estimator importable (PYTHONPATH) and retry"
        ) from e
    except Exception as e:
        raise StoreError(
            f"cannot load the run's procedure from {path} ({type(e).__name__}: {e}); make "
            "the module that defines make_estimator importable (PYTHONPATH) and retry"
        ) from e


def _recorded(directory: Path) -> dict[str, str]:
    """module name -> file, as recorded (runs recorded before this file existed: none)."""
    try:
        recorded = json.loads((directory / MODULES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}
