"""Installing the course in Colab replaces nothing Colab has (scripts/colab/: Google's lists)."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("colab_versions", ROOT / "scripts" / "colab_versions.py")
colab_versions = sys.modules["colab_versions"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colab_versions)
_spec = importlib.util.spec_from_file_location("colab_runs", ROOT / "scripts" / "colab_runs.py")
colab_runs = sys.modules["colab_runs"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colab_runs)

DEPENDENCIES = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def setup_cell_installs() -> list[str]:
    """What the notebooks' Colab setup cells pip-install, besides the course itself."""
    return sorted(set().union(*(colab_runs.setup_cell_packages(nb) for nb in colab_runs.toc_notebooks())))


def test_the_lists_are_googles_and_name_what_the_course_uses():
    cpu, gpu = colab_versions.colab_versions("cpu"), colab_versions.colab_versions("gpu")
    assert colab_versions.python_version() == "3.13.15"
    assert (cpu["torch"], gpu["torch"], gpu["triton"]) == ("2.11.0+cpu", "2.11.0+cu128", "3.6.0")
    assert (cpu["ipywidgets"], cpu["ipykernel"], cpu["transformers"]) == ("7.7.1", "6.17.1", "5.15.0")
    assert len(cpu) > 600 and len(gpu) > 600


@pytest.mark.parametrize("runtime", ["cpu", "gpu"])
def test_installing_the_course_replaces_no_colab_package(runtime):
    colab = colab_versions.colab_versions(runtime)
    assert colab_versions.replacements(DEPENDENCIES + setup_cell_installs(), colab) == []


def test_the_check_finds_a_replacement_when_there_is_one():
    colab = colab_versions.colab_versions("cpu")
    assert colab_versions.replacements(["ipywidgets>=8"], colab) == [
        "the course requires ipywidgets>=8, which would replace Colab's ipywidgets 7.7.1"]
    # followed into a package Colab lacks: bertviz needs IPython>=7.14, which Colab's 7.34 meets
    assert colab_versions.replacements(["bertviz"], colab) == []
    assert colab_versions.replacements(["bertviz"], {**colab, "ipython": "7.0.0"}) == [
        "bertviz requires IPython>=7.14, which would replace Colab's IPython 7.0.0"]


def test_every_floor_in_pyproject_says_why():
    text = (ROOT / "pyproject.toml").read_text()
    for dep in DEPENDENCIES:
        name = Requirement(dep).name
        line = next(line for line in text.splitlines() if line.strip().startswith(f'"{dep}"'))
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, f"{name}: say why this floor"


def test_setup_cells_install_only_what_colab_lacks_or_leave_it_alone():
    colab = colab_versions.colab_versions("gpu")
    for spec in setup_cell_installs():
        req = Requirement(spec)
        # an unpinned name is left as Colab has it (pip does not upgrade without -U)
        assert not req.specifier or req.name.lower() not in colab, spec
    for path in colab_runs.toc_notebooks():
        source = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code").source
        assert "--upgrade" not in source and " -U" not in source, path.name


def test_the_packages_floors_are_pyprojects():
    from riverbank.versions import FLOORS

    floors = {Requirement(d).name: str(next(iter(Requirement(d).specifier)).version) for d in DEPENDENCIES}
    for name, (floor, _) in FLOORS.items():
        assert floors[name] == floor, name


def test_an_older_package_gets_a_message_saying_what_to_do(monkeypatch, capsys):
    import importlib.metadata

    from riverbank import versions

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "2.3.1+cpu" if n == "torch" else real(n))
    assert versions.too_old() == [
        "torch 2.3.1+cpu is older than 2.5, which the course needs (attention that returns zeros for a "
        "fully masked row, chapter 2)"]
    versions.warn_if_too_old()
    err = capsys.readouterr().err
    assert "pip install -U 'torch>=2.5'" in err and "restart the kernel" in err
    monkeypatch.setattr(importlib.metadata, "version", real)
    assert versions.too_old() == []


def test_the_stand_in_torch_moves_only_setuptools_off_colabs_version():
    # make colab replaces Colab's torch 2.11 (a Python 3.13 build) with the pinned CPU 2.13, and
    # with it whatever 2.13 needs that Colab's versions do not meet.
    assert colab_versions.unmet("torch", colab_versions.colab_versions("cpu")) == {"setuptools": "setuptools>=77.0.3"}


def test_make_colab_counts_an_idle_cell_and_not_a_busy_one(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time\ntime.sleep(3)"),  # idle: a stall looks like this
                nbformat.v4.new_code_cell("import time\nt = time.time()\nwhile time.time() - t < 3:\n    pass"),
                nbformat.v4.new_code_cell("1 + 1")]
    nbformat.write(nb, tmp_path / "n.ipynb")
    run = __import__("subprocess").run([sys.executable, "-c", colab_runs.RUNNER, "n.ipynb", "60", "python3", "2"],
                                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    idle = [line.split() for line in run.stdout.splitlines() if line.startswith("IDLE ")]
    assert [line[:2] for line in idle] == [["IDLE", "0"]]
    assert 3 <= float(idle[0][2]) < 10 and float(idle[0][3]) < 0.3
