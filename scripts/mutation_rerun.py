#!/usr/bin/env python3
"""Run a finished mutation run's survivors again, against the tests as they are now.

    .venv/bin/python scripts/mutation_rerun.py [--modules GLOB ...] [--tests FILE ...]
    .venv/bin/python scripts/mutation.py --report-only      # then re-read the run

A run of scripts/mutation.py leaves its scratch copy (default /tmp/segserve-mutation): the
mutated code of its commit and, per module, each mutant's exit code. Tests written for its
survivors afterwards are measured here without a new run: the checkout's tests/ are copied
over the scratch copy's (the code under test stays the run's), and each survivor in
`--modules` that docs/mutation/equivalent.json does not name is run again, as mutmut runs
it (`MUTANT_UNDER_TEST=<name> pytest -x` in mutants/), on the test files mutmut mapped to
its function plus every test file added or changed since the run's commit (`--tests`
replaces that choice). A survivor that the tests now fail is written back as killed, and
the rerun is recorded in reruns/<name>.json beside the run (tests, exit code, date), so
the report can say which verdicts came from a rerun. A rerun past `--timeout` seconds
leaves the survivor as it was. `--timeouts` also reruns the mutants the run stopped at
mutmut's time limit (on a loaded machine an ordinary test run can pass it, and mutmut
counts a timeout as killed): each gets the verdict of its rerun, survived included.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mutation import ROOT, classify, describe, diffs, function_lines, git, status_of

KILLED = 1  # pytest's "tests failed", as mutmut records a killed mutant


def changed_tests(commit: str) -> set[str]:
    """Test files added or changed since `commit`, committed or not."""
    names = git("diff", "--name-only", commit, "--", "tests").splitlines()
    names += git("ls-files", "--others", "--exclude-standard", "--", "tests").splitlines()
    return {n for n in names if Path(n).name.startswith("test_") and (ROOT / n).exists()}


def mapped_tests(stats: dict[str, list[str]], name: str) -> set[str]:
    """The test files mutmut found reaching the mutated function."""
    function = name.split("__mutmut_")[0]
    return {test.split("::")[0] for test in stats.get(function, [])}


def survivors(
    tree: Path, modules: list[str], timeouts: bool = False
) -> list[tuple[str, Path, str]]:
    """(mutant name, its .meta file, its module) of every survivor (and, with `timeouts`,
    every mutant stopped at the time limit) in the modules matching the globs."""
    found = []
    for meta in sorted((tree / "mutants").rglob("*.py.meta")):
        module = meta.relative_to(tree / "mutants").as_posix().removesuffix(".meta")
        if not any(fnmatch.fnmatch(module, pattern) for pattern in modules):
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        wanted = {"survived", "timeout"} if timeouts else {"survived"}
        found += [(n, meta, module) for n, code in codes.items() if status_of(code) in wanted]
    return found


def named_equivalent(tree: Path, pending: list[tuple[str, Path, str]]) -> set[str]:
    """Survivors docs/mutation/equivalent.json names, matched as the report matches them."""
    by_file: dict[str, list[str]] = {}
    for name, _, file in pending:
        by_file.setdefault(file, []).append(name)
    described: list[dict[str, object]] = []
    for file, group in by_file.items():
        texts = diffs(tree, [(n, file) for n in group])
        defs = function_lines(tree / file)
        described += [describe(n, file, texts[n], defs) for n in group]
    classify(described)
    return {str(d["name"]) for d in described if "equivalent" in d}


def rerun(tree: Path, name: str, tests: list[str], timeout: float) -> int | None:
    """pytest's exit code with `name` active, or None past the timeout."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly",
               "-p", "no:cacheprovider", "-p", "tests.mutation_plugin", *tests]  # fmt: skip
    env = {**os.environ, "MUTANT_UNDER_TEST": name, "CI": ""}
    try:
        done = subprocess.run(
            command, cwd=tree / "mutants", env=env, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None
    return done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segserve-mutation"
    )
    parser.add_argument("--modules", nargs="+", default=["app/*"], help="globs of modules")
    parser.add_argument("--tests", nargs="+", help="test files (default: see above)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant")
    parser.add_argument("--timeouts", action="store_true", help="rerun timed-out mutants too")
    args = parser.parse_args()
    tree: Path = args.workdir
    run = json.loads((tree / "mutation-run.json").read_text())
    shutil.copytree(ROOT / "tests", tree / "mutants" / "tests", dirs_exist_ok=True)
    stats = json.loads((tree / "mutants" / "mutmut-stats.json").read_text())
    stats = stats["tests_by_mangled_function_name"]
    added = changed_tests(run["commit"])
    pending = survivors(tree, args.modules, args.timeouts)
    skip = named_equivalent(tree, pending)
    records = tree / "reruns"
    records.mkdir(exist_ok=True)
    killed = 0
    todo = [(name, meta) for name, meta, _ in pending if name not in skip]
    print(f"{len(pending)} survivors, {len(skip)} named equivalent, {len(todo)} to rerun")
    for number, (name, meta) in enumerate(todo, 1):
        tests = args.tests or sorted(mapped_tests(stats, name) | added)
        tests = [t for t in tests if (tree / "mutants" / t).exists()]
        code = rerun(tree, name, tests, args.timeout) if tests else None
        verdict = "killed" if code == KILLED else "timeout" if code is None else "survived"
        print(f"[{number}/{len(todo)}] {name}: {verdict}", flush=True)
        (records / f"{name}.json").write_text(json.dumps({
            "name": name, "tests": tests, "exit_code": code, "verdict": verdict,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "checkout": git("rev-parse", "--short=12", "HEAD"),
        }, indent=1))  # fmt: skip
        document = json.loads(meta.read_text())
        before = document["exit_code_by_key"][name]
        if code == KILLED or (status_of(before) == "timeout" and code == 0):
            killed += code == KILLED
            document["exit_code_by_key"][name] = code
            meta.write_text(json.dumps(document, indent=4))
    print(f"{killed} of {len(todo)} killed by the tests as they are now")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
