"""The Chinese edition of the course (中文版), generated from the English notebooks (issue 15).

The English notebooks stay the single source. A catalogue per notebook, ``i18n/zh/notebooks/<stem>.json`` or
``i18n/zh/exercises/<stem>.json`` (``i18n/zh/START_HERE.json`` for the landing page), holds the Chinese text of
every markdown cell, keyed by :func:`cell_sha` of the English cell, and optionally Chinese text for teaching code
comments::

    {"source": "exercises/08_llama_block.ipynb",
     "cells": [{"en_sha": "<16 hex>", "en_head": "<first line of the English cell>", "zh": "<Chinese markdown>"}],
     "comments": {"<English comment text>": "<Chinese>"}}

:func:`make_translations` writes ``notebooks/zh/<stem>.ipynb`` and ``exercises/zh/<stem>.ipynb``: code cells and
their saved outputs are copied (with the catalogue's comments translated), markdown cells are replaced by their
translations, and relative links, written in the catalogue as in the English notebook, are rewritten to work from
the zh folder (to the Chinese edition of a translated lesson or exercise, else to the English file; a link that
only resolves from the zh folder is kept as it is). A cell
without a translation, a translation of an English text that has since changed, a comment that no longer exists
and a translation that does not use the glossary's terms (:func:`glossary_problems`) each raise
:class:`~tinyllm.errors.TranslationError` naming the notebook and cell. ``tinyllm make-translations [--check]``
is the command; it also renders the glossary ``i18n/zh/glossary.json`` as ``i18n/zh/glossary.md``.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import json
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tinyllm.errors import TranslationError
from tinyllm.grading.generate import dumps
from tinyllm.io.files import atomic_write

LANGUAGE = "zh"
CATALOGUES = f"i18n/{LANGUAGE}"
GLOSSARY = f"{CATALOGUES}/glossary.json"
GLOSSARY_PAGE = f"{CATALOGUES}/glossary.md"
FOLDERS = ("notebooks", "exercises")        # each gets a <folder>/zh/ edition
LANDING = "START_HERE.ipynb"                 # its edition lives with the lessons: notebooks/zh/START_HERE.ipynb
CAPSTONE = "exercises/capstone.ipynb"        # after the exercises: exercises/zh/capstone.ipynb


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------

def cell_sha(source: str) -> str:
    """The key of an English markdown cell: the first 16 hex digits of SHA-256 of its UTF-8 text."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def english_sources(root: str | Path = ".") -> list[str]:
    """Every English notebook that has (or needs) a Chinese edition, as repository paths."""
    root = Path(root)
    found = [LANDING] if (root / LANDING).is_file() else []
    for folder in FOLDERS:
        found += [f"{folder}/{p.name}" for p in sorted((root / folder).glob("[0-9][0-9]_*.ipynb"))]
    if (root / CAPSTONE).is_file():
        found.append(CAPSTONE)
    return found


def edition_path(source: str) -> str:
    """'notebooks/05_transformer.ipynb' -> 'notebooks/zh/05_transformer.ipynb' (START_HERE goes to notebooks/zh/)."""
    folder, name = posixpath.split(source)
    if source == LANDING:
        return f"notebooks/{LANGUAGE}/{LANDING}"
    if folder not in FOLDERS:
        raise TranslationError(f"{source}: only {LANDING} and notebooks in {', '.join(FOLDERS)}/ are translated")
    return f"{folder}/{LANGUAGE}/{name}"


def catalogue_path(source: str) -> str:
    """'exercises/08_llama_block.ipynb' -> 'i18n/zh/exercises/08_llama_block.json'."""
    folder, name = posixpath.split(source)
    stem = posixpath.splitext(name)[0]
    return f"{CATALOGUES}/{folder}/{stem}.json" if folder else f"{CATALOGUES}/{stem}.json"


# ---------------------------------------------------------------------------------------------
# the glossary (术语表)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Term:
    en: str
    zh: str
    pattern: re.Pattern      # the English forms: whole words, any case, plural -s/-es, spaces or hyphens
    note: str = ""


def _form_regex(form: str) -> str:
    words = [re.escape(w) for w in re.split(r"[\s-]+", form.strip())]
    return r"[\s-]+".join(words) + r"(?:s|es)?"


