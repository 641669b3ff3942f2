"""Settings YAML, and the deployment / container files that cannot run here (no Docker engine):
parsed and checked against the code they name."""

import importlib
import json
from pathlib import Path

import pytest
import yaml

from flows.settings import load_settings, settings_from_dict

ROOT = Path(__file__).resolve().parents[1]


def test_demo_and_nightly_settings_load():
    demo = load_settings(str(ROOT / "flows" / "demo.yaml"))
    assert demo.dataset.source == "phantom" and demo.knowledge.judge == "rules"
    nightly = load_settings(str(ROOT / "infra" / "nightly.yaml"))
    assert nightly.generator.normals == ("s3://tailforge/datasets/normals128",)
    assert nightly.knowledge.api_key_secret == "anthropic-api-key"


@pytest.mark.parametrize("data,message", [
    ({"datset": {}}, "unknown setting 'datset'; known at the top: name, dataset, classifier"),
    ({"dataset": {"sise": 64}}, "unknown setting 'dataset.sise'; known in dataset: source, .*size"),
    ({"augment": {"batchsize": 3}}, "unknown setting 'augment.batchsize'; known in augment: batch_size"),
    ({"augment": {"mask": {"thresold": 0.5}}}, "unknown setting 'augment.mask.thresold'; known in augment.mask"),
    ({"augment": {"mask": {"threshold": 2.0}}}, "augment.mask: need 0 < threshold < 1"),
    ({"dataset": {"size": "big"}}, "dataset.size: Input should be a valid integer"),
    ({"finetune": {"settings": ["nope"]}}, "finetune.settings.0: must be one of baseline, augmented, pil, not 'nope'"),
    ({"augment": {"cam_method": "gradcm"}}, "augment.cam_method: must be one of gradcam, .*infill.*'gradcm'"),
    ({"generator": {"preset": "large"}}, "generator.preset: must be one of tiny, small, base, not 'large'"),
    ({"generator": {"preset": "small", "depth": 3}}, "preset or the sizes"),
    ({"generator": {"processes": 3}}, r"split generator.batch_size \(32\) evenly, got 3"),
])
def test_bad_settings_name_what_is_wrong(data, message):
    with pytest.raises(ValueError, match=message):
        settings_from_dict(data)


def _subparser(parser, *path):
    import argparse

    for name in path:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


@pytest.mark.parametrize("path,cls_name", [
    (("ingest", "nih"), "DatasetSettings"), (("ingest", "chexpert"), "DatasetSettings"),
    (("ingest", "mimic"), "DatasetSettings"), (("ingest", "folder"), "DatasetSettings"),
    (("phantom",), "DatasetSettings"), (("plan",), "KnowledgeSettings"),
])
def test_cli_defaults_are_the_settings_defaults(path, cls_name):
    """Every CLI option that names a setting has that setting's default (flows/settings.py)."""
    import dataclasses

    import flows.settings
    from flows.cli import build_parser

    cls = getattr(flows.settings, cls_name)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    options = [a for a in _subparser(build_parser(), *path)._actions if a.dest in defaults]
    assert len(options) >= 3  # the test looks at something
    aliases = {"tail": None}  # --tail is a comma-separated string for the tuple setting; both default to None
    for action in options:
        expected = aliases.get(action.dest, defaults[action.dest])
        assert action.default == expected, f"{' '.join(path)} --{action.dest}: CLI {action.default!r}, settings {expected!r}"


def test_settings_default_under_tailforge_home(tailforge_home):
    settings = settings_from_dict({"name": "x"})
    for uri in (settings.output_uri(), settings.models_uri(), settings.dataset_uri(), settings.cache_path()):
        assert uri.startswith(str(tailforge_home))


