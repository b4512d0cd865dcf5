"""Point the book at another GitHub repository (and branch), everywhere at once.

    python scripts/set_repository_url.py https://github.com/OWNER/REPO [--branch main]

The repository URL lives in one place, `repository.url` in _config.yml (the book's launch
buttons are built from it), and is repeated, by necessity, in the Colab setup cell that opens
every chapter notebook, because a notebook opened in Colab sees nothing but itself. This script
rewrites them all: the `url:` and `branch:` lines under `repository:` in _config.yml (comments
and layout kept), the setup cell of every notebook in notebooks/ and book/, and the repository
URLs of CITATION.cff, and the capsule_lib install line in the setup cell of every assignment in
assignments/ (their setup cells also start otter-grader). A notebook whose first code cell is not the setup cell is reported and left
alone, and the script exits non-zero. Regenerate the Colab copies afterwards
(python scripts/make_colab_notebooks.py).
"""
import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "_config.yml"
NOTEBOOKS = ROOT / "notebooks"
GITHUB_URL = re.compile(r"https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
BRANCH = re.compile(r"[A-Za-z0-9_./-]+")
SETUP_CELL = '''# Colab setup: installs capsule_lib from the book's repository. Does nothing elsewhere.
import sys
if "google.colab" in sys.modules:
    %pip install -q "capsule_lib @ git+{url}@{branch}"'''
SETUP_CELL_PATTERN = re.compile(
    re.escape(SETUP_CELL).replace(r"\{url\}", f"(?P<url>{GITHUB_URL.pattern})")
                         .replace(r"\{branch\}", f"(?P<branch>{BRANCH.pattern})"))


def setup_cell(url: str, branch: str) -> str:
    """The exact source of the first code cell of every chapter."""
    return SETUP_CELL.format(url=url, branch=branch)


def check_url(url: str) -> str:
    url = url.rstrip("/").removesuffix(".git")
    if not GITHUB_URL.fullmatch(url):
        raise ValueError(f"expected a GitHub repository URL like https://github.com/OWNER/REPO "
                         f"(Colab opens notebooks from GitHub only), got {url!r}")
    return url


def read_repository(config_text: str) -> dict[str, str]:
    """url and branch from the `repository:` block of _config.yml's text."""
    block = re.search(r"^repository:\n((?:[ \t]+.*\n?|\s*\n)*)", config_text, re.MULTILINE)
    if block is None:
        raise ValueError(f"{CONFIG} has no top-level `repository:` block")
    values = dict(re.findall(r"^[ \t]+(url|branch):[ \t]*(\S+)", block.group(1), re.MULTILINE))
    missing = {"url", "branch"} - set(values)
    if missing:
        raise ValueError(f"{CONFIG}: `repository:` needs {sorted(missing)}")
    return values


def rewrite_config(config_text: str, url: str, branch: str) -> str:
    block = re.search(r"^repository:\n((?:[ \t]+.*\n?|\s*\n)*)", config_text, re.MULTILINE)
    body = re.sub(r"^([ \t]+url:[ \t]*)\S+", lambda m: m.group(1) + url, block.group(1),
                  count=1, flags=re.MULTILINE)
    body = re.sub(r"^([ \t]+branch:[ \t]*)\S+", lambda m: m.group(1) + branch, body,
                  count=1, flags=re.MULTILINE)
    return config_text[:block.start(1)] + body + config_text[block.end(1):]


def rewrite_citation(citation_text: str, url: str) -> str:
    """CITATION.cff with every `repository-code:` and `url:` pointing at `url`."""
    return re.sub(r'^([ \t]*(?:repository-code|url):[ \t]*)"?https://github\.com/[^"\s]+"?',
                  lambda m: f'{m.group(1)}"{url}"', citation_text, flags=re.MULTILINE)


def first_code_cell(notebook):
    return next((cell for cell in notebook.cells if cell.cell_type == "code"), None)


def rewrite_notebook(path: Path, url: str, branch: str) -> bool:
    """Rewrite the setup cell of one notebook; False if its first code cell is not one."""
    notebook = nbformat.read(path, as_version=4)
    cell = first_code_cell(notebook)
    if cell is None or not SETUP_CELL_PATTERN.fullmatch(cell.source.strip()):
        return False
    new_source = setup_cell(url, branch)
    if cell.source != new_source:
        cell.source = new_source
        nbformat.write(notebook, path)
    return True


ASSIGNMENT_INSTALL = re.compile(
    rf"capsule_lib @ git\+{GITHUB_URL.pattern}@{BRANCH.pattern}")


def rewrite_assignment(path: Path, url: str, branch: str) -> bool:
    """Point the capsule_lib install line of an assignment's setup cell at url@branch;
    False when its first code cell has no such line."""
    notebook = nbformat.read(path, as_version=4)
    cell = first_code_cell(notebook)
    if cell is None or not ASSIGNMENT_INSTALL.search(cell.source):
        return False
    new_source = ASSIGNMENT_INSTALL.sub(f"capsule_lib @ git+{url}@{branch}", cell.source)
    if cell.source != new_source:
        cell.source = new_source
        nbformat.write(notebook, path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="the new repository, https://github.com/OWNER/REPO")
    parser.add_argument("--branch", help="the branch Colab and the launch buttons use "
                                         "(default: keep the one in _config.yml)")
    args = parser.parse_args(argv)
    try:
        url = check_url(args.url)
        config_text = CONFIG.read_text()
        branch = args.branch or read_repository(config_text)["branch"]
        if not BRANCH.fullmatch(branch):
            raise ValueError(f"branch must be a plain git branch name, got {branch!r}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    CONFIG.write_text(rewrite_config(config_text, url, branch))
    print(f"{CONFIG.relative_to(ROOT)}: repository.url = {url}, branch = {branch}")
    citation = CONFIG.parent / "CITATION.cff"
    if citation.exists():
        citation.write_text(rewrite_citation(citation.read_text(), url))
        print(f"{citation.name}: repository-code and url = {url}")
    not_rewritten = []
    book_notebooks = sorted((CONFIG.parent / "book").glob("*.ipynb"))   # the FAQ
    for path in sorted(NOTEBOOKS.glob("*.ipynb")) + book_notebooks:
        if rewrite_notebook(path, url, branch):
            print(f"{path.relative_to(ROOT)}: setup cell now installs from {url}@{branch}")
        else:
            not_rewritten.append(path.relative_to(ROOT))
    for path in sorted((CONFIG.parent / "assignments").glob("*/*.ipynb")):
        if rewrite_assignment(path, url, branch):
            print(f"{path.relative_to(ROOT)}: setup cell now installs from {url}@{branch}")
        else:
            not_rewritten.append(path.relative_to(ROOT))
    if not_rewritten:
        print("error: these notebooks do not start with the Colab setup cell, fix them by hand:\n"
              + "\n".join(f"  {path}" for path in not_rewritten)
              + f"\nThe first code cell must be exactly:\n{setup_cell(url, branch)}", file=sys.stderr)
        return 1
    print("now regenerate the Colab copies: python scripts/make_colab_notebooks.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
