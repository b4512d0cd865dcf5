"""Write the Colab copies of the chapters: plain-Markdown notebooks that read right in Colab.

    python scripts/make_colab_notebooks.py            # (re)write colab/**/*.ipynb
    python scripts/make_colab_notebooks.py --check    # exit 1 if any copy is missing or stale

The chapters in notebooks/ are written in MyST: citations, cross-references, glued numbers,
numbered equations, exercise and solution directives. The book's build renders them; Colab and
Jupyter show them as raw text. This script writes, for every notebook page of the book (the
chapters notebooks/NAME.ipynb, and book/faq.ipynb), a copy colab/notebooks/NAME.ipynb
(colab/book/faq.ipynb) in which

- citations read "(Sabour et al., 2017)" or "Sabour et al. (2017)", and the works cited are
  listed at the end of the notebook (where a {bibliography} directive stands, or appended);
- {numref}, {ref} and {eq} references become plain text numbered as in the book ("Fig. 2",
  "Exercise 3", "(1)"), {doc} references links (to a chapter's Colab copy, or to a book page's
  Markdown on GitHub); numbered display equations carry \\tag{N};
- a glued number ({glue:text}`key:.2f` and the other glue roles and directives) becomes the
  placeholder `<key>` that names what the code stores it under (a note at the top explains);
- exercises become "**Exercise N**" paragraphs and every solution an HTML <details> block,
  which Colab and Jupyter show collapsed; admonitions become block quotes; figure captions
  kept in cell metadata are printed under the figure;
- every code cell is the source's, with its metadata, unchanged, except the Colab setup cell,
  which installs capsule_lib at the tag of this version (v + pyproject.toml's version) instead
  of the branch: the copy and the library it installs stay in step. The setup cell still does
  nothing outside Colab, so the copies run locally and in CI as the sources do.

The book's Colab buttons open these copies: _config.yml sets `repository.path_to_book: colab`,
which makes Jupyter Book 1 build the button's URL as .../blob/BRANCH/colab/notebooks/NAME.ipynb
(the copies keep the sources' paths under colab/ for that reason).
tests/test_colab_notebooks.py fails when a copy is stale, so rerun this script after editing a
chapter. A markup this script does not know is an error that names the notebook, not a silent
pass-through.

Why not QuantEcon's sphinx-tojupyter (0.6.0)? It rebuilds notebooks from Sphinx's doctree after a
full book build: code cells come back without their metadata (tags), glued values are baked in
as the numbers of the build machine's run, sphinx-exercise nodes have no translator (solutions
are not collapsed) and every notebook is stamped with the build time, so a committed copy could
not be checked for staleness.
"""
import argparse
import copy
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml
from pybtex.database import parse_file
from pybtex.plugin import find_plugin
from pybtex.richtext import Text

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("notebooks", "book")     # every notebook page of the book: chapters, FAQ
OUTPUT = ROOT / "colab"
BIBLIOGRAPHY = ROOT / "book" / "references.bib"
CONFIG = ROOT / "_config.yml"
PYPROJECT = ROOT / "pyproject.toml"
BOOK_TITLE = "Capsule Networks, from Neurons to Critiques"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from set_repository_url import SETUP_CELL_PATTERN, setup_cell  # noqa: E402

ADMONITIONS = {"note", "tip", "hint", "important", "warning", "caution", "attention", "danger",
               "error", "seealso", "admonition", "margin", "sidebar", "topic", "epigraph"}
GLUE_ROLES = {"glue", "glue:", "glue:text", "glue:md", "glue:any", "glue:math"}
GLUE_DIRECTIVES = {"glue", "glue:", "glue:any", "glue:figure", "glue:math", "glue:md"}
DROPPED_DIRECTIVES = {"tableofcontents", "contents"}
DIRECTIVE_OPENING = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|:{3,})\{(?P<name>[^}\s]+)\}"
                               r"[ \t]*(?P<argument>.*?)\s*$")
CODE_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
ROLE_OR_CODE = re.compile(r"\{(?P<role>[A-Za-z][\w:.-]*)\}`(?P<content>[^`]*)`"
                          r"|(?P<code>(?P<ticks>`+).+?(?P=ticks))"
                          r"|(?P<link>(?P<bang>!?)\[(?P<text>[^\]]*)\]"
                          r"\((?!https?://|mailto:|data:|#)(?P<target>[^)\s]+)\))")
