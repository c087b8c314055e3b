"""Nothing lost, nothing hangs: bit-exact resume after a killed rank, dead and stalled ranks,
the NaN guard, atomic checkpoints, refused resumes, export, and bad input before any start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from core import checkpoint
from core.export import export
from core.runtime import prepare_models
from tests.conftest import ROOT
from tests.core.toy import ToyTask


def train(
    method: str, run_dir, *args: str, fault: str = "", timeout: int = 240
) -> subprocess.CompletedProcess:
    """``python -m training METHOD *args run_dir=...``; the toy method is a plugin, ``fault``
    the ``TSPIPE_FAULT`` hook."""
    env = {**os.environ, "TSPIPE_PLUGINS": "tests.methods.toy_method", "TSPIPE_FAULT": fault}
    return subprocess.run(
        [sys.executable, "-m", "training", method, *args, f"run_dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def final_weights(run_dir, step):
    return checkpoint.merged_weights(checkpoint.step_folder(run_dir, step))


def assert_bit_identical(a, b):
    for kind in ("student", "teacher"):
        assert a[kind].keys() == b[kind].keys()
        for key in a[kind]:
            assert torch.equal(a[kind][key], b[kind][key]), (kind, key)


def leftover_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


CASES = [
    # (method module, schedule, extra args): tspipe with an EMA teacher, gpipe with a frozen one
    ("byol", "tspipe", ["--preset", "tiny", "--microbatches", "2"]),
    ("toy", "gpipe", ["--microbatches", "2", "teacher=frozen"]),
]


@pytest.mark.dist
@pytest.mark.parametrize("method, schedule, extra", CASES, ids=["tspipe-ema", "gpipe-frozen"])
def test_killed_rank_then_resume_is_bit_identical(tmp_path, method, schedule, extra):
    common = [*extra, "--schedule", schedule, "--stages", "2", "steps=6", "checkpoint_every=2"]
    whole = train(method, tmp_path / "whole", *common)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = train(method, tmp_path / "cut", *common, fault="kill:3:1")
    assert killed.returncode != 0
    died = json.loads((tmp_path / "cut" / "fault.json").read_text())["time"]
    assert time.time() - died < 60  # from the death to the launcher's exit
    err = killed.stderr
    assert "rank 1 of 2 was killed by SIGKILL; stopped the other ranks" in err
    assert "rank 1: step 2 action 1OPT@2" in err  # where it was
    assert f"last checkpoint: {tmp_path / 'cut' / 'checkpoints' / 'step0000002'}" in err
    assert not leftover_processes(str(tmp_path / "cut")), "zombie or orphan processes"
    assert checkpoint.latest(tmp_path / "cut").name == "step0000002"

    resumed = train(method, tmp_path / "cut", *common, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "cut" / "row.json").read_text())["resumed_from"] == 2
    assert_bit_identical(final_weights(tmp_path / "whole", 6), final_weights(tmp_path / "cut", 6))


def torchrun(run_dir, *args: str, fault: str = "", nproc: int = 4, timeout: int = 300):
    """``torchrun --standalone --nproc-per-node N --max-restarts 1 -m core.rank training ...``."""
    env = {**os.environ, "TSPIPE_FAULT": fault, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    command += ["--max-restarts", "1", "--monitor-interval", "0.5", "-m", "core.rank", "training"]
    return subprocess.run(
        [*command, *args, f"run_dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.dist
@pytest.mark.slow
def test_torchrun_restarts_a_killed_group_which_resumes_by_itself_bit_identical(tmp_path):
    # 4 processes and 2 stages: dp 2 from the world size; rank 3 (stage 1 of replica 1) dies
    # at step 3; torchrun restarts the group, which resumes from the checkpoint of step 2
    common = ["byol", "--preset", "tiny", "--microbatches", "2", "--schedule", "tspipe", "--stages", "2"]
    common += ["steps=6", "checkpoint_every=2", "resume=auto"]
    whole = torchrun(tmp_path / "whole", *common)
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = torchrun(tmp_path / "cut", *common, fault="kill:3:3")
    assert cut.returncode == 0, cut.stderr[-3000:]
    assert (tmp_path / "cut" / "fault.json").exists()  # the first attempt did die
    row = json.loads((tmp_path / "cut" / "row.json").read_text())
    assert row["resumed_from"] == 2 and row["dp"] == 2 and row["stages"] == 2
    assert_bit_identical(final_weights(tmp_path / "whole", 6), final_weights(tmp_path / "cut", 6))


def test_a_world_that_does_not_fit_the_stages_is_refused_with_one_line(tmp_path, monkeypatch, capsys):
    from training.cli import main

    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun --nproc-per-node 3 would
    assert (
        main(["byol", "--preset", "tiny", "--schedule", "gpipe", "--stages", "2", f"run_dir={tmp_path}"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the job has 3 processes" in err


@pytest.mark.dist
def test_a_two_batch_lookahead_resumes_bit_identical(tmp_path):
    # a teacher two versions stale: the checkpoint of step 2 holds versions 0 and 1, which the
    # resumed run's prologue (the teacher forwards of batches 2 and 3) reads
    common = ["--microbatches", "2", "--schedule", "tspipe", "--stages", "2", "steps=6"]
    common += ["checkpoint_every=2", "teacher_lookahead=2"]
    whole = train("byol", tmp_path / "whole", "--preset", "tiny", *common)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = train("byol", tmp_path / "cut", "--preset", "tiny", *common, fault="kill:3:1")
    assert killed.returncode != 0
    resumed = train("byol", tmp_path / "cut", "--preset", "tiny", *common, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_bit_identical(final_weights(tmp_path / "whole", 6), final_weights(tmp_path / "cut", 6))
    other = train(
        "byol", tmp_path / "cut", "--preset", "tiny", *common[:-1], "teacher_lookahead=1", "resume=auto"
    )
    assert other.returncode != 0 and "teacher_lookahead" in other.stderr


@pytest.mark.dist
def test_a_stalled_rank_times_out_and_stops_the_job(tmp_path):
    started = time.monotonic()
    proc = train(
        "toy",
        tmp_path,
        "--schedule",
        "gpipe",
        "--stages",
        "2",
        "--microbatches",
        "2",
        "steps=6",
        "timeout_s=8",
        fault="hang:2:0",
    )
    assert proc.returncode != 0
    assert time.monotonic() - started < 60
    assert "did not arrive within 8 s" in proc.stderr and "rank 1" in proc.stderr
    assert not leftover_processes(str(tmp_path))


@pytest.mark.dist
def test_nan_guard_stops_without_touching_the_last_checkpoint(tmp_path):
    proc = train(
        "toy",
        tmp_path,
        "--schedule",
        "tspipe",
        "--stages",
        "2",
        "--microbatches",
        "2",
        "steps=6",
        "checkpoint_every=2",
        fault="nan:3",
    )
    assert proc.returncode != 0
    assert "non-finite" in proc.stderr and "at step 3" in proc.stderr
    assert checkpoint.latest(tmp_path).name == "step0000002"
    for value in checkpoint.merged_weights(checkpoint.latest(tmp_path))["student"].values():
        assert torch.isfinite(value.double()).all()


@pytest.mark.dist
def test_nan_guard_can_skip_and_count(tmp_path):
    proc = train(
        "toy",
        tmp_path,
        "--schedule",
        "tspipe",
        "--stages",
        "2",
        "--microbatches",
        "2",
        "steps=5",
        "nan_guard=skip",
        fault="nan:2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "row.json").read_text())
    assert row["skipped_steps"] == 1
    weights = final_weights(tmp_path, 5)["student"]
    assert all(torch.isfinite(v.double()).all() for v in weights.values())
    assert any(
        json.loads(line).get("skipped_steps") == 1
        for line in (tmp_path / "log.jsonl").read_text().splitlines()
    )


def test_a_crash_between_write_and_rename_leaves_no_corrupt_checkpoint(tmp_path, monkeypatch):
    good = checkpoint.save(tmp_path, 2, {"state": {"w": torch.ones(2)}}, {"world_size": 1})
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("rank0.pt"):
            raise KeyboardInterrupt("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 4, {"state": {"w": torch.zeros(2)}}, {"world_size": 1})
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (checkpoint.step_folder(tmp_path, 4) / "rank0.pt").exists()
    assert checkpoint.latest(tmp_path) == good
    assert torch.equal(checkpoint.load(good, 0)["state"]["w"], torch.ones(2))


def test_mismatched_resume_is_refused(tmp_path):
    proc = train("toy", tmp_path, "--schedule", "sequential", "--microbatches", "2", "steps=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = train("toy", tmp_path, "--schedule", "sequential", "--microbatches", "3", "resume=auto")
    assert again.returncode == 2
    assert "cannot resume" in again.stderr and "microbatches: checkpoint 2, now 3" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_export_loads_into_the_unpartitioned_model(tmp_path):
    proc = train("toy", tmp_path, "--schedule", "sequential", "--microbatches", "2", "steps=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = subprocess.run(
        [sys.executable, "-m", "core.export", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    student_blocks, teacher_blocks = prepare_models(ToyTask("ema", True, 2))
    student = nn.Sequential(*student_blocks)
    student.load_state_dict(torch.load(tmp_path / "export" / "student.pt", weights_only=True))
    teacher = nn.Sequential(*teacher_blocks)
    teacher.load_state_dict(torch.load(tmp_path / "export" / "teacher.pt", weights_only=True))
    merged = checkpoint.merged_weights(checkpoint.latest(tmp_path))
    assert all(torch.equal(student.state_dict()[k], merged["student"][k]) for k in merged["student"])
    with pytest.raises(FileNotFoundError):
        export(tmp_path / "nothing")


BAD = [
    (["nonsense=1"], "unknown config key 'nonsense'"),
    (["steps=two"], "steps=two: expected int"),
    (["--microbatches", "0"], "microbatches must be an integer >= 1"),
    (["--schedule", "gpipe", "--stages", "12"], "12 stages but the"),
    (["lr=-0.1"], "lr must be >= 0"),
    (["base_momentum=1.2"], r"base_momentum must lie in \[0, 1\]"),
    (["dataset=fashion_mnist", "data_dir=/no/such/folder"], "data folder /no/such/folder does not exist"),
    (["--schedule", "nope"], "unknown schedule 'nope'"),
    (["min_free_gb=1000000"], "GiB free under"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    import re

    proc = train("byol", tmp_path / "run", "--preset", "tiny", *args, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), proc.stderr


def test_a_bad_fault_hook_is_one_line_and_exit_2(tmp_path):
    proc = train("byol", tmp_path / "run", "--preset", "tiny", fault="explode:1", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: TSPIPE_FAULT must be"), proc.stderr


def test_an_unknown_method_or_preset_is_one_line_and_exit_2(tmp_path):
    for args, message in (
        (["nomethod"], "unknown method 'nomethod'"),
        (["byol", "--preset", "huge"], "unknown preset 'huge'"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "training", *args, f"run_dir={tmp_path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_wrong_data_files_are_refused(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"not an idx file at all")
    proc = train(
        "byol",
        tmp_path / "run",
        "--preset",
        "tiny",
        "dataset=fashion_mnist",
        f"data_dir={folder}",
    )
    assert proc.returncode == 2 and "unreadable Fashion-MNIST file" in proc.stderr


def test_an_unwritable_output_folder_is_refused(tmp_path):
    # a run folder under a plain file can be created by nobody, root included
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = train("byol", blocker / "run", "--preset", "tiny")
    assert proc.returncode == 2 and "is not writable" in proc.stderr, proc.stderr


def test_a_fault_strikes_the_first_attempt_only(monkeypatch):
    from training.faults import Faults

    assert Faults("kill:3:1").kind == "kill"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # a group torchrun restarted
    assert Faults("kill:3:1").kind == ""
