"""`aiozcrx doctor` and `aiozcrx nic` work where the compiled core cannot be loaded.

Each check runs in a fresh interpreter whose import system refuses the two compiled
modules (``aiozcrx._abi``, cffi, and ``aiozcrx._fastpath``, the C extension) the way a
machine without a build would: ImportError on import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ("aiozcrx._abi", "aiozcrx._fastpath")

# Prepended to every child: a meta-path finder that blocks the compiled core, and a
# helper listing which compiled modules got loaded anyway.
BLOCK = textwrap.dedent(f"""
    import sys

    CORE = {CORE!r}

    class _NoCore:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name in CORE or name.startswith(tuple(c + "." for c in CORE)):
                raise ImportError(f"blocked by the test: no module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _NoCore)

    def loaded_core():
        return sorted(m for m in sys.modules if m in CORE or m.startswith(tuple(c + "." for c in CORE)))
""")

def run_py(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_blocker_really_blocks_the_core():
    r = run_py("""
        try:
            import aiozcrx._kernel
        except ImportError as exc:
            print("blocked:", exc)
        print("loaded:", loaded_core())
    """)
    assert r.returncode == 0, r.stderr
    assert "blocked: blocked by the test" in r.stdout and "loaded: []" in r.stdout


@pytest.mark.parametrize("module", ["aiozcrx.tools", "aiozcrx.tools.nic", "aiozcrx.tools.ethtool",
                                    "aiozcrx.tools.doctor", "aiozcrx.tools.probe",
                                    "aiozcrx.cli"])
def test_tools_modules_import_without_the_core(module):
    r = run_py(f"""
        import importlib, json
        importlib.import_module({module!r})
        print(json.dumps(loaded_core()))
    """)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == []


def test_doctor_json_without_the_core():
    r = run_py("""
        from aiozcrx.cli import main
        rc = main(["doctor", "--json"])
        print("RC", rc, loaded_core())
    """)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out, last = r.stdout.rsplit("RC", 1)
    assert last.split()[0] == "1"     # not ok: nothing says zcrx works here
    report = json.loads(out)
    core = report["core"]
    assert core["available"] is False
    assert core["error"].startswith("not checked: the compiled core could not be loaded (")
    assert "blocked by the test" in core["error"]
    kernel = {c["name"]: c for c in report["checks"]}["kernel"]
    assert "not checked: the compiled core could not be loaded" in kernel["detail"]
    # the checks that need no core still ran
    names = {c["name"] for c in report["checks"]}
    assert {"io_uring_disabled", "seccomp", "CAP_NET_ADMIN", "RLIMIT_MEMLOCK"} <= names


def test_doctor_text_without_the_core():
    r = run_py("""
        from aiozcrx.cli import main
        sys.exit(main(["doctor"]))
    """)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.startswith("aiozcrx doctor: kernel ")
    assert "not checked: the compiled core could not be loaded" in r.stdout
    assert "result: engine=\"zcrx\" cannot work on this host" in r.stdout


def test_python_m_aiozcrx_doctor_without_the_core(tmp_path):
    # the real `python -m aiozcrx`, the blocker installed by a sitecustomize module
    (tmp_path / "sitecustomize.py").write_text(BLOCK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    r = subprocess.run([sys.executable, "-m", "aiozcrx", "doctor", "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    report = json.loads(r.stdout)
    assert report["core"]["error"].startswith("not checked: the compiled core could not be loaded")
    assert "blocked by the test" in report["core"]["error"]   # the blocker was in force


def test_nic_help_without_the_core():
    r = run_py("""
        from aiozcrx.cli import main
        try:
            main(["nic", "--help"])
        except SystemExit as e:
            print("EXIT", e.code, loaded_core())
    """)
    assert r.returncode == 0, r.stderr
    assert "setup" in r.stdout and "EXIT 0 []" in r.stdout


def test_recv_without_the_core_says_why():
    r = run_py("""
        from aiozcrx.cli import main
        sys.exit(main(["recv", "--port", "0"]))
    """)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "the compiled core could not be loaded" in r.stderr


def test_package_is_lazy_and_names_fail_with_importerror():
    r = run_py("""
        import aiozcrx
        assert loaded_core() == [], loaded_core()
        assert "Receiver" in dir(aiozcrx) and "Receiver" in aiozcrx.__all__
        from aiozcrx import AiozcrxError          # pure Python: loads without the core
        try:
            aiozcrx.Receiver
        except ImportError as exc:
            print("ImportError:", exc)
        try:
            aiozcrx.no_such_name
        except AttributeError:
            print("AttributeError for unknown names")
    """)
    assert r.returncode == 0, r.stderr
    assert "ImportError: cannot load aiozcrx.Receiver" in r.stdout
    assert "blocked by the test" in r.stdout
    assert "AttributeError for unknown names" in r.stdout


def test_package_names_load_with_the_core():
    code = ("import sys, aiozcrx; assert 'aiozcrx._fastpath' not in sys.modules; "
            "from aiozcrx import Receiver; assert aiozcrx.Receiver is Receiver; "
            "assert Receiver.__module__ == 'aiozcrx.receiver'; "
            "assert all(getattr(aiozcrx, n) is not None for n in aiozcrx.__all__); "
            "assert 'aiozcrx._fastpath' in sys.modules")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