TARGET_LINE = re.compile(r"^\s*\((?P<label>[^()\s]+)\)=\s*$")
EXPLICIT_TITLE = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$", re.DOTALL)
MATH_BLOCK_LABEL = re.compile(r"^\s*\$\$\s*\((?P<label>[^()\s]+)\)\s*$")


class ConversionError(ValueError):
    """A MyST construct the converter does not know, or a reference it cannot resolve."""


# --- bibliography ------------------------------------------------------------------------------

@dataclass
class Reference:
    authors: str     # "Sabour et al.", "Gu and Tresp", "Hinton"
    year: str
    entry: str       # the full reference, as Markdown


def read_bibliography(path: Path = BIBLIOGRAPHY) -> dict[str, Reference]:
    database = parse_file(path)
    style = find_plugin("pybtex.style.formatting", "plain")()
    references = {}
    for key, entry in database.entries.items():
        last_names = [Text(*person.rich_last_names).render_as("text")
                      for person in entry.persons.get("author", [])]
        if len(last_names) >= 3:
            authors = f"{last_names[0]} et al."
        else:
            authors = " and ".join(last_names) or key
        markdown = style.format_entry(key, entry).text.render_as("markdown")
        # pybtex escapes punctuation for Markdown; \( and \) would start MathJax inline math
        markdown = re.sub(r"\\([.\-()!:+#])", r"\1", markdown)
        references[key] = Reference(authors, entry.fields.get("year", "n.d."),
                                    " ".join(markdown.split()))
    return references


# --- what the chapters define: figures, equations, exercises, sections -------------------------

@dataclass
class Target:
    kind: str        # "figure", "equation", "exercise", "section", "table"
    number: int | None
    title: str
    document: str    # "notebooks/02_squash"


@dataclass
class Chapter:
    document: str
    title: str
    is_notebook: bool = True
    targets: dict[str, Target] = field(default_factory=dict)


