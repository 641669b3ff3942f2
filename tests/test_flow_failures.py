"""A flow that fails on a mistake the user can fix (a missing file, a wrong column, a stage that
failed) shows it in the Prefect UI as one line: the state message and one error log line, no
traceback, and no key-less "unknown" artifact holding a pickled exception (issue 34 item 4)."""

import pytest

from flows.permanent import fails_in_one_line


def _flows():
    from prefect import flow

    @flow(name="stage-that-fails")
    @fails_in_one_line
    def stage(table: str) -> dict:
        raise FileNotFoundError(f"no table at {table}: check dataset.table")

    @flow(name="parent-of-a-failed-stage")
    @fails_in_one_line
    def parent(table: str) -> dict:
        return stage(table)

    @flow(name="flow-with-a-bug")
    @fails_in_one_line
    def bug() -> dict:
        raise ZeroDivisionError("a bug, not a user's mistake")

    return stage, parent, bug


def _run_of(client, name: str):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))
    assert len(runs) == 1
    return runs[0]


def _shown(client, flow_run_id) -> tuple[list[str], list]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # runs' logs reach the server in batches, in the background: all of them now
    logs = [log.message for log in client.read_logs(log_filter=LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return logs, artifacts


def test_a_fixable_failure_is_one_line_in_the_ui_and_reaches_the_caller(prefect_server):
    from prefect.client.orchestration import get_client

    stage, parent, bug = _flows()
    with pytest.raises(FileNotFoundError, match="no table at /data/nih.csv: check dataset.table"):
        parent("/data/nih.csv")  # the CLI gets the exception itself: its one line and exit 2
    with pytest.raises(ZeroDivisionError):
        bug()
    line = "FileNotFoundError: no table at /data/nih.csv: check dataset.table"
    with get_client(sync_client=True) as client:
        for name in ("parent-of-a-failed-stage", "stage-that-fails"):
            run = _run_of(client, name)
            logs, artifacts = _shown(client, run.id)
            assert run.state.is_failed() and run.state.message == line
            assert line in logs and not any("Traceback" in m for m in logs), logs
            assert artifacts == []  # no pickled exception shown as an "unknown" artifact
        run = _run_of(client, "flow-with-a-bug")  # a bug is Prefect's as before: traceback, pickled exception
        _, artifacts = _shown(client, run.id)
        assert run.state.is_failed() and "ZeroDivisionError" in run.state.message and len(artifacts) == 1


def test_a_missing_checkpoint_stops_the_factory_before_its_first_stage(prefect_server, tmp_path, monkeypatch):
    """Seen: a nightly naming a missing generator checkpoint ingested and trained the classifier
    first, then failed inside the pretrain stage."""
    from flows.factory import factory_flow
    from benchmarks.tiny_factory import TINY

    monkeypatch.setenv("TAILFORGE_HOME", str(tmp_path))
    missing = str(tmp_path / "missing-dit.pt")
    with pytest.raises(FileNotFoundError, match=f"dit checkpoint {missing} does not exist"):
        factory_flow(overrides={**TINY, "generator": {**TINY["generator"], "checkpoint": missing}})
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "runs").exists()  # nothing ingested, no record


def test_run_names_a_missing_checkpoint_before_any_flow_starts(tmp_path, monkeypatch, capsys):
    """`tailforge run` checks named checkpoints with its other pre-flight checks: one line, exit 2,
    and no flow run (seen from a fresh clone: 5 lines, after a flow run had started)."""
    from flows.cli import main

    monkeypatch.setenv("TAILFORGE_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    config = tmp_path / "run.yaml"
    config.write_text(f"name: nightly\nclassifier: {{checkpoint: {tmp_path / 'gone.pt'}}}\n")
    assert main(["run", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"tailforge run: error: classifier checkpoint {tmp_path / 'gone.pt'} does not exist"
    assert captured.out == "" and not (tmp_path / "runs").exists()
