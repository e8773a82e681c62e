#!/usr/bin/env python3
"""The whole test suite, run again and again under a parallel CPU load (issue 18's measure of
flakiness): it stops at the first failure, so "N runs" means N in a row, and reports each run's
time and the slowest tests with the time of each (no test should take over 60 s).

    scripts/suite-under-load.py [--runs 20] [--load build|busy:N|none] [--out DIR]

The test binaries are built once (`cargo test --workspace --no-run`) and then run directly, each
from its package's directory as `cargo test` runs it, with libtest's `--report-time` (unlocked
for the test binary alone with RUSTC_BOOTSTRAP; the build is not touched). The doc tests run
through `cargo test --doc` in every run. The load:
  build   (default) a release build of `market-node` in a loop, the load of a developer
          building beside the tests (the source file it touches is market/src/lib.rs' mtime);
  busy:N  N processes that spin;
  none    no load.
Not in CI (hours on a 2-core machine); figures go in BENCHMARKS.md.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)(?: <([0-9.]+)s>)?")


def test_binaries():
    """(executable, package directory, name) of every test target of the workspace."""
    out = subprocess.run(
        ["cargo", "test", "--workspace", "--locked", "--no-run", "--message-format=json"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    found = []
    for line in out.splitlines():
        m = json.loads(line)
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
            pkg = Path(m["manifest_path"]).parent
            found.append((m["executable"], pkg, f'{pkg.name}/{m["target"]["name"]}'))
    return found


def start_load(kind):
    """The processes of the parallel load."""
    if kind == "none":
        return []
    if kind.startswith("busy:"):
        return [subprocess.Popen(["sh", "-c", "while :; do :; done"], start_new_session=True)
                for _ in range(int(kind.split(":", 1)[1]))]
    if kind == "build":
        loop = ("while :; do touch market/src/lib.rs; "
                "cargo build --release --locked -q -p market-node >/dev/null 2>&1; done")
        return [subprocess.Popen(["sh", "-c", loop], cwd=ROOT, start_new_session=True)]
    sys.exit(f"unknown load {kind!r}: use build, busy:N or none")


def stop_load(procs):
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def run_once(binaries, log):
    """Runs every binary and the doc tests; returns (passed, {test: seconds}, failure text)."""
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    times = {}
    for exe, pkg, name in binaries:
        r = subprocess.run([exe, "-Z", "unstable-options", "--report-time"], cwd=pkg, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log.write(f"== {name}\n{r.stdout}\n")
        for line in r.stdout.splitlines():
            m = LINE.match(line)
            if m and m.group(3):
                times[f"{name}::{m.group(1)}"] = float(m.group(3))
        if r.returncode != 0:
            return False, times, f"{name} failed:\n" + r.stdout[-6000:]
    r = subprocess.run(["cargo", "test", "--workspace", "--locked", "--doc"], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(f"== doc tests\n{r.stdout}\n")
    if r.returncode != 0:
        return False, times, "doc tests failed:\n" + r.stdout[-6000:]
    return True, times, ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--load", default="build")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "suite-under-load")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    binaries = test_binaries()
    print(f"{len(binaries)} test binaries; load: {args.load}", flush=True)
    load = start_load(args.load)
    slowest = {}
    passed = 0
    try:
        for i in range(1, args.runs + 1):
            started = time.monotonic()
            with open(args.out / f"run-{i:02}.log", "w") as log:
                ok, times, failure = run_once(binaries, log)
            for test, secs in times.items():
                slowest[test] = max(secs, slowest.get(test, 0.0))
            took = time.monotonic() - started
            if not ok:
                print(f"run {i}: FAILED after {took:.0f} s\n{failure}", flush=True)
                break
            passed += 1
            print(f"run {i}: passed in {took:.0f} s ({len(times)} tests timed)", flush=True)
    finally:
        stop_load(load)
    top = sorted(slowest.items(), key=lambda kv: -kv[1])
    print(f"\n{passed} of {args.runs} runs passed in a row (load: {args.load})")
    print("slowest ten (the longest of each test over the runs):")
    for test, secs in top[:10]:
        print(f"  {secs:7.1f} s  {test}")
    over = [t for t, s in top if s > 60.0]
    print(f"tests over 60 s: {len(over)}" + "".join(f"\n  {t}" for t in over))
    (args.out / "slowest.json").write_text(json.dumps(top, indent=1))
    sys.exit(0 if passed == args.runs and not over else 1)


if __name__ == "__main__":
    main()
