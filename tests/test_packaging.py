"""The distributions, built as `python -m build` builds them: the wheel holds the npmlp package and its
subpackages only, the sdist holds everything its own tests need (and they collect and pass there), and
the package page's readme shows no image that a package index cannot find.

The sdist is built from this checkout and the wheel from the unpacked sdist, as pip does when it
installs from source: a file the sdist forgot breaks the wheel here, not on a user's machine.
"""
from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers import REPO, real_names_path

pytest.importorskip("build")

# what pip prints when the isolated build environment cannot fetch setuptools
OFFLINE = re.compile(r"No matching distribution|Could not find a version|Failed to establish|"
                     r"Temporary failure in name resolution|Network is unreachable", re.IGNORECASE)
RELATIVE_IMAGE = re.compile(r"!\[[^\]]*\]\((?!https?://)|<img[^>]+src=[\"'](?!https?://)", re.IGNORECASE)


def build(kind: str, src: Path, outdir: Path) -> Path:
    """`python -m build --KIND` of `src` into `outdir` -> the file built. Isolated, as CI and users
    build; without a registry to fetch setuptools from, again with this environment's setuptools."""
    cmd = [sys.executable, "-m", "build", f"--{kind}", "--outdir", str(outdir), str(src)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and OFFLINE.search(r.stdout + r.stderr):
        r = subprocess.run([*cmd, "--no-isolation"], check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    (built,) = outdir.glob("*.tar.gz" if kind == "sdist" else "*.whl")
    return built


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(sdist path, unpacked sdist folder, wheel path)."""
    tmp = tmp_path_factory.mktemp("dist")
    # from a copy: building writes npmlp.egg-info beside the sources, and another test run (CI's
    # second Python) may be building from this checkout at the same moment
    src = shutil.copytree(REPO, tmp / "src", ignore=shutil.ignore_patterns(
        ".git", ".venv*", ".ci-*", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache", "build", "runs"))
    sdist = build("sdist", src, tmp / "sdist")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheel = build("wheel", unpacked, tmp / "wheel")
    return sdist, unpacked, wheel


def sdist_names(sdist: Path) -> set[str]:
    """Paths inside the sdist, without its top folder (npmlp-0.1.0/)."""
    with tarfile.open(sdist) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name and m.isfile()}


def page_images() -> list[str]:
    """The local images README.md and the docs/ pages show, as paths from the top: docs/x.png."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [str((page.parent / link).resolve().relative_to(REPO)) for page in pages
            for link in re.findall(r"!\[[^\]]*\]\(([^)\s:]+)\)", page.read_text())]


# ----------------------------------------------------------------------------- the wheel

def test_wheel_holds_the_package_and_its_subpackages_only(dists):
    _, _, wheel = dists
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        meta = email.message_from_bytes(z.read(f"{dist_info}/METADATA"))
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    stray = [n for n in names if not n.startswith(("npmlp/", f"{dist_info}/"))]
    assert stray == [], f"the wheel should hold npmlp/ and its dist-info only, also has: {stray}"
    package = {n for n in names if n.startswith("npmlp/")}
    modules = {str(p.relative_to(REPO)) for p in (REPO / "npmlp").rglob("*.py")}
    assert {"npmlp/fast/engine.py", "npmlp/app/cli.py"} <= modules and modules - package == set(), \
        f"missing from the wheel: {sorted(modules - package)}"
    assert f"{dist_info}/licenses/LICENSE" in names
    assert meta["License-Expression"] == "MIT"
    assert "npmlp = npmlp.app.cli:main" in entry_points
    extras = meta.get_all("Provides-Extra")
    assert "notebook" in extras and "test" in extras
    requires = meta.get_all("Requires-Dist")
    assert 'marimo>=0.9; extra == "notebook"' in requires and 'marimo>=0.9; extra == "test"' in requires
    assert 'build>=1; extra == "test"' in requires


def test_package_page_has_no_relative_images(dists):
    """The package page renders the long description without the repository around it: an image
    like ![](docs/loss.png) would show as broken."""
    sdist, _, wheel = dists
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        description = email.message_from_bytes(z.read(meta)).get_payload()
    with tarfile.open(sdist) as tar:
        pkg_info = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
        sdist_description = email.message_from_bytes(tar.extractfile(pkg_info).read()).get_payload()
    for text in (description, sdist_description):
        assert "npmlp train" in text and "README.md" in text
        assert "](docs/" not in text and '<img src="docs' not in text
        assert RELATIVE_IMAGE.search(text) is None, RELATIVE_IMAGE.search(text)


# ----------------------------------------------------------------------------- the sdist

def test_sdist_carries_what_its_tests_need(dists):
    sdist, _, _ = dists
    names = sdist_names(sdist)
    want = {"LICENSE", "README.md", "pyproject.toml", "tests/conftest.py", "tests/helpers.py",
            "examples/lecture2.py", *page_images(), *(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))}
    for folder in ("npmlp", "tests", "benchmarks"):
        want |= {str(p.relative_to(REPO)) for p in (REPO / folder).rglob("*.py")}
    assert want - names == set(), f"missing from the sdist: {sorted(want - names)}"
    assert any(n.startswith("docs/") and n.endswith(".png") for n in page_images())
    junk = sorted(n for n in names if "__pycache__" in n or n.endswith((".pyc", ".tmp")) or "names.txt" in n)
    assert junk == [], junk


def test_sdist_test_suite_collects_and_runs(dists):
    """In the unpacked sdist, with it first on the path: every test module imports (collection), and
    a quick module passes."""
    _, unpacked, _ = dists
    env = {**os.environ, "PYTHONPATH": str(unpacked), "NPMLP_DATA": str(real_names_path()), "MPLBACKEND": "Agg"}

    def run(*args):
        return subprocess.run([sys.executable, *args], check=False, cwd=unpacked, env=env, capture_output=True,
                              text=True, timeout=600)
    r = run("-c", "import npmlp; print(npmlp.__file__)")
    assert r.returncode == 0 and Path(r.stdout.strip()).parent == unpacked / "npmlp", r.stdout + r.stderr
    r = run("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert r.returncode == 0 and "ERROR collecting" not in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    collected = re.search(r"(\d+) tests? collected", r.stdout)
    assert collected and int(collected.group(1)) > 100, r.stdout[-500:]
    r = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_data.py")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
