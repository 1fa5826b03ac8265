"""Training runs killed at the worst moments (a real SIGKILL of a child process), then rerun or resumed:
no dead end, nothing a person would want is lost, the resumed run equals one never interrupted."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import smolvla
from smolvla.apps.cli import main, parse
from smolvla.errors import SmolVLAError
from smolvla.train import TrainingError, train
from tests.data import synth

REPO = Path(__file__).resolve().parents[2]
FLAGS = [
    "--policy.type=smolvla",
    "--policy.preset=micro",
    "--batch_size=4",
    "--num_workers=0",
    "--seed=5",
    "--precision=fp32",
    "--steps=4",
    "--save_freq=2",
    "--log_freq=1",
]

# The child trains with one function wrapped to SIGKILL itself at a chosen point: a kill -9 landing
# exactly there, every time (a timer would land anywhere, and the test would test nothing in particular).
CHILD = """
import os, signal, sys
import torch
torch.set_num_threads(1)  # as the test's own runs: float sums then agree to the bit across processes
from smolvla.apps.cli import parse
from smolvla.train import loop, state

where, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if where == "checkpoint":  # checkpoint `at` half written: its weights on disk, its optimizer state not
    save_optimizer = state.save_optimizer
    def half(opt, folder):
        if folder.parent.name == f".tmp-{at:06d}":
            die()
        save_optimizer(opt, folder)
    state.save_optimizer = half
else:  # right after step `at` is logged
    log = loop._Logger.log
    def logged(self, rec):
        log(self, rec)
        if rec["step"] == at:
            die()
    loop._Logger.log = logged
loop.train(parse(["train", *argv])[1], progress=False)
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Every run here, in this process or the killed child, on one intra-op thread: a run resumed on
    another thread count than it started sums floats in another order (and another test may have left
    this process on any count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "tiny"
    synth.write(root, [10, 9, 11], synth.features(size=16, cams=("camera1",)))
    return root


def argv(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [f"--dataset.repo_id={dataset}", f"--output_dir={out}", *FLAGS, *extra]


def run(dataset: Path, out: Path, *extra: str) -> Path:
    return train(parse(["train", *argv(dataset, out, *extra)])[1], progress=False)


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory) -> Path:
    """The run never interrupted."""
    return run(dataset, tmp_path_factory.mktemp("straight") / "run")


def killed(dataset: Path, out: Path, where: str, at: int) -> None:
    # the child runs the smolvla this test imported (the checkout under test), and finds tests.data
    src = Path(smolvla.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{REPO}"}
    cmd = [sys.executable, "-c", CHILD, where, str(at), *argv(dataset, out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def resume(out: Path, *extra: str) -> Path:
    """`smolvla train --output_dir=OUT --resume=true`: the run's flags come from its checkpoint."""
    return train(parse(["train", f"--output_dir={out}", "--resume=true", *extra])[1], progress=False)


def steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = (
        load_file(o / "checkpoints" / "000004" / "pretrained_model" / "model.safetensors") for o in (a, b)
    )
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])][:5]
    ra, rb = ([json.loads(x) for x in (o / "metrics.jsonl").read_text().splitlines()] for o in (a, b))
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in ra] == [
        (r["step"], r["loss"], r["grad_norm"]) for r in rb
    ]


@pytest.mark.parametrize("where,at", [("log", 1), ("checkpoint", 2)], ids=["before", "during"])
def test_killed_before_its_first_checkpoint_a_rerun_starts_over(
    dataset, straight, tmp_path, where, at, caplog
):
    # the warning is asserted below: its logger and pytest's capture handler both at WARNING, whatever
    # level an earlier test's library left the capture at
    caplog.set_level(logging.WARNING, logger="smolvla.train")
    out = tmp_path / "run"
    killed(dataset, out, where, at)
    assert not (out / "checkpoints" / "last").exists() and (out / "metrics.jsonl").is_file()
    # --resume=true has nothing to resume and says what to do, naming the folder (from the command
    # line, with the run's flags from nowhere, and with all of them given)
    for attempt in (
        lambda: resume(out),
        lambda: train(parse(["train", *argv(dataset, out, "--resume=true")])[1], progress=False),
    ):
        with pytest.raises(SmolVLAError, match=rf"{out} holds no checkpoint .* without --resume=true"):
            attempt()
    # the same command again starts over in that folder, saying what it clears, and is the straight run
    run(dataset, out)
    assert "starting over, clearing" in caplog.text and "metrics.jsonl" in caplog.text
    assert steps_logged(out) == [1, 2, 3, 4]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert_same_run(straight, out)


