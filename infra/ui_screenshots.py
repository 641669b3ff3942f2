"""Screenshots of what an operator sees in the Prefect UI for a factory run: the flow run page
and each of its artifacts, taken with headless Chromium, for a person to look at (issue 15: the
report and the UI must be readable). Keep the PNGs out of the repository.

    python infra/ui_screenshots.py OUT_FOLDER [--flow-run ID] [--api http://127.0.0.1:4200/api]

Needs Debian's chromium (``apt-get install chromium``) and a Prefect server with the run (the
demo's: ``tailforge demo``, or ``tailforge run ... --local-server``). Without ``--flow-run``
it takes the latest flow run named like the factory's ("factory").
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path


def latest_factory_run(client) -> str:
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter,
                                                FlowRunFilterStartTime)
    from prefect.client.schemas.sorting import FlowRunSort

    # runs that started: a deployed nightly also has its next nights scheduled, not yet run
    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["factory"])),
                                 flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(is_null_=False)),
                                 sort=FlowRunSort.START_TIME_DESC, limit=1)
    if not runs:
        raise SystemExit("no factory flow run on this server; run `tailforge demo` first, or pass --flow-run")
    return str(runs[0].id)


def pages(api: str, flow_run_id: str) -> dict[str, str]:
    """Name -> UI URL: the flow run, and every artifact of it and of its subflows' task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, \
        FlowRunFilterParentFlowRunId

    ui = api.removesuffix("/api")
    with get_client(sync_client=True) as client:
        flow_run_id = flow_run_id or latest_factory_run(client)
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        ids = [flow_run_id] + [str(c.id) for c in children]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
    out = {"flow-run": f"{ui}/runs/flow-run/{flow_run_id}"}
    for artifact in artifacts:
        out[f"artifact-{artifact.key or artifact.id}"] = f"{ui}/artifacts/artifact/{artifact.id}"
    return out


def shoot(url: str, target: Path, chromium: str, width: int = 1400, height: int = 2200) -> None:
    """One full-window screenshot after the page's scripts ran (the UI loads its data late)."""
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", "--virtual-time-budget=15000",
                    f"--screenshot={target}", url], check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--flow-run", default=None)
    parser.add_argument("--api", default=os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api"))
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("no chromium here: apt-get install chromium", file=sys.stderr)
        return 2
    os.environ["PREFECT_API_URL"] = args.api
    args.out.mkdir(parents=True, exist_ok=True)
    for name, url in pages(args.api, args.flow_run).items():
        target = args.out / f"{name}.png"
        shoot(url, target, chromium)
        print(f"{target}  <- {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
