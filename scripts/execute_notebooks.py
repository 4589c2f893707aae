"""Execute notebooks top to bottom in a fresh kernel and save them with their outputs.

    python scripts/execute_notebooks.py notebooks/00_setup.ipynb [more.ipynb ...]
    python scripts/execute_notebooks.py --normalize-only notebooks/*.ipynb exercises/*.ipynb solutions/*.ipynb

Prints the wall time of each, which is what the per-notebook time budgets refer to.
The kernel runs with the current Python (the course's virtual environment).

Every notebook is saved with the notebook metadata that JupyterLab itself writes when it opens the
notebook with this environment's ``python3`` kernel: the kernel spec's name, display name and
language, and the kernel's ``language_info``. JupyterLab compares these with the saved values when
the kernel starts and marks the notebook as modified when they differ, so a notebook saved with
other values (``"display_name": "Python 3"``, or a bare ``{"name": "python"}`` language_info) opens
as modified. ``language_info.version`` is the Python version, so the notebooks open unmodified under
the Python version they were saved with.

``--normalize-only`` rewrites just that metadata, without executing anything; it is idempotent and
leaves a file untouched when nothing changes.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KERNEL_NAME = "python3"


def expected_metadata() -> dict:
    """``kernelspec`` and ``language_info`` as JupyterLab writes them for this environment's python3 kernel."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    return {
        "kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": KERNEL_NAME},
        "language_info": dict(IPythonKernel.language_info),
    }


def normalize(nb: nbformat.NotebookNode, expected: dict | None = None) -> None:
    """Set the notebook's kernelspec and language_info to what JupyterLab would write (in place)."""
    expected = expected or expected_metadata()
    for key, value in expected.items():
        nb.metadata[key] = nbformat.from_dict(value)


def _write(nb: nbformat.NotebookNode, path: Path) -> bool:
    """Write ``nb`` atomically; False (and no write) when the file already holds exactly this text."""
    text = nbformat.writes(nb)
    text = text if text.endswith("\n") else text + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    tmp = path.with_suffix(".ipynb.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # atomic: a failed run never leaves a half-written notebook
    return True


def execute(path: Path, timeout: int = 600) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    normalize(nb)
    _write(nb, path)
    return elapsed


def normalize_file(path: Path, expected: dict | None = None) -> bool:
    """Normalise one notebook's metadata without executing it; True when the file changed."""
    nb = nbformat.read(path, as_version=4)
    normalize(nb, expected)
    return _write(nb, path)


def main(argv: list[str]) -> int:
    only = "--normalize-only" in argv
    names = [a for a in argv if a != "--normalize-only"]
    if not names:
        print(__doc__)
        return 2
    if only:
        expected = expected_metadata()
        for name in names:
            print(f"{name}: {'normalized' if normalize_file(Path(name), expected) else 'unchanged'}", flush=True)
        return 0
    for name in names:
        print(f"{name}: {execute(Path(name)):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
