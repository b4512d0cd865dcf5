"""The Colab copies of the chapters (colab/notebooks/, written by scripts/make_colab_notebooks.py).

- the committed copies are what the script writes from the current chapters (not stale);
- no MyST role, directive, target or equation label is left in their Markdown;
- every solution is inside a collapsed <details> block;
- their code cells are the chapters' code cells, metadata included, except the setup cell, which
  pins capsule_lib to this version's tag (so nbval on notebooks/ covers their code);
- the Colab buttons of the book point at files that exist;
- the converter's handling of every MyST construct, on small examples;
- one copy (the FAQ's, seconds) runs from top to bottom, as a smoke test; this is also where
  pytest runs the FAQ's snippets (nbval runs notebooks/, the book build runs them all).
"""
import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


make_colab = _load_script("make_colab_notebooks")
check_html = _load_script("check_html")

SOURCES = make_colab.source_notebooks()
CHAPTERS = [path for path in SOURCES if path.parent.name == "notebooks"]
MYST_LEFTOVERS = {
    "role": re.compile(r"\{[A-Za-z][\w:.-]*\}`"),
    "directive": re.compile(r"^\s*(`{3,}|:{3,})\{", re.MULTILINE),
    "target": re.compile(r"^\s*\([^()\s]+\)=\s*$", re.MULTILINE),
    "equation label": re.compile(r"\$\$\s*\([^()\s]+\)\s*$", re.MULTILINE),
}


def copy_of(source: Path) -> Path:
    return make_colab.copy_path(source)


def read(path: Path):
    return nbformat.read(path, as_version=4)


def markdown(notebook) -> str:
    return "\n\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")


def test_there_are_chapters_to_check():
    assert CHAPTERS, "no notebooks in notebooks/: every test below would check nothing"
    assert ROOT / "book" / "faq.ipynb" in SOURCES


def test_colab_copies_are_up_to_date():
    problems = make_colab.stale_copies()
    assert not problems, ("run `python scripts/make_colab_notebooks.py` and commit colab/:\n"
                          + "\n".join(problems))


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.stem)
def test_no_myst_markup_is_left(source):
    text = markdown(read(copy_of(source)))
    found = {kind: sorted(set(pattern.findall(text)))[:5]
             for kind, pattern in MYST_LEFTOVERS.items() if pattern.search(text)}
    assert not found, f"{copy_of(source).name}: MyST left in the Markdown: {found}"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda path: path.stem)
def test_every_solution_is_collapsed(source):
    solutions = [body for cell in read(source).cells if cell.cell_type == "markdown"
                 for _, body in directives(cell.source, "solution")]
    copy = read(copy_of(source))
    collapsed = [block for cell in copy.cells if cell.cell_type == "markdown"
                 for block in re.findall(r"<details>\n<summary>Solution to .*?</details>",
                                         cell.source, re.DOTALL)]
    assert solutions, f"{source.name} has no solution directive"
    assert len(collapsed) == len(solutions), (f"{copy_of(source).name}: {len(solutions)} "
                                              f"solutions in the source, {len(collapsed)} "
                                              f"collapsed in the copy")
    outside = re.sub(r"<details>.*?</details>", "", markdown(copy), flags=re.DOTALL)
    for body in solutions:
        # the solution's longest line without markup must be in a <details> block, not outside
        plain = [line.strip() for line in body.splitlines()
                 if len(line.strip()) > 30 and not re.search(r"[`{}$:]", line)]
        if plain:
            line = max(plain, key=len)
            assert line not in outside, f"{copy_of(source).name}: solution text shown: {line!r}"
            assert any(line in block for block in collapsed), line


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.stem)
def test_code_cells_are_the_sources_with_a_pinned_setup_cell(source):
    original = [cell for cell in read(source).cells if cell.cell_type == "code"]
    copied = [cell for cell in read(copy_of(source)).cells if cell.cell_type == "code"]
    assert len(copied) == len(original), f"{copy_of(source).name}: code cells added or lost"
    url, _ = make_colab.repository()
    tag = make_colab.library_tag()
    assert copied[0].source == make_colab.colab_setup_cell(url, tag)
    assert f"@{tag}\"" in copied[0].source and tag != "v" and "@main" not in copied[0].source
    assert copied[0].metadata == original[0].metadata
    for number, (mine, theirs) in enumerate(zip(copied[1:], original[1:]), start=1):
        assert (mine.source, mine.metadata) == (theirs.source, theirs.metadata), (
            f"{copy_of(source).name}: code cell {number} differs from the source's")


