"""Every command from the registry: `--help` lists each config field as a flag with its default and
meaning, `--config_path` works, and the command lines in the docs parse."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest

from smolvla.apps import cli, flags
from smolvla.train.config import DatasetConfig, TrainConfig, TrainPolicyConfig

ROOT = Path(__file__).resolve().parents[2]


def leaves() -> list[tuple[str, cli.Command]]:
    out = []
    for cmd in cli.commands():
        subs = cmd.subcommands or (cmd,)
        out += [(f"{cmd.name} {s.name}" if cmd.subcommands else cmd.name, s) for s in subs]
    return out


def groups() -> list[str]:
    return [c.name for c in cli.commands() if c.subcommands]


def test_top_level_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in cli.commands():
        assert re.search(rf"^  {re.escape(cmd.name)} +\S", out, re.M), cmd.name


@pytest.mark.parametrize("group", groups())
def test_group_help_lists_its_subcommands(group, capsys):
    assert cli.main([group, "--help"]) == 0
    out = capsys.readouterr().out
    for sub in next(c for c in cli.commands() if c.name == group).subcommands:
        assert re.search(rf"^  {re.escape(sub.name)} +\S", out, re.M), sub.name


@pytest.mark.parametrize(("name", "cmd"), leaves(), ids=[n for n, _ in leaves()])
def test_help_lists_every_field_with_default_and_meaning(name, cmd, capsys):
    assert cli.main([*name.split(), "--help"]) == 0
    out = capsys.readouterr().out
    # argparse wraps help text; one line per flag makes the flag's own text checkable
    entries = re.split(r"\n  (?=--)", out.split("options:", 1)[1])
    described = {}
    for entry in entries:
        m = re.match(r"--([\w.]+)", entry)
        if m:
            described[m.group(1)] = " ".join(entry.split())
    for flag in flags.flag_types(cmd.config):
        assert flag in described, f"smolvla {name} --help does not list --{flag}"
        text = described[flag]
        assert "(default:" in text, f"--{flag}: no default in its help"
        meaning = text.split(" ", 2)[2].split("(default:")[0].strip() if text.count(" ") >= 2 else ""
        assert meaning, f"smolvla {name}: --{flag} has no help text (comment the config field)"


@pytest.mark.parametrize(("name", "cmd"), leaves(), ids=[n for n, _ in leaves()])
def test_config_path_then_flags(name, cmd, tmp_path):
    """Every command reads --config_path=FILE.json; flags given after it win."""
    import draccus

    _, default = _parse_or_skip([*name.split()])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(draccus.encode(default)))
    _, again = cli.parse([*name.split(), f"--config_path={path}"])
    assert again == default
    int_flags = [f for f, t in flags.flag_types(cmd.config).items() if t is int]
    if int_flags:
        _, changed = cli.parse([*name.split(), f"--config_path={path}", f"--{int_flags[0]}=7"])
        value = changed
        for part in int_flags[0].split("."):
            value = getattr(value, part)
        assert value == 7


def _parse_or_skip(argv: list[str]):
    """Train cannot build without a dataset and a policy: give it the two it requires."""
    if argv == ["train"]:
        argv = [*argv, "--dataset.repo_id=data", "--policy.preset=micro"]
    return cli.parse(argv)


# -- the docs --------------------------------------------------------------------------------------


def doc_commands() -> list[tuple[str, str]]:
    """(file:line, command line) of every `smolvla ...` line in the fenced code blocks of the docs."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        if not path.is_file():
            continue
        in_block, pending, start = False, "", 0
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_block, pending = not in_block, ""
                continue
            if not in_block:
                continue
            text = (pending + " " + line.strip()) if pending else line.strip()
            start = start if pending else n
            if text.endswith("\\"):
                pending = text[:-1]
                continue
            pending = ""
            words = text.split()
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # MUJOCO_GL=egl ...
                words.pop(0)
            if words[:1] == ["torchrun"] and "smolvla.apps.cli" in words:  # the same command under DDP
                words = ["smolvla", *words[words.index("smolvla.apps.cli") + 1 :]]
            if words[:1] == ["smolvla"] and "<" not in text:
                found.append((f"{path.relative_to(ROOT)}:{start}", " ".join(words)))
    return found


