"""Maintainer commands: check the environment, re-execute notebooks, regenerate exercises/.

Run as ``python -m riverbank.authoring {check-env,execute,exercises} ...`` from the repository root.
These commands read the repository; notebooks never import this module.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tempfile
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = "raise NotImplementedError"
_REGION = re.compile(
    r"^(?P<indent>[ \t]*)" + re.escape(BEGIN) + r"[^\n]*\n.*?^[ \t]*" + re.escape(END) + r"[^\n]*(\n|$)",
    re.S | re.M,
)


def strip_solutions(source: str) -> str:
    """Replace every solution region with ``raise NotImplementedError`` at the region's indent."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError(f"unbalanced {BEGIN!r}/{END!r} markers in:\n{source}")

    def stub(match: re.Match) -> str:
        return f"{match.group('indent')}{STUB}\n"

    return _REGION.sub(stub, source).rstrip("\n")


def exercise_from_solution(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The exercise twin of a solutions notebook: regions stripped, outputs cleared.

    The title line ``# Solutions: ...`` becomes ``# Exercises: ...``; cell ids are kept, which is
    how the instructor grader matches official check cells to a submission's cells.
    """
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            cell.source = re.sub(r"^# Solutions:", "# Exercises:", cell.source, flags=re.M)
    return nb


def sources(nb: nbformat.NotebookNode) -> list[tuple[str, str, str]]:
    """What the drift test compares: cell ids, types and sources (outputs may differ)."""
    return [(c.get("id", ""), c.cell_type, c.source) for c in nb.cells]


def execute(path: Path, timeout: int = 600) -> None:
    """Run a notebook top to bottom in a fresh kernel, in an empty working directory, in place.

    An empty directory proves the notebook reads nothing by a repository-relative path.
    No per-cell timing metadata is recorded, so re-running gives a clean diff. Widget state is not
    stored: the website has no kernel, so a stored widget could only show its first view, and no
    page needs the widgets manager (chapters 3 and 5 show riverbank.explorers there instead).
    nbclient still collects the state while it runs, because its stand-in for the Output widget
    (which ``interact`` uses) writes into it: with ``store_widget_state=False``, nbclient 0.11
    stops with a KeyError in ``output_widget.py``. The state is dropped before the notebook is written.
    """
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as workdir:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,
            store_widget_state=True,  # see above: dropped below
            allow_errors=False,
            resources={"metadata": {"path": workdir}},
        )
        client.execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata.pop("widgets", None)  # the widget state nbclient collected (and any older one)
    nbformat.validate(nb)
    nbformat.write(nb, path)


def merge_streams(outputs: list) -> list:
    """Join consecutive stdout (or stderr) chunks into one output.

    The kernel flushes a cell's prints in chunks whose boundaries depend on timing, so without
    this the stored notebook changes on every run and the page shows one print split in two boxes.
    """
    merged: list = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.output_type == "stream" and previous is not None
                and previous.output_type == "stream" and previous.name == output.name):
            previous.text += output.text
        else:
            merged.append(output)
    return merged


def notebooks(folders: list[str]) -> list[Path]:
    paths: list[Path] = []
    for folder in folders:
        p = Path(folder)
        paths.extend(sorted(p.glob("*.ipynb")) if p.is_dir() else [p])
    return paths


def regenerate_exercises(root: Path, run: bool = True, only: list[str] | None = None) -> list[Path]:
    """Rewrite (and run) each exercises/ notebook whose sources differ from its solutions/ twin.

    ``only``: names or stems of the notebooks to consider (default: all); stale files are removed
    only when all are considered."""
    written = []
    for sol_path in sorted((root / "solutions").glob("*.ipynb")):
        if only and sol_path.name not in only and sol_path.stem not in only:
            continue
        ex_path = root / "exercises" / sol_path.name
        fresh = exercise_from_solution(nbformat.read(sol_path, as_version=4))
        if ex_path.exists() and sources(nbformat.read(ex_path, as_version=4)) == sources(fresh):
            continue  # up to date: keep its stored outputs
        nbformat.write(fresh, ex_path)
        if run:
            execute(ex_path)
        written.append(ex_path)
    if only:
        return written
    stale = {p.name for p in (root / "exercises").glob("*.ipynb")} - {
        p.name for p in (root / "solutions").glob("*.ipynb")
    }
    for name in sorted(stale):
        (root / "exercises" / name).unlink()
        written.append(root / "exercises" / name)
    return written


def pinned(requirements: Path, package: str) -> str | None:
    for line in requirements.read_text().splitlines():
        m = re.match(rf"^{re.escape(package)}==(\S+)", line.strip())
        if m:
            return m.group(1)
    return None


def check_env(root: Path) -> int:
    import torch

    want = pinned(root / "requirements.txt", "torch")
    have = torch.__version__.split("+")[0]
    if want != have:
        print(f"error: torch {have} is installed but requirements.txt pins {want}; "
              "another package upgraded it", file=sys.stderr)
        return 1
    print(f"environment ok: torch {torch.__version__}")
    return 0


def without_solutions(toc):
    """The table of contents with every entry under solutions/ left out (and parts left empty)."""
    if isinstance(toc, list):
        kept = [without_solutions(e) for e in toc]
        return [e for e in kept if e is not None]
    if not isinstance(toc, dict):
        return toc
    if str(toc.get("file", "")).startswith("solutions/"):
        return None
    out = {k: without_solutions(v) for k, v in toc.items()}
    for key in ("chapters", "sections", "parts"):
        if key in toc and not out[key]:
            return None  # a part or section whose entries were all solutions
    return out


def class_edition(root: Path, out: Path) -> list[Path]:
    """Write OUT/_toc.yml and OUT/_config.yml: the book for a graded class, without the solutions."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    toc = without_solutions(yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8")))
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    sphinx = config.setdefault("sphinx", {})
    sphinx.setdefault("config", {})["riverbank_edition"] = "class"
    # Jupyter Book finds local extensions relative to the configuration file, which moves here.
    sphinx["local_extensions"] = {name: str((root / path).resolve())
                                  for name, path in (sphinx.get("local_extensions") or {}).items()}
    config["exclude_patterns"] = [*config.get("exclude_patterns", []), "solutions/*"]
    header = "# Written by `python -m riverbank.authoring class-edition`; edit the file at the repository root.\n"
    (out / "_toc.yml").write_text(header + yaml.safe_dump(toc, sort_keys=False), encoding="utf-8")
    (out / "_config.yml").write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return [out / "_toc.yml", out / "_config.yml"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m riverbank.authoring")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check-env", help="fail if torch is not the pinned version")
    ex = sub.add_parser("execute", help="re-run notebooks in place in a fresh kernel")
    ex.add_argument("paths", nargs="+", help="notebooks or folders of notebooks")
    exs = sub.add_parser("exercises", help="regenerate exercises/ from solutions/ and run them")
    exs.add_argument("names", nargs="*", help="only these notebooks (e.g. 02_queries_keys_values)")
    cls = sub.add_parser("class-edition", help="write the table of contents and configuration of the book "
                                               "without solutions (make book EDITION=class)")
    cls.add_argument("out", help="folder for the two files")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if args.command == "check-env":
        return check_env(root)
    if args.command == "class-edition":
        print("\n".join(f"wrote {p}" for p in class_edition(root, Path(args.out))))
        return 0
    if args.command == "execute":
        for path in notebooks(args.paths):
            print(f"executing {path}", flush=True)
            execute(path)
        return 0
    written = regenerate_exercises(root, only=[Path(n).name for n in args.names] or None)
    print("\n".join(f"wrote {p}" for p in written) or "exercises/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
