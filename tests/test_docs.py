"""The docs a newcomer reads: a short README, and docs/ pages that build with no broken link."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]  # (--quiet would hide the warnings strict counts)


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([*MKDOCS, "--config-file", str(config), "--site-dir", str(site)], capture_output=True,
                          text=True, timeout=300, env=env)


def test_the_readme_is_short_and_points_at_each_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for page in ("guide", "operations", "settings", "benchmarks", "layout"):
        assert f"(docs/{page}.md)" in readme
        assert (ROOT / "docs" / f"{page}.md").exists()


def test_the_docs_build_strictly_and_a_broken_link_fails_the_build(tmp_path):
    built = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site" / "settings" / "index.html").exists()
    # the results pages are the result files: a benchmark's report, a JSON-only result's values
    fidelity = (tmp_path / "site" / "results" / "fidelity_128" / "index.html").read_text()
    assert "Commit <code>" in fidelity and (tmp_path / "site" / "results" / "fidelity_128_grid.png").exists()
    ingest = json.loads((ROOT / "benchmarks" / "results" / "ingest.json").read_text())
    figure = str(ingest["stages"]["ingest_nih1000_64px_workers1"]["images_per_s"])
    assert figure in (tmp_path / "site" / "results" / "ingest" / "index.html").read_text()
    listed = (tmp_path / "site" / "results" / "index.html").read_text()
    assert all(name in listed for name in ("ingest.json", "fidelity_128.md", "experiment_phantom.md"))
    assert "regime_map_phantom.md" in listed and "not recorded" in listed  # a result without its commit is listed too
    # the control: the same docs with one link to a page that is not there
    shutil.copytree(ROOT / "docs", tmp_path / "copy" / "docs")
    config = (ROOT / "mkdocs.yml").read_text().replace("benchmarks/docs_results.py",
                                                        str(ROOT / "benchmarks" / "docs_results.py"))
    (tmp_path / "copy" / "mkdocs.yml").write_text(config)
    guide = tmp_path / "copy" / "docs" / "guide.md"
    guide.write_text(guide.read_text() + "\nSee [the old page](operating.md).\n")
    broken = _build(tmp_path / "copy" / "mkdocs.yml", tmp_path / "site2")
    assert broken.returncode != 0 and "operating.md" in broken.stderr