def closing_line(lines: list[str], start: int, fence: str) -> int:
    """Index of the line that closes `fence` opened just before `start` (len(lines) if none)."""
    closing = re.compile(r"^[ \t]*" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$")
    index = start
    while index < len(lines):
        if closing.match(lines[index]):
            return index
        nested = DIRECTIVE_OPENING.match(lines[index]) or CODE_FENCE.match(lines[index])
        if (nested and nested["fence"][0] == fence[0] and len(nested["fence"]) >= len(fence)
                and lines[index].strip() != nested["fence"]):
            index = closing_line(lines, index + 1, nested["fence"]) + 1
            continue
        index += 1
    return len(lines)


def split_options(body: list[str]) -> tuple[dict[str, str], list[str]]:
    """The `:name: value` (or --- YAML ---) options at the top of a directive body, and the rest."""
    options, index = {}, 0
    if body and body[0].strip() == "---":
        end = next((i for i in range(1, len(body)) if body[i].strip() == "---"), None)
        if end is not None:
            options = {str(k): str(v) for k, v in (yaml.safe_load("\n".join(body[1:end])) or {}).items()}
            index = end + 1
    while index < len(body):
        match = re.match(r"^\s*:(?P<name>[\w-]+):[ \t]*(?P<value>.*?)\s*$", body[index])
        if not match:
            break
        options[match["name"]] = match["value"]
        index += 1
    return options, body[index:]


def index_chapter(document: str, notebook) -> Chapter:
    """Number the chapter's figures, equations and exercises in the order the book does."""
    title = next((line.lstrip("#").strip() for cell in notebook.cells
                  if cell.cell_type == "markdown" for line in cell.source.splitlines()
                  if line.startswith("# ")), document)
    chapter = Chapter(document, title)
    counts = {"figure": 0, "equation": 0, "exercise": 0, "table": 0}

    def add(kind: str, label: str | None, title: str = "", numbered: bool = True):
        number = None
        if numbered:
            counts[kind] += 1
            number = counts[kind]
        if label:
            if label in chapter.targets:
                raise ConversionError(f"{document}: label {label!r} is defined twice")
            chapter.targets[label] = Target(kind, number, title, document)

    def scan_markdown(lines: list[str]):
        """Walk the lines in document order, into directive bodies, past code fences."""
        pending_target, index = None, 0
        while index < len(lines):
            line = lines[index]
            directive, fence = DIRECTIVE_OPENING.match(line), CODE_FENCE.match(line)
            target, heading = TARGET_LINE.match(line), re.match(r"^#{1,6}\s+(.*)$", line)
            if heading and pending_target:
                add("section", pending_target, heading.group(1).strip(), numbered=False)
            pending_target = target["label"] if target else None
            if directive:
                end = closing_line(lines, index + 1, directive["fence"])
                options, body = split_options(lines[index + 1:end])
                name = directive["name"]
                if name == "math":
                    add("equation", options.get("label"), numbered="label" in options)
                elif name in ("figure", "glue:figure"):
                    add("figure", options.get("name"), numbered="name" in options)
                elif name in ("table", "list-table"):
                    add("table", options.get("name"), directive["argument"],
                        numbered="name" in options)
                elif name == "exercise":
                    add("exercise", options.get("label"), directive["argument"],
                        numbered="nonumber" not in options)
                scan_markdown(body)
                index = end + 1
            elif fence:
                index = closing_line(lines, index + 1, fence["fence"]) + 1
            else:
                label = MATH_BLOCK_LABEL.match(line)
                single = re.match(r"^\s*\$\$.+\$\$\s*\((?P<label>[^()\s]+)\)\s*$", line)
                if label or single:
                    add("equation", (label or single)["label"])
                index += 1

    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            scan_markdown(cell.source.splitlines())
        elif cell.cell_type == "code":
            figure = cell.metadata.get("mystnb", {}).get("figure")
            if figure:
                add("figure", figure.get("name"), numbered="name" in figure)
    return chapter


# --- the conversion ----------------------------------------------------------------------------

@dataclass
class Context:
    chapter: Chapter
    chapters: dict[str, Chapter]          # every chapter and book page, by document name
    references: dict[str, Reference]
    owner_repo: str                       # "OWNER/REPO" of the book's GitHub repository
    tag: str                              # the tag the copies pin capsule_lib to, "v0.1.0"
    cited: list[str] = field(default_factory=list)
    bibliography_placed: bool = False

    def page_url(self, document: str) -> str:
        """Where a reader of the Colab copy can open another page: a chapter's Colab copy, or a
        book page's Markdown on GitHub, both at the tag."""
        if document in self.chapters and self.chapters[document].is_notebook:
            return (f"https://colab.research.google.com/github/{self.owner_repo}/blob/{self.tag}/"
                    f"colab/{document}.ipynb")
        return f"https://github.com/{self.owner_repo}/blob/{self.tag}/{document}.md"

    def target(self, label: str) -> Target:
        if label in self.chapter.targets:
            return self.chapter.targets[label]
        for chapter in self.chapters.values():
            if label in chapter.targets:
                return chapter.targets[label]
        raise ConversionError(f"{self.chapter.document}: no figure, equation, exercise or "
                              f"section is labelled {label!r}")


# As Sphinx and sphinx-exercise print them (numfig_format's defaults "Fig. %s", "Table %s")
KIND_NAMES = {"figure": "Fig.", "equation": "Equation", "exercise": "Exercise", "table": "Table"}


def describe(target: Target, context: Context, numref_title: str | None = None) -> str:
    """Plain text for a reference to `target`, e.g. "Fig. 2" or "Exercise 1 of “03 Routing”"."""
    if target.kind == "section":
        text = f"“{target.title}”"
    elif target.number is None:
        text = target.title or KIND_NAMES[target.kind]
    elif numref_title is not None:
        text = numref_title.replace("%s", str(target.number)).replace("{number}",
                                                                      str(target.number))
    elif target.kind == "equation":
        text = f"({target.number})"
    else:
        text = f"{KIND_NAMES[target.kind]} {target.number}"
    if target.document != context.chapter.document:
        other = context.chapters[target.document]
        text += f" of “{other.title}”"
    return text


def cite(role: str, content: str, context: Context) -> str:
    keys = [key.strip() for key in content.split(",") if key.strip()]
    unknown = [key for key in keys if key not in context.references]
    if unknown:
        raise ConversionError(f"{context.chapter.document}: {{{role}}} cites {unknown}, which "
                              f"book/references.bib does not define")
    for key in keys:
        if key not in context.cited:
            context.cited.append(key)
    references = [context.references[key] for key in keys]
    variant = role.partition(":")[2] or "p"
    if variant in ("p", "ps"):
        return "(" + "; ".join(f"{r.authors}, {r.year}" for r in references) + ")"
    if variant in ("t", "ts"):
        return ", ".join(f"{r.authors} ({r.year})" for r in references)
    if variant == "author":
        return ", ".join(r.authors for r in references)
    if variant == "year":
        return ", ".join(r.year for r in references)
    if variant == "yearpar":
        return "(" + "; ".join(r.year for r in references) + ")"
    raise ConversionError(f"{context.chapter.document}: unknown citation role {{{role}}}")


def convert_role(role: str, content: str, context: Context) -> str:
    explicit = EXPLICIT_TITLE.match(content)
    title, label = (explicit["title"], explicit["target"].strip()) if explicit else (None, content)
    if role == "cite" or role.startswith("cite:"):
        return cite(role, content, context)
    if role == "numref":
        return describe(context.target(label), context, numref_title=title)
    if role == "ref":
        return title if title else describe(context.target(label), context)
    if role == "eq":
        return describe(context.target(label), context)
    if role == "doc":
        document = resolve_document(label, context.chapter.document)
        page = context.chapters.get(document)
        if page is None:
            raise ConversionError(f"{context.chapter.document}: {{doc}} points at {label!r}, "
                                  f"which is not a page of the book")
        return f"[{title or page.title}]({context.page_url(document)})"
    if role in GLUE_ROLES:
        return f"`<{content.split(':')[0].strip()}>`"
    if role == "math":
        return f"${content}$"
    if role in ("sub", "sup", "kbd"):  # HTML that Colab and Jupyter render
        return f"<{role}>{content}</{role}>"
    if role == "abbr":
        return re.sub(r"\s*\(.*\)\s*$", "", content)
    if role in ("term", "download", "code", "samp", "file", "command", "program"):
        text = title or content
        return text if role in ("term", "download") else f"`{text}`"
    raise ConversionError(f"{context.chapter.document}: the role {{{role}}} has no Colab "
                          f"conversion; add one to scripts/make_colab_notebooks.py")


def resolve_path(path: str, current: str) -> str:
    """A path relative to the document `current`, as a path in the repository:
    '../book/running-locally.md' seen from 'notebooks/04_x' -> 'book/running-locally.md'."""
    if path.startswith("/"):
        return path.strip("/")
    parts = current.split("/")[:-1]
    for part in path.split("/"):
        if part == "..":
            parts = parts[:-1]
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def resolve_document(path: str, current: str) -> str:
    """The document a {doc} role or a link names: '../book/running-locally' -> 'book/running-locally'."""
    return resolve_path(path, current).removesuffix(".md").removesuffix(".ipynb")


def convert_inline(line: str, context: Context) -> str:
    def replace(match: re.Match) -> str:
        if match["code"]:
            return match["code"]
        if match["link"]:
            return relative_link(match, context)
        return convert_role(match["role"], match["content"], context)
    return ROLE_OR_CODE.sub(replace, line)


def relative_link(match: re.Match, context: Context) -> str:
    """A Markdown link or image with a relative target, pointed at GitHub or the Colab copies."""
    target, anchor = match["target"].partition("#")[::2]
    path = resolve_path(target, context.chapter.document)
    if match["bang"]:
        url = f"https://raw.githubusercontent.com/{context.owner_repo}/{context.tag}/{path}"
    elif resolve_document(target, context.chapter.document) in context.chapters:
        url = context.page_url(resolve_document(target, context.chapter.document)) + (f"#{anchor}" if anchor else "")
    else:
        url = f"https://github.com/{context.owner_repo}/blob/{context.tag}/{path}"
    return f"{match['bang']}[{match['text']}]({url})"


def convert_lines(lines: list[str], context: Context) -> list[str]:
    """Convert MyST Markdown (a cell or a directive's body) to plain Markdown, line by line."""
    output, index = [], 0
    while index < len(lines):
        line = lines[index]
        directive = DIRECTIVE_OPENING.match(line)
        fence = CODE_FENCE.match(line)
        if directive:
            end = closing_line(lines, index + 1, directive["fence"])
            options, body = split_options(lines[index + 1:end])
            output += convert_directive(directive["name"], directive["argument"], options, body,
                                        directive["indent"], context)
            index = end + 1
        elif fence:
            end = closing_line(lines, index + 1, fence["fence"])
            output += lines[index:end + 1]
            index = end + 1
        elif TARGET_LINE.match(line) or re.match(r"^\s*%", line):
            index += 1                                # MyST targets and comments
        elif line.strip() == "$$" or (line.strip().startswith("$$") and line.count("$$") == 2):
            index = convert_math_block(lines, index, output, context)
        else:
            output.append(convert_inline(line, context))
            index += 1
    return output


def convert_math_block(lines: list[str], index: int, output: list[str], context: Context) -> int:
    """Copy a $$ ... $$ block; a trailing `(label)` becomes \\tag{N}. Returns the next index."""
    single = re.match(r"^(?P<indent>\s*)\$\$(?P<math>.+?)\$\$\s*(?:\((?P<label>[^()\s]+)\))?\s*$",
                      lines[index])
    if single and lines[index].strip() != "$$":
        label, indent = single["label"], single["indent"]
        body = [indent + single["math"].strip()]
        end = index
    else:
        indent = re.match(r"^\s*", lines[index]).group(0)
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith("$$"):
            end += 1
        if end == len(lines):
            raise ConversionError(f"{context.chapter.document}: a $$ block is not closed")
        closing = MATH_BLOCK_LABEL.match(lines[end])
        label = closing["label"] if closing else None
        body = lines[index + 1:end]
    output.append(f"{indent}$$")
    output += body
    if label:
        output.append(f"{indent}\\tag{{{context.target(label).number}}}")
    output.append(f"{indent}$$")
    return end + 1


def strip_blank_edges(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def quote(lines: list[str]) -> list[str]:
    return [f"> {line}".rstrip() for line in lines]


def details(summary: str, lines: list[str]) -> list[str]:
    """A collapsed HTML block; the blank lines let Colab and Jupyter render the Markdown inside."""
    return ["<details>", f"<summary>{summary}</summary>", "", *lines, "", "</details>"]


def convert_directive(name: str, argument: str, options: dict[str, str], body: list[str],
                      indent: str, context: Context) -> list[str]:
    document = context.chapter.document
    if indent:
        body = [line[len(indent):] if line.startswith(indent) else line for line in body]
    inner = strip_blank_edges(convert_lines(body, context))
    lines: list[str]
    if name == "exercise":
        target = context.chapter.targets.get(options.get("label", ""))
        number = f" {target.number}" if target and target.number else ""
        heading = f"**Exercise{number}**" + (f" ({convert_inline(argument, context)})"
                                             if argument else "")
        lines = [heading, "", *inner]
    elif name == "solution":
        target = context.target(argument)
        lines = details(f"Solution to {describe(target, context)}", inner)
    elif name in ADMONITIONS:
        title = convert_inline(argument, context) if argument else name.capitalize()
        if name == "seealso" and not argument:
            title = "See also"
        if "dropdown" in options.get("class", ""):
            lines = details(title, inner)
        else:
            lines = quote([f"**{title}**", "", *inner])
    elif name == "dropdown":
        lines = details(convert_inline(argument, context) or "Details", inner)
    elif name == "math":
        lines = ["$$", *body]
        if "label" in options:
            lines.append(f"\\tag{{{context.target(options['label']).number}}}")
        lines.append("$$")
    elif name in ("figure", "image"):
        source = argument if re.match(r"^https?://", argument) else (
            f"https://raw.githubusercontent.com/{context.owner_repo}/{context.tag}/"
            f"{resolve_path(argument, document)}")
        alt = options.get("alt", "")
        lines = [f"![{alt}]({source})"]
        caption = " ".join(line.strip() for line in inner).strip()
        if name == "figure" and caption:
            target = context.chapter.targets.get(options.get("name", ""))
            number = f"Fig. {target.number} " if target and target.number else ""
            lines += ["", f"*{number}{caption}*"]
    elif name in GLUE_DIRECTIVES:
        key = argument.split(":")[0].strip()
        lines = [f"*In the book, the figure or value the code stores as `<{key}>` is shown "
                 f"here.*"]
        caption = " ".join(line.strip() for line in inner).strip()
        if caption:
            target = context.chapter.targets.get(options.get("name", ""))
            number = f"Fig. {target.number} " if target and target.number else ""
            lines += ["", f"*{number}{caption}*"]
    elif name in ("table", "list-table"):
        if name == "list-table":
            raise ConversionError(f"{document}: {{list-table}} has no Colab conversion yet; use "
                                  f"a Markdown table")
        target = context.chapter.targets.get(options.get("name", ""))
        number = f"Table {target.number}. " if target and target.number else ""
        lines = [f"*{number}{convert_inline(argument, context)}*", "", *inner]
    elif name in ("code-block", "code", "sourcecode"):
        lines = [f"```{argument}", *body, "```"]
    elif name == "raw" and argument.strip() == "html":
        lines = body
    elif name == "bibliography":
        context.bibliography_placed = True
        lines = ["<!-- works cited -->"]      # filled in once every citation has been seen
    elif name in DROPPED_DIRECTIVES:
        lines = []
    else:
        raise ConversionError(f"{document}: the directive {{{name}}} has no Colab conversion; "
                              f"add one to scripts/make_colab_notebooks.py")
    return [indent + line if line else line for line in lines]


def works_cited(context: Context) -> str:
    entries = sorted((context.references[key] for key in context.cited),
                     key=lambda reference: (reference.authors, reference.year))
    return "\n".join(f"- {reference.entry}" for reference in entries)


# --- whole notebooks ---------------------------------------------------------------------------

def library_tag() -> str:
    return "v" + tomllib.loads(PYPROJECT.read_text())["project"]["version"]


def repository() -> tuple[str, str]:
    config = yaml.safe_load(CONFIG.read_text())["repository"]
    return config["url"], config["branch"]


def colab_setup_cell(url: str, tag: str) -> str:
    """The source setup cell, installing capsule_lib at `tag` instead of the branch."""
    return setup_cell(url, tag).replace(
        "# Colab setup: installs capsule_lib from the book's repository.",
        f"# Colab setup: installs capsule_lib {tag.removeprefix('v')} (tag {tag}), the version "
        f"this notebook was\n# generated for, from the book's repository.", 1)


def reading_note(chapter: Chapter, tag: str) -> str:
    return (f"*This is the Colab copy of “{chapter.title}”, a page of the book “{BOOK_TITLE}”, "
            f"generated from `{chapter.document}.ipynb` by `scripts/make_colab_notebooks.py` for "
            f"capsule_lib {tag.removeprefix('v')}. Its code is the source's; its text is plain "
            f"Markdown. Where the book prints a number that the code computes, this copy names "
            f"it in angle brackets, like `<name>`: run the notebook, and the cell that calls "
            f"`glue(\"name\", value)` computes it. Figures, equations and exercises are numbered "
            f"as in the book, solutions are collapsed (click to open them), and the works cited "
            f"are listed at the end.*")


def source_notebooks() -> list[Path]:
    return [path for folder in SOURCE_FOLDERS for path in sorted((ROOT / folder).glob("*.ipynb"))]


def document_name(path: Path) -> str:
    """notebooks/02_squash.ipynb -> 'notebooks/02_squash', as _toc.yml names the page."""
    return path.resolve().relative_to(ROOT).with_suffix("").as_posix()


def copy_path(source: Path) -> Path:
    """Where the Colab copy of a source notebook lives: colab/ + its path in the repository."""
    return OUTPUT / f"{document_name(source)}.ipynb"


def book_pages() -> dict[str, Chapter]:
    """Every chapter and book page, indexed, so that cross-document references resolve."""
    pages = {}
    for path in source_notebooks():
        document = document_name(path)
        pages[document] = index_chapter(document, nbformat.read(path, as_version=4))
    for path in sorted((ROOT / "book").glob("*.md")):
        document = f"book/{path.stem}"
        as_notebook = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_markdown_cell(path.read_text())])
        pages[document] = index_chapter(document, as_notebook)
        pages[document].is_notebook = False
    return pages


