"""Every code line of every chapter fits the rendered page (checked on the files as committed):
the code cells and the fenced code blocks of markdown cells (exercise solutions).

The book's code blocks show about 80 characters; a longer line makes the reader scroll sideways
and cuts comments and printed messages off mid-word. So every line of every code cell in
notebooks/ has at most MAX_CODE_LINE characters. The one exemption is the Colab setup cell (the
first code cell, tagged hide-input), whose install URL is written by
scripts/set_repository_url.py and cannot be broken. Fix a long line by hand: a trailing comment
goes on its own line above, a long message is split into adjacent string literals, and
`ruff format --line-length 80` does the rest.
"""
import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
MAX_CODE_LINE = 80


def too_long_lines(notebook) -> list[tuple[int, int, str]]:
    """(cell index, length, line) of every code line over MAX_CODE_LINE, setup cell exempt."""
    found, setup_cell_seen = [], False
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if not setup_cell_seen:
            setup_cell_seen = True
            continue
        found += [(index, len(line), line) for line in cell.source.splitlines()
                  if len(line) > MAX_CODE_LINE]
    return found


# A fenced code block in a markdown cell (e.g. an exercise's solution): ```python, ```{code-block}
CODE_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(python|py|ipython3?|bash|text|\{code-block\}.*)\s*$")


def too_long_fenced_lines(notebook) -> list[tuple[int, int, str]]:
    """(cell index, length, line) of every line over MAX_CODE_LINE inside a fenced code block
    of a markdown cell (solutions show their code this way)."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        fence = None
        for line in cell.source.splitlines():
            if fence is None:
                opening = CODE_FENCE.match(line)
                fence = opening.group(1) if opening else None
            elif line.strip() == fence:
                fence = None
            elif len(line) > MAX_CODE_LINE:
                found.append((index, len(line), line))
    return found


def test_every_code_line_fits_the_page():
    notebooks = sorted(ROOT.glob("notebooks/*.ipynb"))
    assert notebooks, "no notebooks found: the check would check nothing"
    problems = [f"{path.name} cell {index}: {length} characters: {line.strip()[:60]}..."
                for path in notebooks
                for notebook in [nbformat.read(path, as_version=4)]
                for index, length, line in (too_long_lines(notebook)
                                            + too_long_fenced_lines(notebook))]
    assert not problems, (f"{len(problems)} code lines longer than {MAX_CODE_LINE} characters "
                          f"(the width of the book's code blocks):\n" + "\n".join(problems))


def test_the_check_finds_a_long_line_and_exempts_only_the_setup_cell():
    notebook = nbformat.v4.new_notebook()
    long_line = "x = " + "1 + " * 30 + "1"
    notebook.cells = [nbformat.v4.new_markdown_cell("# A chapter " + "word " * 40),
                      nbformat.v4.new_code_cell("%pip install " + "a" * 100),
                      nbformat.v4.new_code_cell("short = 1\n" + long_line)]
    assert too_long_lines(notebook) == [(2, len(long_line), long_line)]


def test_the_check_reads_code_fences_in_markdown_but_not_prose():
    long_code = "y = " + "2 * " * 30 + "2"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell(
        "A long prose line " + "word " * 30 + "\n\n````{solution} ex-1\n:class: dropdown\n\n"
        "```python\n" + long_code + "\n```\n\nMore prose " + "word " * 30 + "\n````")]
    assert too_long_fenced_lines(notebook) == [(0, len(long_code), long_code)]
