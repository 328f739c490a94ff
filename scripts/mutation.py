#!/usr/bin/env python3
"""Mutation testing of the request path with mutmut 3 (a developer's tool, not run in CI).

    pip install -e '.[mutation]'
    .venv/bin/python scripts/mutation.py                  # the committed HEAD
    .venv/bin/python scripts/mutation.py --worktree       # with uncommitted changes
    .venv/bin/python scripts/mutation.py --report-only    # re-read the last run

It copies the repository (HEAD, or the working tree with --worktree) into a scratch folder
(never mutating the checkout), mutates the request-path modules (MODULES) and runs the fast
tests/app tests against every mutant: those that start no server process, browser or
schemathesis, gRPC or hypothesis and need no ../shared data. mutmut records which tests
reach each function and runs only those per mutant, stopping at the first failure. On two
shared cores the 2,003 mutants of commit 07c0ebeb took 33 minutes; the request path has
grown since (about 5,300 mutants, 40 to 60 minutes), so mutate a part at a time with --modules, e.g.
`--modules app/inference/v2_codec.py app/service/budget.py`.

The report goes to docs/mutation/report.md and report.json: date, commit, per-module
killed/survived/timeout counts, the score, and every survivor with file:line and its
mutation. Survivors listed in docs/mutation/equivalent.json (matched by file, original
line and mutated line, so the entries outlive renumbering) are marked equivalent, with
the reason, and the score is also given without them.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT_DIR = ROOT / "docs" / "mutation"
EQUIVALENT = REPORT_DIR / "equivalent.json"
MODULES = [
    "app/imaging/*.py",
    "app/inference/pipeline.py",
    "app/inference/tiling.py",
    "app/inference/v2_codec.py",
    "app/inference/admission.py",
    "app/spec.py",
    "app/errors.py",
    "app/service/*.py",
]
# Tests that start a server process, a browser, schemathesis, gRPC or hypothesis are too slow per
# mutant, and mutmut, which picks the tests per function from in-process coverage, would
# never pick them: the plugin below deselects them by what their code and fixtures call.
# test_config.py checks README.md against the settings, test_client.py the client and CLI
# (as subprocesses of the installed package): no request path.
SLOW_FILES = ("test_web_page.py", "test_schemathesis.py", "test_config.py", "test_client.py")
SLOW_CALLS = (
    "running_server", "slow_server", "subprocess", "playwright", "schemathesis", "@given", "grpc",
)  # fmt: skip
PLUGIN = """
import inspect

SLOW_CALLS = __SLOW_CALLS__
SLOW_FILES = __SLOW_FILES__


def _source(function):
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def pytest_ignore_collect(collection_path, config):
    # Files that import the installed package (`segserve`) need a pip install, not a path.
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        text = collection_path.read_text()
        installed = "import segserve" in text or "from segserve" in text
        if collection_path.name in SLOW_FILES or installed:
            return True
    return None


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        sources = [_source(getattr(item, "function", None))]
        info = getattr(item, "_fixtureinfo", None)
        for name in getattr(item, "fixturenames", []):
            for definition in (info.name2fixturedefs.get(name, ()) if info else ()):
                sources.append(_source(definition.func))
        slow = item.path.name in SLOW_FILES or any(
            call in text for text in sources for call in SLOW_CALLS
        )
        (drop if slow else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
""".replace("__SLOW_CALLS__", repr(SLOW_CALLS)).replace("__SLOW_FILES__", repr(SLOW_FILES))
STATUS = {1: "killed", 3: "killed", 0: "survived", 36: "timeout", -24: "timeout", 24: "timeout",
          152: "timeout", 255: "timeout", 5: "no tests", 33: "no tests", 34: "skipped",
          37: "killed"}  # fmt: skip


def status_of(code: int | None) -> str:
    return "not checked" if code is None else STATUS.get(code, "suspicious")


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def copy_tree(target: Path, worktree: bool) -> None:
    """HEAD (or the working tree's tracked and unignored files) into `target`."""
    if worktree:
        files = git("ls-files", "-co", "--exclude-standard", "-z").split("\0")
        for name in filter(None, files):
            source = ROOT / name
            if source.is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)
        return
    with tempfile.TemporaryFile() as archive:
        subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, stdout=archive)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(target, filter="data")


def fast_tests(tree: Path) -> list[str]:
    tests = sorted((tree / "tests" / "app").glob("test_*.py"))
    return [str(p.relative_to(tree)) for p in tests if p.name not in SLOW_FILES]


def mutated_files(tree: Path, patterns: list[str]) -> list[str]:
    files = sorted(str(p.relative_to(tree)) for p in (tree / "app").rglob("*.py"))
    return [f for f in files if any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]


