"""The `smolvla` command: demo, info, and error output."""

from __future__ import annotations

import json

import pytest

from smolvla.apps.cli import main
from smolvla.processing import make_pre_post_processors
from tests.conftest import require_shared


def test_demo_prints_an_action_chunk(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "action chunk (16, 4)" in out and "pick up the red cube" in out


def test_demo_from_a_checkpoint(micro_policy, tmp_path, capsys):
    from smolvla.processing import unit_stats

    micro_policy.save_pretrained(tmp_path)
    pre, post = make_pre_post_processors(micro_policy.config, dataset_stats=unit_stats(micro_policy.config))
    pre.save(tmp_path)
    post.save(tmp_path)
    assert main(["demo", f"--policy.path={tmp_path}"]) == 0
    assert "action chunk (4, 2)" in capsys.readouterr().out


def test_info_reports_parameters(capsys):
    ckpt = require_shared("parity") / "ckpt"
    assert main(["info", f"--policy.path={ckpt}", "--json=true"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"]["total"] == 1_471_456
    assert report["cameras"] == {
        "observation.images.cam_high": [3, 128, 128],
        "observation.images.cam_wrist": [3, 96, 128],
    }
    assert report["file_dtypes"] == {"float32": 124}


def test_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["info", f"--policy.path={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smolvla info: error:") and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_old_positional_spelling_still_works(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    deprecation, error = capsys.readouterr().err.splitlines()
    assert deprecation == (
        f"smolvla info: a positional {str(tmp_path / 'missing')!r} is deprecated, "
        f"use --policy.path={tmp_path / 'missing'}"
    )
    assert error.startswith("smolvla info: error:")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--stepz=3"],
            "smolvla train: error: unknown flag --stepz (did you mean --steps?); see `smolvla train --help`",
        ),
        (
            ["trian"],
            "smolvla trian: error: unknown command 'trian' (did you mean train?); see `smolvla --help`",
        ),
        (
            ["bench", "inferense"],
            "smolvla bench: error: unknown subcommand 'inferense' (did you mean inference?); "
            "expected one of ['matmul', 'inference', 'train', 'vision', 'all', 'data_loader', "
            "'metaworld_fps', 'serving_load']",
        ),
        (["demo", "--seed=x"], "smolvla demo: error: `seed`: Couldn't parse 'x' into an int"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message


def test_other_errors_keep_their_traceback(monkeypatch):
    """A torch RuntimeError is a bug or a resource problem, not bad input: it is not swallowed."""
    from smolvla.apps import tools

    def fail(*args, **kwargs):
        raise RuntimeError("a torch error")

    monkeypatch.setattr(tools, "demo", fail)
    with pytest.raises(RuntimeError, match="a torch error"):
        main(["demo"])