def test_killed_during_a_later_checkpoint_resume_is_exact_and_logs_each_step_once(
    dataset, straight, tmp_path
):
    out = tmp_path / "run"
    killed(dataset, out, "checkpoint", 4)  # steps 3 and 4 logged, checkpoint 4 half written
    assert (out / "checkpoints" / "last").resolve().name == "000002"
    assert steps_logged(out) == [1, 2, 3, 4]
    # a rerun must not clear a run that has a checkpoint
    with pytest.raises(TrainingError, match="already holds a run; pass --resume=true"):
        run(dataset, out)
    resume(out)
    assert steps_logged(out) == [1, 2, 3, 4]  # 3 and 4 once, from the resumed run
    assert_same_run(straight, out)
    png = out / "training_curves.png"
    assert png.stat().st_size > 1000 and png.stat().st_mtime >= (out / "metrics.jsonl").stat().st_mtime


def test_resume_with_steps_not_past_the_checkpoint_says_so(dataset, tmp_path, capsys):
    out = run(dataset, tmp_path / "run", "--steps=2")
    # the finished run's own --steps (from its train_config.json), and a smaller one
    for extra, steps in (((), 2), (("--steps=1",), 1)):
        with pytest.raises(TrainingError, match=rf"--steps={steps}: the run in {out} is at step 2 already"):
            resume(out, *extra)
    code = main(["train", f"--output_dir={out}", "--resume=true"])
    err = capsys.readouterr().err.strip()
    assert (
        code == 2
        and len(err.splitlines()) == 1
        and "pass --steps greater than 2 to train further, e.g. --steps=4" in err
    )


@pytest.mark.parametrize("damage", ["dangling", "junk"])
def test_a_broken_last_pointer_resumes_from_the_newest_complete_checkpoint(dataset, tmp_path, damage):
    out = run(dataset, tmp_path / "run", "--steps=2", "--save_freq=1")
    last = out / "checkpoints" / "last"
    last.unlink()
    if damage == "dangling":
        last.symlink_to("000009")
    else:
        last.write_text("garbage")
    with pytest.raises(TrainingError, match="already holds a run"):  # never cleared
        run(dataset, out, "--steps=2")
    resume(out, "--steps=3")
    assert last.resolve().name == "000003" and steps_logged(out) == [1, 2, 3]
    assert (out / "checkpoints" / "000001").is_dir()


def test_a_rerun_clears_only_a_training_runs_own_files(dataset, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / ".tmp-000002").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(TrainingError, match=rf"--output_dir {out} holds no checkpoint but .*\(notes.txt\)"):
        run(dataset, out)
    assert (out / "notes.txt").read_text() == "my notes" and (out / "metrics.jsonl").is_file()


@pytest.mark.parametrize(
    "name", ["training_state/optimizer_state.safetensors", "pretrained_model/model.safetensors"]
)
def test_a_truncated_checkpoint_file_names_the_file_and_the_way_back(dataset, tmp_path, name):
    out = run(dataset, tmp_path / "run", "--steps=2", "--save_freq=1")
    damaged = out / "checkpoints" / "000002" / name
    damaged.write_bytes(damaged.read_bytes()[:100])
    last = out / "checkpoints" / "last"
    with pytest.raises(TrainingError, match=rf"{damaged}: not .*ln -sfn 000001 {last}\)") as e:
        resume(out, "--steps=3")
    assert "\n" not in str(e.value)
    # following the message works
    last.unlink()
    last.symlink_to("000001")
    resume(out, "--steps=3")
    assert last.resolve().name == "000003" and steps_logged(out) == [1, 2, 3]
