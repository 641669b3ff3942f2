"""LLM Knowledge Guidance: rules table, judges, fault fallbacks, privacy, secrets, cache, planner."""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import main
from tasks import sources
from tasks.ingest import IngestOptions, ingest, ingest_phantom
from tasks.knowledge import (AnthropicJudge, ConfigError, DecisionCache, JudgeError, LLMSettings, NoGuidanceJudge,
                             Question, RulesJudge, decision_key, export_decisions, plan)
from tasks.knowledge.llm import request_body
from tasks.knowledge.rules import entangled, rules_table, shared_zones
from tasks.labels import vocabulary
from benchmarks.fake_anthropic import FakeAnthropic
from tests.imagefiles import pattern, png_bytes, write_csv

API_KEY = "sk-ant-test-KEY-4f1e9c0d-do-not-leak"
FAST = LLMSettings(timeout_s=5.0, max_retries=1)  # generous: a busy CI machine must not time out a good answer
SHORT_TIMEOUT = LLMSettings(timeout_s=0.3, max_retries=1)  # for the timeout fault only (the server waits 0.8 s)


# ---------------------------------------------------------------- the rules table
@pytest.mark.parametrize("vocab", ["nih", "chexpert"])
def test_rules_table_covers_every_finding_with_known_zones(vocab):
    table = rules_table()
    for finding in vocabulary(vocab).findings:
        entry = table["findings"][finding]
        assert entry["zones"] and set(entry["zones"]) <= set(table["zones"]) and entry["appearance"]


def test_pairs_are_exactly_the_zone_overlaps_and_symmetric():
    table = rules_table()
    names = sorted(table["findings"])
    overlapping = {"|".join((a, b)) for i, a in enumerate(names) for b in names[i + 1:] if shared_zones(a, b)}
    # every overlapping pair that can occur in one vocabulary has a reason, and no reason is spare
    same_vocab = {p for p in overlapping
                  if any(set(p.split("|")) <= set(vocabulary(v).findings) for v in ("nih", "chexpert"))}
    assert set(table["pairs"]) == same_vocab
    assert all(r.strip() and "\n" not in r for r in table["pairs"].values())
    assert all(entangled(a, b) == entangled(b, a) for a in names for b in names)
    assert entangled("Effusion", "Edema") and not entangled("Cardiomegaly", "Edema")


def test_rules_judge_keeps_entangled_and_removes_the_rest():
    d = RulesJudge().decide(Question.of(["Cardiomegaly", "Effusion"], ["Edema"]))
    assert d.keep == ("Effusion",) and d.remove == ("Cardiomegaly",) and d.source == "rules"
    assert "costophrenic" in d.rationale and d.decision_id == d.key


def test_decision_key_is_order_free_and_versioned():
    q1, q2 = Question.of(["Effusion", "Atelectasis"], ["Mass"]), Question.of(["Atelectasis", "Effusion"], ["Mass"])
    base = decision_key("anthropic", "m", "v1", q1)
    assert base == decision_key("anthropic", "m", "v1", q2)
    assert len({base, decision_key("anthropic", "m", "v2", q1), decision_key("anthropic", "m2", "v1", q1),
                decision_key("rules", "m", "v1", q1), decision_key("anthropic", "m", "v1",
                                                                   Question.of(["Effusion"], ["Atelectasis", "Mass"]))}) == 5
    with pytest.raises(ValueError):
        Question.of([], ["Mass"])


# ---------------------------------------------------------------- the planner on a hand-checked table
HAND_ROWS = [  # labels, split; tail = Mass, Hernia (explicit)
    ("Effusion|Mass", "train"),  # Effusion shares no zone with Mass -> removed
    ("Effusion|Mass", "train"),
    ("Nodule|Mass", "train"),  # Mass|Nodule entangled -> kept, nothing to generate
    ("Cardiomegaly|Hernia", "train"),  # retrocardiac -> kept
    ("Cardiomegaly|Nodule|Hernia|Mass", "train"),  # both kept
    ("Atelectasis|Mass", "train"),  # removed
    ("Effusion|Mass", "val"),  # not train
    ("Mass", "train"),  # no head finding
    ("Effusion", "train"),  # no tail finding
    ("No Finding", "train"),
]


@pytest.fixture(scope="module")
def hand_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("hand")
    (root / "img").mkdir()
    rows = []
    for i, (labels, split) in enumerate(HAND_ROWS):
        (root / "img" / f"{i}.png").write_bytes(png_bytes(pattern(500 + i)))
        rows.append([f"{i}.png", labels, f"PATIENT-SECRET-{i}", split])
    table = write_csv(root / "t.csv", ["Image Index", "Finding Labels", "Patient ID", "split"], rows)
    source = sources.read_folder(str(table), patient_column="Patient ID", split_column="split")
    out = str(root / "ds")
    ingest(source, str(root / "img"), out, IngestOptions(size=32, explicit_tail=("Mass", "Hernia")))
    return out


