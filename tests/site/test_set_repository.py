"""`make set-repository URL=... BRANCH=...` rewrites the one repository URL everywhere it appears,
and nothing else. Runs on a copy of _config.yml and of every notebook, never on the real tree."""

from __future__ import annotations

import ast
import difflib
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import set_repository  # noqa: E402


@pytest.fixture
def copy(tmp_path):
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    shutil.copy(ROOT / "CITATION.cff", tmp_path / "CITATION.cff")
    for nb in set_repository.notebooks(ROOT):
        target = tmp_path / nb.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(nb, target)
    return tmp_path


def setup_assignments(path: Path) -> dict:
    cell = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" and c.source.strip())
    return {t.id: node.value.value for node in ast.walk(ast.parse(cell.source)) if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and isinstance(node.value, ast.Constant)}


def changed_lines(before: Path, after: Path) -> list[str]:
    diff = difflib.unified_diff(before.read_text().splitlines(), after.read_text().splitlines(), n=0, lineterm="")
    return [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_writes_config_and_every_notebooks_setup_cell_and_nothing_else(copy):
    set_repository.main(["https://github.com/someone/my-course.git", "spring-2027", "--root", str(copy)])
    config = yaml.safe_load((copy / "_config.yml").read_text())
    assert config["repository"]["url"] == "https://github.com/someone/my-course"
    assert config["repository"]["branch"] == "spring-2027"
    assert len(changed_lines(ROOT / "_config.yml", copy / "_config.yml")) == 4
    assert yaml.safe_load((copy / "CITATION.cff").read_text())["repository-code"] == "https://github.com/someone/my-course"
    assert len(changed_lines(ROOT / "CITATION.cff", copy / "CITATION.cff")) == 2
    notebooks = set_repository.notebooks(copy)
    assert {p.parent.name for p in notebooks} >= {"chapters", "solutions", "exercises"}
    for path in notebooks:
        if path.relative_to(copy).parts[0] not in set_repository.MUST_NAME_REPOSITORY and "REPOSITORY" not in setup_assignments(ROOT / path.relative_to(copy)):
            assert path.read_bytes() == (ROOT / path.relative_to(copy)).read_bytes(), path  # e.g. a quiz
            continue
        assert setup_assignments(path) == {"REPOSITORY": "https://github.com/someone/my-course", "BRANCH": "spring-2027"}
        assert len(changed_lines(ROOT / path.relative_to(copy), path)) == 4, path  # two lines out, two in


def test_the_current_values_change_nothing(copy):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    set_repository.main([config["url"], config["branch"], "--root", str(copy)])
    for path in [copy / "_config.yml", copy / "CITATION.cff", *set_repository.notebooks(copy)]:
        assert path.read_bytes() == (ROOT / path.relative_to(copy)).read_bytes(), path


def test_a_chapter_whose_setup_cell_names_no_repository_is_an_error(copy):
    chapter = next((copy / "chapters").glob("*.ipynb"))
    chapter.write_text(chapter.read_text().replace("REPOSITORY = ", "REPO = "))
    with pytest.raises(SystemExit, match="assigns no"):
        set_repository.main(["https://github.com/someone/my-course", "main", "--root", str(copy)])


@pytest.mark.parametrize("url", ["https://gitlab.com/a/b", "github.com/a/b", "https://github.com/a", ""])
def test_rejects_what_colab_cannot_open(copy, url):
    with pytest.raises(SystemExit, match="OWNER/NAME"):
        set_repository.main([url, "main", "--root", str(copy)])
    assert (copy / "_config.yml").read_bytes() == (ROOT / "_config.yml").read_bytes()


def test_citation_names_the_configured_repository():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["repository-code"] == config["url"]
