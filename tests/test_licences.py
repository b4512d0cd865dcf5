"""The licence and citation files: present, consistent with each other and with pyproject.toml."""
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_the_code_is_under_mit_as_pyproject_says():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert pyproject["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def test_the_text_licence_and_the_data_licence_are_stated_where_readers_look():
    text_licence = (ROOT / "LICENSE-TEXT.md").read_text()
    assert "CC BY-SA 4.0" in text_licence and "creativecommons.org/licenses/by-sa/4.0" in text_licence
    assert "CC BY-SA 3.0" in (ROOT / "capsule_lib" / "datasets" / "README.md").read_text()
    for page in ("README.md", "book/intro.md"):
        text = (ROOT / page).read_text()
        missing = [name for name in ("MIT", "CC BY-SA 4.0", "CC BY-SA 3.0", "CITATION.cff")
                   if name not in text]
        assert not missing, f"{page} does not state {missing}"


def test_citation_file_matches_the_library():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert citation["cff-version"] == "1.2.0"
    assert str(citation["version"]) == version
    assert set(citation["license"]) == {"MIT", "CC-BY-SA-4.0"}
    assert citation["repository-code"] == repository
    assert citation["preferred-citation"]["type"] == "book"
