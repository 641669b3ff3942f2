"""The docs' results pages, made from the committed result files at build time (an mkdocs hook,
mkdocs.yml ``hooks``): the docs quote no figure by hand, they show the files.

- ``results/index.md``: every result, the commit it measured and how many commits have changed
  models/ and tasks/ since (benchmarks/staleness.py), most changed first;
- ``results/<name>.md``: a benchmark's own report (its .md, with the PNGs beside it), or, for a
  result that is only JSON, the JSON's values as a table, path by path.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import RESULTS
from benchmarks.staleness import CODE, changes_since, named_commit

INLINE = 12  # a list of at most this many numbers or words is shown on one line


def page_of(result: Path) -> str:
    """The results page a result file is shown on (its path under results/, as .md)."""
    return f"results/{result.relative_to(RESULTS).with_suffix('.md').as_posix()}"


def leaves(value, path: str = "") -> list[tuple[str, str]]:
    """(path, value) for every number, word or short list in a JSON value, in document order."""
    if isinstance(value, dict):
        return [row for key, item in value.items() for row in leaves(item, f"{path}.{key}" if path else str(key))]
    if isinstance(value, list):
        if len(value) <= INLINE and all(not isinstance(item, (dict, list)) for item in value):
            return [(path, ", ".join(map(str, value)) or "(none)")]
        return [row for i, item in enumerate(value) for row in leaves(item, f"{path}[{i}]")]
    return [(path, "null" if value is None else str(value))]


def json_page(result: Path) -> str:
    """A JSON-only result as a page: its name, then each value by its path."""
    data = json.loads(result.read_text())
    cell = lambda text: text.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    rows = "\n".join(f"| `{cell(path)}` | {cell(value)} |" for path, value in leaves(data))
    return (f"# {result.name}\n\nThe values of `benchmarks/results/{result.relative_to(RESULTS).as_posix()}`, "
            f"as its benchmark wrote them (the commit it measured is its `commit`).\n\n"
            f"| value | |\n|---|---|\n{rows}\n")


def results() -> list[Path]:
    """Every result file: a report and its JSON are one result (the report)."""
    return [path for path in sorted(RESULTS.rglob("*"))
            if path.suffix == ".md" or (path.suffix == ".json" and not path.with_suffix(".md").exists())]


def index_page() -> str:
    rows = []
    for result in results():
        recorded = result.with_suffix(".json")  # a report and its JSON: the JSON records the commit (staleness)
        commit = named_commit(recorded if recorded.exists() else result)
        since = changes_since(commit) if commit else None
        shown = "-" if commit is None else "unknown commit" if since is None else since
        rows.append((-1 if since is None else since,
                     f"| [{result.relative_to(RESULTS).as_posix()}]({page_of(result)[len('results/'):]}) "
                     f"| {f'`{commit}`' if commit else 'not recorded'} | {shown} |"))
    rows = [text for _, text in sorted(rows, key=lambda pair: -pair[0])]
    return ("# Results\n\nEvery committed result, the commit it measured, and how many commits have changed "
            f"{' and '.join(f'`{c}/`' for c in CODE)} since: a result with many is history, not a description "
            "of the code as it is; re-measure it before quoting it (`python -m benchmarks.staleness`).\n\n"
            f"| result | measured at | commits to {', '.join(CODE)} since |\n|---|---|---|\n" + "\n".join(rows) + "\n")


def pages() -> dict[str, str | Path]:
    """Each generated docs path -> its text, or the file it copies."""
    out: dict[str, str | Path] = {"results/index.md": index_page()}
    for path in results() + sorted(RESULTS.rglob("*.png")):
        out[page_of(path) if path.suffix == ".json" else f"results/{path.relative_to(RESULTS).as_posix()}"] = \
            json_page(path) if path.suffix == ".json" else path
    return out


def on_files(files, config):
    """mkdocs: add the results pages and images to the site's files."""
    from mkdocs.structure.files import File

    for uri, made in pages().items():
        if isinstance(made, Path):
            files.append(File.generated(config, uri, abs_src_path=str(made)))
        else:
            files.append(File.generated(config, uri, content=made))
    return files
