"""Meta-World evaluation: the report and its files, determinism, the scripted expert through the same
rollout (the harness counts success right), the command line, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

import pytest

from smolvla.apps.cli import main as cli_main
from smolvla.apps.cli import parse
from smolvla.config import FeatureType, PolicyFeature, SmolVLAConfig, preset
from smolvla.envs.metaworld import EVAL_SEED_BASE
from smolvla.errors import SmolVLAError
from smolvla.eval import EvalConfig, evaluate, print_table
from smolvla.eval.metaworld import MAX_EPISODE_STEPS, EvalPipelineConfig
from tests.conftest import save_checkpoint

pytest.importorskip("metaworld")
av = pytest.importorskip("av")
pytest.importorskip("matplotlib")

TASKS = ("reach-v3", "drawer-close-v3")
CAMERA = "observation.images.camera1"


def micro_config(cameras: tuple[str, ...] = (CAMERA,)) -> SmolVLAConfig:
    inputs = {k: PolicyFeature(FeatureType.VISUAL, (3, 32, 32)) for k in cameras}
    return dataclasses.replace(
        preset("micro"),
        input_features={**inputs, "observation.state": PolicyFeature(FeatureType.STATE, (4,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
        resize_imgs_with_padding=(16, 16),
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(micro_config(), tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def run(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalConfig, dict]:
    out = tmp_path_factory.mktemp("eval")
    cfg = EvalConfig(ckpt, TASKS, out, n_episodes=2, max_episode_steps=30, workers=2)
    return cfg, evaluate(cfg, progress=False)


def decode(path: Path) -> list:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


# -- a micro policy, end to end ----------------------------------------------------------------------


def test_report_structure(run: tuple[EvalConfig, dict]) -> None:
    _, report = run
    assert list(report["tasks"]) == list(TASKS)
    assert report["seeds"] == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1]
    assert report["policy"]["camera"] == CAMERA and report["policy"]["image_size"] == 32
    assert report["policy"]["n_action_steps"] == 4 and report["policy"]["num_steps"] == 3
    for task, r in report["tasks"].items():
        assert r["bucket"] == "easy" and r["n_episodes"] == 2
        assert 0.0 <= r["success_rate"] <= 1.0
        assert [e["seed"] for e in r["episodes"]] == report["seeds"]
        for e in r["episodes"]:
            assert isinstance(e["success"], bool), task
            assert 1 <= e["steps"] <= 30
            assert e["steps"] == 30 or e["success"]  # an episode ends early only at success
        ok = [e["steps"] for e in r["episodes"] if e["success"]]
        assert r["successes"] == len(ok) and r["success_rate"] == len(ok) / 2
    assert list(report["buckets"]) == ["easy"]  # only the buckets evaluated
    rates = [r["success_rate"] for r in report["tasks"].values()]
    assert report["overall"]["success_rate"] == pytest.approx(sum(rates) / 2)
    assert report["overall"]["n_episodes"] == 4
    assert report["config"]["max_episode_steps"] == 30 and report["config"]["tasks"] == list(TASKS)
    assert report["wall_seconds"] > 0 and report["policy_steps_per_second"] > 0


def test_files_are_written_and_decode(run: tuple[EvalConfig, dict]) -> None:
    cfg, report = run
    assert json.loads((cfg.output_dir / "eval_report.json").read_text()) == report
    assert (cfg.output_dir / "success_by_task.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for task, r in report["tasks"].items():
        path = cfg.output_dir / "videos" / f"{task}.mp4"
        assert r["video"] == str(path)
        frames = decode(path)
        steps = r["episodes"][0]["steps"]
        assert len(frames) >= steps + 1  # every observation of the first episode, then the last one held
        h, w, _ = frames[0].shape
        assert min(h, w) >= 256


def test_same_seeds_same_episodes(ckpt: Path, run: tuple[EvalConfig, dict], tmp_path: Path) -> None:
    """Twice, through the command line, with one worker instead of two: episodes are a function of
    (policy, task, seed), not of which worker ran them."""
    _, first = run
    argv = [
        f"--policy.path={ckpt}",
        "--env.type=metaworld",
        f"--env.task={','.join(TASKS)}",
        "--eval.n_episodes=2",
        "--env.max_episode_steps=30",
        "--eval.workers=1",
        "--eval.videos=false",
        f"--output_dir={tmp_path}",
    ]
    assert cli_main(["eval", *argv]) == 0
    second = json.loads((tmp_path / "eval_report.json").read_text())
    assert not (tmp_path / "videos").exists()
    for task in TASKS:
        a, b = first["tasks"][task]["episodes"], second["tasks"][task]["episodes"]
        key = [(e["seed"], e["success"], e["steps"], e["sum_reward"]) for e in a]
        assert key == [(e["seed"], e["success"], e["steps"], e["sum_reward"]) for e in b], task
        assert a[0]["sum_reward"] != a[1]["sum_reward"]  # the seeds do change the episode


def test_print_table(run: tuple[EvalConfig, dict], capsys: pytest.CaptureFixture) -> None:
    print_table(run[1])
    out = capsys.readouterr().out
    assert "reach-v3" in out and "drawer-close-v3" in out and "easy" in out and "overall" in out


# -- the scripted expert through the same rollout -----------------------------------------------------


def test_expert_succeeds(tmp_path: Path) -> None:
    cfg = EvalConfig(None, TASKS, tmp_path, n_episodes=5, image_size=32, policy_type="expert", workers=2)
    report = evaluate(cfg, progress=False)
    for task, r in report["tasks"].items():
        assert r["success_rate"] >= 0.9, (task, r["episodes"])
        assert r["mean_steps_success"] < MAX_EPISODE_STEPS
    assert report["overall"]["success_rate"] >= 0.9
    assert len(decode(tmp_path / "videos" / "reach-v3.mp4")) > 1


# -- bad input -----------------------------------------------------------------------------------------


def test_missing_policy_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        evaluate(EvalConfig(tmp_path / "missing", TASKS, tmp_path / "out"), progress=False)


def test_checkpoint_without_processors(tmp_path: Path) -> None:
    path = save_checkpoint(micro_config(), tmp_path / "ckpt", processors=False)
    with pytest.raises(FileNotFoundError, match=r"policy_preprocessor\.json.*make_pre_post_processors"):
        evaluate(EvalConfig(path, TASKS, tmp_path / "out"), progress=False)


def test_two_cameras_are_refused(tmp_path: Path) -> None:
    path = save_checkpoint(micro_config((CAMERA, "observation.images.wrist")), tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"observation.images.wrist.*env gives one"):
        evaluate(EvalConfig(path, TASKS, tmp_path / "out"), progress=False)


def test_wrong_state_width_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(preset("micro"), tmp_path / "ckpt")  # state (3,), action (2,)
    with pytest.raises(ValueError, match=r"observation.state.*\(3,\), expected \(4,\)"):
        evaluate(EvalConfig(path, TASKS, tmp_path / "out"), progress=False)


def test_n_action_steps_above_chunk_size(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"n_action_steps.*chunk_size"):
        evaluate(EvalConfig(ckpt, TASKS, tmp_path, n_action_steps=5), progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tasks": ("reach-v4",)}, "did you mean 'reach-v3'"),
        ({"tasks": ()}, "tasks"),
        ({"tasks": ("reach-v3", "reach-v3")}, "more than once"),
        ({"n_episodes": 0}, "n_episodes: got 0"),
        ({"workers": 0}, "workers: got 0"),
        ({"max_episode_steps": -1}, "max_episode_steps"),
        ({"num_steps": 0}, "num_steps"),
        ({"seed": -1}, "seed"),
        ({"policy_type": "diffusion"}, "policy_type"),
        ({"policy_path": None}, "policy_path"),
    ],
)
def test_bad_config(kwargs: dict, match: str, tmp_path: Path) -> None:
    base = {"policy_path": "ckpt", "tasks": TASKS, "output_dir": tmp_path}
    with pytest.raises(ValueError, match=match):
        EvalConfig(**{**base, **kwargs})


def test_tasks_from_a_spec(tmp_path: Path) -> None:
    cfg = EvalConfig("ckpt", "reach-v3,hard", tmp_path)
    assert cfg.tasks[0] == "reach-v3" and len(cfg.tasks) == 7


# -- the command line ------------------------------------------------------------------------------


def eval_config(argv: list[str]) -> EvalConfig:
    command, pipeline = parse(["eval", *argv])
    assert command == "eval" and isinstance(pipeline, EvalPipelineConfig)
    return pipeline.eval_config()


def test_flags_map_onto_the_config() -> None:
    cfg = eval_config(
        [
            "--policy.path=ckpt",
            "--env.type=metaworld",
            "--env.task=very_hard",
            "--eval.n_episodes",
            "3",
            "--seed=7",
            "--policy.n_action_steps=2",
            "--policy.num_steps=5",
            "--output_dir=out",
        ]
    )
    assert cfg.tasks[0] == "shelf-place-v3" and len(cfg.tasks) == 5
    assert (cfg.n_episodes, cfg.seed, cfg.n_action_steps, cfg.num_steps) == (3, 7, 2, 5)
    assert cfg.output_dir == Path("out") and cfg.max_episode_steps == MAX_EPISODE_STEPS


def test_old_spellings_still_work_with_a_deprecation_line(capsys: pytest.CaptureFixture) -> None:
    cfg = eval_config(["--policy.path=x", "--env.difficulty=easy", "--eval.max_episode_steps=9"])
    assert len(cfg.tasks) > 1 and cfg.max_episode_steps == 9
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "smolvla eval: --env.difficulty is deprecated, use --env.task=...",
        "smolvla eval: --eval.max_episode_steps is deprecated, use --env.max_episode_steps=...",
    ]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--eval.n_episode=3"], r"unknown flag --eval.n_episode \(did you mean --eval.n_episodes\?\)"),
        (["--policy.path=x", "--env.type=libero", "--env.task=reach-v3"], "env.type: got 'libero'"),
        (["--policy.path=x", "--env.task=trivial"], "trivial"),
        (["--policy.path=x", "--env.task=reach-v3", "--seed=one"], "seed"),
        (["--policy.path=x"], "--env.task is required"),
        (["--env.task=reach-v3"], "--policy.path: missing"),
        (["reach-v3"], "unexpected argument 'reach-v3'"),
    ],
)
def test_bad_flags(argv: list[str], match: str) -> None:
    with pytest.raises(SmolVLAError, match=match):
        eval_config(argv)


def test_bad_flags_are_one_line_with_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["eval", "--policy.path=x", "--env.task=reach-v3", "--eval.n_episodes=many"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smolvla eval: error:") and "n_episodes" in err and len(err.splitlines()) == 1


def test_a_worker_error_reaches_the_caller(ckpt: Path, tmp_path: Path) -> None:
    """The checks in the main process pass; the worker fails to load the weights and says why."""
    import shutil

    from smolvla.eval import EvalError

    bad = Path(shutil.copytree(ckpt, tmp_path / "bad"))
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(EvalError, match=r"eval worker failed: CheckpointError: .*model\.safetensors"):
        evaluate(EvalConfig(bad, ("reach-v3",), tmp_path / "out", n_episodes=1), progress=False)
