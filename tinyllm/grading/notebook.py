"""The learner's notebook: reading it, executing it in a confined Jupyter kernel, and taking its code cells apart
(:class:`Cell`: the top-level definitions the sandbox runs; :func:`library_use`: whether a function uses tinyllm)."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from tinyllm.grading.process import DEFAULT_MEMORY, Confined
from tinyllm.grading.sandbox import clean_source

DEFAULT_NOTEBOOK_TIMEOUT = 600.0   # seconds for the whole notebook run in the kernel


# ---------------------------------------------------------------------------------------------
# source extraction
# ---------------------------------------------------------------------------------------------

@dataclass
class Cell:
    number: int          # 1-based position in the notebook, as the learner counts cells
    source: str
    syntax_error: str | None = None
    defines: tuple[str, ...] = ()
    notebook: str | None = None      # for the capstone: the exercise notebook the cell comes from


def code_cells(nb: dict) -> list[Cell]:
    """The code cells of a notebook dict, each parsed for syntax errors and top-level function names."""
    cells = []
    for i, cell in enumerate(nb.get("cells", []) if isinstance(nb, dict) else []):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        if isinstance(src, list):
            src = "".join(s for s in src if isinstance(s, str))
        if not isinstance(src, str):
            continue
        cells.append(_parse_cell(i + 1, src))
    return cells


def _parse_cell(number: int, src: str) -> Cell:
    try:
        tree = ast.parse(clean_source(src))
    except SyntaxError as exc:
        names = tuple(re.findall(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", src, flags=re.M))
        return Cell(number, src, f"SyntaxError in cell {number}, line {exc.lineno}: {exc.msg}", names)
    except (ValueError, RecursionError, MemoryError) as exc:
        return Cell(number, src, f"cell {number} could not be parsed: {exc}", ())
    names = tuple(n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return Cell(number, src, None, names)


def source_cells(source: str) -> list[Cell]:
    """Treat a plain Python source (a .py file) as one notebook cell."""
    return [_parse_cell(1, source)]


def _tinyllm_import(node: ast.AST) -> str | None:
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name.split(".")[0] == "tinyllm":
                return f"import {a.name}"
    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tinyllm" and node.level == 0:
        return f"from {node.module} import ..."
    return None


def library_use(cells: list[Cell], function: str) -> str | None:
    """How the function ``function`` defined in ``cells`` (or a notebook function it calls) uses tinyllm:
    an import of it, a name bound to it at top level, or a string naming one of its modules
    (``__import__("tinyllm.nn")``).
    None when it does not, as far as the source shows; the sandbox refuses the rest at run time."""
    defs: dict[str, ast.AST] = {}
    aliases: dict[str, str] = {}
    for cell in cells:
        if cell.syntax_error:
            continue
        try:
            tree = ast.parse(clean_source(cell.source))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs[node.name] = node
                aliases.pop(node.name, None)
            elif _tinyllm_import(node):
                for a in node.names:
                    aliases[(a.asname or a.name).split(".")[0]] = _tinyllm_import(node)
    todo, seen = [function], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        body = defs[name].body
        docstring = body[0].value if body and isinstance(body[0], ast.Expr) else None
        for sub in ast.walk(defs[name]):
            found = _tinyllm_import(sub)
            if found:
                return f"`{found}` in `{name}`"
            if (isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub is not docstring
                    and re.match(r"\s*tinyllm(\.|\s*$)", sub.value)):
                return f"the string {sub.value[:40]!r} in `{name}`"
            if isinstance(sub, ast.Name):
                if sub.id in aliases:
                    return f"`{sub.id}` from `{aliases[sub.id]}` in `{name}`"
                todo.append(sub.id)
    return None


# ---------------------------------------------------------------------------------------------
# notebooks
# ---------------------------------------------------------------------------------------------

def read_notebook(path: str | Path) -> tuple[dict | None, str | None]:
    """The notebook as a dict, or None and the reason it cannot be read."""
    path = Path(path)
    if path.is_dir():
        return None, f"{path}: a folder, not a notebook"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"{path}: no such file"
    except UnicodeDecodeError:
        return None, f"{path}: not a notebook (not even text); grade a .ipynb file such as exercises/NN_topic.ipynb"
    except OSError as exc:
        return None, f"{path}: cannot be read ({exc.strerror or exc})"
    not_a_notebook = f"{path}: not a notebook; grade a .ipynb file such as exercises/NN_topic.ipynb"
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as exc:
        if path.suffix != ".ipynb":
            return None, not_a_notebook
        return None, (f"{path}: not a valid notebook: invalid JSON at line {exc.lineno}, column {exc.colno} "
                      f"({exc.msg}); restore it from the last working version or regenerate it")
    except RecursionError:
        return None, f"{path}: not a valid notebook: its JSON is nested too deeply"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return None, not_a_notebook if path.suffix != ".ipynb" else f"{path}: not a valid notebook: it has no list of cells"
    return nb, None


def _kernel_manager(box: Confined):
    """A Jupyter kernel manager that starts the kernel confined in ``box``, its output to /dev/null (the
    kernel's own log lines, such as its transport warning, are not the learner's)."""
    from jupyter_client.manager import AsyncKernelManager

    class ConfinedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            kw["env"] = box.env(kw.get("env"))
            kw.update(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=box.scratch)
            cmd = box.command(kernel_cmd, chown=[os.path.realpath(self.connection_file)])
            await super()._async_launch_kernel(cmd, **kw)
            box.sessions.append(self.provisioner.process.pid)

    return ConfinedKernelManager(kernel_name="python3", connection_file=os.path.join(box.scratch, "kernel.json"))


def _errors_only_client(node, **kw):
    """An nbclient that keeps only the error outputs (cut to 4 kB each): a notebook printing gigabytes
    cannot fill the grader's memory."""
    from nbclient import NotebookClient

    class ErrorsOnly(NotebookClient):
        def output(self, outs, msg, display_id, cell_index):
            if msg.get("msg_type") != "error":
                return None
            out = super().output(outs, msg, display_id, cell_index)
            if out is not None:
                out["evalue"] = str(out.get("evalue", ""))[:4000]
                out["traceback"] = []
            return out

    return ErrorsOnly(node, **kw)


