"""The Chinese edition (issue 15): every English notebook has a catalogue, every catalogue is complete, current and
follows the glossary, the committed notebooks/zh/ and exercises/zh/ are exactly what `tinyllm make-translations`
makes, their links work from there, and a Chinese exercise notebook grades exactly like the English one."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllm import i18n
from tinyllm.errors import TranslationError
from tinyllm.grading.runner import grade_notebook, lesson_for, lessons

ROOT = Path(__file__).resolve().parents[1]

SOURCES = i18n.english_sources(ROOT)
TRANSLATED = [s for s in SOURCES if (ROOT / i18n.catalogue_path(s)).is_file()]


# --- the course's own catalogues --------------------------------------------------------------------

def test_every_english_notebook_has_a_catalogue():
    missing = sorted(s for s in SOURCES if s not in TRANSLATED)
    assert not missing, f"no Chinese translation for {missing}: write {[i18n.catalogue_path(s) for s in missing]}"
    assert "START_HERE.ipynb" in TRANSLATED and all(f"notebooks/{p.name}" in TRANSLATED
                                                   for p in sorted((ROOT / "notebooks").glob("[01][0-9]_*.ipynb")))
    assert all(f"exercises/{p.name}" in TRANSLATED for p in sorted((ROOT / "exercises").glob("*.ipynb")))


@pytest.mark.parametrize("source", TRANSLATED)
def test_catalogue_is_complete_current_and_follows_the_glossary(source):
    """Raises TranslationError naming each cell with no translation, a stale one, or one off the glossary."""
    nb = json.loads((ROOT / source).read_text(encoding="utf-8"))
    cat = i18n.read_catalogue(ROOT, source)
    i18n.translate_notebook(nb, cat, source, i18n.load_glossary(ROOT / i18n.GLOSSARY), set(TRANSLATED), ROOT)


def test_committed_edition_equals_what_the_generator_makes():
    changed, missing = i18n.make_translations(ROOT, check=True)
    assert not changed, f"out of date: {changed}; run `tinyllm make-translations` (make translations) and commit"
    assert set(missing) == {s for s in SOURCES if s not in TRANSLATED}


@pytest.mark.parametrize("source", TRANSLATED)
def test_edition_copies_code_and_outputs_and_its_links_work(source):
    english = json.loads((ROOT / source).read_text(encoding="utf-8"))
    path = ROOT / i18n.edition_path(source)
    chinese = json.loads(path.read_text(encoding="utf-8"))
    assert len(chinese["cells"]) == len(english["cells"])
    comments = bool(i18n.read_catalogue(ROOT, source).get("comments"))
    for en, zh in zip(english["cells"], chinese["cells"]):
        assert zh["cell_type"] == en["cell_type"] and zh.get("id") == en.get("id")
        if en["cell_type"] == "code":
            assert zh["outputs"] == en["outputs"] and zh["execution_count"] == en["execution_count"]
            assert zh["metadata"] == en["metadata"] and (comments or zh["source"] == en["source"])
        else:
            assert re.search(r"[\u4e00-\u9fff]", "".join(zh["source"])) or not "".join(en["source"]).strip()
            for target in re.findall(r"\]\(([^)#\s]+)", "".join(zh["source"])):
                if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target):
                    assert (path.parent / target).exists(), f"{path.name}: link {target} leads nowhere"
    assert lesson_for(path, chinese) == lesson_for(ROOT / source, english)


@pytest.mark.parametrize("lesson", lessons())
def test_chinese_exercise_filled_with_the_solutions_scores_full_marks(lesson, tmp_path):
    """The grader takes exercises/zh/NN_topic.ipynb for lesson NN and grades it exactly as the English one."""
    source = f"exercises/{lesson}.ipynb"
    path = ROOT / i18n.edition_path(source)
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert lesson_for(path, nb) == lesson
    solution = json.loads((ROOT / "solutions" / f"{lesson}.ipynb").read_text(encoding="utf-8"))
    answers = {c["metadata"]["nbgrader"]["grade_id"]: c["source"] for c in solution["cells"]
               if c["cell_type"] == "code" and c["metadata"].get("nbgrader", {}).get("solution")}
    filled = 0
    for cell in nb["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if cell["cell_type"] == "code" and grade_id in answers:
            cell["source"], filled = answers[grade_id], filled + 1
    assert filled == len(answers) > 0
    target = tmp_path / "exercises" / "zh" / path.name
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
    report = grade_notebook(target, execute=False)
    assert report.error is None and report.lesson == lesson and report.full_marks, [
        (e.function, e.message) for e in report.exercises]
    stub = grade_notebook(path, execute=False)
    assert stub.error is None and stub.score == 0 and stub.max_score == report.max_score


def test_lesson_code_does_not_depend_on_the_working_directory():
    """The Chinese notebooks run one folder deeper (notebooks/zh/), so code cells must not find files from the
    working directory; they use the package's location (``Path(tinyllm.__file__)``) instead."""
    bad = re.compile(r"Path\.cwd\(\)|os\.getcwd\(\)|os\.chdir\(|[\"'](?:\.\./|\./)|[\"'](?:notebooks|exercises|"
                     r"solutions|benchmarks|scripts|tests|i18n)/")
    offenders = []
    for source in SOURCES:
        for n, cell in enumerate(json.loads((ROOT / source).read_text(encoding="utf-8"))["cells"], 1):
            if cell["cell_type"] == "code":
                offenders += [f"{source} cell {n}: {m.group(0)}" for m in bad.finditer("".join(cell["source"]))]
    assert not offenders, offenders


