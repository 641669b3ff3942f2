"""Which committed results are older than the code they measure: for each result under
benchmarks/results that names its commit, how many commits since then changed the product's
model and task code (models/, tasks/). A result with many is a figure to re-measure before
quoting it.

    python -m benchmarks.staleness            # a table, most changed first
    python -m benchmarks.staleness --json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

from benchmarks.common import RESULTS

ROOT = Path(__file__).resolve().parents[1]
CODE = ("models", "tasks")  # what the results measure
MD_COMMIT = re.compile(r"[Cc]ommit `([0-9a-f]{7,40})`")


def named_commit(path: Path) -> str | None:
    """The commit a result file says it measured: a JSON's "commit", a report's first "Commit `x`"."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError:
            return None
        value = data.get("commit") if isinstance(data, dict) else None
        found = re.match(r"[0-9a-f]{7,40}\b", value) if isinstance(value, str) else None  # "abc1234..HEAD": its start
        return found.group(0) if found else None
    found = MD_COMMIT.search(path.read_text(errors="replace"))
    return found.group(1) if found else None


def changes_since(commit: str, paths: tuple[str, ...] = CODE) -> int | None:
    """Commits after ``commit`` up to HEAD that touch ``paths``; None when git does not know it."""
    out = subprocess.run(["git", "rev-list", "--count", f"{commit}..HEAD", "--", *paths], cwd=ROOT,
                         capture_output=True, text=True)
    return int(out.stdout) if out.returncode == 0 else None


def staleness(results: Path = RESULTS) -> list[dict]:
    rows = []
    for path in sorted(results.rglob("*")):
        if path.suffix not in (".json", ".md") or (path.suffix == ".md" and path.with_suffix(".json").exists()):
            continue  # a report and its JSON are one result
        commit = named_commit(path)
        if commit:
            rows.append({"result": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path), "commit": commit,
                         "code_commits_since": changes_since(commit)})
    return sorted(rows, key=lambda r: -1 if r["code_commits_since"] is None else r["code_commits_since"],
                  reverse=True)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        raise SystemExit("benchmarks.staleness needs the git history of a checkout")
    rows = staleness()
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"| result | measured at | commits to {', '.join(CODE)} since |\n|---|---|---|")
        for r in rows:
            since = "unknown commit" if r["code_commits_since"] is None else r["code_commits_since"]
            print(f"| {r['result']} | `{r['commit']}` | {since} |")
    return rows


if __name__ == "__main__":
    main()