def test_planner_counts_on_a_hand_checked_table(hand_dataset, tmp_path):
    report, used = plan(hand_dataset, tmp_path / "d.duckdb")
    assert report.tail == ["Mass", "Hernia"] and report.train_images == 9
    assert report.candidate_images == 6 and len(report.label_sets) == 5
    assert report.images_to_generate == 3
    assert report.new_samples_per_tail == {"Mass": 3, "Hernia": 0}
    by_set = {(tuple(s.head), tuple(s.tail)): s for s in report.label_sets}
    assert by_set[(("Effusion",), ("Mass",))].images == 2 and by_set[(("Effusion",), ("Mass",))].remove == ["Effusion"]
    assert by_set[(("Cardiomegaly", "Nodule"), ("Hernia", "Mass"))].keep == ["Cardiomegaly", "Nodule"]
    assert report.cache_misses == 5 and report.llm_calls == 0 and len(used) == 5
    again, _ = plan(hand_dataset, tmp_path / "d.duckdb")
    assert again.cache_hits == 5 and again.cache_misses == 0


def test_no_guidance_removes_every_head_finding(hand_dataset, tmp_path):
    rules = {(tuple(s.head), tuple(s.tail)): s for s in plan(hand_dataset, tmp_path / "d.duckdb")[0].label_sets}
    report, used = plan(hand_dataset, tmp_path / "d.duckdb", NoGuidanceJudge())
    assert report.judge == "none" and report.cache_misses == 5  # its own cache entries, beside the rules'
    assert all(not d.keep and set(d.remove) == set(d.head) and d.judge == "none" for d in used)
    assert report.images_to_generate == 6 and report.new_samples_per_tail == {"Mass": 5, "Hernia": 2}
    assert {d.decision_id for d in used}.isdisjoint(s.decision_id for s in rules.values())


# ---------------------------------------------------------------- the Anthropic judge against a fake server
@pytest.fixture
def llm_env(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)

    def start(mode="ok", delay_s=1.0):
        fake = FakeAnthropic(mode, delay_s).__enter__()
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)  # the SDK's own variable
        started.append(fake)
        return fake

    started = []
    yield start
    for fake in started:
        fake.__exit__()


def test_llm_decisions_are_cached_and_a_rerun_makes_no_calls(hand_dataset, tmp_path, llm_env):
    fake = llm_env("ok")
    cache = tmp_path / "d.duckdb"
    report, used = plan(hand_dataset, cache, AnthropicJudge(FAST))
    assert report.llm_calls == 5 == len(fake.message_requests) and report.fallbacks == {}
    assert all(d.source == "llm" and d.judge == "anthropic" and d.keep == d.head[:1] for d in used)
    rerun, _ = plan(hand_dataset, cache, AnthropicJudge(FAST))
    assert rerun.llm_calls == 0 and rerun.cache_hits == 5 and len(fake.message_requests) == 5
    bumped, _ = plan(hand_dataset, cache, AnthropicJudge(LLMSettings(prompt_version="lkg-v2", timeout_s=5.0)))
    assert bumped.llm_calls == 5 and bumped.cache_misses == 5
    with DecisionCache(cache, read_only=True) as c:
        assert sorted(d.prompt_version for d in c.all()) == ["lkg-v1"] * 5 + ["lkg-v2"] * 5


@pytest.mark.parametrize("mode,kind", [("timeout", "timeout"), ("429", "rate_limit"), ("500", "server_error"),
                                       ("529", "overloaded"), ("malformed", "malformed"), ("notool", "malformed"),
                                       ("invalid", "invalid_answer"), ("refusal", "refusal")])
def test_every_fault_falls_back_to_the_rules_and_is_retried_next_run(hand_dataset, tmp_path, llm_env, mode, kind):
    fake = llm_env(mode, delay_s=0.8)
    cache = tmp_path / "d.duckdb"
    report, used = plan(hand_dataset, cache, AnthropicJudge(SHORT_TIMEOUT if mode == "timeout" else FAST))
    assert report.fallbacks == {kind: 5} and report.llm_calls == 5
    assert all(d.source == "fallback" and d.error == kind and d.judge == "anthropic" for d in used)
    rules = {(d.head, d.tail): d for d in plan(hand_dataset, tmp_path / "rules.duckdb")[1]}
    assert all(d.keep == rules[(d.head, d.tail)].keep for d in used)  # the rules' answer
    assert all(d.decision_id != d.key for d in used)  # its own id: lineage never changes meaning
    if mode in ("429", "500", "529", "timeout"):
        assert len(fake.message_requests) == 10  # one retry each (max_retries=1)
    fake.mode = "ok"
    healed, used2 = plan(hand_dataset, cache, AnthropicJudge(FAST))
    assert healed.llm_calls == 5 and healed.fallbacks == {} and all(d.source == "llm" for d in used2)


