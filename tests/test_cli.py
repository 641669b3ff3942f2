import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from tests.imagefiles import NIH_HEADER, pattern, png_bytes, write_csv


@pytest.fixture
def small_nih(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(8):
        (images / f"{i}.png").write_bytes(png_bytes(pattern(i)))
        rows.append([f"{i}.png", ["Mass", "Effusion", "No Finding", "Hernia|Mass"][i % 4], 0, i, 40, "M", "PA"])
    rows.append(["missing.png", "Mass", 0, 99, 40, "M", "PA"])
    return write_csv(tmp_path / "Data_Entry_2017.csv", NIH_HEADER, rows), images


def test_ingest_then_info_json(small_nih, tmp_path, capsys):
    table, images = small_nih
    out = str(tmp_path / "ds")
    assert main(["ingest", "nih", str(table), str(images), "--out", out, "--size", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_written"] == 8 and report["quarantined"] == {"missing_file": 1}
    assert main(["info", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 8 and info["quarantined"] == 1 and info["classes"]["Mass"]["all"] == 4
    assert set(info["head"]) | set(info["tail"]) == set(info["classes"])


def test_ingest_defaults_to_tailforge_home(small_nih, tailforge_home, capsys):
    table, images = small_nih
    assert main(["ingest", "nih", str(table), str(images), "--tail", "Hernia"]) == 0
    assert (tailforge_home / "datasets" / "nih" / "dataset.json").exists()
    assert main(["info", str(tailforge_home / "datasets" / "nih")]) == 0
    text = capsys.readouterr().out
    assert "missing_file" in text and "Hernia" in text


def test_user_errors_are_one_line_with_status_2(tmp_path, capsys):
    bad = write_csv(tmp_path / "t.csv", ["Image Index"], [["a.png"]])
    assert main(["ingest", "nih", str(bad), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Finding Labels" in err and "Traceback" not in err
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "tailforge phantom" in capsys.readouterr().err


def test_console_script_is_installed(small_nih, tmp_path):
    table, images = small_nih
    exe = Path(sys.executable).with_name("tailforge")
    out = str(tmp_path / "ds")
    done = subprocess.run([str(exe), "ingest", "folder", str(table), str(images), "--out", out,
                           "--path-column", "Image Index", "--patient-column", "Patient ID", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows_written"] == 8


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`tailforge ... | head`: the pipe closes before the output is written; no BrokenPipe trace."""
    for command in (["config", "--reference"], ["config", "--json"]):  # more than a pipe buffer, and less
        child = subprocess.Popen([sys.executable, "-m", "flows.cli", *command], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
        child.stdout.close()  # the reader is gone before the first line
        _, err = child.communicate(timeout=120)
        assert child.returncode == 1 and b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()[-2000:]


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_stopped_command_says_so_in_one_line_and_records_it(tmp_path, stop, capsys):
    """SIGTERM (a scheduler, `kill`) and Ctrl-C end a command with one line, its run record
    "interrupted" (not "running" for good), no temp file, and the same command goes on after."""
    import signal
    import time

    out = tmp_path / "phantom"
    command = [sys.executable, "-m", "flows.cli", "phantom", "--n", "200000", "--size", "32", "--shard-rows", "64",
               "--out", str(out)]
    # SIGINT back to its default in the child: a test run started in the background by a
    # non-interactive shell ignores SIGINT, and a child would inherit that and never stop
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=Path(__file__).resolve().parents[1],
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("samples/part-*.parquet")) and time.monotonic() < deadline:  # working, past imports
            time.sleep(0.2)
        child.send_signal(getattr(signal, stop))
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:  # never leave a 200,000-image phantom running after a failure
            child.kill()
            child.wait()
    assert child.returncode == (143 if stop == "SIGTERM" else 130), err.decode()[-2000:]
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and ("stopped by SIGTERM" if stop == "SIGTERM" else "interrupted (Ctrl-C)") in lines[0]
    (record,) = [json.loads(p.read_text()) for p in out.glob("runs/*.json")]
    assert record["status"] == "interrupted"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    written = len(list(out.glob("samples/part-*.parquet")))
    assert main(["phantom", "--n", str(64 * written), "--size", "32", "--shard-rows", "64", "--out", str(out),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_written"] == 0  # the shards it finished are kept


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EROFS"])
def test_a_full_disk_is_one_line_and_leaves_no_partial_shard(tmp_path, monkeypatch, capsys, code):
    import errno
    import os

    from tasks import store

    def full(uri, data):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), uri)

    monkeypatch.setattr(store, "write_bytes_atomic", full)
    out = tmp_path / "phantom"
    assert main(["phantom", "--n", "20", "--size", "32", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and os.strerror(getattr(errno, code)) in err[0] and "run the same command again" in err[0]
    assert not list(out.glob("samples/*.parquet"))


def test_piped_output_is_not_wrapped_at_80_columns_and_a_slow_temporary_server_says_what_to_do():
    from flows.cli_errors import EPHEMERAL_TIMEOUT, user_message
    from flows.printers import stdout_console

    assert stdout_console().width >= 400  # pytest's stdout is not a terminal
    message = user_message(RuntimeError(EPHEMERAL_TIMEOUT + ". stderr: Traceback ... database is locked"))
    assert "--local-server" in message and "PREFECT_API_URL" in message and "Traceback" not in message


def test_settings_built_with_a_bad_value_are_one_line_naming_the_setting():
    """A settings dataclass built in code with a bad value (pydantic's multi-line report) reaches
    the user as one line: the class, the setting and what it accepts."""
    from pydantic import ValidationError

    from flows.cli_errors import user_message
    from flows.settings import KnowledgeSettings

    with pytest.raises(ValidationError) as error:
        KnowledgeSettings(judge="oracle", llm_retries="many")
    message = user_message(error.value)
    assert "\n" not in message and message.startswith("KnowledgeSettings: judge: must be one of rules, anthropic")
    assert "llm_retries: Input should be a valid integer" in message


def test_a_wrong_image_folder_stops_before_any_work(small_nih, tmp_path, capsys):
    """Issue 15: a wrong folder was a success with a quarantine row per image."""
    table, images = small_nih
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    out = tmp_path / "ds"
    assert main(["ingest", "nih", str(table), str(wrong), "--out", str(out), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "9 of 9 sampled image paths" in err and f"{wrong}/0.png" in err and "--allow-missing" in err
    assert not out.exists()  # nothing written: no rows, no lock file, no run record (issue 34), no folder
    assert main(["ingest", "nih", str(table), str(wrong), "--out", str(out), "--size", "32", "--allow-missing",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quarantined"] == {"missing_file": 9}
    # the folder fixed, the same --out: the images land and their old quarantine rows are retired
    assert main(["ingest", "nih", str(table), str(images), "--out", str(out), "--size", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_written"] == 8 and report["retired"] == 8
    assert main(["info", str(out), "--reasons", "--json"]) == 0
    assert [r["source_uri"] for r in json.loads(capsys.readouterr().out)] == ["missing.png"]  # truly missing
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quarantined"] == 1


def test_info_reasons_lists_each_quarantine_row_with_its_table_line(small_nih, tmp_path, capsys):
    table, images = small_nih
    out = str(tmp_path / "ds")
    assert main(["ingest", "nih", str(table), str(images), "--out", out, "--size", "32"]) == 0
    assert f"tailforge info {out} --reasons" in capsys.readouterr().out
    assert main(["info", out, "--reasons", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["reason_code"] == "missing_file" and row["source_uri"] == "missing.png" and row["row"] == 8
    assert main(["info", out, "--reasons"]) == 0
    shown = capsys.readouterr().out
    assert "missing_file" in shown and " 10 " in shown  # data row 8 (0-based) is line 10 of the file
    assert open(table).read().splitlines()[9].startswith("missing.png")


def _readme_commands() -> list[str]:
    """Every `tailforge ...` line of the bash blocks of the README and docs/, continuation lines joined."""
    root = Path(__file__).resolve().parents[1]
    readme = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    commands, in_bash, pending = [], False, ""
    for line in readme.splitlines():
        if line.startswith("```"):
            in_bash, pending = line.strip() == "```bash", ""
            continue
        if not in_bash:
            continue
        text = pending + line.split("  #")[0].split(" # ")[0].strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text.startswith("tailforge "):
            commands.append(text)
    return commands


def test_every_tailforge_command_in_the_readme_is_one_the_cli_takes():
    """The README's examples name commands and options that exist (options drift silently)."""
    import shlex

    from flows.cli import build_parser

    commands = _readme_commands()
    assert len(commands) >= 15
    for command in commands:
        args = shlex.split(command.replace("[", "").replace("]", "").replace("|", " "))[1:]
        args = args[:args.index(">")] if ">" in args else args  # the shell's redirection, not the command's
        args = [a for a in args if a not in ("--json", "--csv")] if "--json" in args and "--csv" in args else args
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            raise AssertionError(f"the README's `{command}` is not a valid command") from exc


RUNNABLE_HERE = ("tailforge ingest nih ../shared/", "tailforge ingest folder ../shared/", "tailforge phantom ",
                 "tailforge info ./.tailforge/datasets/nih1000", "tailforge plan ./.tailforge/datasets/nih1000",
                 "tailforge runs --root ./.tailforge")


@pytest.mark.realdata
def test_the_readme_commands_that_need_only_shared_data_run_as_written(tmp_path):
    """Issue 15: the README's examples must run as written. Those that need only ../shared/data
    (ingests, phantom, info, plan, runs) run here, from a folder beside a link to ../shared,
    exactly as the README prints them; the rest need CheXpert, MIMIC, S3 or a finished run."""
    import os
    import shlex

    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "nih1000").exists() or not (SHARED_DATA / "normals").exists():
        pytest.skip(f"{SHARED_DATA} is not here")
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    work = tmp_path / "work"
    work.mkdir()
    tailforge = str(Path(sys.executable).with_name("tailforge"))
    env = {**os.environ, "TAILFORGE_HOME": str(work / ".tailforge")}
    env.pop("PREFECT_API_URL", None)
    ran = 0
    for command in _readme_commands():
        if not command.startswith(RUNNABLE_HERE):
            continue
        done = subprocess.run([tailforge, *shlex.split(command)[1:]], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"`{command}` failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
        ran += 1
    assert ran == 7  # ingest nih, ingest folder, phantom, info, info --reasons, plan, runs
