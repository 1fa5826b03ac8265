"""The `smolvla` command: demo, info, and error output."""

from __future__ import annotations

import json

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
    assert main(["info", str(ckpt), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"]["total"] == 1_471_456
    assert report["cameras"] == {
        "observation.images.cam_high": [3, 128, 128],
        "observation.images.cam_wrist": [3, 96, 128],
    }
    assert report["file_dtypes"] == {"float32": 124}


def test_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smolvla info: error:") and "Traceback" not in err