def write_config(tree: Path, tests: list[str], files: list[str]) -> None:
    lines = ["[mutmut]", "source_paths=app/", "also_copy=", "    README.md", "    docs/"]
    lines += ["only_mutate="]
    lines += [f"    {f}" for f in files]
    # The folder, not a list of files; the plugin drops what is too slow.
    lines += ["pytest_add_cli_args_test_selection=", "    tests/app"]
    # A mutant's wall limit is (its tests' estimated time + timeout_constant) x multiplier.
    # The estimate leaves out fixture setup (an app's startup), so with mutmut's constant of
    # 1 s a mutant whose tests take 0.9 s got 7.6 s, and on loaded shared cores unchanged
    # behaviour was recorded as a timeout (= killed). 20 s covers setup; a multiplier of 2
    # keeps a real hang of the admission tests (~60 s) to about 3 minutes.
    lines += ["timeout_multiplier=2.0", "timeout_constant=20.0"]
    lines += ["pytest_add_cli_args=", "    -p", "    no:cacheprovider", "    -q"]
    lines += ["    -p", "    tests.mutation_plugin"]
    (tree / "tests" / "mutation_plugin.py").write_text(PLUGIN)
    (tree / "setup.cfg").write_text("\n".join(lines) + "\n")
    # The repository's own pytest options (a global timeout, -ra) stay in force; a
    # [tool.mutmut] table in pyproject.toml would win over setup.cfg, so none may exist.
    pyproject = (tree / "pyproject.toml").read_text()
    assert "[tool.mutmut]" not in pyproject, "configure mutmut here, not in pyproject.toml"


def function_lines(path: Path) -> dict[str, int]:
    """mutmut's function keys (`x_name`, `xǁClassǁname`) -> the line of their `def`."""
    lines: dict[str, int] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines[f"x_{node.name}"] = node.lineno
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines[f"xǁ{node.name}ǁ{item.name}"] = item.lineno
    return lines


DIFFS = """
import json, sys
from pathlib import Path
from mutmut.mutation.diff_apply import get_diff_for_mutant
pairs = json.load(sys.stdin)
json.dump({name: get_diff_for_mutant(name, path=Path(file)) for name, file in pairs}, sys.stdout)
"""


def diffs(tree: Path, pairs: list[tuple[str, str]]) -> dict[str, str]:
    """mutmut's diff of each (mutant, file), in one process (`mutmut show` takes a second)."""
    done = subprocess.run(
        [sys.executable, "-c", DIFFS],
        cwd=tree,
        input=json.dumps(pairs),
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, str] = json.loads(done.stdout)
    return result


def describe(name: str, file: str, diff: str, defs: dict[str, int]) -> dict[str, object]:
    """file:line and the changed line of one mutant, from its diff."""
    key = name.rsplit(".", 1)[-1].split("__mutmut_")[0]
    start = defs.get(key, 0)
    old: list[str] = []
    new: list[str] = []
    line, relative = start, 0
    for text in diff.splitlines():
        hunk = re.match(r"@@ -(\d+)", text)
        if hunk:
            relative = int(hunk.group(1)) - 1
        elif text.startswith(("---", "+++")):
            continue
        elif text.startswith("-"):
            if not old:
                line = start + relative
            old.append(text[1:].strip())
            relative += 1
        elif text.startswith("+"):
            new.append(text[1:].strip())
        elif text.startswith(" "):
            relative += 1
    return {"name": name, "file": file, "line": line, "old": " ".join(old), "new": " ".join(new)}


def collect(
    tree: Path, files: list[str]
) -> tuple[dict[str, Counter[str]], list[dict[str, object]]]:
    counts: dict[str, Counter[str]] = {}
    pending: list[tuple[str, str, str]] = []
    for file in files:
        meta = tree / "mutants" / f"{file}.meta"
        exit_codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        counts[file] = Counter(status_of(code) for code in exit_codes.values())
        for name, code in sorted(exit_codes.items(), key=lambda item: mutant_order(item[0])):
            status = status_of(code)
            if status in ("survived", "no tests", "suspicious"):
                pending.append((name, file, status))
    texts = diffs(tree, [(name, file) for name, file, _ in pending])
    defs = {file: function_lines(tree / file) for file in files}
    survivors = [
        {**describe(name, file, texts[name], defs[file]), "status": status}
        for name, file, status in pending
    ]
    return counts, survivors


def mutant_order(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number or 0)


def classify(survivors: list[dict[str, object]]) -> None:
    known = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else []
    for survivor in survivors:
        for entry in known:
            if (entry["file"], entry["old"], entry["new"]) == (
                survivor["file"],
                survivor["old"],
                survivor["new"],
            ):
                survivor["equivalent"] = entry["reason"]


def score(counts: Counter[str], equivalent: int = 0) -> float | None:
    """(killed + timed out) / every mutant a test ran against or that no test reaches."""
    checked = sum(counts.values()) - counts["skipped"] - counts["not checked"] - equivalent
    return round((counts["killed"] + counts["timeout"]) / checked, 4) if checked > 0 else None