def test_the_faq_starts_with_the_setup_cell_of_the_repository():
    url, branch = make_colab.repository()
    first_code_cell = next(cell for cell in read(ROOT / "book" / "faq.ipynb").cells
                           if cell.cell_type == "code")
    assert first_code_cell.source == make_colab.setup_cell(url, branch)
    assert "hide-input" in first_code_cell.metadata.get("tags", [])


def test_the_pinned_tag_is_the_library_version():
    import capsule_lib
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert make_colab.library_tag() == f"v{capsule_lib.__version__}"
    assert f'version = "{capsule_lib.__version__}"' in pyproject


def test_colab_buttons_point_at_the_copies():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["path_to_book"] == "colab"
    for source in SOURCES:
        url = check_html.expected_colab_url(make_colab.document_name(source), config)
        path = url.split(f"/blob/{config['repository']['branch']}/", 1)[1]
        assert (ROOT / path).resolve() == copy_of(source).resolve(), url
        assert copy_of(source).exists(), f"the Colab button of {source.name} opens a missing file"


def directives(text: str, name: str) -> list[tuple[str, str]]:
    """(argument, body) of every {name} directive: the convention tests' parser."""
    spec = importlib.util.spec_from_file_location("conventions",
                                                  ROOT / "tests" / "test_notebook_conventions.py")
    conventions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conventions)
    return conventions.directives(text, name)


# --- the converter on small examples ---------------------------------------------------------

@pytest.fixture(scope="module")
def references():
    return make_colab.read_bibliography()


