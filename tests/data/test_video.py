"""Video: encode/decode round trips for both codecs, random access, exact timestamps after joining
files, clear errors, the per-process container cache, PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from smolvla.data import VideoError, concat_videos, decode_frames, encode_video, probe_video
from smolvla.data.video import decode_png, encode_png
from tests.data import synth


def clip(n: int, size: int = 16, e: int = 0) -> np.ndarray:
    return np.stack([synth.frame(e, i, size, size) for i in range(n)])


@pytest.mark.parametrize("codec", ["libsvtav1", "h264"])
def test_round_trip_and_random_access(tmp_path: Path, codec: str) -> None:
    frames = clip(12, 32)
    path = tmp_path / "v.mp4"
    encode_video(frames, path, fps=10, codec=codec)
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.frames) == (32, 32, 10, 12)
    assert info.codec == {"libsvtav1": "av1", "h264": "h264"}[codec]
    assert info.duration_s == pytest.approx(1.2)
    seq = decode_frames(path, [i / 10 for i in range(12)])
    assert seq.shape == (12, 32, 32, 3) and seq.dtype == np.uint8
    assert np.abs(seq.astype(int) - frames).mean() < 3
    for i in [7, 0, 11, 3, 3, 10]:  # random order, repeats: seeks must land on the same frames
        np.testing.assert_array_equal(decode_frames(path, [i / 10])[0], seq[i])
    np.testing.assert_array_equal(decode_frames(path, [0.5, 0.1, 0.5]), seq[[5, 1, 5]])


def test_missing_timestamp_names_file_request_and_closest(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    encode_video(clip(5), path, fps=10, codec="h264")
    with pytest.raises(VideoError) as e:
        decode_frames(path, [0.1, 0.45, 0.9])
    msg = str(e.value)
    assert str(path) in msg and "[0.45, 0.9]" in msg and "0.4" in msg
    with pytest.raises(VideoError, match="not found"):
        decode_frames(tmp_path / "nope.mp4", [0.0])
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoError, match="not a readable video"):
        decode_frames(tmp_path / "bad.mp4", [0.0])


@pytest.mark.parametrize("codec", ["libsvtav1", "h264"])
def test_concat_keeps_every_frame_at_its_exact_time(tmp_path: Path, codec: str) -> None:
    a, b = clip(7, 32, e=1), clip(9, 32, e=2)
    encode_video(a, tmp_path / "a.mp4", fps=10, codec=codec)
    encode_video(b, tmp_path / "b.mp4", fps=10, codec=codec)
    out = tmp_path / "ab.mp4"
    assert concat_videos([(tmp_path / "a.mp4", 0.0, 0.7), (tmp_path / "b.mp4", 0.0, 0.9)], out) == [7, 9]
    assert probe_video(out).frames == 16
    joined = decode_frames(out, [i / 10 for i in range(16)], tolerance_s=1e-6)  # exact ticks
    np.testing.assert_array_equal(joined[:7], decode_frames(tmp_path / "a.mp4", [i / 10 for i in range(7)]))
    np.testing.assert_array_equal(joined[7:], decode_frames(tmp_path / "b.mp4", [i / 10 for i in range(9)]))
    # A time range of a joined file (starting on an episode's first frame) copies just that episode.
    assert concat_videos([(out, 0.7, 1.6), (out, 0.0, 0.7)], tmp_path / "ba.mp4") == [9, 7]
    swapped = decode_frames(tmp_path / "ba.mp4", [i / 10 for i in range(16)])
    np.testing.assert_array_equal(swapped[:9], joined[7:])
    # Not on a keyframe (g=2: frame 3 is not one): refused rather than producing broken video.
    with pytest.raises(VideoError, match="keyframe"):
        concat_videos([(out, 0.3, 0.7)], tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_concat_refuses_different_encodings(tmp_path: Path) -> None:
    encode_video(clip(4), tmp_path / "a.mp4", fps=10, codec="h264")
    encode_video(clip(4, size=32), tmp_path / "b.mp4", fps=10, codec="h264")
    with pytest.raises(VideoError, match="encoded differently"):
        concat_videos([(tmp_path / "a.mp4", 0, 0.4), (tmp_path / "b.mp4", 0, 0.4)], tmp_path / "ab.mp4")


def test_cache_notices_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    encode_video(clip(4, e=1), path, fps=10, codec="h264")
    first = decode_frames(path, [0.2])
    tmp = tmp_path / "w.mp4"
    encode_video(clip(4, e=5), tmp, fps=10, codec="h264")
    os.replace(tmp, path)  # as the writer does when it joins files
    assert not np.array_equal(decode_frames(path, [0.2]), first)


def test_bad_encoder_input(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="even width and height"):
        encode_video(np.zeros((2, 15, 16, 3), np.uint8), tmp_path / "o.mp4", fps=10)
    with pytest.raises(VideoError, match="video codec"):
        encode_video(clip(2), tmp_path / "o.mp4", fps=10, codec="vp9")
    with pytest.raises(VideoError, match="uint8"):
        encode_video(clip(2).astype(np.float32), tmp_path / "o.mp4", fps=10)
    with pytest.raises(VideoError, match="too small for libsvtav1"):  # older SVT-AV1 would crash
        encode_video(clip(2, 16), tmp_path / "o.mp4", fps=10, codec="libsvtav1")


def test_png_round_trip_is_lossless() -> None:
    img = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    data = encode_png(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode_png(data), img)
    with pytest.raises(VideoError):
        decode_png(b"garbage")
