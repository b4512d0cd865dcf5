"""The book's conventions, checked on the files as committed (no notebook is executed here).

- _toc.yml lists every file it needs, and every notebook in notebooks/ is in it;
- every chapter notebook starts with the Colab setup cell for _config.yml's repository, tagged
  hide-input, has a python3 kernelspec, and is committed without outputs;
- every chapter ends with a summary/exercises section: at least 3 labelled exercises, each with
  at least one dropdown solution;
- every {cite} key used anywhere is defined in book/references.bib;
- scripts/set_repository_url.py rewrites _config.yml and the setup cells consistently.

Each test loops over all notebooks and reports every offender at once, so nothing is skipped
when there are no notebooks yet.
"""
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TOC = ROOT / "_toc.yml"
CONFIG = ROOT / "_config.yml"
BIBLIOGRAPHY = ROOT / "book" / "references.bib"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


set_repository_url = _load_script("set_repository_url")


def toc_files() -> list[str]:
    """Every `file:` of _toc.yml (root first), as written there: no suffix."""
    toc = yaml.safe_load(TOC.read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def toc_notebooks() -> list[Path]:
    return [ROOT / f"{name}.ipynb" for name in toc_files() if name.startswith("notebooks/")]


def existing_toc_notebooks() -> list[Path]:
    return [path for path in toc_notebooks() if path.exists()]


def repository() -> dict:
    return yaml.safe_load(CONFIG.read_text())["repository"]


def bibliography_keys() -> set[str]:
    return set(re.findall(r"^@\w+\{([^,\s]+),", BIBLIOGRAPHY.read_text(), re.MULTILINE))


def markdown_sources() -> dict[str, str]:
    """Every markdown text of the book: book/*.md and the markdown cells of every notebook."""
    sources = {str(path.relative_to(ROOT)): path.read_text() for path in ROOT.glob("book/*.md")}
    for path in sorted(ROOT.glob("notebooks/*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        sources[str(path.relative_to(ROOT))] = "\n\n".join(
            cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    return sources


def directives(markdown: str, name: str) -> list[tuple[str, str]]:
    """(argument, body) of every ```{name} ...``` or :::{name} ...::: block in `markdown`."""
    found, lines, index = [], markdown.splitlines(), 0
    opening = re.compile(r"^\s*(`{3,}|:{3,})\{" + re.escape(name) + r"\}[ \t]*(.*)$")
    while index < len(lines):
        match = opening.match(lines[index])
        index += 1
        if match is None:
            continue
        fence, argument, body = match.group(1), match.group(2).strip(), []
        closing = re.compile(r"^\s*" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$")
        while index < len(lines) and not closing.match(lines[index]):
            body.append(lines[index])
            index += 1
        index += 1
        found.append((argument, "\n".join(body)))
    return found


def option(body: str, name: str) -> str | None:
    match = re.search(r"^\s*:" + re.escape(name) + r":[ \t]*(.*?)\s*$", body, re.MULTILINE)
    return match.group(1) if match else None


def summary_markdown(notebook) -> str | None:
    """Markdown from the first heading that names a summary or exercises to the notebook's end."""
    cells = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]
    heading = re.compile(r"^#{1,6}\s+.*\b(summary|exercises?)\b", re.IGNORECASE | re.MULTILINE)
    for position, source in enumerate(cells):
        match = heading.search(source)
        if match:
            return "\n\n".join([source[match.start():], *cells[position + 1:]])
    return None


# --- the table of contents -------------------------------------------------------------------

def test_toc_is_a_jupyter_book_with_the_expected_parts():
    toc = yaml.safe_load(TOC.read_text())
    assert toc["format"] == "jb-book"
    assert toc["root"] == "book/intro"
    captions = [part["caption"] for part in toc["parts"]]
    assert captions[0] == "Start here" and captions[-1] == "Back matter", captions
    assert set(captions) <= {"Start here", "Foundations", "CapsNet", "Beyond CapsNet",
                             "Back matter"}, captions


def test_every_file_in_the_toc_exists():
    missing = [name for name in toc_files()
               if not any((ROOT / f"{name}{suffix}").exists() for suffix in (".md", ".ipynb"))]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_every_notebook_is_in_the_toc():
    listed = {path.resolve() for path in toc_notebooks()}
    notebooks = sorted(ROOT.glob("notebooks/*.ipynb"))
    unlisted = [str(path.relative_to(ROOT)) for path in notebooks if path.resolve() not in listed]
    assert not unlisted, (f"add these notebooks to _toc.yml (Foundations: 01-03, CapsNet: "
                          f"04-06, Beyond CapsNet: 07-08) as `- file: notebooks/NAME` "
                          f"without .ipynb: {unlisted}")


# --- the chapter notebooks -------------------------------------------------------------------

def test_every_chapter_starts_with_the_colab_setup_cell():
    repo = repository()
    expected = set_repository_url.setup_cell(repo["url"], repo["branch"])
    problems = []
    for path in existing_toc_notebooks():
        cell = next((cell for cell in nbformat.read(path, as_version=4).cells
                     if cell.cell_type == "code"), None)
        if cell is None or cell.source.strip() != expected:
            problems.append(f"{path.name}: first code cell is not the Colab setup cell")
        elif "hide-input" not in cell.metadata.get("tags", []):
            problems.append(f"{path.name}: the setup cell lacks the tag 'hide-input'")
    hint = (f"\nThe first code cell must be exactly:\n{expected}"
            if any("not the Colab setup cell" in problem for problem in problems) else "")
    assert not problems, "\n".join(problems) + hint


def test_every_chapter_has_a_python3_kernel_and_no_stored_outputs():
    problems = []
    for path in existing_toc_notebooks():
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        kernel = notebook.metadata.get("kernelspec", {}).get("name")
        if kernel != "python3":
            problems.append(f"{path.name}: kernelspec name is {kernel!r}, expected 'python3'")
        for number, cell in enumerate(notebook.cells):
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
                problems.append(f"{path.name}: cell {number} has stored outputs or an execution "
                                f"count (clear them: jupyter nbconvert --clear-output --inplace)")
    assert not problems, "\n".join(problems)


def test_every_chapter_ends_with_at_least_three_exercises_with_solutions():
    problems = []
    for path in existing_toc_notebooks():
        summary = summary_markdown(nbformat.read(path, as_version=4))
        if summary is None:
            problems.append(f"{path.name}: no markdown heading with 'Summary' or 'Exercises'")
            continue
        labels = [option(body, "label") for _, body in directives(summary, "exercise")]
        solutions = {argument: option(body, "class")
                     for argument, body in directives(summary, "solution")}
        if len(labels) < 3:
            problems.append(f"{path.name}: {len(labels)} exercise(s) after the summary heading, "
                            f"expected at least 3")
        for label in labels:
            if label is None:
                problems.append(f"{path.name}: an exercise has no :label:")
            elif label not in solutions:
                problems.append(f"{path.name}: exercise {label!r} has no ```{{solution}} {label}")
            elif "dropdown" not in (solutions[label] or ""):
                problems.append(f"{path.name}: solution {label!r} lacks `:class: dropdown`")
    assert not problems, "\n".join(problems)


# --- citations -------------------------------------------------------------------------------

def test_every_cited_key_is_in_the_bibliography():
    keys = bibliography_keys()
    cited = {}
    for source, text in markdown_sources().items():
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
            for key in group.split(","):
                cited.setdefault(key.strip(), source)
    assert cited, "no {cite} found anywhere: the citation check would check nothing"
    unknown = {key: source for key, source in cited.items() if key not in keys}
    assert not unknown, f"cited but not in book/references.bib: {unknown}"


def test_the_bibliography_has_the_keys_the_book_relies_on():
    required = {"sabour2017dynamic", "hinton2011transforming", "hinton2018matrix",
                "mazzia2021efficient", "mitterreiter2023why", "paik2019capsule", "gu2020improving",
                "gu2021capsule", "kosiorek2019stacked", "vaswani2017attention", "sukhbaatar2015end",
                "peer2021limitation", "everett2023vanishing", "byerly2021no", "hinton2021represent",
                "lecun1998gradient", "xiao2017fashion", "kingma2015adam"}
    assert required <= bibliography_keys(), sorted(required - bibliography_keys())


def test_directive_parser_reads_labels_arguments_and_nested_code():
    markdown = ("````{exercise}\n:label: ex-a\n\n```python\nx = 1\n```\n````\n\n"
                ":::{solution} ex-a\n:class: dropdown\n\nText.\n:::\n")
    assert [option(body, "label") for _, body in directives(markdown, "exercise")] == ["ex-a"]
    assert [(argument, option(body, "class")) for argument, body in
            directives(markdown, "solution")] == [("ex-a", "dropdown")]


# --- scripts/set_repository_url.py -----------------------------------------------------------

def test_set_repository_url_rewrites_config_and_setup_cells(tmp_path, monkeypatch):
    shutil.copy(CONFIG, tmp_path / "_config.yml")
    (tmp_path / "notebooks").mkdir()
    old = repository()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# A chapter"),
                      nbformat.v4.new_code_cell(set_repository_url.setup_cell(old["url"],
                                                                              old["branch"])),
                      nbformat.v4.new_code_cell("print('hello')")]
    nbformat.write(notebook, tmp_path / "notebooks" / "01_chapter.ipynb")
    monkeypatch.setattr(set_repository_url, "ROOT", tmp_path)
    monkeypatch.setattr(set_repository_url, "CONFIG", tmp_path / "_config.yml")
    monkeypatch.setattr(set_repository_url, "NOTEBOOKS", tmp_path / "notebooks")

    assert set_repository_url.main(["https://github.com/someone/capsules-fork.git",
                                    "--branch", "gh-pages"]) == 0

    config = yaml.safe_load((tmp_path / "_config.yml").read_text())
    assert config["repository"]["url"] == "https://github.com/someone/capsules-fork"
    assert config["repository"]["branch"] == "gh-pages"
    assert config["launch_buttons"] == yaml.safe_load(CONFIG.read_text())["launch_buttons"]
    cells = nbformat.read(tmp_path / "notebooks" / "01_chapter.ipynb", as_version=4).cells
    assert cells[1].source == set_repository_url.setup_cell(
        "https://github.com/someone/capsules-fork", "gh-pages")
    assert cells[2].source == "print('hello')"


def test_set_repository_url_refuses_what_colab_cannot_open(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(set_repository_url, "CONFIG", tmp_path / "_config.yml")
    assert set_repository_url.main(["https://gitlab.com/someone/book"]) == 2
    assert "https://github.com/OWNER/REPO" in capsys.readouterr().err
    assert not (tmp_path / "_config.yml").exists()


def test_set_repository_url_reports_notebooks_without_the_setup_cell(tmp_path, monkeypatch,
                                                                      capsys):
    shutil.copy(CONFIG, tmp_path / "_config.yml")
    (tmp_path / "notebooks").mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("import torch")]
    nbformat.write(notebook, tmp_path / "notebooks" / "02_other.ipynb")
    monkeypatch.setattr(set_repository_url, "ROOT", tmp_path)
    monkeypatch.setattr(set_repository_url, "CONFIG", tmp_path / "_config.yml")
    monkeypatch.setattr(set_repository_url, "NOTEBOOKS", tmp_path / "notebooks")
    assert set_repository_url.main(["https://github.com/someone/fork"]) == 1
    assert "notebooks/02_other.ipynb" in capsys.readouterr().err
    cells = nbformat.read(tmp_path / "notebooks" / "02_other.ipynb", as_version=4).cells
    assert cells[0].source == "import torch"


@pytest.mark.parametrize("url", ["https://github.com/only-owner", "github.com/a/b",
                                 "https://github.com/a/b/tree/main"])
def test_check_url_names_the_expected_form(url):
    with pytest.raises(ValueError, match="https://github.com/OWNER/REPO"):
        set_repository_url.check_url(url)


# --- capsule_lib.notebook.glue -----------------------------------------------------------------

def test_glue_works_without_myst_nb(monkeypatch, capsys):
    """Colab has no myst-nb: the chapters' glue calls must still run there."""
    from capsule_lib.notebook import glue
    monkeypatch.setitem(sys.modules, "myst_nb", None)        # makes `import myst_nb` fail
    glue("hidden", 1.5, display=False)
    glue("shown", 2.5)
    assert "2.5" in capsys.readouterr().out


def test_chapters_take_glue_from_capsule_lib():
    """myst_nb is a book-build dependency, not capsule_lib's: a chapter importing it breaks Colab."""
    offenders = [path.name for path in existing_toc_notebooks()
                 if any("import myst_nb" in cell.source or "from myst_nb" in cell.source
                        for cell in nbformat.read(path, as_version=4).cells)]
    assert not offenders, f"use `from capsule_lib.notebook import glue` in: {offenders}"
