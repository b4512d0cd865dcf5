"""Check the built book in a real browser: math rendered, figures shown, Colab buttons right.

    jupyter-book build . -n -W --keep-going && python scripts/check_html.py

Headless Chromium opens every page of _toc.yml (the landing page, the other pages and every
chapter notebook) from _build/html through file://, lets their JavaScript run, and reads the
resulting DOM:

- every formula the build wrote (a `math` span or div) became a MathJax `mjx-container`,
  MathJax reported no TeX error (`mjx-merror`), and no raw `$$` is left in the text;
- a chapter shows at least as many PNG images as its executed notebook has PNG outputs;
- a chapter's Colab button opens
  https://colab.research.google.com/github/<owner>/<repo>/blob/<branch>/<path_to_book>/<path>.ipynb
  for the repository, branch and path_to_book ("colab": the chapters' Colab copies, written by
  scripts/make_colab_notebooks.py) of _config.yml, and that file exists in the working tree.

Screenshots of every checked page go to _build/screenshots/. Exits non-zero, naming every
failure, if anything is wrong. Needs /usr/bin/chromium (Debian: apt-get install chromium).
"""
import argparse
import html.parser
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COLAB = "https://colab.research.google.com/github"
SCREENSHOT_SIZE = "1280,2000"


@dataclass
class Page:
    """What the checks need to know about one page of the book."""
    docname: str                  # e.g. "notebooks/02_squash" (a path in _toc.yml, no suffix)
    is_notebook: bool
    images: list[str] = field(default_factory=list)   # src of every <img> in the article
    colab_links: list[str] = field(default_factory=list)
    math_elements: int = 0        # <span/div class="math ..."> in the HTML the build wrote
    mathjax_containers: int = 0   # <mjx-container> after MathJax ran
    mathjax_errors: int = 0       # <mjx-merror>: TeX MathJax could not typeset
    text: str = ""                # visible text outside code blocks and scripts


class _DomReader(html.parser.HTMLParser):
    """Collects images inside the article, links, math elements and visible text."""
    SKIP_TEXT = {"script", "style", "pre", "code", "mjx-container"}

    def __init__(self, page: Page):
        super().__init__()
        self.page = page
        self.open_tags: list[str] = []
        self.article_depth = None
        self.text_parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag in ("img", "br", "meta", "link", "input", "hr", "source"):  # void elements
            self._void(tag, attributes)
            return
        self.open_tags.append(tag)
        if tag == "article" and self.article_depth is None:
            self.article_depth = len(self.open_tags)
        if tag == "a" and (attributes.get("href") or "").startswith(COLAB):
            self.page.colab_links.append(attributes["href"])
        if tag in ("span", "div") and "math" in classes:
            self.page.math_elements += 1
        if tag == "mjx-container":
            self.page.mathjax_containers += 1
        if tag == "mjx-merror":
            self.page.mathjax_errors += 1

    def _void(self, tag, attributes):
        if tag == "img" and self.article_depth is not None:
            self.page.images.append(attributes.get("src") or "")

    def handle_startendtag(self, tag, attrs):
        self._void(tag, dict(attrs))

    def handle_endtag(self, tag):
        if tag not in self.open_tags:
            return
        while self.open_tags:
            closed = self.open_tags.pop()
            if self.article_depth is not None and len(self.open_tags) < self.article_depth:
                self.article_depth = None
            if closed == tag:
                break

    def handle_data(self, data):
        if not self.SKIP_TEXT.intersection(self.open_tags):
            self.text_parts.append(data)


def read_dom(page: Page, dom: str) -> Page:
    reader = _DomReader(page)
    reader.feed(dom)
    page.text = " ".join(reader.text_parts)
    return page


def chromium(url: str, *args: str, timeout: float = 180) -> str:
    """Run headless Chromium on `url` with a fresh profile; return what it printed."""
    browser = Path("/usr/bin/chromium")
    if not browser.exists():
        sys.exit("check_html: /usr/bin/chromium not found; install it with "
                 "`apt-get install -y chromium chromium-driver`")
    with tempfile.TemporaryDirectory(prefix="check-html-profile-") as profile:
        command = [str(browser), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode} on {url}:\n"
                           f"{result.stderr[-2000:]}")
    return result.stdout


def toc_pages(toc_file: Path) -> tuple[str, list[str]]:
    """The root document and every chapter of a jb-book _toc.yml, in order."""
    toc = yaml.safe_load(toc_file.read_text())
    chapters = []

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                chapters.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return toc["root"], chapters


def source_path(docname: str) -> Path | None:
    for suffix in (".ipynb", ".md"):
        path = ROOT / f"{docname}{suffix}"
        if path.exists():
            return path
    return None


