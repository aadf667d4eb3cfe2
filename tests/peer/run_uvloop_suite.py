"""uvloop's own test suite against aiozcrx's drop-in loop (`make test-peers`).

uvloop's source distribution ships its tests (tests/: TCP, TLS, Unix sockets,
sock_* calls, context, ...). Each test class runs on a loop from one of two mixins:
UVTestCase (uvloop's loop) and AIOTestCase (the stock asyncio loop). This runner

1. fetches the sdist of the uvloop installed here, by package name with pip, into
   the build area (build/peer/, or $AIOZCRX_PEER_CACHE), once: it is cached there,
   never vendored; where it cannot be fetched the run says SKIPPED and why;
2. runs the selected modules with every UV class on aiozcrx's loop over the uvloop
   base (AIOZCRX_LOOP=uvloop) and every AIO class on aiozcrx's loop over the stock
   base (AIOZCRX_LOOP=asyncio): ``uvloop_plugin.py`` makes the mixins' loops;
3. runs each test that failed again on its own base loop, unmodified, and once more
   on aiozcrx's: a test that passes on the base loop and fails on aiozcrx's (twice)
   is a deviation. A deviation must be listed, with its reason, in
   ``uvloop-not-applicable.txt`` (section [not applicable]: the test pokes a private
   part of the base loop or asserts its identity; [known deviations]: a behaviour
   difference, explained); an unlisted one fails the run;
4. prints, per base, how many tests ran, passed, failed, are listed (with the
   reasons) and were skipped by the suite itself.

``--base-run`` also runs every selected test on its own base loop first (the
reference numbers; about doubles the time).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LISTING = HERE / "uvloop-not-applicable.txt"
INI = HERE / "uvloop-pytest.ini"

# The modules that exercise what the drop-in loop replaces or wraps: TCP transports,
# servers, create_connection / connect_accepted_socket, start_tls and TLS (test_tcp),
# the Unix-socket pass-through to the base loop (test_unix), sock_* calls and the
# loop's own readers and writers beside aiozcrx's (test_sockets), callbacks' context
# in protocols and transports (test_context), the loop's basics under the subclass
# (test_base: call_soon, timers, close, exception handler), aiohttp on the loop
# (test_aiohttp), DNS, executors, signals and datagrams through the subclass
# (test_dns, test_executors, test_signals, test_udp), and uvloop's regression and
# deallocation tests (test_regr1, test_dealloc).
# Left out: test_process / test_process_spawning / test_pipes (subprocess and pipe
# transports, which aiozcrx does not touch),
# test_fs_event and test_libuv_api (uvloop-only APIs), test_cython and
# test_sourcecode (uvloop's own build and source), test_runner and test_testbase
# (uvloop.run() and the suite's own helpers: no loop from the mixins).
MODULES = ("test_tcp", "test_unix", "test_sockets", "test_context", "test_base",
           "test_aiohttp", "test_dns", "test_executors", "test_signals", "test_udp",
           "test_regr1", "test_dealloc")

TEST_TIMEOUT = 60      # seconds one test may take before it counts as hung
RUN_TIMEOUT = 1800     # seconds one pytest process may take


class Unavailable(Exception):
    """The suite cannot be had here (no network, no sdist): the run is skipped."""


# ---------------------------------------------------------------- fetching
def cache_dir() -> Path:
    return Path(os.environ.get("AIOZCRX_PEER_CACHE") or ROOT / "build" / "peer")


def fetch(version: str, cache: Path) -> Path:
    """The unpacked tests/ (and _testbase.py) of uvloop ``version``'s sdist, under
    ``cache``: downloaded by pip once, unpacked once."""
    suite = cache / f"uvloop-{version}"
    if (suite / ".complete").exists():
        return suite
    sdist = cache / "sdist" / f"uvloop-{version}.tar.gz"
    if not sdist.exists():
        sdist.parent.mkdir(parents=True, exist_ok=True)
        # the source distribution, by name, from the index pip is configured with
        # (--no-binary: not the wheel; pip prepares its metadata, so it fetches the
        # build requirements as wheels into an isolated environment)
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
               "--no-deps", "--no-binary", "uvloop", f"uvloop=={version}", "-d", str(sdist.parent)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"pip download uvloop=={version}: no answer in 600 s") from None
        if p.returncode != 0 or not sdist.exists():
            lines = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
            raise Unavailable(f"pip download uvloop=={version} (sdist) failed: "
                              f"{lines[-1] if lines else 'exit ' + str(p.returncode)}")
    prefix = f"uvloop-{version}/"
    tmp = cache / f".uvloop-{version}.partial"
    if tmp.exists():
        _rmtree(tmp)
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(prefix):
                continue
            rel = m.name[len(prefix):]
            if rel.startswith("tests/") or rel == "uvloop/_testbase.py":
                m.name = "_testbase.py" if rel == "uvloop/_testbase.py" else rel
                members.append(m)
        if not any(m.name == "_testbase.py" for m in members):
            raise Unavailable(f"{sdist.name} has no uvloop/_testbase.py")
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp, members=members, **kw)  # type: ignore[arg-type]
    (tmp / ".complete").write_text(sdist.name + "\n")
    if suite.exists():
        _rmtree(suite)
    tmp.rename(suite)
    return suite


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path)


# ----------------------------------------------------------------- listing
@dataclass
class Entry:
    section: str                     # "not applicable" or "known deviation"
    pattern: str                     # a test id, or an fnmatch pattern of ids
    subtests: dict[str, str] | None  # only the subtests with these parameters
    reason: str

    def covers(self, test_id: str, part: dict[str, str]) -> bool:
        """Whether this entry names ``part`` of ``test_id``'s failure: one of its
        subtests (its parameters), or the test itself ({"@phase": ...})."""
        if not fnmatch.fnmatchcase(test_id, self.pattern):
            return False
        if self.subtests is None:
            return True
        return "@phase" not in part and all(part.get(k) == v for k, v in self.subtests.items())


@dataclass
class Listing:
    """uvloop-not-applicable.txt: ``<test id>  <reason>`` lines under [not applicable]
    or [known deviations]; # starts a comment line. The id may be an fnmatch pattern,
    and may end in ``[key=value,...]``: only the failing subtests with those
    parameters (as unittest's subTest() names them) are listed."""
    entries: list[Entry] = field(default_factory=list)

    SECTIONS = {"[not applicable]": "not applicable", "[known deviations]": "known deviation"}

    @classmethod
    def parse(cls, text: str, name: str = "listing") -> "Listing":
        listing = cls()
        section = None
        seen: set[str] = set()
        for no, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                if line not in cls.SECTIONS:
                    raise ValueError(f"{name}:{no}: unknown section {line} "
                                     f"(expected one of {', '.join(cls.SECTIONS)})")
                section = cls.SECTIONS[line]
                continue
            if section is None:
                raise ValueError(f"{name}:{no}: entry before any section")
            parts = line.split(None, 1)
            if len(parts) < 2 or not parts[1].strip():
                raise ValueError(f"{name}:{no}: {parts[0]} has no reason")
            m = re.fullmatch(r"(tests/test_\w+\.py::[^\[\]\s]+)(?:\[([^\]]*)\])?", parts[0])
            if not m or m.group(1).count("::") != 2:
                raise ValueError(f"{name}:{no}: {parts[0]!r} is not a test id "
                                 "(tests/test_x.py::Class::test_name, optionally [key=value,...])")
            subtests = None
            if m.group(2) is not None:
                pairs = [kv.split("=", 1) for kv in m.group(2).split(",") if kv.strip()]
                if not pairs or any(len(kv) != 2 for kv in pairs):
                    raise ValueError(f"{name}:{no}: [{m.group(2)}]: expected key=value,...")
                subtests = {k.strip(): v.strip() for k, v in pairs}
            if parts[0] in seen:
                raise ValueError(f"{name}:{no}: {parts[0]} listed twice")
            seen.add(parts[0])
            listing.entries.append(Entry(section, m.group(1), subtests, parts[1].strip()))
        return listing

    @classmethod
    def load(cls, path: Path = LISTING) -> "Listing":
        return cls.parse(path.read_text(), path.name)

    def match(self, test_id: str, parts: list[dict[str, str]]) -> tuple[str, str] | None:
        """(section, reason) when every failing part of ``test_id`` is listed: each
        failing subtest (its parameters) and the test's own failure ({"@phase": ...}).
        A failure of the test's teardown after listed subtests failed is theirs (the
        suite's tearDown fails on what a failed subtest left behind)."""
        if not parts:
            parts = [{"@phase": "call"}]
        found: list[Entry] = []
        for part in parts:
            entry = next((e for e in self.entries if e.covers(test_id, part)), None)
            if entry is None and part.get("@phase") in ("teardown", "tearDown"):
                entry = found[0] if found else None
            if entry is None:
                return None
            if entry not in found:
                found.append(entry)
        section = "known deviation" if any(e.section == "known deviation" for e in found) \
            else "not applicable"
        return section, "; ".join(e.reason for e in found)

    def names(self, test_id: str) -> bool:
        return any(fnmatch.fnmatchcase(test_id, e.pattern) for e in self.entries)


# ------------------------------------------------------------------ running
@dataclass
class Result:
    id: str
    base: str       # "uvloop" or "asyncio": the base loop of its class
    outcome: str    # passed, failed, skipped
    why: str = ""
    parts: list = field(default_factory=list)  # what failed: subtests' parameters, {"@phase": ...}
    seconds: float = 0.0


def run_pytest(suite: Path, mode: str, targets: list[str], label: str,
               timeout: float = TEST_TIMEOUT) -> dict[str, Result]:
    """Runs ``targets`` (modules or test ids) of the suite in ``mode`` ("aiozcrx" or
    "base"); a test that hangs past ``timeout`` or kills the process is a failure,
    and the run goes on with the tests after it."""
    runs = cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    out, done_file, log = runs / f"{label}.jsonl", runs / f"{label}.done", runs / f"{label}.log"
    for p in (out, done_file, log):
        p.unlink(missing_ok=True)
    env = dict(os.environ, AIOZCRX_PEER_MODE=mode, AIOZCRX_PEER_RESULTS=str(out),
               AIOZCRX_PEER_TESTBASE=str(suite / "_testbase.py"),
               AIOZCRX_PEER_TIMEOUT=str(timeout), AIOZCRX_PEER_DONE=str(done_file),
               PYTHONPATH=os.pathsep.join([str(HERE)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("AIOZCRX_LOOP", None)  # the plugin sets it per class
    results: dict[str, Result] = {}
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        done_file.write_text("".join(i + "\n" for i in results))
        cmd = [sys.executable, "-m", "pytest", "-c", str(INI), "--rootdir", str(suite),
               *[t if "::" in t else f"tests/{t}.py" for t in targets]]
        with open(log, "a") as f:
            f.write(f"\n==== {' '.join(cmd)}\n")
            f.flush()
            try:
                rc = subprocess.run(cmd, cwd=suite, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=max(1.0, deadline - time.monotonic())).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        started, progress = None, False
        if out.exists():
            for line in out.read_text().splitlines():
                rec = json.loads(line)
                progress = True
                if rec["outcome"] == "started":
                    started = rec
                    continue
                started = None
                results[rec["id"]] = Result(rec["id"], rec["base"], rec["outcome"], rec["why"],
                                            rec.get("parts") or [], rec.get("seconds", 0.0))
            out.unlink()
        if started is not None:
            why = (f"hung: no outcome in {timeout:.0f} s (tracebacks in {log})" if rc in (1, -1)
                   else f"the test process died (exit {rc}; see {log})")
            results[started["id"]] = Result(started["id"], started["base"], "failed", why,
                                            [{"@phase": "call"}])
        elif rc in (0, 1, 5):  # 5: nothing left to run
            return results
        if rc == -1 or time.monotonic() > deadline:
            raise RuntimeError(f"pytest ({label}) ran past {RUN_TIMEOUT} s: see {log}")
        if not progress:
            raise RuntimeError(f"pytest ({label}) exited {rc} before any test: see {log}")
        # a test hung or took the process down with it: go on with the others


# ------------------------------------------------------------ classifying
@dataclass
class Verdict:
    result: Result
    category: str     # passed, skipped, not applicable, known deviation, fails on base,
    #                   passed on retry, DEVIATION
    note: str = ""


def classify(zcrx: dict[str, Result], base: dict[str, Result], retry: dict[str, Result],
             listing: Listing) -> list[Verdict]:
    """Each test's verdict from its run on aiozcrx's loop, its rerun on the base
    loop and its second run on aiozcrx's (both only for the failures)."""
    verdicts = []
    for tid, r in sorted(zcrx.items()):
        if r.outcome != "failed":
            note = f"listed but {r.outcome}" if listing.names(tid) and r.outcome == "passed" else ""
            verdicts.append(Verdict(r, r.outcome, note))
            continue
        listed = listing.match(tid, r.parts)
        b = base.get(tid)
        if b is not None and b.outcome != "passed":
            verdicts.append(Verdict(r, "fails on base", f"on the base loop too: {b.why}"))
        elif listed:
            verdicts.append(Verdict(r, listed[0], listed[1]))
        elif tid in retry and retry[tid].outcome == "passed":
            verdicts.append(Verdict(r, "passed on retry", f"first run: {r.why}"))
        else:
            failing = [p for p in r.parts if "@phase" not in p]
            sub = f" (subtests: {'; '.join(','.join(f'{k}={v}' for k, v in p.items()) for p in failing)})" \
                if failing else ""
            verdicts.append(Verdict(r, "DEVIATION", r.why + sub))
    return verdicts


def counts(verdicts: list[Verdict], base: str) -> dict[str, int]:
    """run / passed / failed / n/a / known / skipped (and the rest) for one base."""
    vs = [v for v in verdicts if v.result.base == base]
    n = {c: sum(v.category == c for v in vs) for c in
         ("passed", "skipped", "not applicable", "known deviation", "fails on base",
          "passed on retry", "DEVIATION")}
    return {"run": len(vs) - n["skipped"], "passed": n["passed"] + n["passed on retry"],
            "failed": n["DEVIATION"], "n/a": n["not applicable"], "known": n["known deviation"],
            "skipped": n["skipped"], "fails on base": n["fails on base"],
            "passed on retry": n["passed on retry"]}


def summarize(verdicts: list[Verdict], listing: Listing, out=sys.stdout, loop: str = "aiozcrx/") -> bool:
    """Prints the counts per base and every test that did not pass; True when there
    is no unlisted deviation. ``loop``: what the rows are named after the base."""
    def p(*a: object) -> None:
        print(*a, file=out)

    p(f"{'loop':<16} {'run':>5} {'passed':>7} {'failed':>7} {'n/a':>5} {'known':>6} {'skipped':>8}")
    for base in ("uvloop", "asyncio"):
        n = counts(verdicts, base)
        p(f"{loop + base:<16} {n['run']:>5} {n['passed']:>7} {n['failed']:>7} "
          f"{n['n/a']:>5} {n['known']:>6} {n['skipped']:>8}"
          + (f"   (+{n['fails on base']} failing on the base loop too)" if n["fails on base"] else "")
          + (f"   ({n['passed on retry']} of the passed on a second run)" if n["passed on retry"] else ""))
    p(f"(failed: unlisted deviations; n/a, known: listed in {LISTING.name}; "
      "skipped: by the suite itself)")
    for cat, title in (("not applicable", "not applicable"), ("known deviation", "known deviations"),
                       ("fails on base", "failing on the base loop too (not a deviation)"),
                       ("passed on retry", "failed once, passed on a second run"),
                       ("DEVIATION", "DEVIATIONS: pass on the base loop, fail on aiozcrx's")):
        vs = [v for v in verdicts if v.category == cat]
        if not vs:
            continue
        p(f"\n{title} ({len(vs)}):")
        for v in vs:
            p(f"  {v.result.id}: {v.note or v.result.why}")
    stale = [v for v in verdicts if v.note.startswith("listed but")]
    if stale:
        p(f"\nlisted in {LISTING.name} but passing now (remove the entry?):")
        for v in stale:
            p(f"  {v.result.id}")
    ran = {v.result.id for v in verdicts}
    unmatched = [e.pattern for e in listing.entries
                 if not any(fnmatch.fnmatchcase(t, e.pattern) for t in ran)]
    if unmatched:
        p("\nlisted but not run (module not selected, or renamed upstream):")
        for pat in unmatched:
            p(f"  {pat}")
    per_module: dict[str, float] = {}
    for v in verdicts:
        mod = v.result.id.split("::")[0].removeprefix("tests/").removesuffix(".py")
        per_module[mod] = per_module.get(mod, 0.0) + v.result.seconds
    p(f"\nseconds per module ({'the base loops' if not loop else 'the drop-in loop'}): "
      + ", ".join(f"{m} {t:.0f}" for m, t in sorted(per_module.items(), key=lambda kv: -kv[1])))
    return not any(v.category == "DEVIATION" for v in verdicts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", help=f"modules or test ids (default: {' '.join(MODULES)})")
    ap.add_argument("--base-run", action="store_true",
                    help="also run every selected test on its own base loop first")
    ap.add_argument("--uv-on-asyncio", action="store_true",
                    help="a diagnosis: run the UV classes of the targets on the stock asyncio "
                         "loop (the drop-in loop's TLS is asyncio's on both bases) and list outcomes")
    ap.add_argument("--timeout", type=float, default=TEST_TIMEOUT, help="seconds per test")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        version = metadata.version("uvloop")
    except metadata.PackageNotFoundError:
        print("peer suite (uvloop) SKIPPED: uvloop is not installed")
        return 0
    try:
        suite = fetch(version, cache_dir())
    except (Unavailable, OSError, tarfile.TarError) as e:
        print(f"peer suite (uvloop) SKIPPED: cannot fetch uvloop {version}'s test suite: {e}")
        return 0
    listing = Listing.load()
    targets = args.targets or list(MODULES)
    print(f"== uvloop {version}'s own test suite ({suite}) on aiozcrx's drop-in loop, "
          f"uvloop and asyncio bases: {' '.join(targets)}", flush=True)
    if args.uv_on_asyncio:
        diag = run_pytest(suite, "uv-on-asyncio", targets, "uv-on-asyncio", args.timeout)
        for tid, r in sorted(diag.items()):
            if r.base == "uvloop":
                print(f"{r.outcome:8} {tid}" + (f": {r.why}" if r.outcome != "passed" else ""))
        return 0
    if args.base_run:
        ref = run_pytest(suite, "base", targets, "base", args.timeout)
        vs = [Verdict(r, "fails on base" if r.outcome == "failed" else r.outcome, r.why)
              for r in ref.values()]
        print("reference run, each class on its own base loop (not aiozcrx's):")
        summarize(vs, Listing(), loop="")
        print(flush=True)
    zcrx = run_pytest(suite, "aiozcrx", targets, "aiozcrx", args.timeout)
    failed = [t for t, r in zcrx.items() if r.outcome == "failed"]
    base = run_pytest(suite, "base", failed, "base-rerun", args.timeout) if failed else {}
    again = [t for t in failed if t in base and base[t].outcome == "passed"
             and not listing.match(t, zcrx[t].parts)]
    retry = run_pytest(suite, "aiozcrx", again, "aiozcrx-retry", args.timeout) if again else {}
    ok = summarize(classify(zcrx, base, retry, listing), listing)
    print(f"\npeer suite (uvloop {version}): {time.monotonic() - t0:.0f} s; logs in "
          f"{cache_dir() / 'runs'}")
    if not ok:
        print(f"FAILED: a test that passes on the base loop fails on aiozcrx's (DEVIATION above): "
              f"fix it, or list it with the reason in {LISTING.relative_to(ROOT)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
