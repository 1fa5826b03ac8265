"""`smolvla dataset info | show | stats`."""

from __future__ import annotations

import json

import av
import numpy as np

from smolvla.apps.cli import main
from smolvla.data.tools import info, recompute_stats
from tests.data import synth


def test_info_show_stats(tmp_path, capsys):
    root = tmp_path / "ds"
    synth.write(root, [6, 9], synth.features(size=16, cams=("top", "wrist")))
    s = info(root)
    assert s["episodes"] == 2 and s["frames"] == 15 and s["fps"] == synth.FPS
    assert s["episode_length"] == {"min": 6, "mean": 7.5, "max": 9}
    assert list(s["cameras"]) == ["observation.images.top", "observation.images.wrist"]
    assert s["tasks"] == ["task 0", "task 1"]
    assert main(["dataset", "info", f"--dataset.repo_id={root}", "--json=true"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 15
    assert main(["dataset", "info", str(root), "--json"]) == 0  # the old spelling, deprecated
    captured = capsys.readouterr()
    assert json.loads(captured.out)["frames"] == 15
    assert captured.err.splitlines() == [
        f"smolvla dataset info: a positional {str(root)!r} is deprecated, use --dataset.repo_id={root}",
        "smolvla dataset info: --json is deprecated, use --json=true",
    ]

    out = tmp_path / "view" / "ep1.mp4"
    assert (
        main(["dataset", "show", f"--dataset.repo_id={root}", "--episode_index=1", f"--output_path={out}"])
        == 0
    )
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape[1] >= 2 * 16  # two cameras side by side, upscaled
    assert out.with_suffix(".png").stat().st_size > 5000

    before = json.loads((root / "meta/stats.json").read_text())
    (root / "meta/stats.json").unlink()
    after = recompute_stats(root, progress=False)
    for key in ("observation.state", "action"):
        for stat in ("mean", "std", "min", "max", "count"):
            assert np.allclose(after[key][stat], before[key][stat], atol=1e-6), (key, stat)
    # images are recomputed from the (lossy) video, the writer used the raw frames
    assert np.allclose(
        after["observation.images.top"]["mean"], before["observation.images.top"]["mean"], atol=0.02
    )


def test_show_rejects_a_missing_episode(tmp_path, capsys):
    root = tmp_path / "ds"
    synth.write(root, [4], synth.features(size=16, cams=("top",)))
    assert main(["dataset", "show", str(root), "--episode", "3", "--output", str(tmp_path / "x.mp4")]) == 2
    assert "--episode_index: got 3, expected 0..0" in capsys.readouterr().err


def test_check_passes_a_sound_dataset(tmp_path, capsys):
    root = tmp_path / "ds"
    synth.write(root, [6, 9], synth.features(size=16, cams=("top",)))
    assert main(["dataset", "check", f"--dataset.repo_id={root}"]) == 0
    out = capsys.readouterr().out
    assert f"{root}: quick check, sound" in out and "episodes        2" in out and "frames          15" in out
    assert "problem" not in out
    assert main(["dataset", "check", f"--dataset.repo_id={root}", "--full=true", "--json=true"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["full"] and report["frames_decoded"] == 15 and report["problems"] == []


def test_check_fails_naming_each_problem(tmp_path, capsys):
    root = tmp_path / "ds"
    synth.write(root, [6, 9], synth.features(size=16, cams=("top",)))
    video = next((root / "videos").rglob("*.mp4"))
    video.unlink()
    info_json = root / "meta" / "info.json"
    info_json.write_text(json.dumps({**json.loads(info_json.read_text()), "total_frames": 40}))
    assert main(["dataset", "check", f"--dataset.repo_id={root}"]) == 2
    captured = capsys.readouterr()
    problems = [line for line in captured.out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2, captured.out
    assert any(f"{video}:" in p and "is missing" in p for p in problems)
    assert any("total_frames is 40, but the episodes hold 15 frames" in p for p in problems)
    assert (
        captured.err.strip() == f"smolvla dataset check: error: {root}: 2 problem(s) found by the quick check"
    )
    assert main(["dataset", "check", f"--dataset.repo_id={root}", "--json=true"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and len(report["problems"]) == 2