def _argv(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    for stop in (">", ">>", "|", "&&", ";", "2>&1"):
        if stop in words:
            words = words[: words.index(stop)]
    return words[1:]


def test_the_docs_have_command_lines():
    assert len(doc_commands()) >= 5  # the extraction works (README's commands)


@pytest.mark.parametrize(("where", "line"), doc_commands(), ids=[w for w, _ in doc_commands()])
def test_doc_command_lines_parse(where, line, tmp_path, monkeypatch, capsys):
    """Each documented command builds its config (nothing runs): a wrong flag in the docs fails here.
    Every page uses the current spelling: a deprecated one fails too."""
    argv = _argv(line)
    if "--help" in argv or "-h" in argv:
        assert cli.main(argv) == 0
        return
    monkeypatch.chdir(tmp_path)
    given = dict(a[2:].partition("=")[::2] for a in argv if a.startswith("--"))
    if given.get("resume") == "true":
        # resuming reads the run's own config from its last checkpoint: give the doc's run one
        run = given.get("output_dir") or given["config_path"].split("/checkpoints/")[0]
        saved = Path(given.get("config_path") or f"{run}/checkpoints/last/pretrained_model/train_config.json")
        saved.parent.mkdir(parents=True)
        cfg = TrainConfig(dataset=DatasetConfig(repo_id="data"), policy=TrainPolicyConfig(preset="tiny"))
        saved.write_text(json.dumps(dataclasses.replace(cfg, output_dir=run).to_dict()))
    command, config = cli.parse(argv)
    assert dataclasses.is_dataclass(config), (where, command)
    assert "deprecated" not in capsys.readouterr().err, f"{where}: {line}"


def test_a_wrong_flag_in_a_doc_line_fails():
    with pytest.raises(flags.UsageError, match="unknown flag --stepz"):
        cli.parse(_argv("smolvla train --dataset.repo_id=x --policy.preset=tiny --stepz=3  # comment"))


SERVE_OLD = ["--max-message-mb", "8", "--idle-timeout=5", "--rtc", "--log-level=DEBUG"]
SERVE_NEW = ["--max_message_mb=8", "--idle_timeout=5", "--rtc.enabled=true", "--log_level=DEBUG"]
RECORD_OLD = ["--difficulty", "easy", "--episodes", "3", "--image-size", "32", "--output", "d"]
RECORD_OLD += ["--workers", "1", "--max-episode-steps", "50", "--video-codec", "h264"]
RECORD_NEW = ["--env.task=easy", "--dataset.num_episodes=3", "--env.image_size=32", "--dataset.root=d"]
RECORD_NEW += ["--num_workers=1", "--env.max_episode_steps=50", "--dataset.video_codec=h264"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (["serve", "--policy.path=p", *SERVE_OLD], ["serve", "--policy.path=p", *SERVE_NEW]),
        (["record", "metaworld", *RECORD_OLD], ["record", "metaworld", *RECORD_NEW]),
        (
            ["deploy", "sim", "--policy.path=p", "--env.task=reach-v3", "--episodes", "2", "--video"],
            ["deploy", "sim", "--policy.path=p", "--env.task=reach-v3", "--n_episodes=2", "--video=true"],
        ),
        (["info", "ckpt", "--json"], ["info", "--policy.path=ckpt", "--json=true"]),
        (
            ["dataset", "show", "d", "--episode", "2", "--output", "e.mp4"],
            ["dataset", "show", "--dataset.repo_id=d", "--episode_index=2", "--output_path=e.mp4"],
        ),
    ],
)
def test_old_spellings_give_the_same_config_with_one_line_each(old, new, capsys):
    assert cli.parse(old) == cli.parse(new)
    name = " ".join(old[:2]) if old[0] in groups() else old[0]
    err = capsys.readouterr().err.splitlines()
    assert err and all(line.startswith(f"smolvla {name}: ") and "deprecated, use --" in line for line in err)


def test_a_run_started_before_the_draccus_flags_still_resumes(tmp_path, capsys):
    """train_config.json as the flat TrainConfig wrote it (policy_path, grad_accum_steps, wandb: bool,
    eval.max_episode_steps) reads as today's config, saying what moved; the file is left as it was."""
    old = {
        "dataset": {"repo_id": "data/mw", "episodes": None, "augment": False, "augment_max_shift": None,
                    "augment_crop_scale": None},
        "policy_path": None, "policy_preset": "micro", "policy_overrides": {"n_action_steps": 2},
        "rename_map": {}, "env": {"type": None, "task": None},
        "eval": {"n_episodes": 3, "workers": 1, "max_episode_steps": 50},
        "output_dir": str(tmp_path), "batch_size": 4, "steps": 10, "grad_accum_steps": 2, "save_freq": 5,
        "log_freq": 1, "eval_freq": 0, "seed": 7, "num_workers": 0, "device": "cpu", "precision": "fp32",
        "resume": False, "wandb": False,
    }  # fmt: skip
    saved = tmp_path / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps(old))
    _, cfg = cli.parse(["train", f"--output_dir={tmp_path}", "--resume=true", "--steps=20"])
    assert (cfg.policy.preset, cfg.policy.device, cfg.policy.overrides) == (
        "micro",
        "cpu",
        {"n_action_steps": 2},
    )
    assert (cfg.gradient_accumulation_steps, cfg.wandb.enable, cfg.env.max_episode_steps) == (2, False, 50)
    assert (cfg.eval.n_episodes, cfg.seed, cfg.steps, cfg.resume) == (3, 7, 20, True)
    err = capsys.readouterr().err
    assert "has an older shape" in err and "grad_accum_steps -> gradient_accumulation_steps" in err
    assert json.loads(saved.read_text()) == old
    assert TrainConfig.from_dict(old) == dataclasses.replace(cfg, steps=10, resume=False)
    assert TrainConfig.upgrade_dict(cfg.to_dict()) == (cfg.to_dict(), [])  # today's shape: untouched
