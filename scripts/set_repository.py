"""Point the course at a repository: `make set-repository URL=https://github.com/OWNER/NAME BRANCH=main`.

Writes the URL and branch into _config.yml (the Colab and GitHub buttons), the URL into
CITATION.cff, and both into the guarded
Colab setup cell of every notebook of the book (what Colab pip-installs the course package from).
Only those two assignments change; everything else in each file stays byte for byte.
tests/test_repository.py checks afterwards that all of them agree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", "_build", "tests", ".ipynb_checkpoints", ".git", "_ext", "node_modules"}
GITHUB = re.compile(r"https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
BRANCH_NAME = re.compile(r"[A-Za-z0-9._/-]+")


def notebooks(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.ipynb") if not SKIP & set(p.relative_to(root).parts))


def set_config(text: str, url: str, branch: str) -> str:
    """Replace `url:` and `branch:` inside the top-level `repository:` block only."""
    block = re.search(r"^repository:\n((?:[ \t]+.*\n|\n)*)", text, re.M)
    if not block:
        raise SystemExit("_config.yml has no `repository:` block")
    body = block.group(1)
    body, n_url = re.subn(r"^(\s+url:\s*).*$", lambda m: m.group(1) + url, body, count=1, flags=re.M)
    body, n_branch = re.subn(r"^(\s+branch:\s*).*$", lambda m: m.group(1) + branch, body, count=1, flags=re.M)
    if (n_url, n_branch) != (1, 1):
        raise SystemExit("_config.yml's `repository:` block needs a `url:` and a `branch:` line")
    return text[:block.start(1)] + body + text[block.end(1):]


# Notebooks that install the course package in Colab, so their setup cell must name the repository.
# Others (the quizzes) may have a setup cell that installs something else and names no repository.
MUST_NAME_REPOSITORY = {"chapters", "solutions", "exercises"}


def set_setup_cell(raw: str, url: str, branch: str, name: str) -> str:
    """Rewrite REPOSITORY = "..." and BRANCH = "..." in the first code cell, editing the JSON text
    so that nothing else in the file changes."""
    nb = json.loads(raw)
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    if not cells or 'if "google.colab" in sys.modules:' not in "".join(cells[0]["source"]):
        raise SystemExit(f"{name}: the first code cell is not the guarded Colab setup cell")
    source = cells[0]["source"]
    lines = source if isinstance(source, list) else source.splitlines(keepends=True)
    found = set()
    for i, line in enumerate(lines):
        for var, value in (("REPOSITORY", url), ("BRANCH", branch)):
            assignment = re.compile(rf'^(\s*{var}\s*=\s*)"[^"]*"')
            if not assignment.match(line):
                continue
            found.add(var)
            new = assignment.sub(lambda m: f'{m.group(1)}"{value}"', line)
            if new != line:
                old_json, new_json = json.dumps(line)[1:-1], json.dumps(new)[1:-1]
                if raw.count(old_json) != 1:
                    raise SystemExit(f"{name}: cannot find the line {line.strip()!r} exactly once")
                raw = raw.replace(old_json, new_json)
    if not found and name.split("/")[0] not in MUST_NAME_REPOSITORY:
        return raw
    if found != {"REPOSITORY", "BRANCH"}:
        raise SystemExit(f"{name}: the setup cell assigns no {sorted({'REPOSITORY', 'BRANCH'} - found)}")
    return raw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="https://github.com/OWNER/NAME (Colab opens notebooks from GitHub)")
    parser.add_argument("branch", help="the branch Colab opens and installs from")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    url = args.url.strip().removesuffix("/").removesuffix(".git")
    if not GITHUB.fullmatch(url):
        raise SystemExit(f"URL must look like https://github.com/OWNER/NAME, not {args.url!r}")
    if not BRANCH_NAME.fullmatch(args.branch):
        raise SystemExit(f"not a branch name: {args.branch!r}")

    config = args.root / "_config.yml"
    config.write_text(set_config(config.read_text(), url, args.branch))
    citation = args.root / "CITATION.cff"
    if citation.exists():
        text, n = re.subn(r'^(repository-code:\s*).*$', lambda m: f'{m.group(1)}"{url}"', citation.read_text(), flags=re.M)
        if n != 1:
            raise SystemExit("CITATION.cff needs one `repository-code:` line")
        citation.write_text(text)
    paths = notebooks(args.root)
    for path in paths:
        raw = path.read_text(encoding="utf-8")
        new = set_setup_cell(raw, url, args.branch, path.relative_to(args.root).as_posix())
        if new != raw:
            path.write_text(new, encoding="utf-8")
    print(f"_config.yml, CITATION.cff and {len(paths)} notebooks now name {url} @ {args.branch}")


if __name__ == "__main__":
    sys.exit(main())
