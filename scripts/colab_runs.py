"""Run every notebook of the book the way Colab does: alone, with only the pip-installed package,
under Colab's own versions.

1. Builds the course package as a wheel (`pip wheel --no-deps .`).
2. Creates a new virtual environment outside the repository and installs into it the wheel plus
   every package that the notebooks' Colab setup cells install (e.g. bertviz), with *constraints*
   only: Colab's published version of every package Colab has (scripts/colab/pip-freeze.cpu.txt,
   `--versions colab`, the default), and requirements.txt's pins for what Colab lacks. What cannot
   be Colab's here is substituted, and printed: the CUDA or Python-3.13 torch by the pinned CPU
   torch, Python 3.13 by this machine's Python. `--versions pins` uses requirements.txt alone.
   Nothing else from the repository is installed or importable.
3. Copies each notebook listed in _toc.yml alone into a new empty temporary directory and runs
   it there top to bottom in a kernel of that environment. Any error fails the run.

This catches a notebook that reads a repository file, imports something only the repository
has, or needs a package its setup cell does not install.

Usage: python scripts/colab_runs.py [--jobs 2] [NOTEBOOK ...]
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import yaml

import colab_versions

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "riverbank-colab-run"
KEY_PACKAGES = ("torch", "transformers", "ipywidgets", "ipykernel", "ipython", "jupyter-client", "pyzmq",
                "tornado", "matplotlib", "numpy", "tqdm", "triton", "bertviz")
# Runs one notebook; prints a line "IDLE <cell> <wall s> <kernel CPU s>" for each cell that took
# over IDLE_SECONDS while the kernel used under a tenth of that in CPU: a stall, not a slow cell.
IDLE_SECONDS = 60
RUNNER = """
import sys, time, nbformat, psutil
from nbclient import NotebookClient
from riverbank.polling import slice_waits

class Client(NotebookClient):
    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        slice_waits(kc)  # see riverbank/polling.py
        return kc

nb = nbformat.read(sys.argv[1], as_version=4)
client = Client(nb, timeout=int(sys.argv[2]), kernel_name=sys.argv[3], allow_errors=False)
started = {}

def cpu():
    try:
        p = psutil.Process(client.km.provisioner.process.pid)
        return sum(q.cpu_times().user + q.cpu_times().system for q in [p, *p.children(recursive=True)])
    except Exception:
        return float("inf")  # cannot tell: never counted as idle

def start(cell, cell_index):
    started[cell_index] = (time.monotonic(), cpu())

def done(cell, cell_index, execute_reply):
    t0, c0 = started.pop(cell_index)
    wall, used = time.monotonic() - t0, cpu() - c0
    if wall > float(sys.argv[4]) and used < wall / 10:
        print(f"IDLE {cell_index} {wall:.0f} {used:.1f}", flush=True)