def convert_notebook(path: Path, pages: dict[str, Chapter] | None = None,
                     references: dict[str, Reference] | None = None):
    """The Colab copy of one chapter notebook, as an nbformat notebook."""
    pages = pages if pages is not None else book_pages()
    references = references if references is not None else read_bibliography()
    url, _ = repository()
    tag = library_tag()
    document = document_name(path)
    source = nbformat.read(path, as_version=4)
    owner_repo = url.removeprefix("https://github.com/")
    context = Context(pages[document], pages, references, owner_repo, tag)
    notebook = copy.deepcopy(source)
    cells, setup_replaced, note_added = [], False, False
    for cell in source.cells:
        cell = copy.deepcopy(cell)
        if cell.cell_type == "markdown":
            cell.source = "\n".join(convert_lines(cell.source.splitlines(), context))
            cells.append(cell)
            if not note_added:
                cells.append(new_markdown_cell(f"{cell.get('id', 'cell')}-colab-note",
                                               reading_note(context.chapter, tag)))
                note_added = True
            continue
        if cell.cell_type == "code" and not setup_replaced:
            match = SETUP_CELL_PATTERN.fullmatch(cell.source.strip())
            if match is None:
                raise ConversionError(f"{document}: the first code cell is not the Colab setup "
                                      f"cell (see scripts/set_repository_url.py)")
            cell.source = colab_setup_cell(match["url"], tag)
            setup_replaced = True
        cells.append(cell)
        figure = cell.metadata.get("mystnb", {}).get("figure")
        if cell.cell_type == "code" and figure and figure.get("caption"):
            target = context.chapter.targets.get(figure.get("name", ""))
            number = f"**Fig. {target.number}** " if target and target.number else ""
            caption = convert_inline(" ".join(figure["caption"].split()), context)
            cells.append(new_markdown_cell(f"{cell.get('id', 'cell')}-caption",
                                           number + caption))
    if context.cited:
        listing = works_cited(context)
        placed = False
        for cell in cells:
            if cell.cell_type == "markdown" and "<!-- works cited -->" in cell.source:
                cell.source = cell.source.replace("<!-- works cited -->", listing)
                placed = True
        if not placed:
            cells.append(new_markdown_cell("works-cited", "### Works cited\n\n" + listing))
    notebook.cells = cells
    return notebook


