"""The package as users get it: a typed public API (`mypy --strict` on the examples),
and an sdist that holds what it needs, installs in a fresh venv, and runs there
(`aiozcrx demo`, and part of the test suite from the sdist's own tests/)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(bool(_missing("mypy")), reason="mypy not installed: pip install -e '.[test]'")
def test_examples_and_package_pass_mypy_strict():
    """What a user's type checker sees: every public name the examples use is typed
    (the package ships py.typed); and every module of the package itself (engines,
    transports, the CLI's tools) is held to --strict. The configuration is
    pyproject's [tool.mypy]."""
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "examples/", "aiozcrx/"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Success: no issues found" in proc.stdout


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.skipif(bool(_missing("build")), reason="build not installed: pip install -e '.[test]'")
def test_sdist_installs_in_a_fresh_venv_and_runs(tmp_path):
    """Slow-ish (pip compiles the C extension, build and pip fetch their build
    requirements): one test for the whole path from source tree to a working install."""
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(ROOT)], cwd=tmp_path)
    (sdist,) = dist.glob("aiozcrx-*.tar.gz")

    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        pkg_info = tar.extractfile(f"{sdist.name[:-len('.tar.gz')]}/PKG-INFO")
        assert pkg_info is not None
        meta = pkg_info.read().decode()
        tar.extractall(tmp_path / "src", filter="data") if sys.version_info >= (3, 12) \
            else tar.extractall(tmp_path / "src")
    for needed in ("LICENSE", "README.md", "setup.py", "pyproject.toml", "aiozcrx/py.typed",
                   "aiozcrx/_abi_build.py", "aiozcrx/_c/uapi.h", "aiozcrx/_c/fastpath.c",
                   "aiozcrx/_c/area.c", "aiozcrx/_c/lease.c", "aiozcrx/_c/dispatch.c",
                   "tests/conftest.py", "tests/peers.py", "tests/test_cli.py", "tests/uml/run-in-guest.sh",
                   "examples/loopback_demo.py", "docs/index.md", "docs/conf.py", "Makefile",
                   # every C file and header both compiled modules are built from
                   *(f"aiozcrx/_c/{p.name}" for p in (ROOT / "aiozcrx" / "_c").glob("*.[ch]"))):
        assert needed in names, f"{needed} missing from the sdist"
    assert not any(n.endswith((".so", ".pyc")) for n in names), sorted(names)
    assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta, meta
    assert "Classifier: Typing :: Typed" in meta and "Classifier: Programming Language :: Python :: 3.13" in meta

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, bindir = env_dir / "bin" / "python", env_dir / "bin"
    # the sdist (compiled here), and what its conftest needs to run part of its tests
    _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
          f"{sdist}[uvloop]", "pytest>=8", "pytest-asyncio>=1.5"], cwd=tmp_path)

    # from an empty directory: only the installed package can be imported
    work = tmp_path / "work"
    work.mkdir()
    probe = _run([str(py), "-c", "import aiozcrx, importlib.metadata as m, pathlib; "
                  "print(pathlib.Path(aiozcrx.__file__).with_name('py.typed').is_file(), "
                  "m.metadata('aiozcrx')['License-Expression'], aiozcrx.Receiver.__module__, "
                  "aiozcrx.__file__)"], cwd=work)
    typed, license_expr, module, where = probe.stdout.split()
    assert (typed, license_expr, module) == ("True", "MIT", "aiozcrx.receiver"), probe.stdout
    assert str(env_dir) in where, where

    demo = _run([str(bindir / "aiozcrx"), "demo", "--mib", "8"], cwd=work, timeout=300)
    assert "received 8388608 bytes" in demo.stdout and "verify: OK" in demo.stdout, demo.stdout

    src = tmp_path / "src" / sdist.name[:-len(".tar.gz")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    tests = subprocess.run(
        [str(bindir / "pytest"), "-q", "-p", "no:cacheprovider", "--rootdir", str(src),
         "-c", str(src / "pyproject.toml"), str(src / "tests" / "test_errors.py"),
         str(src / "tests" / "test_cli.py"), "-k", "not doctor"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-6000:] + tests.stderr[-2000:]
    ran = re.search(r"(\d+) passed", tests.stdout)
    assert ran and int(ran.group(1)) >= 20 and " failed" not in tests.stdout, tests.stdout[-2000:]
