"""The factory on Prefect, on tiny phantom data: every flow completes and returns what it
promised; a rerun writes nothing and makes no LLM calls; an interrupted augment, resumed,
equals an uninterrupted one."""

import dataclasses
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from flows.augment import augment_flow
from flows.factory import factory_flow
from flows.settings import KnowledgeSettings
from tasks import augment as work
from tasks import store
from tasks.dataset import QUARANTINE, SAMPLES, existing_rows, read_manifest
from tasks.images import decode_mask, decode_png
from tasks.knowledge import plan
from tasks.locks import DatasetLocked, dataset_lock
from benchmarks.fake_anthropic import FakeAnthropic
from benchmarks.tiny_factory import TINY


@pytest.fixture(scope="module")
def tiny_run(prefect_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("factory-home")
    saved = os.environ.get("TAILFORGE_HOME")
    os.environ["TAILFORGE_HOME"] = str(home)
    try:
        yield factory_flow(overrides=TINY), home
    finally:
        if saved is None:
            os.environ.pop("TAILFORGE_HOME", None)
        else:
            os.environ["TAILFORGE_HOME"] = saved


def test_factory_returns_everything_it_promised(tiny_run):
    result, home = tiny_run
    assert result["dataset_uri"].startswith(str(home))
    assert {result["models"]["classifier"]["kind"], result["models"]["generator"]["kind"]} == {"classifier", "dit"}
    augment = result["augment"]
    assert augment["candidates"] > 0 and augment["written"] > 0 and augment["batches_run"] == augment["batches"]
    assert augment["devices"] == ["cpu"]  # where the batches' models ran: this host has no GPU
    assert augment["written"] + sum(augment["quarantined"].values()) == augment["candidates"]
    assert set(result["finetune"]["results"]) == {"baseline", "augmented", "pil"}
    assert result["finetune"]["generated"] == augment["accepted"] > 0
    for uri in result["report"].values():
        assert Path(uri).stat().st_size > 0
    rows = existing_rows(augment["out_uri"], None).to_pylist()
    parents = {r["sample_id"]: r for r in existing_rows(result["dataset_uri"], None).to_pylist()}
    for row in rows:
        parent = parents[row["parent_id"]]
        assert row["origin"] == "inpainted" and row["split"] == "train" and row["removed_labels"]
        assert row["classifier_id"] == result["models"]["classifier"]["id"]
        assert row["generator_id"] == result["models"]["generator"]["id"]
        assert row["run_id"] == augment["run_id"] and row["decision_id"]
        assert row["accepted"] == (row["verdict"] == "ok")
        removed = [read_manifest(result["dataset_uri"])["labels"].index(n) for n in row["removed_labels"]]
        assert all(row["labels"][k] == 0.0 and parent["labels"][k] == 1.0 for k in removed)
    decisions = store.list_shards(store.join(augment["out_uri"], "decisions"))
    assert len(decisions) == 1


def test_artifacts_are_published(tiny_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["factory-metrics", "factory-report",
                                                                        "augment-progress", "augment-acceptance"])))}
    assert set(artifacts) == {"factory-metrics", "factory-report", "augment-progress", "augment-acceptance"}
    table = artifacts["factory-metrics"].data  # narrow enough for the UI's page (issue 34 item 9)
    rows = json.loads(table) if isinstance(table, str) else table
    assert list(rows[0]) == ["setting", "macro F1", "head F1", "tail F1", "macro AUROC", "tail AUROC", "tail AP"]


