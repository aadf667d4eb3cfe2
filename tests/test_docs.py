"""The documentation builds with warnings as errors (sphinx-build -W), and the
Python snippets of README.md and docs/*.md run as written."""

from __future__ import annotations

import importlib.util
import os
import re
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


# ------------------------------------------------------- snippets run as written
# Every ```python block of README.md and docs/*.md is a whole program that runs as
# written (on any machine: `engine="auto"` with interface="eth0", queue=16 falls back
# where there is no such queue, and says why). A block that cannot run stands right
# after a line `<!-- not run: REASON -->`, and is only compiled.
SNIPPET = re.compile(r"(?:^<!-- not run: (?P<why>[^>]+) -->\n)?^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$",
                     re.S | re.M)


def _snippets() -> list[tuple[str, str, str | None]]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for m in SNIPPET.finditer(text):
            line = text.count("\n", 0, m.start("code")) + 1
            found.append((f"{page.relative_to(ROOT)}:{line}", m.group("code"), m.group("why")))
    return found


def test_the_quickstart_snippets_are_found():
    where = [w.split(":")[0] for w, _, _ in _snippets()]
    assert where.count("README.md") == 3 and where.count("docs/quickstart.md") == 2, where


@pytest.mark.parametrize("where, code, why", _snippets(), ids=[w for w, _, _ in _snippets()])
def test_doc_snippet_runs_as_written(where, code, why, tmp_path):
    compile(code, where, "exec")
    if why:
        pytest.skip(f"{where} is marked not run: {why}")
    script = tmp_path / "snippet.py"
    script.write_text(code)
    # from an empty directory, as someone who copied it would run it
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"{where}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