def test_glossary_has_the_terms_of_the_brief_and_one_chinese_term_each():
    terms = {t.en: t.zh for t in i18n.load_glossary(ROOT / i18n.GLOSSARY)}
    assert {"parameter": "参数", "initialisation": "初始化", "gradient descent": "梯度下降", "backpropagation": "反向传播",
            "token": "词元", "tokenizer": "分词器", "attention": "注意力", "quantisation": "量化", "pruning": "剪枝",
            "distillation": "蒸馏", "perplexity": "困惑度", "KV cache": "键值缓存"}.items() <= terms.items()
    data = json.loads((ROOT / i18n.GLOSSARY).read_text(encoding="utf-8"))
    english = [e["en"].lower() for e in data["terms"]]
    assert len(english) == len(set(english)), "a term is listed twice"


def test_readme_has_a_chinese_section_and_the_rule_for_contributors():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    top = readme[:readme.index("\n## ")]
    assert "中文" in top and "make lab" in top and "make test" in top and "notebooks/zh/" in top
    assert "make translations" in readme and "same commit" in readme


# --- the generator, on a small repository ----------------------------------------------------------

def _md(text):
    return {"cell_type": "markdown", "id": "m" + i18n.cell_sha(text)[:8], "metadata": {}, "source": text}


def _code(text, output="4\n"):
    return {"cell_type": "code", "id": "c" + i18n.cell_sha(text)[:8], "metadata": {}, "execution_count": 1,
            "source": text, "outputs": [{"name": "stdout", "output_type": "stream", "text": output.splitlines(keepends=True)}]}


ENGLISH = [
    _md("# 01 · Parameters\n\nA **parameter** and its gradient. See [the next lesson](02_next.ipynb), "
        "[the exercise](../exercises/01_small.ipynb) and the [README](../README.md)."),
    _code("x = 2 + 2  # add the two numbers\nprint(x)"),
    _md("More parameters, and an activation function (`gradient` in code does not count)."),
]
CHINESE = [
    "# 01 · 参数\n\n一个**参数**（parameter）及其梯度（gradient）。见[下一课](02_next.ipynb)、"
    "[练习（exercise）](../exercises/01_small.ipynb)和 [README](../README.md)。",
    "更多参数，以及一个激活函数（activation function）。",
]


def _notebook(cells):
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}


def _catalogue(source, english, chinese, comments=None):
    md = [c["source"] for c in english if c["cell_type"] == "markdown"]
    cat = {"source": source, "cells": [{"en_sha": i18n.cell_sha(e), "en_head": e.splitlines()[0], "zh": z}
                                       for e, z in zip(md, chinese)]}
    if comments:
        cat["comments"] = comments
    return cat