def write_report(
    counts: dict[str, Counter[str]],
    survivors: list[dict[str, object]],
    tests: list[str],
    meta: dict[str, object],
) -> None:
    total: Counter[str] = sum(counts.values(), Counter())
    equivalent = sum(1 for s in survivors if "equivalent" in s)
    document = {
        **meta,
        "modules": {f: dict(c) for f, c in counts.items()},
        "total": dict(total),
        "score": score(total),
        "score_without_equivalent": score(total, equivalent),
        "equivalent": equivalent,
        "tests": tests,
        "survivors": survivors,
    }
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "report.json").write_text(
        json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    )
    dirty = " (with uncommitted changes)" if meta["dirty"] else ""
    listed = meta.get("modules", MODULES)
    modules = ", ".join(map(str, listed if isinstance(listed, list) else MODULES))
    out = [
        "# Mutation testing of the request path",
        "",
        f"Run {meta['date']} on commit `{meta['commit']}`{dirty} with mutmut {meta['mutmut']},"
        f" {meta.get('minutes', '?')} minutes on {meta['children']} workers;"
        f" modules {modules};"
        " `scripts/mutation.py` wrote this file.",
        "",
        f"**Score: {pct(score(total))} killed** ({total['killed']} killed,"
        f" {total['timeout']} timed out, {total['survived']} survived,"
        f" {total['no tests']} reached by no test, {total['not checked']} not run,"
        f" of {sum(total.values())});"
        f" **{pct(score(total, equivalent))}** without the {equivalent} survivors named"
        " equivalent below.",
    ]
    if meta.get("reruns"):
        out[-1] += (
            f" {meta['reruns_killed']} of the killed verdicts are survivors of the run that"
            f" tests written after it fail (`scripts/mutation_rerun.py` reran {meta['reruns']}"
            " survivors against the tests as they were then, on the run's code)."
        )
    out += [
        "",
        "| module | mutants | killed | timeout | survived | no tests | score |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for file, c in counts.items():
        out.append(
            f"| {file} | {sum(c.values())} | {c['killed']} | {c['timeout']} | {c['survived']}"
            f" | {c['no tests']} | {pct(score(c))} |"
        )
    out += ["", "Tests run against each mutant (those reaching its function):", ""]
    out += [f"- {t}" for t in tests]
    out += ["", "## Survivors", "", "| where | mutation | verdict |", "| --- | --- | --- |"]
    for s in survivors:
        change = f"`{s['old']}` -> `{s['new']}`".replace("|", "\\|")
        verdict = f"equivalent: {s['equivalent']}" if "equivalent" in s else str(s["status"])
        out.append(f"| {s['file']}:{s['line']} | {change} | {verdict} |")
    (REPORT_DIR / "report.md").write_text("\n".join(out) + "\n")


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def mutmut_run(tree: Path, children: int) -> None:
    subprocess.run(
        [sys.executable, "-m", "mutmut", "run", "--max-children", str(children)],
        cwd=tree,
        check=False,
        env={**os.environ, "CI": ""},  # the ../shared tests skip in the scratch copy
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segserve-mutation"
    )
    parser.add_argument("--worktree", action="store_true", help="include uncommitted changes")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument(
        "--modules", nargs="+", default=MODULES, help="globs of the files to mutate (MODULES)"
    )
    parser.add_argument("--report-only", action="store_true", help="re-read the last run")
    args = parser.parse_args()
    tree: Path = args.workdir
    run_file = tree / "mutation-run.json"
    started = dt.datetime.now(dt.UTC)
    if args.report_only:
        run = json.loads(run_file.read_text())
    else:
        if tree.exists():
            shutil.rmtree(tree)
        tree.mkdir(parents=True)
        copy_tree(tree, args.worktree)
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(args.worktree and git("status", "--porcelain", "--untracked-files=no"))
        run = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "commit": commit, "dirty": dirty}
    files = mutated_files(tree, args.modules)
    tests = fast_tests(tree)
    if not args.report_only:
        write_config(tree, tests, files)
        print(f"mutating {len(files)} files, {len(tests)} test files, in {tree}", flush=True)
        mutmut_run(tree, args.max_children)
        run["minutes"] = round((dt.datetime.now(dt.UTC) - started).total_seconds() / 60, 1)
        run_file.write_text(json.dumps(run))
    counts, survivors = collect(tree, files)
    classify(survivors)
    import mutmut

    reruns = [json.loads(f.read_text()) for f in sorted(tree.glob("reruns/*.json"))]
    meta = {
        **run,
        "mutmut": getattr(mutmut, "__version__", "3"),
        "children": args.max_children,
        "modules": args.modules,
        "reruns": len(reruns),
        "reruns_killed": sum(r["verdict"] == "killed" for r in reruns),
    }
    write_report(counts, survivors, tests, meta)
    print((REPORT_DIR / "report.md").read_text().split("\n\n")[2])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