def new_markdown_cell(cell_id: str, text: str):
    """A Markdown cell with a fixed id, so that regenerating an unchanged chapter changes nothing."""
    cell = nbformat.v4.new_markdown_cell(text)
    cell["id"] = re.sub(r"[^A-Za-z0-9_-]", "-", cell_id)[:64]
    return cell


def expected_copies() -> dict[Path, str]:
    """Colab copy path -> its exact text, for every notebook in notebooks/ and book/."""
    pages, references = book_pages(), read_bibliography()
    return {copy_path(path): nbformat.writes(convert_notebook(path, pages, references)) + "\n"
            for path in source_notebooks()}


def stale_copies() -> list[str]:
    """Problems with the committed copies: missing, out of date, or without a source."""
    expected = expected_copies()
    problems = [f"{path.relative_to(ROOT)} is missing" for path in expected if not path.exists()]
    problems += [f"{path.relative_to(ROOT)} is out of date" for path, text in expected.items()
                 if path.exists() and path.read_text() != text]
    problems += [f"{path.relative_to(ROOT)} has no source notebook"
                 for path in sorted(OUTPUT.rglob("*.ipynb")) if path not in expected]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a copy is missing or stale")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = stale_copies()
            if problems:
                print("Colab copies are stale; run python scripts/make_colab_notebooks.py:\n  "
                      + "\n  ".join(problems), file=sys.stderr)
                return 1
            print("Colab copies are up to date.")
            return 0
        expected = expected_copies()
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in sorted(OUTPUT.rglob("*.ipynb")):
        if path not in expected:
            path.unlink()
            print(f"removed {path.relative_to(ROOT)} (its source is gone)")
    for path, text in expected.items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