def test_deployments_name_real_flows_pools_and_a_schedule():
    spec = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    assert spec["prefect-version"] == importlib.import_module("prefect").__version__
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == {"nightly", "pretrain", "augment", "finetune"}
    for deployment in by_name.values():
        path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert hasattr(getattr(module, function), "fn")  # a Prefect flow
        assert deployment["work_pool"]["name"] in ("cpu", "gpu")
    (schedule,) = by_name["nightly"]["schedules"]
    assert len(schedule["cron"].split()) == 5 and schedule["timezone"]
    assert "schedules" not in by_name["pretrain"] and "schedules" not in by_name["augment"]
    assert (ROOT / by_name["nightly"]["parameters"]["config_path"]).exists()
    # the nightly parent runs on the cpu pool and starts every GPU stage as a deployment on the gpu pool
    assert by_name["nightly"]["work_pool"]["name"] == "cpu"
    stages = load_settings(str(ROOT / by_name["nightly"]["parameters"]["config_path"])).stages
    flows_of = {name: d["entrypoint"].split(":")[1] for name, d in by_name.items()}
    for stage in ("pretrain", "augment", "finetune"):
        flow_name, deployment = getattr(stages, stage).split("/")
        assert by_name[deployment]["work_pool"]["name"] == "gpu", stage
        flow = getattr(importlib.import_module(f"flows.{stage}"), flows_of[deployment])
        assert flow.name == flow_name, stage  # "flow/deployment" names a real flow's deployment
    text = (ROOT / "infra" / "prefect.yaml").read_text().lower()
    assert "secret_access_key" not in text and "sk-ant" not in text


