"""Fetch the website's third-party scripts from the npm registry into _ext/static/npm/.

Usage: python _ext/vendor.py [--check]

Each package in _ext/vendor.json is fetched with `npm pack NAME@VERSION` (npm's cache makes a second
run work offline), its tarball is checked against the pinned sha512, and the listed files are
copied into _ext/static/npm/<dest>/ (served as _static/npm/<dest>/) with its license.
_ext/static/npm/manifest.json records
what was installed; a run with an up-to-date manifest does nothing. `--check` only reports whether
_ext/static/npm/ matches _ext/vendor.json (exit status 1 if not).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "_ext" / "vendor.json"
VENDOR = ROOT / "_ext" / "static" / "npm"
MANIFEST = VENDOR / "manifest.json"


def wanted() -> list[dict]:
    return json.loads(SPEC.read_text())["packages"]


def up_to_date() -> bool:
    return MANIFEST.exists() and json.loads(MANIFEST.read_text()) == wanted()


def selected(member: str, pkg: dict) -> bool:
    included = any(member == inc or (inc.endswith("/") and member.startswith(inc)) for inc in pkg["include"])
    excluded = any(member == exc or (exc.endswith("/") and member.startswith(exc)) or
                   (exc.startswith(".") and member.endswith(exc)) for exc in pkg["exclude"])
    return included and not excluded


def fetch(pkg: dict, workdir: Path) -> Path:
    spec = f"{pkg['name']}@{pkg['version']}"
    out = subprocess.run(["npm", "pack", spec, "--json", "--pack-destination", str(workdir)],
                         check=True, capture_output=True, text=True, cwd=workdir)
    tarball = workdir / json.loads(out.stdout)[0]["filename"]
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != pkg["integrity"]:
        raise SystemExit(f"{spec}: the tarball's sha512 is {digest}, but _ext/vendor.json pins {pkg['integrity']}")
    return tarball


def install(pkg: dict, tarball: Path) -> int:
    dest = VENDOR / pkg["dest"]
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    count = 0
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            name = member.name.split("/", 1)[1]  # npm tarballs hold everything under package/
            if name == pkg["license_file"]:
                target = dest / Path(name).name
            elif selected(name, pkg):
                target = dest / name.removeprefix(pkg["strip"])
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            count += 1
    if pkg["license_file"] is None:  # the license is the header of the file itself
        (dest / "LICENSE").write_text(f"{pkg['name']} {pkg['version']} is released under the {pkg['license']} license; "
                                      f"its copyright and license notice is the header of {pkg['include'][0]}.\n")
    return count


def main() -> None:
    if "--check" in sys.argv:
        ok = up_to_date()
        print("_ext/static/npm/ is up to date" if ok else "_ext/static/npm/ is missing or stale: run `make vendor`")
        raise SystemExit(0 if ok else 1)
    if up_to_date():
        MANIFEST.touch()  # newer than _ext/vendor.json, so make sees the target as done
        print("_ext/static/npm/ is up to date")
        return
    if shutil.which("npm") is None:
        raise SystemExit("make vendor needs npm (Node.js): apt-get install npm, or see https://nodejs.org")
    shutil.rmtree(VENDOR, ignore_errors=True)
    VENDOR.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in wanted():
            n = install(pkg, fetch(pkg, Path(tmp)))
            print(f"vendored {pkg['name']}@{pkg['version']} ({pkg['license']}): {n} files into _ext/static/npm/{pkg['dest']}/")
    lines = ["# Third-party files served by this site", "",
             "Fetched from the npm registry by `make vendor` (see _ext/vendor.json). Each folder holds its license.", ""]
    lines += [f"- {p['name']} {p['version']} ({p['license']}) in `{p['dest']}/`: {p['why']}." for p in wanted()]
    (VENDOR / "README.txt").write_text("\n".join(lines) + "\n")
    MANIFEST.write_text(json.dumps(wanted(), indent=1) + "\n")


if __name__ == "__main__":
    main()