def expected_colab_url(docname: str, config: dict) -> str:
    repository = config["repository"]
    match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?", repository["url"])
    if match is None:
        raise ValueError(f"_config.yml repository.url must look like https://github.com/OWNER/REPO, "
                         f"got {repository['url']!r}")
    owner, repo = match.groups()
    book_path = (repository.get("path_to_book") or "").strip("/")
    path = f"{book_path}/{docname}" if book_path else docname
    return f"{COLAB}/{owner}/{repo}/blob/{repository['branch']}/{path}.ipynb"


def png_outputs(executed: Path) -> int:
    notebook = nbformat.read(executed, as_version=4)
    return sum("image/png" in output.get("data", {})
               for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []))


def check_page(page: Page, html_dir: Path, build_dir: Path, config: dict) -> list[str]:
    problems = []
    name = page.docname
    if page.mathjax_containers < page.math_elements:
        problems.append(f"{name}: {page.math_elements} formulas in the HTML but only "
                        f"{page.mathjax_containers} rendered by MathJax (is MathJax loading? "
                        f"see mathjax_path in _config.yml)")
    if page.mathjax_errors:
        problems.append(f"{name}: MathJax could not typeset {page.mathjax_errors} formula(s) "
                        f"(mjx-merror): fix the TeX")
    if "$$" in page.text:
        problems.append(f"{name}: raw `$$` left in the page text: a display formula was not parsed "
                        f"(blank line before and after `$$` blocks?)")
    if not page.is_notebook:
        return problems
    executed = build_dir / "jupyter_execute" / f"{name}.ipynb"
    expected_images = png_outputs(executed) if executed.exists() else 0
    if not executed.exists():
        problems.append(f"{name}: executed notebook {executed} missing: was the chapter executed?")
    shown = [src for src in page.images if src.startswith("data:image/png") or src.endswith(".png")]
    if len(shown) < expected_images:
        problems.append(f"{name}: the executed notebook has {expected_images} PNG figure(s) but the "
                        f"page shows {len(shown)}")
    for src in shown:
        if not src.startswith("data:") and not (html_dir / name).parent.joinpath(src).exists():
            problems.append(f"{name}: image {src} is not in {html_dir}")
    want = expected_colab_url(name, config)
    if want not in page.colab_links:
        problems.append(f"{name}: no Colab button to {want} (found: {page.colab_links or 'none'})")
    opened = ROOT / want.split(f"/blob/{config['repository']['branch']}/", 1)[1]
    if not opened.exists():
        problems.append(f"{name}: the Colab button opens {opened.relative_to(ROOT)}, which does "
                        f"not exist: run python scripts/make_colab_notebooks.py")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / "_build",
                        help="jupyter-book's build folder (default: _build)")
    parser.add_argument("--budget-ms", type=int, default=20000,
                        help="virtual time Chromium gives each page's JavaScript (default 20000)")
    args = parser.parse_args(argv)
    html_dir = args.build_dir / "html"
    screenshots = args.build_dir / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    root, chapters = toc_pages(ROOT / "_toc.yml")
    docnames = [root] + chapters

    problems, pages = [], []
    for docname in docnames:
        html_file = html_dir / f"{docname}.html"
        if not html_file.exists():
            problems.append(f"{docname}: {html_file} missing; build the book first "
                            f"(jupyter-book build . -n -W --keep-going)")
            continue
        url = html_file.resolve().as_uri()
        source = source_path(docname)
        page = Page(docname, is_notebook=source is not None and source.suffix == ".ipynb")
        read_dom(page, chromium(url, f"--virtual-time-budget={args.budget_ms}", "--dump-dom"))
        shot = screenshots / f"{docname.replace('/', '__')}.png"
        chromium(url, f"--virtual-time-budget={args.budget_ms}", f"--screenshot={shot}",
                 f"--window-size={SCREENSHOT_SIZE}", "--hide-scrollbars")
        if not shot.exists() or shot.stat().st_size < 10_000:
            problems.append(f"{docname}: screenshot {shot} missing or blank")
        problems += check_page(page, html_dir, args.build_dir, config)
        pages.append(page)
        print(f"{docname}: {page.mathjax_containers}/{page.math_elements} formulas rendered, "
              f"{len(page.images)} image(s), Colab links {page.colab_links or 'none'}, "
              f"screenshot {shot.relative_to(ROOT) if shot.is_relative_to(ROOT) else shot}")

    if not any(page.math_elements for page in pages):
        problems.append("no page has any formula: the MathJax check checked nothing")
    chapters_checked = [page for page in pages if page.is_notebook]
    if not chapters_checked:
        print("note: _toc.yml lists no chapter notebook yet; only the landing page was checked")
    if problems:
        print("\nHTML check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"HTML check passed: {len(pages)} page(s), {len(chapters_checked)} chapter(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