@pytest.fixture
def convert(references):
    """convert(markdown) -> plain Markdown, in a chapter that defines a few targets."""
    chapter_text = ("(sec-intro)=\n# Intro\n\n$$\nx\n$$ (eq-a)\n\n"
                    "````{exercise}\n:label: ex-a\n\nDo it.\n````\n\n"
                    "```{math}\n:label: eq-b\ny\n```\n")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(chapter_text)])
    fig = nbformat.v4.new_code_cell("plt.show()")
    fig.metadata["mystnb"] = {"figure": {"name": "fig-a", "caption": "A figure."}}
    notebook.cells.append(fig)
    chapter = make_colab.index_chapter("notebooks/01_x", notebook)
    other = make_colab.index_chapter("notebooks/02_y", nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 02 Other\n\n````{exercise}\n:label: ex-other\nQ\n````")]))
    page = make_colab.Chapter("book/running-locally", "Running the book locally")
    page.is_notebook = False
    pages = {"notebooks/01_x": chapter, "notebooks/02_y": other, "book/running-locally": page}
    context = make_colab.Context(chapter, pages, references, "o/r", "v9.9")

    def run(text: str) -> str:
        return "\n".join(make_colab.convert_lines(text.splitlines(), context))
    run.context = context
    return run


def test_citations_read_author_year(convert):
    assert convert("{cite}`sabour2017dynamic`") == "(Sabour et al., 2017)"
    assert convert("{cite:p}`gu2020improving,sabour2017dynamic`") == (
        "(Gu and Tresp, 2020; Sabour et al., 2017)")
    assert convert("as {cite:t}`hinton2021represent` says") == "as Hinton (2021) says"
    assert convert.context.cited == ["sabour2017dynamic", "gu2020improving", "hinton2021represent"]
    with pytest.raises(make_colab.ConversionError, match="nosuchkey"):
        convert("{cite}`nosuchkey`")


def test_references_become_numbered_text(convert):
    assert convert("see {numref}`fig-a` and {numref}`Figure %s <fig-a>`") == (
        "see Fig. 1 and Figure 1")
    assert convert("{eq}`eq-a`, {eq}`eq-b`") == "(1), (2)"
    assert convert("{ref}`ex-a`; {ref}`the task <ex-a>`; {ref}`sec-intro`") == (
        "Exercise 1; the task; “Intro”")
    assert convert("{ref}`ex-other`") == "Exercise 1 of “02 Other”"
    assert convert("{doc}`../book/running-locally`") == (
        "[Running the book locally](https://github.com/o/r/blob/v9.9/book/running-locally.md)")
    with pytest.raises(make_colab.ConversionError, match="fig-missing"):
        convert("{numref}`fig-missing`")


def test_glue_math_and_code_spans(convert):
    assert convert("r = {glue:text}`crossing:.2f`, {glue:}`a` {glue:md}`verdict`") == (
        "r = `<crossing>`, `<a>` `<verdict>`")
    assert convert("{math}`x^2` and `{cite}` in code") == "$x^2$ and `{cite}` in code"
    assert convert("```{glue:figure} fig_key\n:name: fig-g\nCaption.\n```").startswith(
        "*In the book, the figure or value the code stores as `<fig_key>` is shown here.*")


def test_math_blocks_get_tags(convert):
    assert convert("$$\nx\n$$ (eq-a)") == "$$\nx\n\\tag{1}\n$$"
    assert convert("$$ y $$ (eq-a)") == "$$\ny\n\\tag{1}\n$$"
    assert convert("```{math}\n:label: eq-b\ny\n```") == "$$\ny\n\\tag{2}\n$$"
    assert convert("$$\nz\n$$") == "$$\nz\n$$"


def test_exercises_solutions_and_admonitions(convert):
    exercise = convert("````{exercise} A title\n:label: ex-a\n\nDo {cite}`sabour2017dynamic`.\n"
                       "```python\nx = {1: 2}\n```\n````")
    assert exercise == ("**Exercise 1** (A title)\n\nDo (Sabour et al., 2017).\n"
                        "```python\nx = {1: 2}\n```")
    solution = convert(":::{solution} ex-a\n:class: dropdown\n\nAnswer $x$.\n:::")
    assert solution == ("<details>\n<summary>Solution to Exercise 1</summary>\n\nAnswer $x$.\n\n"
                        "</details>")
    assert convert("```{note}\nMind {eq}`eq-a`.\n```") == "> **Note**\n>\n> Mind (1)."
    assert convert(":::{admonition} Careful\n:class: dropdown\nText.\n:::") == (
        "<details>\n<summary>Careful</summary>\n\nText.\n\n</details>")
    assert convert("```{figure} ../images/a.png\n:name: fig-x\n:alt: an a\nThe caption.\n```") == (
        "![an a](https://raw.githubusercontent.com/o/r/v9.9/images/a.png)\n\n*The caption.*")


def test_relative_links_and_images_point_at_github_or_colab(convert):
    assert convert("[the page](../book/running-locally.md) and [ch 2](02_y.ipynb#sec)") == (
        "[the page](https://github.com/o/r/blob/v9.9/book/running-locally.md) and "
        "[ch 2](https://colab.research.google.com/github/o/r/blob/v9.9/colab/notebooks/02_y.ipynb"
        "#sec)")
    assert convert("![a digit](../images/d.png) [web](https://x.org) `[a](b)`") == (
        "![a digit](https://raw.githubusercontent.com/o/r/v9.9/images/d.png) [web](https://x.org) "
        "`[a](b)`")


def test_targets_comments_and_the_bibliography(convert):
    assert convert("(sec-x)=\n% a comment\n## Heading") == "## Heading"
    assert convert("```{bibliography}\n```") == "<!-- works cited -->"


def test_unknown_markup_is_an_error(convert):
    with pytest.raises(make_colab.ConversionError, match="tab-set"):
        convert("::::{tab-set}\nx\n::::")
    with pytest.raises(make_colab.ConversionError, match="unknownrole"):
        convert("{unknownrole}`x`")


def test_a_chapter_copy_lists_its_works_cited():
    copy = read(copy_of(CHAPTERS[0]))
    assert copy.cells[-1].source.startswith("### Works cited\n\n- ")


# --- smoke test --------------------------------------------------------------------------------

def test_a_colab_copy_runs_from_top_to_bottom():
    """The FAQ's copy (seconds): the copies run outside Colab as the sources do."""
    from nbclient import NotebookClient
    path = make_colab.OUTPUT / "book" / "faq.ipynb"
    notebook = read(path)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells)
    assert not [output for cell in code_cells for output in cell.outputs
                if output.output_type == "error"]
