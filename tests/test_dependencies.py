"""Install files: every import is declared (deptry), and one distribution owns ``cv2``."""

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from conftest import REPO

SCANNED = ["sinet_tf", "tests", "benchmarks"]


def _deptry(root: Path, *paths: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deptry", "--no-ansi", *paths], cwd=root, capture_output=True, text=True,
                          timeout=120)


def test_every_import_is_declared_in_pyproject():
    r = _deptry(REPO, *SCANNED)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_check_fails_on_an_undeclared_import(tmp_path):
    """The check itself can fail: a copy of the project whose package imports a module no
    extra declares (DEP001) and a test-only one (scipy, DEP004) is refused, naming both."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    pkg = tmp_path / "sinet_tf"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import numpy\n")
    (pkg / "stray.py").write_text("import surely_not_a_declared_module\nimport scipy.ndimage\n")
    r = _deptry(tmp_path, "sinet_tf")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "DEP001 'surely_not_a_declared_module'" in out
    assert "DEP004 'scipy'" in out


def _owners(module: str) -> list[str]:
    owners = []
    for dist in metadata.distributions():
        files = dist.files or []
        if any(f.parts and f.parts[0] in (module, f"{module}.py") for f in files):
            owners.append(dist.metadata["Name"])
    return sorted(set(owners))


def test_one_distribution_owns_cv2():
    """opencv-python-headless and opencv-contrib-python (which mediapipe's own dependencies
    would add) both install ``cv2/``: whichever is installed last wins, silently."""
    owners = _owners("cv2")
    assert len(owners) == 1, f"cv2 is installed by {owners}"


def test_test_extra_pulls_no_cuda_build():
    """From the public index ``torch`` resolves to a CUDA build of several GB, and
    ``mediapipe`` brings a second owner of ``cv2``: neither is in the test extra."""
    with open(REPO / "pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    names = {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() for r in extras["test"]}
    assert not names & {"torch", "mediapipe", "tensorflow-gpu"}, names