def test_the_prompt_holds_only_label_names(hand_dataset, tmp_path, llm_env):
    fake = llm_env("ok")
    plan(hand_dataset, tmp_path / "d.duckdb", AnthropicJudge(FAST))
    vocab = list(vocabulary("nih").findings)
    for request in fake.message_requests:
        body = request["body"]
        assert set(body) == {"model", "max_tokens", "system", "messages", "tools", "tool_choice"}
        assert body["tool_choice"] == {"type": "tool", "name": "record_entanglement"}
        text = json.dumps(body)
        for private in ("PATIENT-SECRET", ".png", "img", "2026", "ds"):
            assert private not in text.replace("records", "")
        (message,) = body["messages"]
        lines = message["content"].splitlines()
        assert lines[0] == f"Vocabulary: {', '.join(vocab)}."
        head = lines[1].removeprefix("HEAD findings present: ").rstrip(".").split(", ")
        tail = lines[2].removeprefix("TAIL findings present: ").rstrip(".").split(", ")
        assert set(head) <= set(vocab) and set(tail) <= {"Mass", "Hernia"}
        assert body == request_body(Question.of(head, tail), vocab, FAST)  # nothing else is sent


def test_the_api_key_never_leaks(hand_dataset, tmp_path, llm_env, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    fake = llm_env("500")
    cache, export = tmp_path / "d.duckdb", str(tmp_path / "export")
    assert main(["plan", hand_dataset, "--judge", "anthropic", "--cache", str(cache), "--export", export,
                 "--llm-timeout", "5", "--llm-retries", "0", "--json"]) == 0
    fake.mode = "ok"
    assert main(["plan", hand_dataset, "--judge", "anthropic", "--cache", str(cache), "--export", export,
                 "--llm-timeout", "5", "--llm-retries", "0"]) == 0
    assert main(["decisions", "--cache", str(cache), "--json"]) == 0
    sent = fake.message_requests[0]["headers"]
    assert API_KEY in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))  # to the API...
    printed = capsys.readouterr()
    blobs = [printed.out, printed.err, caplog.text]
    blobs += [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    blobs += [p.read_bytes().decode("latin-1") for p in Path(hand_dataset).rglob("*") if p.is_file()]
    assert not [b for b in blobs if API_KEY in b or API_KEY[-12:] in b]  # ...and nowhere else


def test_missing_key_is_a_clear_error_before_any_work(hand_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        AnthropicJudge(LLMSettings())
    assert main(["plan", hand_dataset, "--judge", "anthropic", "--cache", str(tmp_path / "d.duckdb")]) == 2
    assert "ANTHROPIC_API_KEY" in capsys.readouterr().err and not (tmp_path / "d.duckdb").exists()


def test_cache_persists_across_processes(hand_dataset, tmp_path, llm_env):
    fake = llm_env("ok")
    exe = Path(sys.executable).with_name("tailforge")
    cache = str(tmp_path / "d.duckdb")
    env = {**os.environ, "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": API_KEY}
    runs = []
    for _ in range(2):
        done = subprocess.run([str(exe), "plan", hand_dataset, "--judge", "anthropic", "--cache", cache, "--json"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout))
    assert (runs[0]["llm_calls"], runs[1]["llm_calls"]) == (5, 0) and runs[1]["cache_hits"] == 5
    assert len(fake.message_requests) == 5


def test_decisions_command_lists_and_exports(hand_dataset, tmp_path, capsys):
    import pyarrow.parquet as pq

    cache = str(tmp_path / "d.duckdb")
    assert main(["plan", hand_dataset, "--cache", cache, "--export", str(tmp_path / "used"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exported"].endswith(".parquet")
    assert main(["decisions", "--cache", cache, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 5 and {d["source"] for d in listed} == {"rules"}
    assert main(["decisions", "--cache", cache, "--export", str(tmp_path / "all")]) == 0
    (shard,) = (tmp_path / "all").glob("part-*.parquet")
    assert pq.read_table(shard).num_rows == 5
    assert main(["decisions", "--cache", str(tmp_path / "none.duckdb")]) == 2


def test_export_is_idempotent(hand_dataset, tmp_path):
    _, used = plan(hand_dataset, tmp_path / "d.duckdb")
    first = export_decisions(used, str(tmp_path / "x"))
    assert export_decisions(list(reversed(used)), str(tmp_path / "x")) == first


def test_plan_runs_on_the_phantom_with_rules(tmp_path):
    out = str(tmp_path / "phantom")
    ingest_phantom(out, 300, size=32, seed=5)
    report, used = plan(out, tmp_path / "d.duckdb")
    assert report.candidate_images > 0 and len(used) == len(report.label_sets)
    assert report.images_to_generate == sum(s.images for s in report.label_sets if s.remove)
    assert sum(report.new_samples_per_tail.values()) >= report.images_to_generate


@pytest.mark.realdata
def test_plan_on_nih1000_with_rules_and_with_the_fake_llm(nih1000, tmp_path, llm_env):
    source = sources.read_nih(str(nih1000 / "Data_Entry_2017_v2020.csv"))
    sources.apply_split_csv(source, str(nih1000 / "split.csv"))
    out = str(tmp_path / "nih")
    ingest(source, str(nih1000 / "images"), out)
    rules, _ = plan(out, tmp_path / "rules.duckdb")
    assert rules.train_images == 700 and rules.candidate_images == 73 and len(rules.label_sets) == 44
    fake = llm_env("ok")
    llm, _ = plan(out, tmp_path / "llm.duckdb", AnthropicJudge(FAST))
    assert llm.llm_calls == 44 == len(fake.message_requests) and llm.candidate_images == 73


# ---------------------------------------------------------------- bounded waits (issue 12, defect 3)
def test_a_retry_after_of_a_day_is_not_waited_for(hand_dataset, tmp_path, llm_env):
    fake = llm_env("429-day")
    started = time.monotonic()
    report, used = plan(hand_dataset, tmp_path / "d.duckdb", AnthropicJudge(LLMSettings(timeout_s=5.0)))
    assert time.monotonic() - started < 15
    assert report.fallbacks == {"rate_limit": 5} and all(d.error == "rate_limit" for d in used)
    assert len(fake.message_requests) == 1  # the server asked to be left alone: it is not asked again


def test_cli_plan_on_a_day_long_rate_limit_finishes_and_falls_back(hand_dataset, tmp_path, llm_env, capsys):
    llm_env("429-day")
    started = time.monotonic()
    assert main(["plan", hand_dataset, "--judge", "anthropic", "--cache", str(tmp_path / "d.duckdb"), "--json"]) == 0
    assert time.monotonic() - started < 15
    assert json.loads(capsys.readouterr().out)["fallbacks"] == {"rate_limit": 5}


def test_the_sdk_never_retries_on_its_own(llm_env):
    fake = llm_env("529")
    import anthropic

    judge = AnthropicJudge(LLMSettings(max_retries=0), client=anthropic.Anthropic(base_url=fake.url, api_key=API_KEY,
                                                                                   max_retries=5))
    with pytest.raises(JudgeError) as caught:
        judge.ask(Question.of(["Effusion"], ["Mass"]), list(vocabulary("nih").findings))
    assert caught.value.kind == "overloaded" and len(fake.message_requests) == 1


def test_decisions_are_kept_as_they_arrive(hand_dataset, tmp_path, llm_env):
    llm_env("ok")

    class KilledAfterTwo(AnthropicJudge):
        def ask(self, question, vocabulary):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 3:
                raise KeyboardInterrupt  # stands in for a kill in the middle of a plan
            return super().ask(question, vocabulary)

    cache = tmp_path / "d.duckdb"
    with pytest.raises(KeyboardInterrupt):
        plan(hand_dataset, cache, KilledAfterTwo(FAST))
    with DecisionCache(cache, read_only=True) as c:
        assert [d.source for d in c.all()] == ["llm", "llm"]
    report, _ = plan(hand_dataset, cache, AnthropicJudge(FAST))
    assert report.cache_hits == 2 and report.llm_calls == 3


def test_a_second_fallback_records_its_own_error_kind(hand_dataset, tmp_path, llm_env):
    fake = llm_env("500")
    cache = tmp_path / "d.duckdb"
    plan(hand_dataset, cache, AnthropicJudge(FAST))
    fake.mode = "429"
    _, used = plan(hand_dataset, cache, AnthropicJudge(FAST))
    assert {d.error for d in used} == {"rate_limit"}
    with DecisionCache(cache, read_only=True) as c:
        kinds = sorted(d.error for d in c.all())
    assert kinds == ["rate_limit"] * 5 + ["server_error"] * 5


def test_a_second_process_waits_for_the_decision_cache_then_is_refused_naming_it(tmp_path):
    cache = tmp_path / "d.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "time.sleep(2.0); c.close()", str(cache)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=f"{cache.name} is in use by another process"):
            DecisionCache(cache, wait_s=0.3)  # held longer than this: refused, not hung
        with DecisionCache(cache) as c:  # waits (LOCK_WAIT_S) until the holder closes it
            assert c.all() == []
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