@pytest.fixture
def repo(tmp_path):
    """A repository with one lesson (translated), a second lesson and an exercise (not translated)."""
    (tmp_path / "i18n" / "zh" / "notebooks").mkdir(parents=True)
    (tmp_path / "i18n" / "zh" / "glossary.json").write_text((ROOT / i18n.GLOSSARY).read_text(encoding="utf-8"),
                                                            encoding="utf-8")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "exercises").mkdir()
    (tmp_path / "README.md").write_text("# readme\n", encoding="utf-8")
    for rel, cells in {"notebooks/01_small.ipynb": ENGLISH, "notebooks/02_next.ipynb": [_md("Next.")],
                       "exercises/01_small.ipynb": [_code("pass", "")]}.items():
        (tmp_path / rel).write_text(json.dumps(_notebook(cells)), encoding="utf-8")
    write_catalogue(tmp_path, "notebooks/01_small.ipynb", _catalogue("notebooks/01_small.ipynb", ENGLISH, CHINESE,
                                                                     {"add the two numbers": "把两个数相加"}))
    write_catalogue(tmp_path, "notebooks/02_next.ipynb", _catalogue("notebooks/02_next.ipynb", [_md("Next.")],
                                                                    ["下一课。"]))
    return tmp_path


def write_catalogue(root, source, cat):
    path = root / i18n.catalogue_path(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cat, ensure_ascii=False, indent=1), encoding="utf-8")


