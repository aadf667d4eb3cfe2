"""The documentation builds with warnings as errors (sphinx-build -W)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MISSING = [m for m in ("sphinx", "myst_parser", "furo") if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(bool(MISSING), reason=f"docs tools not installed ({', '.join(MISSING)}): "
                                          "pip install -e '.[docs]'")
def test_docs_build_without_warnings(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("AIOZCRX_DOCS_INTERSPHINX", None)   # no network in tests
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(tmp_path / "html")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = tmp_path / "html"
    for page in ("index", "api", "examples", "quickstart", "concepts"):
        assert (html / f"{page}.html").is_file(), page
    api = (html / "api.html").read_text()
    assert 'id="aiozcrx.Receiver"' in api and 'id="aiozcrx.create_server"' in api