def load_glossary(path: str | Path = GLOSSARY) -> list[Term]:
    """The glossary's terms, longest English term first (so 'activation function' claims its words first)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["terms"]
        terms = []
        for e in entries:
            forms = [e["en"], *e.get("also", [])]
            regex = r"(?<![A-Za-z0-9_])(?:" + "|".join(_form_regex(f) for f in forms) + r")(?![A-Za-z0-9_])"
            terms.append(Term(e["en"], e["zh"], re.compile(regex, re.I), e.get("note", "")))
    except FileNotFoundError:
        raise TranslationError(f"no glossary at {path}; it is {GLOSSARY} in the repository") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise TranslationError(f"{path}: not a glossary ({exc!r}); expected "
                               '{"terms": [{"en": ..., "zh": ..., "also": [...], "note": ...}]}') from None
    return sorted(terms, key=lambda t: (-len(t.en), t.en))


# Text that is not prose: code, formulas, link targets, HTML tags, addresses, file names and paths.
_CODE_AND_MATH = r"```.*?```|~~~.*?~~~|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]*\$|\]\([^)]*\)|<[^>\n]*>|https?://\S+"
_NOT_PROSE = re.compile(_CODE_AND_MATH, re.S)
_NOT_ENGLISH_PROSE = re.compile(_CODE_AND_MATH + r"|[\w.-]*/[\w./-]*|\b[\w-]+\.(?:ipynb|py|md|json|gguf|txt)\b", re.S)


def terms_in(english: str, terms: list[Term]) -> list[Term]:
    """The glossary terms in an English markdown text's prose; a longer term's words do not count again."""
    text = _NOT_ENGLISH_PROSE.sub(" ", english).replace("*", "")       # **Multi-head** attention
    claimed = [False] * len(text)
    found = []
    for term in terms:
        hit = False
        for m in term.pattern.finditer(text):
            if not any(claimed[m.start():m.end()]):
                claimed[m.start():m.end()] = [True] * (m.end() - m.start())
                hit = True
        if hit:
            found.append(term)
    return found


def glossary_problems(cells: list[tuple[str, str, str]], terms: list[Term]) -> list[str]:
    """Check a notebook's translations against the glossary; ``cells`` are (where, English, Chinese) in order.

    When an English cell contains a term, its Chinese cell must contain the term's Chinese; by the first cell of
    the notebook with the term (that cell or an earlier one), the Chinese must also have named the English term,
    as in 中文术语（English term）."""
    problems, seen, named = [], set(), set()
    for where, english, chinese in cells:
        zh_prose = _NOT_PROSE.sub(" ", chinese).replace("*", "")
        named |= {t.en for t in terms if t.pattern.search(zh_prose)}
        for term in terms_in(english, terms):
            if term.zh not in chinese:
                problems.append(f"{where}: the English says {term.en!r}; the glossary's term is {term.zh!r}, "
                                f"which this translation does not use")
            elif term.en not in seen and term.zh != term.en and term.en not in named:
                problems.append(f"{where}: first {term.en!r} of the notebook; write it as {term.zh}（{term.en}）")
            seen.add(term.en)
    return problems


def glossary_markdown(path: str | Path = GLOSSARY) -> str:
    """The glossary as a readable page (i18n/zh/glossary.md)."""
    terms = sorted(load_glossary(path), key=lambda t: t.en.lower())
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    also = {e["en"]: e.get("also", []) for e in data["terms"]}
    lines = [
        "# 术语表（glossary）",
        "",
        "中文版课程的统一译名：每个概念在所有课程中只用一个中文术语；每个 notebook 中某个术语第一次出现时，"
        "写作“中文术语（English term）”。代码、公式、文件名和 logits 等保留英文。",
        "",
        "本页由 `tinyllm make-translations` 根据 [`glossary.json`](glossary.json) 生成，请勿手工修改。",
        "",
        "| English | 中文 | 说明 |",
        "|---|---|---|",
    ]
    for t in terms:
        english = " / ".join([t.en, *also[t.en]])
        lines.append(f"| {english} | {t.zh} | {t.note} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# one notebook
# ---------------------------------------------------------------------------------------------

def _text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _head(text: str) -> str:
    return text.strip().splitlines()[0][:60] if text.strip() else "(empty)"


def read_catalogue(root: Path, source: str) -> dict:
    """The catalogue of ``source``, validated; raises TranslationError naming what is wrong."""
    path = root / catalogue_path(source)
    try:
        cat = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TranslationError(f"{source} has no translation catalogue: write {catalogue_path(source)}") from None
    except ValueError as exc:
        raise TranslationError(f"{catalogue_path(source)} is not valid JSON: {exc}") from None
    bad = (not isinstance(cat, dict) or cat.get("source") != source or not isinstance(cat.get("cells"), list)
           or not all(isinstance(c, dict) and isinstance(c.get("en_sha"), str) and isinstance(c.get("zh"), str)
                      for c in cat["cells"])
           or not isinstance(cat.get("comments", {}), dict)
           or not all(isinstance(k, str) and isinstance(v, str) for k, v in cat.get("comments", {}).items()))
    if bad:
        raise TranslationError(f"{catalogue_path(source)}: expected {{\"source\": {source!r}, \"cells\": "
                               f"[{{\"en_sha\": ..., \"en_head\": ..., \"zh\": ...}}, ...], \"comments\": {{...}}}}")
    return cat


_LINK = re.compile(r"(\]\(|(?:href|src)=\")([^)\"\s]+)")


def relink(text: str, source: str, translated: set[str], root: Path) -> tuple[str, list[str]]:
    """Rewrite the relative links of a translation (written as in the English notebook) for its zh folder."""
    here, there = posixpath.dirname(source), posixpath.dirname(edition_path(source))
    problems = []

    def fix(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:|#|/", target):
            return m.group(0)                                   # an address, an anchor, an absolute path
        path, sep, fragment = target.partition("#")
        repo = posixpath.normpath(posixpath.join(here, path))
        if repo.startswith("..") or not (root / repo).exists():
            from_zh = posixpath.normpath(posixpath.join(there, path))
            if not from_zh.startswith("..") and (root / from_zh).exists():
                return m.group(0)                               # already written for the zh folder
            problems.append(f"link {target!r} points to no file of the repository (from {source})")
            return m.group(0)
        if repo in translated and posixpath.dirname(repo) in FOLDERS:    # a lesson or exercise, not the landing page
            repo = edition_path(repo)
        new = posixpath.relpath(repo, there) + ("/" if path.endswith("/") else "")
        return m.group(1) + new + sep + fragment

    return _LINK.sub(fix, text), problems


def _translate_comments(source: str, comments: dict[str, str], used: set[str]) -> str:
    for english, chinese in comments.items():
        pattern = re.compile(r"(#[ \t]*)" + re.escape(english) + r"(?=[ \t]*$)", re.M)
        source, n = pattern.subn(lambda m: m.group(1) + chinese, source)
        if n:
            used.add(english)
    return source


def translate_notebook(nb: dict, catalogue: dict, source: str, terms: list[Term], translated: set[str],
                       root: Path) -> dict:
    """The Chinese edition of one English notebook; raises TranslationError listing every problem."""
    out = copy.deepcopy(nb)
    cells = out["cells"]
    md = [i for i, c in enumerate(cells) if c.get("cell_type") == "markdown"]
    entries = catalogue["cells"]
    problems = []

    def where(i: int) -> str:
        return f"cell {i + 1} ({_head(_text(cells[i]))!r})"

    pairs: dict[int, dict] = {}
    match = difflib.SequenceMatcher(a=[cell_sha(_text(cells[i])) for i in md], b=[e["en_sha"] for e in entries],
                                    autojunk=False)
    for op, a0, a1, b0, b1 in match.get_opcodes():
        if op == "equal":
            pairs.update({md[a0 + k]: entries[b0 + k] for k in range(a1 - a0)})
            continue
        for k in range(a0, a1):
            old = entries[b0 + k - a0] if op == "replace" and b0 + k - a0 < b1 else None
            if old is not None:
                problems.append(f"{where(md[k])}: stale translation: the English changed since it was translated "
                                f"(catalogue en_sha {old['en_sha']}, English now {cell_sha(_text(cells[md[k]]))}); "
                                f"update its \"zh\" and \"en_sha\"")
            else:
                problems.append(f"{where(md[k])}: no translation; add {{\"en_sha\": "
                                f"\"{cell_sha(_text(cells[md[k]]))}\", ...}} at this position")
        for k in range(b0 + (a1 - a0 if op == "replace" else 0), b1):
            problems.append(f"catalogue entry {k + 1} ({entries[k].get('en_head', '')!r}, en_sha "
                            f"{entries[k]['en_sha']}) matches no English cell any more; remove it")

    glossary_cells = []
    for i in md:
        if i not in pairs:
            continue
        zh = pairs[i]["zh"]
        if _text(cells[i]).strip() and not zh.strip():
            problems.append(f"{where(i)}: empty translation")
        zh, bad_links = relink(zh, source, translated, root)
        problems += [f"{where(i)}: {p}" for p in bad_links]
        glossary_cells.append((where(i), _text(cells[i]), zh))
        cells[i]["source"] = zh
    problems += glossary_problems(glossary_cells, terms)

    comments, used = catalogue.get("comments", {}), set()
    for cell in cells:
        if cell.get("cell_type") == "code" and comments:
            cell["source"] = _translate_comments(_text(cell), comments, used)
    problems += [f"comment {c!r} is in the catalogue but in no code cell any more; remove or update it"
                 for c in comments if c not in used]

    if problems:
        raise TranslationError(f"{catalogue_path(source)} does not fit {source}:\n  " + "\n  ".join(problems))
    out.setdefault("metadata", {}).setdefault("tinyllm", {})["translation"] = {
        "language": LANGUAGE, "source": source,
        "generated_by": "tinyllm make-translations (edit the catalogue, not this file)"}
    return out


# ---------------------------------------------------------------------------------------------
# the whole edition
# ---------------------------------------------------------------------------------------------

def edition_texts(root: str | Path = ".") -> tuple[dict[str, str], list[str]]:
    """({repository path: text} of every generated file, [English notebooks without a catalogue]).

    Raises TranslationError listing the problems of every catalogue."""
    root = Path(root)
    terms = load_glossary(root / GLOSSARY)
    sources = english_sources(root)
    translated = {s for s in sources if (root / catalogue_path(s)).is_file()}
    texts = {GLOSSARY_PAGE: glossary_markdown(root / GLOSSARY)}
    errors = []
    for source in sources:
        if source not in translated:
            continue
        try:
            nb = json.loads((root / source).read_text(encoding="utf-8"))
            cat = read_catalogue(root, source)
            texts[edition_path(source)] = dumps(translate_notebook(nb, cat, source, terms, translated, root))
        except TranslationError as exc:
            errors.append(str(exc))
    strays = sorted(p.relative_to(root / CATALOGUES).as_posix() for p in (root / CATALOGUES).rglob("*.json")
                    if p.name != "glossary.json"
                    and f"{CATALOGUES}/{p.relative_to(root / CATALOGUES).as_posix()}" not in
                    {catalogue_path(s) for s in sources})
    errors += [f"{CATALOGUES}/{s} translates no English notebook (renamed or removed?)" for s in strays]
    if errors:
        raise TranslationError("\n".join(errors))
    return texts, [s for s in sources if s not in translated]


def generated_files(root: Path) -> list[str]:
    """The files now in the zh folders (to find ones no catalogue makes any more)."""
    return sorted(p.relative_to(root).as_posix() for folder in FOLDERS
                  for p in (root / folder / LANGUAGE).glob("*.ipynb"))


def make_translations(root: str | Path = ".", check: bool = False) -> tuple[list[str], list[str]]:
    """Write (or with ``check``, compare) the Chinese edition. Returns (paths written or out of date,
    English notebooks without a catalogue). Files in notebooks/zh/ or exercises/zh/ that no catalogue makes
    are removed (listed as out of date with ``check``)."""
    root = Path(root)
    texts, missing = edition_texts(root)
    changed = []
    for rel, text in texts.items():
        path = root / rel
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                changed.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = text.encode("utf-8")
            atomic_write(path, lambda f: f.write(data))
            changed.append(rel)
    for rel in generated_files(root):
        if rel not in texts:
            if not check:
                (root / rel).unlink()
            changed.append(rel)
    return changed, missing


def add_arguments(parser: argparse.ArgumentParser, command: str = "make-translations") -> None:
    parser.add_argument("--root", default=".", help="the repository's root folder (default: the current folder)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a Chinese notebook is missing, stale or out of date")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not (root / GLOSSARY).is_file():
        print(f"tinyllm make-translations: no {GLOSSARY} under {str(root)!r} (run it from the repository root)",
              file=sys.stderr)
        return 2
    try:
        changed, missing = make_translations(root, check=args.check)
    except TranslationError as exc:
        print(f"tinyllm make-translations: {exc}", file=sys.stderr)
        return 1
    for source in missing:
        print(f"not translated yet: {source} (write {catalogue_path(source)})")
    if args.check:
        for rel in changed:
            print(f"out of date: {rel}")
        if changed:
            print("run `tinyllm make-translations` to regenerate them")
        return 1 if changed or missing else 0
    for rel in changed:
        print(f"{'removed' if not (root / rel).exists() else 'wrote'} {rel}")
    return 0