def execute_notebook(nb: dict, timeout: float, *, notebook_timeout: float = DEFAULT_NOTEBOOK_TIMEOUT,
                     memory: int = DEFAULT_MEMORY) -> list[str]:
    """Run the notebook in a fresh, confined kernel (errors allowed, each cell limited to ``timeout`` s, the
    whole run to ``notebook_timeout`` s, after which the kernel and everything it started are killed);
    return notes about the cells that failed."""
    import nbformat

    notes: list[str] = []
    try:
        node = nbformat.reads(json.dumps(nb), as_version=4)      # normalises sources split in lines
        for cell in node.cells:
            if cell.get("cell_type") == "code":
                cell["outputs"] = []
    except Exception as exc:  # noqa: BLE001
        return [f"the notebook could not be executed: {exc}"]
    gib = f"{memory / 2**30:.3g} GiB"
    with Confined(memory) as box:
        client = _errors_only_client(node, km=_kernel_manager(box), timeout=int(max(1, timeout)),
                                     kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
                                     record_timing=False, resources={"metadata": {"path": box.scratch}})
        expired = threading.Event()

        def stop() -> None:
            expired.set()
            box.kill()

        watchdog = threading.Timer(notebook_timeout, stop)
        watchdog.daemon = True
        watchdog.start()
        try:
            client.execute()
        except Exception as exc:  # noqa: BLE001 - a dead kernel still gives a report
            if expired.is_set():
                notes.append(f"the notebook did not finish within {notebook_timeout:g} s (the limit for the whole "
                             "run), so its kernel and every process it started were stopped")
            elif type(exc).__name__ == "DeadKernelError":
                notes.append(f"the kernel died while running the notebook: it may have used more memory than the "
                             f"grader allows ({gib}), or called exit")
            else:
                notes.append(f"running the notebook stopped: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}")
        finally:
            watchdog.cancel()
    for i, cell in enumerate(node.cells):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                ename, evalue = out.get("ename", "Error"), out.get("evalue", "")
                if ename == "NotImplementedError":
                    evalue = "not implemented yet"
                if ename == "MemoryError":
                    evalue = f"it used more memory than the grader allows ({gib})"
                first = next((ln.strip() for ln in str(cell.get("source", "")).splitlines() if ln.strip()), "")
                first = first if len(first) <= 40 else first[:37] + "..."
                notes.append(f"cell {i + 1} ({first}) raised {ename}: {evalue}"[:300])
    return notes