def test_the_closing_example_survives_a_bad_dataset_beside_the_run(tiny_run, tmp_path):
    """The run's closing lineage example reads the catalog of the folder holding its datasets
    (all of /tmp, when they are in two temp folders): a corrupt dataset there is not the run's
    failure (seen: a finished run exited 2 on another test's corrupt shard)."""
    import io
    import shutil

    from rich.console import Console

    from flows.printers import print_example_lineage

    result, home = tiny_run
    dataset = Path(result["dataset_uri"])
    bad = home / "someone-elses" / "flipped"
    shutil.copytree(dataset, bad)
    shard = sorted((bad / "samples").glob("part-*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    try:
        out = io.StringIO()
        print_example_lineage(result["augment"]["out_uri"], str(dataset), Console(file=out, width=400))
    finally:
        shutil.rmtree(home / "someone-elses")
    text = out.getvalue()
    assert "trace a generated sample: tailforge lineage" in text and "could not read the catalog" in text
    assert "is corrupt" in text


def _outputs(uri):
    rows = existing_rows(uri, ["sample_id", "image", "mask", "labels"])
    bad = store.read_shards(store.join(uri, QUARANTINE), columns=["quarantine_id"])
    return (sorted((r["sample_id"], r["image"], r["mask"]) for r in rows.to_pylist()),
            sorted(bad.column("quarantine_id").to_pylist()) if bad is not None else [])


def test_rerun_writes_nothing(tiny_run):
    result, _ = tiny_run
    out = result["augment"]["out_uri"]
    before = sorted(Path(out).rglob("part-*.parquet"))
    again = augment_flow(result["dataset_uri"], out, result["models"]["classifier"], result["models"]["generator"],
                         KnowledgeSettings(cache=None), TINY["augment"], str(Path(out).parent / "cache.duckdb"))
    assert again["batches_run"] == 0 and again["written"] == 0
    assert sorted(Path(out).rglob("part-*.parquet")) == before
    # what it reports is the whole output, not "0 generated" (issue 15)
    assert again["output"] == result["augment"]["output"] == {"rows": result["augment"]["written"],
                                                               "accepted": result["augment"]["accepted"]}
    # a rerun that would judge new rows by another rule is refused before any work, saying what changed
    for changed, says in (({"ood_filter": True}, "ood_filter: False -> True"),
                          ({"quality_max_z": 9.0}, "quality_max_z: 1000.0 -> 9.0")):
        with pytest.raises(ValueError, match=f"judged with other settings \\({says}\\).*write to a new output"):
            augment_flow(result["dataset_uri"], out, result["models"]["classifier"], result["models"]["generator"],
                         KnowledgeSettings(cache=None), {**TINY["augment"], **changed},
                         str(Path(out).parent / "cache.duckdb"))
    assert sorted(Path(out).rglob("part-*.parquet")) == before


def test_augment_command_goes_on_from_a_dataset_and_checkpoints(tiny_run, tmp_path, capsys):
    """`tailforge augment`: the factory's augment step alone, settings from the YAML; the same
    rows as the factory made, and a re-run adds nothing."""
    import json

    import yaml

    from flows.cli import main

    result, _ = tiny_run
    config = tmp_path / "augment.yaml"
    config.write_text(yaml.safe_dump({"augment": TINY["augment"], "knowledge": {"cache": str(tmp_path / "c.duckdb")}}))
    out = str(tmp_path / "cli-augmented")
    command = ["augment", result["dataset_uri"], "--classifier", result["models"]["classifier"]["uri"],
               "--generator", result["models"]["generator"]["uri"], "--config", str(config), "--out", out, "--json"]
    assert main(command) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["written"] == result["augment"]["written"] and first["batches_run"] == first["batches"]
    assert _outputs(out) == _outputs(result["augment"]["out_uri"])
    assert main(command[:-1]) == 0  # the summary, and nothing left to do
    shown = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert f"({first['written']} rows, {first['accepted']} accepted; this run wrote 0 (0 accepted)" in shown
    assert f"0 of {first['batches']} batches run" in shown
    assert main(command[:2] + ["--classifier", str(tmp_path / "missing.pt")] + command[4:]) == 2
    assert "classifier checkpoint" in capsys.readouterr().err


def test_pretrain_and_finetune_commands_go_on_from_a_dataset(tiny_run, tmp_path, capsys):
    """`tailforge pretrain` and `tailforge finetune`: the factory's other steps alone, so a user
    who ingested with the CLI can go on with it; settings from the YAML."""
    import json

    import yaml

    from flows.cli import main

    result, _ = tiny_run
    config = tmp_path / "steps.yaml"
    config.write_text(yaml.safe_dump({"classifier": {**TINY["classifier"], "epochs": 1},
                                      "generator": {**TINY["generator"], "steps": 5},
                                      "finetune": {**TINY["finetune"], "epochs": 1}, "output": str(tmp_path / "out")}))
    dataset = result["dataset_uri"]
    assert main(["pretrain", dataset, "--config", str(config), "--models", str(tmp_path / "models"), "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert Path(models["classifier"]["uri"]).parent == tmp_path / "models" and Path(models["generator"]["uri"]).exists()
    assert main(["finetune", dataset, "--classifier", models["classifier"]["uri"], "--augmented",
                 result["augment"]["out_uri"], "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert str(tmp_path / "out" / "report" / "report.md") in shown
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert all(setting in report for setting in ("baseline", "augmented"))
    # one epoch: PIL would add no generated sample (epoch 0 adds none), so it is not run, and says why
    assert "**Warning**: PIL skipped: with finetune.epochs = 1" in report
    assert main(["finetune", str(tmp_path / "absent"), "--classifier", models["classifier"]["uri"]]) == 2


def test_interrupted_augment_resumes_to_the_same_samples(tiny_run, tmp_path):
    result, _ = tiny_run
    dataset, models = result["dataset_uri"], result["models"]
    options = {**TINY["augment"], "batch_size": 4}  # batch size is not part of an output's id
    settings = work.AugmentSettings.from_dict(options)
    cache = str(tmp_path / "d.duckdb")
    # the state a killed run leaves: the first batch complete, the second with only its
    # quarantine rows, and a temporary file of a shard that was being written
    _, decisions = plan(dataset, cache)
    manifest = read_manifest(dataset)
    resumed = str(tmp_path / "resumed")
    chunks = work.prepare(dataset, resumed, manifest, decisions, models["classifier"], models["generator"]["id"],
                          settings).batches
    assert len(chunks) >= 3
    work.run_batch(dataset, resumed, chunks[0], models["classifier"], models["generator"], settings, "killed-run")
    partial = work.run_batch(dataset, str(tmp_path / "scratch"), chunks[1], models["classifier"],
                             models["generator"], settings, "killed-run")
    for shard in (tmp_path / "scratch" / QUARANTINE).glob("part-*.parquet"):
        target = Path(resumed) / QUARANTINE / shard.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(shard.read_bytes())
    (Path(resumed) / SAMPLES / ".part-0000.parquet.tmp-123-abcd").write_bytes(b"half a shard")
    assert partial["images"] == len(chunks[1])

    finished = augment_flow(dataset, resumed, models["classifier"], models["generator"], KnowledgeSettings(),
                            options, cache)
    assert finished["batches_run"] == len(chunks) - 1  # the complete first batch was skipped
    uninterrupted = augment_flow(dataset, str(tmp_path / "straight"), models["classifier"], models["generator"],
                                 KnowledgeSettings(), options, cache)
    assert _outputs(resumed) == _outputs(str(tmp_path / "straight"))
    ids = existing_rows(resumed, ["sample_id"]).column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == uninterrupted["written"]


def test_a_second_augment_into_one_output_is_refused(tiny_run, tmp_path):
    """One writer per output (issue 12): while another run holds it, augment writes nothing and
    says who holds it; once it is free, the same call runs."""
    result, _ = tiny_run
    dataset, models = result["dataset_uri"], result["models"]
    out = str(tmp_path / "held")
    with dataset_lock(out, "augment"):
        with pytest.raises(DatasetLocked, match=f"pid {os.getpid()}"):
            augment_flow(dataset, out, models["classifier"], models["generator"], KnowledgeSettings(),
                         TINY["augment"], str(tmp_path / "d.duckdb"))
        assert not list(Path(out).rglob("*.parquet")) and not (Path(out) / "runs").exists()
    done = augment_flow(dataset, out, models["classifier"], models["generator"], KnowledgeSettings(),
                        TINY["augment"], str(tmp_path / "d.duckdb"))
    assert done["written"] == result["augment"]["written"]


def test_random_placement_moves_the_same_masks(tiny_run, tmp_path):
    """The control: every generated image gets its CAM mask's shape and area at another place
    (one removal round each: with more, each placement re-localises on its own results)."""
    result, _ = tiny_run
    dataset, models = result["dataset_uri"], result["models"]
    _, decisions = plan(dataset, str(tmp_path / "d.duckdb"))
    manifest = read_manifest(dataset)
    written, parents_wanted = {}, None
    for placement in ("cam", "random"):
        settings = work.AugmentSettings.from_dict({**TINY["augment"], "removal_rounds": 1,
                                                   "mask": {**TINY["augment"]["mask"], "placement": placement}})
        out = str(tmp_path / placement)
        batch = work.prepare(dataset, out, manifest, decisions, models["classifier"], models["generator"]["id"],
                             settings).candidates
        parents_wanted = parents_wanted or {c.parent_id for c in batch[:8]}  # the same parents both times
        batch = [c for c in batch if c.parent_id in parents_wanted]
        work.run_batch(dataset, out, batch, models["classifier"], models["generator"], settings, "r")
        written[placement] = {r["parent_id"]: r for r in existing_rows(out, ["parent_id", "mask", "image"]).to_pylist()}
    assert written["cam"].keys() == written["random"].keys() and written["cam"]
    parents = {r["sample_id"]: decode_png(r["image"]) for r in existing_rows(dataset, ["sample_id", "image"]).to_pylist()}
    moved = 0
    for parent, row in written["random"].items():
        cam_mask, random_mask = decode_mask(written["cam"][parent]["mask"]), decode_mask(row["mask"])
        assert cam_mask.sum() == random_mask.sum()
        moved += not np.array_equal(cam_mask, random_mask)
        assert np.array_equal(decode_png(row["image"])[~random_mask], parents[parent][~random_mask])
    assert moved >= len(written["random"]) // 2


def test_llm_judge_rerun_makes_no_calls(tiny_run, tmp_path, monkeypatch):
    result, _ = tiny_run
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-flows")
    with FakeAnthropic("ok") as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        knowledge = KnowledgeSettings(judge="anthropic", llm_timeout=2.0, llm_retries=0)
        args = (result["dataset_uri"], str(tmp_path / "llm"), result["models"]["classifier"],
                result["models"]["generator"], knowledge, TINY["augment"], str(tmp_path / "llm.duckdb"))
        first = augment_flow(*args)
        calls = len(fake.message_requests)
        second = augment_flow(*args)
    assert first["plan"]["llm_calls"] == calls > 0
    assert second["plan"]["llm_calls"] == 0 and len(fake.message_requests) == calls
    assert second["written"] == 0


def test_api_key_from_a_prefect_secret_block(prefect_server, tiny_run, tmp_path, monkeypatch):
    from prefect.blocks.system import Secret

    from tasks.knowledge import AnthropicJudge, LLMSettings, plan

    result, _ = tiny_run
    key = "sk-ant-test-from-a-secret-block"
    Secret(value=key).save("tailforge-test-key", overwrite=True)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with FakeAnthropic("ok") as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        judge = AnthropicJudge(LLMSettings(api_key_secret="tailforge-test-key", max_retries=0))
        report, _ = plan(result["dataset_uri"], tmp_path / "d.duckdb", judge)
        sent = fake.message_requests[0]["headers"]
    assert report.llm_calls > 0 and report.fallbacks == {}
    assert key in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))
    assert key not in (tmp_path / "d.duckdb").read_bytes().decode("latin-1")


def test_classes_the_classifier_cannot_tell_apart_are_kept_and_the_run_says_so(tiny_run, tmp_path, caplog):
    """The classifier gate (tasks/classifier_gate.py) with a bar no 2-epoch classifier clears:
    every removable class is named with its val AUROC, nothing it would have removed is removed."""
    result, _ = tiny_run
    dataset, models = result["dataset_uri"], result["models"]
    out = str(tmp_path / "gated")
    with caplog.at_level("WARNING"):
        summary = augment_flow(dataset, out, models["classifier"], models["generator"], KnowledgeSettings(cache=None),
                               {**TINY["augment"], "min_class_auroc": 0.999}, str(tmp_path / "d.duckdb"))
    assert summary["not_removed"] and all(why.startswith("val AUROC") for why in summary["not_removed"].values())
    assert set(summary["not_removed"]) | set(summary["unjudged"]) >= set(result["augment"]["by_class"])
    removed = {name for name in summary["by_class"]}
    assert not removed & set(summary["not_removed"])
    assert all(f"not removing {name}" in caplog.text for name in summary["not_removed"])
    (record,) = [json.loads(p.read_text()) for p in Path(out, "runs").glob("*.json")]
    assert record["counts"]["not_removed"] == summary["not_removed"]


def test_augment_logs_each_step_of_a_batch_and_images_done_with_an_eta(tiny_run, tmp_path, caplog):
    """Issue 34: on the CPU a batch of 32 ran 131 s without a line, and the progress artifact
    only ever said 100%."""
    result, _ = tiny_run
    dataset, models = result["dataset_uri"], result["models"]
    with caplog.at_level("INFO"):
        summary = augment_flow(dataset, str(tmp_path / "logged"), models["classifier"], models["generator"],
                               KnowledgeSettings(cache=None), TINY["augment"], str(tmp_path / "d.duckdb"))
    lines = [r.getMessage() for r in caplog.records]
    assert any(re.fullmatch(r"batch 0: masks for \d+ of \d+ images \(\d+ s\)", line) for line in lines), lines
    assert any(re.match(r"batch \d+: round 1 of at most 4: \d+ images filled", line) for line in lines), lines
    assert f"augment: image {summary['candidates']}/{summary['candidates']}, " in "\n".join(lines)


def test_a_failed_augment_says_so_in_its_run_record(tiny_run, tmp_path, capsys):
    """A run whose batches fail ends "failed" with the error, not "running" forever (issue 14)."""
    from flows.cli import main

    result, _ = tiny_run
    dataset, models = result["dataset_uri"], result["models"]
    gone = {**models["generator"], "uri": str(tmp_path / "no-such-dit.pt")}
    out = str(tmp_path / "runs" / "broken")
    with pytest.raises(Exception, match="no-such-dit"):
        augment_flow(dataset, out, models["classifier"], gone, KnowledgeSettings(), TINY["augment"],
                     str(tmp_path / "d.duckdb"))
    assert main(["runs", "--root", str(tmp_path / "runs"), "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["flow"] == "augment" and record["status"] == "failed"
    assert "no-such-dit" in record["counts"]["error"] and record["ended_at"]


@pytest.fixture
def dask_cluster(prefect_server, tmp_path):
    """A Dask scheduler and two single-thread workers (no nanny: a killed worker stays dead), each
    offering one `GPU`, as separate processes on loopback, reporting to the test's Prefect server.
    The scheduler picks its own port and names it in a scheduler file (no race for a port picked
    here); workers give up 60 s after losing it; every wait is bounded and names the log."""
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL

    dask = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(Path(__file__).parents[1])}
    log_path, scheduler_file = tmp_path / "dask.log", tmp_path / "scheduler.json"
    log = open(log_path, "wb")
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(scheduler_file)], env=env, stdout=log, stderr=subprocess.STDOUT)]
    from distributed import Client

    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip().endswith("}"):
            assert processes[0].poll() is None and time.monotonic() < deadline, \
                f"the Dask scheduler did not start: {log_path.read_text()[-2000:]}"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for n in range(2):
            processes.append(subprocess.Popen(
                [dask, "worker", address, "--nthreads", "1", "--no-nanny", "--resources", "GPU=1", "--no-dashboard",
                 "--death-timeout", "60", "--name", f"gpu{n}", "--local-directory", str(tmp_path / f"worker{n}")],
                env=env, stdout=log, stderr=subprocess.STDOUT))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            yield address, client, processes[0]
    finally:
        for process in processes[::-1]:
            process.kill()
            process.wait()
        log.close()


def _run_in_thread(flow, *args) -> tuple:
    """``flow(*args)`` in a daemon thread (a stuck run cannot hold the test session open at exit):
    the thread and a dict that receives its result or its exception."""
    import threading

    done = {}

    def run():
        try:
            done["result"] = flow(*args)
        except Exception as exc:  # noqa: BLE001  the test inspects it
            done["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def _dask_log(tmp_path) -> str:
    return (tmp_path / "dask.log").read_text(errors="replace")[-3000:]


def test_augment_on_dask_survives_a_killed_worker_and_equals_a_one_host_run(tiny_run, dask_cluster, tmp_path):
    """Issue 14: the batches run on a Dask cluster of two workers; one is SIGKILLed while it
    runs a batch; the scheduler re-runs that batch on the other and the output has exactly the
    rows, ids and bytes of a one-host run: nothing lost, nothing twice."""
    import signal
    import time

    result, _ = tiny_run
    address, client, _ = dask_cluster
    dataset, models = result["dataset_uri"], result["models"]
    slow = {**TINY["augment"], "batch_size": 4, "inpaint": {"steps": 40, "jump_length": 5, "resample": 2}}
    on_dask = {**slow, "runner": "dask", "dask_address": address, "parallel": 2}
    cache = str(tmp_path / "d.duckdb")
    out = str(tmp_path / "on-dask")
    run, outcome = _run_in_thread(augment_flow, dataset, out, models["classifier"], models["generator"],
                                  KnowledgeSettings(), on_dask, cache)
    pids = client.run(os.getpid)  # worker address -> its process
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and run.is_alive() and time.monotonic() < deadline:
        busy = [w for w, keys in client.processing().items() if keys]
        if busy and list(Path(out).rglob("part-*.parquet")):  # one batch written, another running
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed = busy[0]
        time.sleep(0.2)
    run.join(timeout=300)
    assert not run.is_alive(), f"the run on Dask did not end within 300 s; Dask's log:\n{_dask_log(tmp_path)}"
    done = outcome.get("result") or pytest.fail(f"the run on Dask failed: {outcome.get('error')!r}")
    assert killed is not None, "no batch was running on a worker to kill"
    assert done["batches_run"] == done["batches"] > 2
    assert killed not in client.scheduler_info()["workers"] and len(client.scheduler_info()["workers"]) == 1
    one_host = augment_flow(dataset, str(tmp_path / "one-host"), models["classifier"], models["generator"],
                            KnowledgeSettings(), slow, cache)
    assert _outputs(out) == _outputs(str(tmp_path / "one-host"))
    ids = existing_rows(out, ["sample_id"]).column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == one_host["written"] == done["written"]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[done["run_id"]])))
    states = {r.name: r.state.type.value for r in runs}  # the re-run batch reuses its task run: none left Running
    assert states == {"plan": "COMPLETED", **{f"augment-batch-{i}": "COMPLETED" for i in range(done["batches"])}}