client.on_cell_start, client.on_cell_executed = start, done
client.execute()
"""


def toc_notebooks() -> list[Path]:
    def files(entry):
        if isinstance(entry, dict):
            if "file" in entry:
                yield entry["file"]
            for value in entry.values():
                if isinstance(value, (list, dict)):
                    yield from files(value)
        elif isinstance(entry, list):
            for item in entry:
                yield from files(item)

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [ROOT / f"{f}.ipynb" for f in files(toc) if (ROOT / f"{f}.ipynb").exists()]


def setup_cell_packages(notebook: Path) -> set[str]:
    """The plain package names the notebook's Colab setup cell pip-installs (not the course itself)."""
    cell = next(c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code" and c.source.strip())
    packages = set()
    for node in ast.walk(ast.parse(cell.source)):
        if isinstance(node, ast.List):
            items = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if "install" in items:
                packages |= {i for i in items[items.index("install") + 1:] if not i.startswith("-")}
    return packages


def pinned(requirements: Path) -> dict[str, str]:
    """Canonical name -> the line that pins it in a requirements file."""
    out = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            out[colab_versions.canonicalize_name(line.split("==", 1)[0])] = line
    return out


def constraints(versions: str, folder: Path) -> tuple[Path, list[str]]:
    """The constraints file for ``versions`` ("colab" or "pins") and the substitutions made."""
    pins = pinned(ROOT / "requirements.txt")
    if versions == "pins":
        lines, notes = list(pins.values()), []
    else:
        colab = colab_versions.colab_versions("cpu")
        notes = [f"Python {colab_versions.python_version()} (Colab) -> {sys.version.split()[0]} (this machine)",
                 f"torch {colab['torch']} (Colab, a Python 3.13 build) -> {pins['torch']} (the pinned CPU build "
                 "on this machine's disk; another torch would be a multi-GB download)"]
        # What the stand-in torch needs that Colab's own torch did not: those must move too.
        substituted = {name: f"the stand-in {pins['torch']} requires {spec}" for name, spec in
                       colab_versions.unmet("torch", colab).items()}
        lines = [pins["torch"]]
        lines += [f"{name}=={version}" for name, version in sorted(colab.items())
                  if name != "torch" and name not in substituted]
        notes += [f"{name} {colab[name]} (Colab) -> {pins[name] if name in pins else 'the newest that fits'}: {why}"
                  for name, why in sorted(substituted.items())]
        lines += [line for name, line in sorted(pins.items()) if name not in colab]
    path = folder / f"constraints-{versions}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, notes


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a setup command quietly; show its output only if it fails."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.STDOUT)
    proc = subprocess.run(cmd, text=True, **kwargs)
    if proc.returncode:
        sys.exit(f"colab-runs: {' '.join(cmd[:4])} ... failed:\n{proc.stdout}")
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the book's notebooks as Colab does.")
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--jobs", type=int, default=2)
    # The slowest cell takes about a minute. Once (2026-11-25) a run sat idle for exactly this
    # limit on chapter 5 and then passed; a lower limit bounds what such a stall costs CI.
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    parser.add_argument("--versions", choices=("colab", "pins"), default="colab",
                        help="Colab's published versions (default) or requirements.txt's pins")
    args = parser.parse_args()
    notebooks = [p.resolve() for p in args.notebooks] or toc_notebooks()
    start = time.time()

    # A new environment every run, outside the repository, so that nothing in it can reach the
    # repository's files. It is removed at the start of the next run, not at the end: deleting
    # ~1.5 GB of torch and triton took ~3 minutes here, time a throw-away CI machine need not spend.
    tmp = Path(tempfile.gettempdir()) / f"riverbank-colab-runs-{os.getuid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return run_all(notebooks, tmp, args, start)


def run_all(notebooks: list[Path], tmp: Path, args, start: float) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "JUPYTER_PATH")}
    # Build from a copy of what the wheel contains, so that no build/ folder lands in the repository.
    source = tmp / "source"
    shutil.copytree(ROOT / "riverbank", source / "riverbank", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(tmp / "wheel"), str(source)], env=env)
    wheel = next((tmp / "wheel").glob("riverbank-*.whl"))
    extras = sorted(set().union(*(setup_cell_packages(nb) for nb in notebooks)))
    print(f"colab-runs: {wheel.name} + {', '.join(extras)}", flush=True)

    constraint_file, notes = constraints(args.versions, tmp)
    print(f"colab-runs: versions: {args.versions}" + "".join(f"\n  substituted: {n}" for n in notes), flush=True)
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    # ipykernel and nbclient run the notebooks; in Colab they are there already, at Colab's versions.
    run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-c", str(constraint_file), str(wheel), *extras, "ipykernel", "nbclient"], env=env, cwd=tmp)
    versions = run([str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                   env=env, cwd=tmp).stdout
    shown = {colab_versions.canonicalize_name(line.split("==")[0]): line for line in versions.split()}
    print("colab-runs: " + " ".join(shown[n] for n in KEY_PACKAGES if n in shown), flush=True)
    run([str(python), "-m", "ipykernel", "install", "--prefix", str(venv), "--name", KERNEL],
        env=env, cwd=tmp)
    where = run([str(python), "-c", "import riverbank; print(riverbank.__file__)"],
                env=env, cwd=tmp, stderr=subprocess.DEVNULL).stdout.strip()
    assert str(ROOT) not in where and where.startswith(str(venv)), f"riverbank imported from {where}"
    print(f"colab-runs: environment ready in {time.time() - start:.0f} s; riverbank from {where}", flush=True)

    kernel_env = {**env, "JUPYTER_PATH": str(venv / "share" / "jupyter"), "MPLBACKEND": "agg"}

    def one(notebook: Path) -> tuple[Path, float, str | None]:
        t0 = time.time()
        workdir = Path(tempfile.mkdtemp(dir=tmp, prefix="nb-"))
        shutil.copy(notebook, workdir / notebook.name)
        proc = subprocess.run([str(python), "-c", RUNNER, notebook.name, str(args.timeout), KERNEL, str(IDLE_SECONDS)],
                              cwd=workdir, env=kernel_env, capture_output=True, text=True)
        plain = re.sub(r"\x1b\[[0-9;]*m", "", proc.stderr)  # the kernel's traceback colours
        error = None if proc.returncode == 0 else (plain.strip().splitlines() or ["(no output)"])
        idle = [line for line in proc.stdout.splitlines() if line.startswith("IDLE ")]
        return notebook, time.time() - t0, None if error is None else "\n".join(error[-25:]), idle

    failures, stalls = 0, 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for notebook, seconds, error, idle in pool.map(one, notebooks):
            name = notebook.relative_to(ROOT).as_posix() if notebook.is_relative_to(ROOT) else str(notebook)
            print(f"colab-runs: {'ok  ' if error is None else 'FAIL'} {seconds:5.1f} s  {name}", flush=True)
            for line in idle:
                _, cell, wall, used = line.split()
                print(f"    cell {int(cell) + 1} sat idle: {wall} s, with {used} s of kernel CPU", flush=True)
            stalls += len(idle)
            if error:
                failures += 1
                print("    " + error.replace("\n", "\n    "), flush=True)
    print(f"colab-runs: {len(notebooks) - failures}/{len(notebooks)} notebooks passed in {time.time() - start:.0f} s; "
          f"cells idle over {IDLE_SECONDS} s: {stalls}", flush=True)

    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