def generated(root, source="notebooks/01_small.ipynb"):
    nb = json.loads((root / i18n.edition_path(source)).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        cell["source"] = "".join(cell["source"])
    return nb


def test_generator_replaces_markdown_translates_comments_and_copies_the_rest(repo):
    changed, missing = i18n.make_translations(repo)
    assert missing == ["exercises/01_small.ipynb"]
    assert sorted(changed) == ["i18n/zh/glossary.md", "notebooks/zh/01_small.ipynb", "notebooks/zh/02_next.ipynb"]
    nb = generated(repo)
    first, code, last = nb["cells"]
    assert first["source"].startswith("# 01 · 参数") and last["source"] == CHINESE[1]
    assert code["source"] == "x = 2 + 2  # 把两个数相加\nprint(x)" and code["outputs"] == ENGLISH[1]["outputs"]
    assert nb["metadata"]["tinyllm"]["translation"]["source"] == "notebooks/01_small.ipynb"
    # links: the translated lesson's Chinese edition, else the English file, from one folder deeper
    assert "[下一课](02_next.ipynb)" in first["source"]
    assert "[练习（exercise）](../../exercises/01_small.ipynb)" in first["source"] and "(../../README.md)" in first["source"]
    assert not list((repo / "notebooks" / "zh").glob(".*")), "a temporary file was left behind"


def test_generator_is_deterministic_and_check_mode_writes_nothing(repo):
    i18n.make_translations(repo)
    before = (repo / "notebooks/zh/01_small.ipynb").read_bytes()
    assert i18n.make_translations(repo, check=True)[0] == []
    i18n.make_translations(repo)
    assert (repo / "notebooks/zh/01_small.ipynb").read_bytes() == before
    (repo / "notebooks/zh/01_small.ipynb").write_text("{}", encoding="utf-8")
    (repo / "notebooks/zh/99_gone.ipynb").write_text("{}", encoding="utf-8")
    assert sorted(i18n.make_translations(repo, check=True)[0]) == ["notebooks/zh/01_small.ipynb",
                                                                   "notebooks/zh/99_gone.ipynb"]
    assert (repo / "notebooks/zh/01_small.ipynb").read_text(encoding="utf-8") == "{}"
    i18n.make_translations(repo)
    assert not (repo / "notebooks/zh/99_gone.ipynb").exists()


def _error(repo) -> str:
    with pytest.raises(TranslationError) as info:
        i18n.make_translations(repo)
    return str(info.value)


def test_a_markdown_cell_without_translation_fails_naming_the_cell(repo):
    english = ENGLISH + [_md("A new paragraph.")]
    (repo / "notebooks/01_small.ipynb").write_text(json.dumps(_notebook(english)), encoding="utf-8")
    message = _error(repo)
    assert "cell 4 ('A new paragraph.'): no translation" in message and "01_small" in message


def test_a_stale_translation_fails_naming_the_cell(repo):
    english = [ENGLISH[0], ENGLISH[1], _md("More parameters, and an activation function, changed.")]
    (repo / "notebooks/01_small.ipynb").write_text(json.dumps(_notebook(english)), encoding="utf-8")
    message = _error(repo)
    assert "cell 3 ('More parameters, and an activation function, changed.'): stale translation" in message
    assert "cell 1" not in message


def test_a_removed_cell_and_a_removed_comment_fail(repo):
    english = [ENGLISH[0], _code("x = 2 + 2\nprint(x)")]
    (repo / "notebooks/01_small.ipynb").write_text(json.dumps(_notebook(english)), encoding="utf-8")
    message = _error(repo)
    assert "catalogue entry 2 ('More parameters, and an activation function" in message and "remove it" in message
    assert "comment 'add the two numbers' is in the catalogue but in no code cell" in message


def test_a_missing_catalogue_file_and_a_stray_one(repo):
    with pytest.raises(TranslationError, match="has no translation catalogue: write i18n/zh/exercises/01_small.json"):
        i18n.read_catalogue(repo, "exercises/01_small.ipynb")
    write_catalogue(repo, "notebooks/07_gone.ipynb", {"source": "notebooks/07_gone.ipynb", "cells": []})
    assert "i18n/zh/notebooks/07_gone.json translates no English notebook" in _error(repo)


@pytest.mark.parametrize("chinese, problem", [
    ("更多参数，以及一个激活值函数。", "the English says 'activation function'; the glossary's term is '激活函数'"),
    ("更多的参数（parameter），以及一个激活函数。", "first 'activation function' of the notebook; write it as 激活函数（activation function）"),
    ("更多 parameter，以及一个激活函数（activation function）。", "the English says 'parameter'; the glossary's term is '参数'"),
])
def test_the_glossary_rule(repo, chinese, problem):
    write_catalogue(repo, "notebooks/01_small.ipynb", _catalogue("notebooks/01_small.ipynb", ENGLISH,
                                                                 [CHINESE[0], chinese]))
    assert problem in _error(repo)


def test_the_english_term_may_be_named_in_an_earlier_cell(repo):
    write_catalogue(repo, "notebooks/01_small.ipynb", _catalogue("notebooks/01_small.ipynb", ENGLISH, [
        CHINESE[0] + "（后面会用到激活函数（activation function）。）", "更多参数，以及一个激活函数。"]))
    assert i18n.make_translations(repo)[1] == ["exercises/01_small.ipynb"]


def test_glossary_matching():
    terms = i18n.load_glossary(ROOT / i18n.GLOSSARY)
    found = lambda text: sorted(t.en for t in i18n.terms_in(text, terms))  # noqa: E731
    assert found("Weights, biases and Tokens; the tokenizer's optimizer") == ["bias", "optimiser", "token",
                                                                               "tokenizer", "weight"]
    assert found("the activation function, then the activations") == ["activation", "activation function"]
    assert found("`gradient` in code, $\\text{loss}$, exercises/01_x.ipynb, [x](batch.md)") == []
    assert found("a KV-cache and self-attention") == ["KV cache", "self-attention"]
    assert found("**Multi-head** attention") == ["multi-head attention"]
    assert found("unbiased, lossless, batched, tokens_per_step") == []


def test_a_broken_link_fails(repo):
    english = [_md("See [that](03_missing.ipynb)."), *ENGLISH[1:]]
    (repo / "notebooks/01_small.ipynb").write_text(json.dumps(_notebook(english)), encoding="utf-8")
    write_catalogue(repo, "notebooks/01_small.ipynb", _catalogue("notebooks/01_small.ipynb", english,
                                                                 ["见[那里](03_missing.ipynb)。", CHINESE[1]]))
    assert "link '03_missing.ipynb' points to no file of the repository" in _error(repo)


def test_a_link_already_written_for_the_zh_folder_is_kept(repo):
    write_catalogue(repo, "notebooks/01_small.ipynb", _catalogue("notebooks/01_small.ipynb", ENGLISH, [
        CHINESE[0] + " 另见 [README](../../README.md)。", CHINESE[1]]))
    i18n.make_translations(repo)
    assert "另见 [README](../../README.md)。" in generated(repo)["cells"][0]["source"]


def test_make_translations_command(repo):
    cmd = [sys.executable, "-m", "tinyllm.cli", "make-translations", "--root", str(repo)]
    r = subprocess.run(cmd + ["--check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "out of date: notebooks/zh/01_small.ipynb" in r.stdout
    assert "not translated yet: exercises/01_small.ipynb" in r.stdout
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "wrote notebooks/zh/01_small.ipynb" in r.stdout
    write_catalogue(repo, "exercises/01_small.ipynb", {"source": "exercises/01_small.ipynb", "cells": []})
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "wrote exercises/zh/01_small.ipynb" in r.stdout
    assert subprocess.run(cmd + ["--check"], capture_output=True, text=True, timeout=120).returncode == 0
    (repo / "notebooks/02_next.ipynb").write_text(json.dumps(_notebook([_md("Changed.")])), encoding="utf-8")
    r = subprocess.run(cmd + ["--check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "stale translation" in r.stderr and "02_next" in r.stderr


def test_grading_a_chinese_exercise_hides_the_tinyllm_of_its_repository(tmp_path, monkeypatch):
    """exercises/zh/ is one folder deeper than exercises/: the repository's tinyllm/ is still hidden from the sandbox,
    whatever the working directory."""
    from tinyllm.grading import runner

    lesson = lessons()[0]
    (tmp_path / "tinyllm").mkdir()
    (tmp_path / "tinyllm" / "__init__.py").write_text("", encoding="utf-8")
    notebook = tmp_path / "exercises" / "zh" / f"{lesson}.ipynb"
    notebook.parent.mkdir(parents=True)
    notebook.write_text((ROOT / "exercises" / f"{lesson}.ipynb").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    seen = {}

    def grade_cells(lesson, cells, **kwargs):
        seen.update(kwargs)
        return runner.Report(notebook=str(notebook), lesson=lesson)

    monkeypatch.setattr(runner, "grade_cells", grade_cells)
    report = runner.grade_notebook(notebook, execute=False)
    assert report.lesson == lesson and str((tmp_path / "tinyllm").resolve()) in seen["hidden"]


def _stray_emphasis(markdown: str) -> int:
    """Emphasis markers that CommonMark leaves as literal text (outside code), e.g. ``**推理（inference）**指``:
    a closing ``**`` after a full-width bracket and before a CJK letter does not close."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(markdown)
    text = "".join(child.content for t in tokens if t.type == "inline" for child in (t.children or [])
                   if child.type == "text")
    return text.count("**") + len(re.findall(r"(?<![\w*])\*(?=\S)", text))


@pytest.mark.parametrize("source", TRANSLATED)
def test_chinese_emphasis_renders_like_the_english(source):
    pytest.importorskip("markdown_it")
    nb = json.loads((ROOT / source).read_text(encoding="utf-8"))
    english = {hashlib.sha256(src.encode("utf-8")).hexdigest()[:16]: src
               for src in ("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")}
    bad = [entry["en_sha"] for entry in i18n.read_catalogue(ROOT, source)["cells"]
           if _stray_emphasis(entry["zh"]) > _stray_emphasis(english.get(entry["en_sha"], ""))]
    assert not bad, (f"{source}: bold/italic that does not render in the Chinese of cells {bad}; put a full-width "
                     "bracket after the closing ** (write **推理**（inference）, not **推理（inference）**)")


def test_the_emphasis_check_finds_an_unclosed_bold():
    pytest.importorskip("markdown_it")
    assert _stray_emphasis("**推理（inference）**指的是") > 0
    assert _stray_emphasis("**推理**（inference）指的是") == 0