def test_a_dask_scheduler_lost_mid_run_fails_the_run_in_one_clear_error(tiny_run, dask_cluster, tmp_path):
    """The scheduler dies while batches run: the run ends at once (no wait on batches no one
    will run) with an error naming the scheduler, what is kept and what to do."""
    import time

    from flows.runners import RunnerError

    result, _ = tiny_run
    address, _, scheduler = dask_cluster
    dataset, models = result["dataset_uri"], result["models"]
    slow = {**TINY["augment"], "batch_size": 4, "inpaint": {"steps": 40, "jump_length": 5, "resample": 2}}
    out = str(tmp_path / "on-dask")
    run, outcome = _run_in_thread(augment_flow, dataset, out, models["classifier"], models["generator"],
                                  KnowledgeSettings(), {**slow, "runner": "dask", "dask_address": address},
                                  str(tmp_path / "d.duckdb"))
    deadline = time.monotonic() + 300
    while run.is_alive() and not list(Path(out).rglob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run.is_alive(), f"the run ended before a batch was written: {outcome}"
    scheduler.kill()
    run.join(timeout=120)
    assert not run.is_alive(), f"the run waited on a dead scheduler for 120 s; Dask's log:\n{_dask_log(tmp_path)}"
    assert isinstance(outcome.get("error"), RunnerError), outcome
    assert re.search(rf"scheduler at {address} went away .*\d+ of \d+ batches done; the done ones are written.*"
                     rf"start `dask scheduler`", str(outcome["error"])), outcome["error"]


def test_a_dask_cluster_without_gpus_or_a_scheduler_is_a_clear_error(tiny_run, dask_cluster, tmp_path):
    from flows.runners import RunnerError

    result, _ = tiny_run
    address, _, _ = dask_cluster
    dataset, models = result["dataset_uri"], result["models"]
    args = (dataset, str(tmp_path / "x"), models["classifier"], models["generator"], KnowledgeSettings())
    with pytest.raises(RunnerError, match="offers the resource 'TPU'.*--resources TPU=1"):
        augment_flow(*args, {**TINY["augment"], "runner": "dask", "dask_address": address, "dask_resource": "TPU"},
                     str(tmp_path / "d.duckdb"))
    with pytest.raises(ValueError, match="needs augment.dask_address"):
        augment_flow(*args, {**TINY["augment"], "runner": "dask"}, str(tmp_path / "d.duckdb"))


def test_a_rerun_reuses_the_models_made_from_the_same_data_and_settings(tiny_run, tmp_path):
    """Issue 15: running the same settings again retrained both models. Now the recipe (shard
    content hashes + every setting) finds them; a changed setting trains anew."""
    from flows.pretrain import pretrain_flow
    from flows.settings import settings_from_dict

    result, home = tiny_run
    settings = settings_from_dict(TINY)
    models_uri = str(home / "models")
    again = pretrain_flow(result["dataset_uri"], models_uri, settings.classifier, settings.generator)
    for kind in ("classifier", "generator"):
        assert again[kind]["reused"] and again[kind]["id"] == result["models"][kind]["id"]
    other = dataclasses.replace(settings.generator, steps=settings.generator.steps + 1)
    changed = pretrain_flow(result["dataset_uri"], models_uri, settings.classifier, other)
    assert changed["classifier"]["reused"] and not changed["generator"]["reused"]
    assert changed["generator"]["id"] != result["models"]["generator"]["id"]


def test_the_pretrain_stage_trains_both_models_on_two_processes(tiny_run, tmp_path, monkeypatch):
    """generator.processes and classifier.processes: the stage launches torchrun (2 gloo
    processes here), reports progress as one process does, and leaves no work folder."""
    from flows.pretrain import pretrain_flow
    from flows.settings import settings_from_dict

    monkeypatch.setenv("TAILFORGE_DEVICE", "cpu")
    result, _ = tiny_run
    settings = settings_from_dict({**TINY, "classifier": {**TINY["classifier"], "processes": 2, "epochs": 1},
                                   "generator": {**TINY["generator"], "processes": 2, "steps": 4}})
    models_uri = str(tmp_path / "models")
    made = pretrain_flow(result["dataset_uri"], models_uri, settings.classifier, settings.generator)
    assert not made["classifier"]["reused"] and not made["generator"]["reused"]
    assert made["generator"]["history"]["parameters"] > 0 and made["classifier"]["test_macro"] is not None
    assert not any((tmp_path / "models" / "training").iterdir())


def test_a_rerun_reuses_the_fine_tunes_of_the_same_inputs(tiny_run, monkeypatch):
    """Issue 34: a rerun with nothing changed retrained every fine-tune setting (240 of 256 s).
    Now a setting's result is kept by its inputs; a changed setting trains anew."""
    from flows.finetune import finetune_flow
    from flows.settings import finetune_settings, settings_from_dict
    from tasks import finetune as work

    result, _ = tiny_run
    settings = finetune_settings(settings_from_dict(TINY))
    args = (result["dataset_uri"], store.join(result["output_uri"], "augmented"), result["models"]["classifier"]["uri"])
    trained = []
    real_finetune = work.finetune
    monkeypatch.setattr(work, "finetune", lambda *a, **k: trained.append(a[3].settings) or real_finetune(*a, **k))
    again = finetune_flow(*args, settings)
    assert trained == [] and again["results"] == result["finetune"]["results"]
    other = dataclasses.replace(settings, seed=settings.seed + 1, settings=("baseline",))
    assert finetune_flow(*args, other)["results"]["baseline"] != result["finetune"]["results"]["baseline"]
    assert trained == [("baseline",)]


def test_each_factory_run_keeps_its_report_and_report_is_the_latest(tiny_run, monkeypatch):
    """Issue 34: a rerun overwrote the first run's report (then "generated_this_run: 0")."""
    result, home = tiny_run
    monkeypatch.setenv("TAILFORGE_HOME", str(home))  # the first run's home: the same outputs
    again = factory_flow(overrides=TINY)
    assert again["augment"]["written"] == 0 and again["run_id"] != result["run_id"]
    reports = Path(result["output_uri"], "reports")
    first, second = (reports / run / "report.md" for run in (result["run_id"], again["run_id"]))
    assert f"- **generated_this_run**: {result['augment']['written']}" in first.read_text()
    assert "- **generated_this_run**: 0" in second.read_text()
    latest = Path(result["output_uri"], "report")
    assert json.loads((latest / "run.json").read_text())["run_id"] == again["run_id"]
    assert (latest / "report.md").read_bytes() == second.read_bytes() != first.read_bytes()


def test_an_overlapping_factory_run_on_one_output_is_refused_before_it_ingests(prefect_server, tmp_path):
    """Issue 35: a nightly overlapping another repeated ingest and pretraining before it was refused."""
    output, dataset = tmp_path / "out", tmp_path / "dataset"
    overrides = {**TINY, "output": str(output), "dataset": {**TINY["dataset"], "uri": str(dataset)}}
    with dataset_lock(str(output), "factory (the first nightly)"):
        with pytest.raises(DatasetLocked, match="first nightly"):
            factory_flow(overrides=overrides)
    assert not dataset.exists() and not (output / "runs").exists()


def test_runs_lists_every_kind_of_run_under_the_root_as_a_table(tiny_run, capsys, monkeypatch):
    """Issue 15: `tailforge runs` was raw JSON and knew only factory and augment runs."""
    from flows.cli import main

    monkeypatch.setenv("PREFECT_UI_URL", "http://127.0.0.1:4200")

    result, home = tiny_run
    assert main(["runs", "--root", str(home), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    by_flow = {}
    for r in records:
        by_flow.setdefault(r["flow"], []).append(r)
    assert {"ingest", "pretrain", "augment", "finetune", "factory"} <= set(by_flow)  # every stage (issue 34)
    (record,) = [json.loads(p.read_text()) for p in Path(result["output_uri"], "reports", result["run_id"], "runs")
                 .glob("*.json")]
    assert record["flow"] == "finetune" and record["parent_run_id"] == result["run_id"]
    assert by_flow["ingest"][-1]["counts"]["rows_written"] > 0
    assert main(["runs", "--root", str(home)]) == 0
    table = capsys.readouterr().out
    # the factory's own ingest step ran inside its flow run: both rows carry that run id
    factory_line = next(line for line in table.splitlines() if result["run_id"] in line and "factory" in line)
    assert "completed" in factory_line and re.search(r" \d+(\.\d+)? (s|min) ", factory_line)  # its duration
    assert f"generated {result['augment']['written']}" in factory_line and "{" not in table
    from tasks.catalog import open_catalog, query
    from tasks.lineage import lineage

    with open_catalog(str(home)) as catalog:  # the README's "everything a factory run made", by its id
        _, rows = query(catalog, "SELECT count(*) FROM samples s JOIN runs r USING (run_id) "
                                 f"WHERE r.parent_run_id = '{result['run_id']}'")
        assert rows[0][0] == result["augment"]["written"]
        sample = query(catalog, "SELECT sample_id FROM samples WHERE origin = 'inpainted' LIMIT 1")[1][0][0]
        chain = lineage(catalog, sample)["chain"]
    # written inside Prefect flow runs: each step links to its run's page in the UI
    assert chain[0]["run_link"] == f"http://127.0.0.1:4200/runs/flow-run/{chain[0]['run_id']}"


def test_long_steps_log_their_progress(tiny_run, tmp_path, caplog):
    """Issue 15: classifier and DiT training and each fine-tune printed nothing for minutes."""
    import logging
    import time

    from flows.pretrain import pretrain_flow
    from flows.progress import StepProgress
    from flows.settings import settings_from_dict

    result, _ = tiny_run
    settings = settings_from_dict(TINY)
    with caplog.at_level(logging.INFO):
        pretrain_flow(result["dataset_uri"], str(tmp_path / "fresh-models"), settings.classifier, settings.generator)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("classifier training: epoch 2/2,") for line in lines), lines
    assert any(line.startswith(f"normal DiT training: step {settings.generator.steps}/{settings.generator.steps},")
               and "steps/s" in line and "loss" in line for line in lines), lines
    # the same again: both models are reused, and no 0% progress bar is left behind for them
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    state = pretrain_flow(result["dataset_uri"], str(tmp_path / "fresh-models"), settings.classifier,
                          settings.generator, return_state=True)
    assert all(handle["reused"] for handle in state.result().values())
    with get_client(sync_client=True) as client:
        made = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert [a.type for a in made if a.type == "progress"] == []

    from prefect import flow

    @flow
    def steps():
        progress = StepProgress("a step", 4, "step", key="test-progress", every_s=0.0)
        for done in range(1, 5):
            time.sleep(0.05)
            progress.step(done, 1.0 / done)

    caplog.clear()
    with caplog.at_level(logging.INFO):
        steps()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("a step")]
    assert len(lines) == 4 and "ETA" in lines[0] and lines[0].endswith("loss 1.0000") and "ETA" not in lines[-1]


def test_the_report_is_readable_and_the_ui_copy_embeds_its_pictures(tiny_run, tmp_path):
    """Issue 15: a 192x64 sheet without captions, 0.000 and undefined alike, no intervals."""
    import io

    from PIL import Image

    from tasks import report

    result, _ = tiny_run
    written = report.write_report(str(tmp_path / "report"), result["finetune"], result["augment"]["out_uri"],
                                  result["dataset_uri"], {"dataset": result["dataset_uri"]})
    sheet = Image.open(io.BytesIO((tmp_path / "report" / "samples.png").read_bytes()))
    assert sheet.width == 3 * report.TILE and sheet.height > report.TILE  # tiles a person can see
    text = written["markdown"]
    assert "Per class on test, value [95% bootstrap interval]" in text and "Generated samples used per epoch" in text
    # an undefined metric says so; a zero is a zero, with its interval
    assert report._cell({"status": "no_positives", "f1_tuned": 0.0}, "f1_tuned") == "n/a"
    assert report._cell({"f1_tuned": None}, "f1_tuned") == "n/a"
    assert report._cell({"f1_tuned": 0.0, "ci95": {"f1_tuned": [0.0, 0.05]}}, "f1_tuned") == "0.000 [0.00, 0.05]"
    assert "](samples.png)" in text and "data:image" not in text  # the file beside report.md
    assert written["ui_markdown"].count("data:image/png;base64,") == 2  # the UI copy carries chart and sheet


@pytest.mark.parametrize("method, what", [("features", "feature z"), ("reconstruction", "reconstruction z")])
def test_the_ood_filter_scores_every_generated_row_and_rejects_what_it_cannot_reconstruct(tiny_run, tmp_path,
                                                                                          method, what):
    """Issue 16, OOD post-selection (on by default): every generated row records its score; a
    row above the threshold calibrated on the dataset's val images is not accepted, and says why."""
    result, _ = tiny_run
    dataset, models = result["dataset_uri"], result["models"]
    settings = work.AugmentSettings.from_dict({**TINY["augment"], "ood_filter": True, "ood_method": method})
    _, decisions = plan(dataset, str(tmp_path / "d.duckdb"))
    out = str(tmp_path / "ood")
    batch = work.prepare(dataset, out, read_manifest(dataset), decisions, models["classifier"],
                         models["generator"]["id"], settings).candidates[:8]
    work.run_batch(dataset, out, batch, models["classifier"], models["generator"], settings, "r")
    threshold = work.ood_scorer(dataset, settings, models["classifier"], models["generator"]).threshold
    rows = existing_rows(out, ["ood_score", "accepted", "verdict"]).to_pylist()
    assert rows and all(r["ood_score"] is not None for r in rows)
    for r in rows:
        rejected = r["ood_score"] > threshold
        assert r["accepted"] == (not rejected)  # quality and removal are off in TINY: the filter decides
        assert rejected == (r["verdict"] or "").startswith(f"out_of_distribution: {what}=")


def test_the_label_conditioned_generator_runs_through_the_same_flows(tiny_run, tmp_path, capsys):
    """Issue 16 (the paper's DfT-Caption baseline): `generator.conditioning: labels` trains a DiT on
    the labelled train split in pretrain; augment samples each candidate's kept finding set from
    noise; rows are "conditional", without parent, patient or mask; lineage says so."""
    import yaml

    from flows.cli import main
    from flows.pretrain import pretrain_flow
    from flows.settings import settings_from_dict

    result, home = tiny_run
    settings = settings_from_dict({**TINY, "generator": {**TINY["generator"], "steps": 5, "conditioning": "labels"}})
    models = pretrain_flow(result["dataset_uri"], str(home / "models"), settings.classifier, settings.generator)
    assert models["classifier"]["reused"] and not models["generator"]["reused"]
    card = json.loads(Path(models["generator"]["uri"]).with_suffix(".json").read_text())
    assert card["config"]["conditioning"] == "labels" and card["datasets"] == [result["dataset_uri"]]
    assert card["config"]["num_labels"] == len(read_manifest(result["dataset_uri"])["labels"])

    config = tmp_path / "augment.yaml"
    config.write_text(yaml.safe_dump({"augment": TINY["augment"], "knowledge": {"cache": str(tmp_path / "c.duckdb")}}))
    out = str(tmp_path / "conditional")
    assert main(["augment", result["dataset_uri"], "--classifier", models["classifier"]["uri"], "--generator",
                 models["generator"]["uri"], "--config", str(config), "--out", out, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = existing_rows(out, ["sample_id", "origin", "parent_id", "patient_id", "mask", "generator_id"]).to_pylist()
    assert summary["written"] == len(rows) > 0 and not summary["quarantined"]  # no mask, so none to quarantine
    assert {(r["origin"], r["parent_id"], r["patient_id"], r["mask"]) for r in rows} == {("conditional", None, None, None)}
    assert {r["generator_id"] for r in rows} == {models["generator"]["id"]}
    assert main(["lineage", rows[0]["sample_id"], "--root", str(tmp_path)]) == 0
    assert "sampled from its finding set" in capsys.readouterr().out


def test_a_batch_that_does_not_finish_in_time_fails_the_run_saying_so(tiny_run, tmp_path):
    """Nothing waits without a bound: a batch not done augment.batch_timeout_s after the run
    waits on it (on Dask: every worker gone) fails the run with a message, not a hang."""
    from flows.augment import BatchTimeout

    result, _ = tiny_run
    models = result["models"]
    slow = {**TINY["augment"], "inpaint": {"steps": 40, "jump_length": 5, "resample": 2}, "batch_timeout_s": 0.05}
    with pytest.raises(BatchTimeout, match=r"not done 0.05 s after .*\(0 of \d+ batches done.*augment.batch_timeout_s"):
        augment_flow(result["dataset_uri"], str(tmp_path / "out"), models["classifier"], models["generator"],
                     KnowledgeSettings(), slow, str(tmp_path / "d.duckdb"))


@pytest.mark.parametrize("device,most", [("cpu", 1), ("cuda", 2)])
def test_on_a_gpu_one_batch_more_is_in_flight_so_its_io_overlaps_the_model_work(device, most, monkeypatch):
    """One `gpu` slot: on the CPU one batch at a time; on CUDA the next batch is already reading and
    decoding (and the last one encoding) while one has the models. Results stay in order."""
    import contextlib
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from flows import augment as flow_module

    running, peak, guard = [0], [0], threading.Lock()

    def batch(index, batch):
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with guard:
            running[0] -= 1
        return {"index": index}

    @contextlib.contextmanager
    def submitter(*_args):
        with ThreadPoolExecutor(4) as pool:
            yield lambda **kw: pool.submit(batch, kw["index"], kw["batch"])

    @contextlib.contextmanager
    def one_slot(_wanted, _logger):
        yield 1

    class Quiet:
        def __init__(self, *_args, **_kwargs): ...
        def update(self, *_args): ...

    monkeypatch.setattr(flow_module, "resolve_device", lambda: torch.device(device))
    monkeypatch.setattr(flow_module, "batch_submitter", submitter)
    monkeypatch.setattr(flow_module, "gpu_slots", one_slot)
    monkeypatch.setattr(flow_module, "StepProgress", Quiet)
    todo = [(i, [f"c{i}"]) for i in range(6)]
    monkeypatch.setattr(flow_module, "say_device", lambda _logger: None)
    results = flow_module.run_batches(todo, {}, flow_module.work.AugmentSettings(), None)
    assert [r["index"] for r in results] == list(range(6)) and peak[0] == most


def test_two_batches_in_flight_pool_their_fills_and_write_what_they_write_apart(tiny_run, tmp_path, monkeypatch):
    """The DiT fills outside the models' lock (tasks/augment/models.unlocked): a second batch makes
    its masks while the first fills, and its fill joins the first's network calls
    (models/engine.Pool); each batch writes the rows it writes alone."""
    import threading

    from models import dit as dit_module
    from models.engine import pool

    result, _ = tiny_run
    dataset, models = result["dataset_uri"], result["models"]
    settings = work.AugmentSettings.from_dict({**TINY["augment"], "removal_rounds": 2})
    _, decisions = plan(dataset, str(tmp_path / "d.duckdb"))
    chunks = work.prepare(dataset, str(tmp_path / "unused"), read_manifest(dataset), decisions, models["classifier"],
                          models["generator"]["id"], settings).batches[:2]
    run = lambda k, out: work.run_batch(dataset, str(tmp_path / out / str(k)), chunks[k],  # noqa: E731
                                        models["classifier"], models["generator"], settings, "r")
    for k in (0, 1):
        run(k, "apart")
    dit = work.models._generator(models["generator"]["uri"])[0]
    rows_per_call, hold, forward = [], threading.Event(), dit_module._forward
    hold.set()

    def watched(net, x, t, labels):
        if hold.is_set():  # the first fill's first call waits (bounded) for the other batch's fill
            hold.clear()
            deadline = time.monotonic() + 60
            while len(pool(dit)._jobs) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        rows_per_call.append(len(x))
        return forward(net, x, t, labels)

    monkeypatch.setattr(dit_module, "_forward", watched)
    threads = [threading.Thread(target=run, args=(k, "together")) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive()
    assert max(rows_per_call) > max(len(chunk) for chunk in chunks)  # one call held both batches' rows
    for k in (0, 1):
        apart, together = _outputs(str(tmp_path / "apart" / str(k))), _outputs(str(tmp_path / "together" / str(k)))
        assert together[1] == apart[1] and [r[0] for r in together[0]] == [r[0] for r in apart[0]]
        for (_, image, mask), (_, alone, alone_mask) in zip(together[0], apart[0]):
            assert mask == alone_mask  # the pixels within one grey level (float rounding of a bigger call)
            assert np.abs(decode_png(image).astype(int) - decode_png(alone).astype(int)).max() <= 1
