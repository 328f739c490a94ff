"""Known vulnerabilities in the locked runtime dependencies, from PyPI's JSON API.

    python scripts/audit_locks.py requirements/runtime-cpu.txt requirements/runtime-gpu.txt

pip-audit cannot run from these machines: its per-version PyPI endpoint
(`/pypi/<name>/<version>/json`) answers 404 through the proxy here and OSV is not
reachable. The project endpoint (`/pypi/<name>/json`) is, and its `vulnerabilities` list
belongs to the project's latest release. So a pin at the latest release is checked, and a
pin behind it is reported as unchecked (with both versions), never as clean.

Exit status: 0 when no checked pin has a known vulnerability, 1 when one has, 2 when PyPI
could not be asked.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
Fetch = Callable[[str], dict[str, Any]]


@dataclass
class Finding:
    name: str
    version: str
    status: str  # "clean", "vulnerable" or "unchecked"
    detail: str = ""


def pins(lines: Iterable[str]) -> dict[str, str]:
    """name -> version for every `name==version` line of a pip lock file."""
    found = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def fetch_project(name: str, attempts: int = 3) -> dict[str, Any]:
    url = f"https://pypi.org/pypi/{name}/json"
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data: dict[str, Any] = json.load(response)
                return data
        except (urllib.error.URLError, TimeoutError):
            if attempt == attempts - 1:
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def audit(locked: dict[str, str], fetch: Fetch = fetch_project) -> list[Finding]:
    findings = []
    for name, version in sorted(locked.items()):
        project = fetch(name)
        latest = project["info"]["version"]
        if latest != version:
            findings.append(Finding(name, version, "unchecked", f"latest is {latest}"))
            continue
        known = [v for v in project.get("vulnerabilities", []) if not v.get("withdrawn")]
        if known:
            ids = ", ".join(v.get("id", "?") for v in known)
            findings.append(Finding(name, version, "vulnerable", ids))
        else:
            findings.append(Finding(name, version, "clean"))
    return findings


def main(argv: list[str] | None = None, fetch: Fetch = fetch_project) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("locks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    locked: dict[str, str] = {}
    for lock in args.locks:
        locked.update(pins(lock.read_text().splitlines()))
    try:
        findings = audit(locked, fetch)
    except (urllib.error.URLError, TimeoutError) as exc:
        print(f"could not ask PyPI: {exc}", file=sys.stderr)
        return 2
    for finding in findings:
        if finding.status != "clean":
            print(f"{finding.status:10} {finding.name}=={finding.version} {finding.detail}")
    counts = {s: sum(f.status == s for f in findings) for s in ("clean", "vulnerable", "unchecked")}
    print(
        f"{len(findings)} locked packages: {counts['clean']} without known vulnerabilities, "
        f"{counts['vulnerable']} vulnerable, {counts['unchecked']} unchecked (behind their latest "
        "release: their vulnerabilities cannot be looked up from here)"
    )
    return 1 if counts["vulnerable"] else 0


if __name__ == "__main__":
    sys.exit(main())