def test_compose_has_the_services_and_no_literal_secrets():
    spec = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())
    assert {"postgres", "prefect-server", "minio", "cpu-worker", "gpu-worker", "setup"} <= set(spec["services"])
    gpu = spec["services"]["gpu-worker"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "postgresql+asyncpg" in spec["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    scheduler, worker = spec["services"]["dask-scheduler"]["command"], spec["services"]["dask-worker"]["command"]
    port = scheduler[scheduler.index("--port") + 1]
    assert worker[:3] == ["dask", "worker", f"tcp://dask-scheduler:{port}"]
    assert worker[worker.index("--resources") + 1] == "GPU=1"  # what augment.dask_resource asks for by default
    assert spec["services"]["dask-worker"]["deploy"] == gpu["deploy"]
    for name, service in spec["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "API_KEY", "ACCESS_KEY")):
                assert str(value).startswith("${"), f"{name}.{key} must come from the environment"
        image = service.get("image", "")
        assert ":latest" not in image and (":" in image or "build" in service), name


@pytest.mark.parametrize("name,pool", [("Dockerfile.cpu", "cpu"), ("Dockerfile.gpu", "gpu")])
def test_dockerfiles_install_the_package_and_start_a_worker_of_their_pool(name, pool):
    """What the images must get right: a pinned base (CUDA for the GPU image), the package
    installed with the constraints from the copied sources (not the test extras), every layer
    the code imports copied, and a worker of the right pool as the command."""
    text = (ROOT / "docker" / name).read_text()
    lines = [line.strip() for line in text.splitlines()]
    base = next(line.split()[1] for line in lines if line.startswith("FROM "))
    assert ":" in base and "latest" not in base
    assert base.startswith("nvidia/cuda:") == (pool == "gpu")
    installs = [line for line in lines if "pip install" in line]
    package = "'.[dask]'" if pool == "gpu" else "."  # GPU hosts also run Dask workers (augment.runner: dask)
    assert any(line.endswith(f"pip install -c constraints.txt {package}") for line in installs), installs
    assert not any("[test]" in line for line in installs)  # no test extras in a worker image
    copied = {word.rstrip("/") for line in lines if line.startswith("COPY ") for word in line.split()[1:-1]}
    assert {"constraints.txt", "pyproject.toml", "flows", "tasks", "models"} <= copied
    command = json.loads(next(line for line in lines if line.startswith("CMD "))[4:])
    assert command[:3] == ["prefect", "worker", "start"] and command[command.index("--pool") + 1] == pool
    # the GPU image insists on the GPU (a container started without one fails, not runs on its CPU)
    assert ("TAILFORGE_DEVICE=cuda" in text) == (pool == "gpu")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'tailforge = "flows.cli:main"' in pyproject  # the entry point the image installs
    assert importlib.import_module("flows.cli").main


def test_knowledge_settings_and_the_llm_judge_share_their_defaults(monkeypatch):
    """The YAML's knowledge section and the judge it makes: same timeouts, retries, budget and
    model ($TAILFORGE_LLM_MODEL, read in one place, for `plan` and `run` alike)."""
    from flows.settings import KnowledgeSettings
    from tasks.knowledge import LLMSettings

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-used")
    monkeypatch.setenv("TAILFORGE_LLM_MODEL", "claude-test-model")
    knowledge, llm = KnowledgeSettings(judge="anthropic"), LLMSettings()
    assert (knowledge.llm_timeout, knowledge.llm_retries, knowledge.llm_budget) == (
        llm.timeout_s, llm.max_retries, llm.budget_s)
    judge = knowledge.make_judge()
    assert judge.model == "claude-test-model" == llm.model and judge.settings == llm
    assert KnowledgeSettings(judge="anthropic", model="other", llm_budget=5.0).make_judge().settings.budget_s == 5.0
    with pytest.raises(ValueError, match="must be one of rules, anthropic, none"):
        KnowledgeSettings(judge="oracle")


def test_config_prints_every_effective_setting_and_round_trips(tmp_path, capsys):
    """`tailforge config` shows a YAML with every default filled in; that output is itself a
    valid settings file that means the same."""
    from flows.cli import main

    assert main(["config", str(ROOT / "flows" / "demo.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["dataset"]["n"] == 1500 and printed["augment"]["mask"]["dilate_px"] == 2
    assert printed["knowledge"]["llm_budget"] == 90.0 and printed["finetune"]["loss"] == "cb"
    assert printed["knowledge"]["cache"].endswith("decisions.duckdb")
    again = tmp_path / "effective.yaml"
    again.write_text(yaml.safe_dump(printed))
    assert json.loads(json.dumps(load_settings(str(again)).effective())) == printed


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        out |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return out


def test_settings_reference_covers_every_setting_and_the_docs_copy_is_current(capsys):
    """One table names every setting the YAML takes (the leaves of `tailforge config`), with
    its default and a meaning; docs/settings.md holds the table `config --reference` prints."""
    from flows.cli import main
    from flows.settings import FactorySettings
    from flows.settings_reference import rows

    table = rows(FactorySettings)
    assert {key for key, *_ in table} == _leaves(FactorySettings().effective())
    assert [key for key, _, meaning, _ in table if not meaning] == []  # every setting says what it does
    assert main(["config", "--reference"]) == 0
    printed = capsys.readouterr().out
    page = (ROOT / "docs" / "settings.md").read_text()
    block = page.split("<!-- settings-reference:start -->\n")[1].split("<!-- settings-reference:end -->")[0]
    assert block == printed, "docs/settings.md is stale: paste `tailforge config --reference` into it"


@pytest.mark.parametrize("key", ["dataset.tail", "generator.normals", "name"])
def test_an_alias_bomb_or_a_huge_settings_file_is_refused_before_it_is_expanded(tmp_path, key):
    """Issue 35: 413 bytes of nested aliases expand to 10^9 values (110 s to a MemoryError);
    a settings file is refused in one line once its expanded size passes the bound."""
    from flows.settings import MAX_SETTINGS_BYTES, MAX_SETTINGS_VALUES

    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    section, _, field = key.rpartition(".")
    lines.append(f"{section}: {{{field}: *l8}}" if section else f"{field}: *l8")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"more than {MAX_SETTINGS_VALUES:,} values"):  # before expanding it
        load_settings(str(bomb))
    huge = tmp_path / "huge.yaml"
    huge.write_text("dataset:\n  tail:\n" + "    - Hernia\n" * (MAX_SETTINGS_BYTES // 12))
    with pytest.raises(ValueError, match="a settings file is a few kB"):
        load_settings(str(huge))
    small = tmp_path / "anchors.yaml"  # anchors a person writes stay fine
    small.write_text("dataset: &d {n: 40}\n")
    load_settings(str(small))


@pytest.mark.parametrize(("text", "says"), [
    ("output: /etc", "in the system folder /etc"), ("models: /usr/lib/x", "in the system folder /usr"),
    ("output: /tmp/../etc/tf", "in the system folder /etc"), ("dataset: {uri: /}", "the root folder"),
    ('name: "../../x"', "name must be a plain name"), ("name: !!binary eA==", "name: Input should be a valid string"),
    ("name: a/b", "name must be a plain name")])
def test_outputs_and_names_stay_out_of_system_folders(tmp_path, text, says):
    """Issue 35: `output: /etc` was accepted and written, `name: ../../x` resolved outside
    $TAILFORGE_HOME and `!!binary` as a name was a TypeError traceback."""
    path = tmp_path / "settings.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError, match=says):
        load_settings(str(path))


def test_a_dataset_write_into_a_system_folder_is_refused_before_any_work(tmp_path, capsys):
    from flows.cli import main

    assert main(["phantom", "--n", "4", "--size", "32", "--out", "/proc/tailforge"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "in the system folder /proc" in err


def _schema_leaves():
    """(key, schema node) for every setting, from the published JSON Schema."""
    from flows.settings import FactorySettings
    from flows.settings_reference import _property, rows, schema

    tree = schema()
    return [(key, _property(tree, tree["$defs"], key.split("."))) for key, *_ in rows(FactorySettings)]


def _enum(node: dict) -> list | None:
    for part in (node, node.get("items", {}), *node.get("anyOf", [])):
        if "enum" in part:
            return part["enum"]
    return None


def _is_text(node: dict) -> bool:
    return any(part.get("type") == "string" for part in (node, node.get("items", {}), *node.get("anyOf", [])))


# text settings that are not names from a registry: paths, URIs, columns, free names, and the
# classifier's backbone (any timm model name: timm refuses an unknown one when the model is built)
FREE_TEXT = {"name", "dataset.uri", "dataset.table", "dataset.images", "dataset.split_csv", "dataset.tail",
             "dataset.bbox_table", "dataset.split_table", "dataset.metadata_table", "dataset.path_column",
             "dataset.label_column", "dataset.patient_column", "dataset.split_column", "classifier.backbone",
             "classifier.checkpoint", "generator.normals", "generator.checkpoint", "knowledge.model",
             "knowledge.prompt_version", "knowledge.api_key_secret", "knowledge.cache", "augment.localise.layers",
             "augment.dask_address", "augment.dask_resource", "stages.pretrain", "stages.augment",
             "stages.finetune", "output", "models"}


def test_every_name_valued_setting_is_checked_at_load_naming_its_choices():
    """A typo in any setting that names a method, a source, a judge, a loss, ... fails when the
    file is loaded (not inside the first GPU batch), and the error names the setting and lists
    what it accepts; a new text setting must either name its registry or be listed as free text."""
    named = [(key, _enum(node)) for key, node in _schema_leaves() if _is_text(node) and key not in FREE_TEXT]
    assert [key for key, choices in named if not choices] == [], "text settings with no registry"
    assert len(named) >= 18
    for key, choices in named:
        *sections, leaf = key.split(".")
        data: dict = {}
        inner = data
        for section in sections:
            inner = inner.setdefault(section, {})
        inner[leaf] = ["zzzz"] if key == "finetune.settings" else "zzzz"
        with pytest.raises(ValueError) as error:
            settings_from_dict(data)
        said = str(error.value)
        assert said.startswith(key) and all(repr(c) in said or c in said for c in choices), said


def test_the_json_schema_is_current_validates_the_shipped_settings_and_refuses_typos(capsys):
    """docs/settings.schema.json (for editors: the YAML files name it) is what `tailforge config
    --schema` prints; it accepts the demo's and the nightly's settings and refuses what the
    loader refuses."""
    import jsonschema

    from flows.cli import main

    assert main(["config", "--schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    published = json.loads((ROOT / "docs" / "settings.schema.json").read_text())
    assert printed == published, "docs/settings.schema.json is stale: tailforge config --schema > it"
    jsonschema.Draft202012Validator.check_schema(published)
    for path in (ROOT / "flows" / "demo.yaml", ROOT / "infra" / "nightly.yaml"):
        assert "$schema=../docs/settings.schema.json" in path.read_text().splitlines()[0]
        jsonschema.validate(yaml.safe_load(path.read_text()), published)
    for bad in ({"augment": {"cam_method": "gradcm"}}, {"dataset": {"sise": 64}}, {"knowledge": {"judge": "oracle"}},
                {"augment": {"mask": {"method": "otsuu"}}}, {"generator": {"steps": "many"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, published)
        with pytest.raises(ValueError):
            settings_from_dict(bad)


def test_the_classifier_defaults_are_written_once_in_the_settings():
    """The product's classifier backbone and epochs are ClassifierSettings' defaults: the model
    configs take them as arguments (no default of their own to disagree) and the experiment
    reads them; the throughput benchmark samples with the product's sampler."""
    from dataclasses import MISSING, fields

    from benchmarks.paper import ExperimentConfig
    from benchmarks.throughput import REAL_SAMPLER
    from flows.settings import ClassifierSettings
    from models.classifier import ClassifierConfig
    from models.inpaint import InpaintConfig
    from models.training import TrainConfig

    def default(cls, name):
        return next(f.default for f in fields(cls) if f.name == name)

    assert default(ClassifierConfig, "backbone") is MISSING and default(TrainConfig, "epochs") is MISSING
    experiment = ExperimentConfig()
    assert (experiment.backbone, experiment.pretrain.epochs, experiment.pretrain.batch_size) == (
        ClassifierSettings.backbone, ClassifierSettings.epochs, ClassifierSettings.batch_size)
    assert REAL_SAMPLER == InpaintConfig()


def test_the_llm_defaults_are_written_once():
    """The retry policy holds the retries, the longest wait and the budget; the judge's settings
    hold the request timeout; the YAML's knowledge section reads both (it wrote them again)."""
    import inspect

    from flows.settings import KnowledgeSettings
    from tasks.knowledge.llm import LLMSettings
    from tasks.knowledge.retry import RetryPolicy

    knowledge, llm = inspect.getsource(KnowledgeSettings), inspect.getsource(LLMSettings)
    for text in ("llm_timeout: float = LLMSettings.timeout_s", "llm_retries: int = LLMSettings.max_retries",
                 "llm_budget: float = LLMSettings.budget_s"):
        assert text in knowledge
    for text in ("max_retries: int = RetryPolicy.max_retries", "max_wait_s: float = RetryPolicy.max_wait_s",
                 "budget_s: float = RetryPolicy.budget_s"):
        assert text in llm
    assert KnowledgeSettings.llm_budget is LLMSettings.budget_s is RetryPolicy.budget_s


def test_the_warm_up_rule_the_seeds_and_the_checkpoint_cache_are_written_once():
    """The DiT's default warm-up is DiTTrainConfig's rule (the pretrain flow no longer restates
    it); the experiment's seeds default is ExperimentConfig's; one function reuses a trained
    checkpoint (tasks.pretrain.trained_before, by recipe), none in the benchmarks."""
    import ast
    import inspect

    import benchmarks.experiment
    import flows.pretrain
    from benchmarks.paper import ExperimentConfig
    from flows.settings import GeneratorSettings
    from models.dit import DiTTrainConfig

    assert GeneratorSettings.warmup_steps is None and "min(200" not in inspect.getsource(flows.pretrain)
    assert [DiTTrainConfig(steps=s).warmup_steps for s in (5, 800, 5000)] == [1, 80, 200]
    assert DiTTrainConfig(steps=800, warmup_steps=7).warmup_steps == 7
    assert "default=list(paper.ExperimentConfig.seeds)" in inspect.getsource(benchmarks.experiment)
    assert len(ExperimentConfig().seeds) == 5
    defined = [str(path.relative_to(ROOT)) for folder in ("flows", "tasks", "models", "benchmarks")
               for path in (ROOT / folder).rglob("*.py")
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.FunctionDef) and node.name == "trained_before"]
    assert defined == ["tasks/pretrain.py"]


def test_the_generator_and_training_defaults_are_the_model_configs():
    """The settings read the DiT's sizes and training defaults, and the classifier's parts,
    batch, rate and seed, from the models' configs (models/configs.py, torch-free): written once, there;
    only the DiT's prediction differs, and says why."""
    import inspect
    import subprocess
    import sys

    from flows.settings import ClassifierSettings, GeneratorSettings
    from models.configs import ClassifierConfig, DiTConfig, DiTTrainConfig, TrainConfig
    from tasks.finetune import FinetuneSettings

    generator, classifier = inspect.getsource(GeneratorSettings), inspect.getsource(ClassifierSettings)
    for name in ("patch_size", "depth", "num_heads", "head_dim", "conditioning"):
        assert f"= DiTConfig.{name}  #" in generator
    for name in ("steps", "batch_size", "lr", "seed"):
        assert f"= DiTTrainConfig.{name}  #" in generator
    for name in ("batch_size", "lr", "seed"):
        assert f"= TrainConfig.{name}  #" in classifier
    for name in ("se", "head", "gcn"):
        assert f"= ClassifierConfig.{name}  #" in classifier
    assert "= TrainConfig.batch_size  #" in inspect.getsource(FinetuneSettings)
    assert (GeneratorSettings.prediction, DiTConfig.prediction) == ("sample", "epsilon")
    assert "what a\n    # checkpoint written before this field means" in inspect.getsource(DiTConfig)
    assert DiTTrainConfig.steps == GeneratorSettings.steps and TrainConfig.lr == ClassifierSettings.lr
    probe = "import flows.cli, sys; print(sorted(m for m in ('torch', 'pandas', 'duckdb') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout.strip() == "[]"  # the CLI loads none of them to read its settings
