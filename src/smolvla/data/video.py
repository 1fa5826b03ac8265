"""MP4 video through PyAV: encode camera frames, decode frames at timestamps, concatenate episodes.

LeRobot stores each camera as MP4 files holding many episodes one after the other; an episode is the
time range `[from_timestamp, to_timestamp)` of its file. Frame `i` of an episode sits at
`from_timestamp + i / fps` (within `tolerance_s`), so the reader seeks and picks frames by
presentation time.

Encoding follows LeRobot's defaults (libsvtav1, yuv420p, a keyframe every 2 frames, crf 30) and also
offers H.264 (libx264). Frames are never reordered (x264 runs without B-frames; SVT-AV1 never
reorders), so a packet's decode and presentation times agree and files concatenate by copying packets.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from smolvla.data.errors import VideoError

# Encoder names we accept -> the FFmpeg encoder, and the encoder -> the codec name a stream reports
# (what LeRobot writes as `video.codec` in info.json).
ENCODERS = {"libsvtav1": "libsvtav1", "av1": "libsvtav1", "h264": "libx264", "libx264": "libx264"}
STREAM_CODECS = {"libsvtav1": "av1", "libx264": "h264"}
PIX_FMTS = ("yuv420p", "yuv444p")
SVTAV1_PRESET = 12  # LeRobot's default: the fastest SVT-AV1 preset
SVTAV1_MIN_SIDE = 32  # smaller frames crash SVT-AV1 3.x (SIGFPE), measured with PyAV 15.1

# Open containers kept per process. DataLoader workers each build their own: the cache is keyed on the
# process id, so a forked worker never reuses (and moves the file offset of) its parent's handles.
MAX_OPEN_VIDEOS = 16


def encoder_name(codec: str) -> str:
    """The FFmpeg encoder for a codec name ("libsvtav1"/"av1" or "h264"/"libx264")."""
    if codec not in ENCODERS:
        raise VideoError(f"video codec: got {codec!r}, expected one of {sorted(ENCODERS)}")
    return ENCODERS[codec]


def encoder_options(codec: str, g: int | None, crf: int | None, preset: int | str | None) -> dict[str, str]:
    """The FFmpeg options for our encoder settings (strings, as PyAV takes them)."""
    enc = encoder_name(codec)
    opts: dict[str, str] = {}
    if g is not None:
        opts["g"] = str(g)
    if crf is not None:
        opts["crf"] = str(crf)
    if enc == "libsvtav1":
        opts["preset"] = str(SVTAV1_PRESET if preset is None else preset)
    else:
        opts["bf"] = "0"  # no B-frames: packets stay in presentation order, so files concatenate exactly
        if preset is not None:
            opts["preset"] = str(preset)
    return opts


class VideoEncoder:
    """Writes uint8 (H, W, 3) RGB frames to an MP4 file, frame `i` at time `i / fps`.

    Frames are encoded as they arrive (no buffering of the episode). `close()` flushes the encoder and
    returns the number of frames; `abort()` closes and deletes the file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fps: int,
        width: int,
        height: int,
        codec: str = "libsvtav1",
        pix_fmt: str = "yuv420p",
        g: int | None = 2,
        crf: int | None = 30,
        preset: int | str | None = None,
        threads: int | None = None,
    ):
        if not isinstance(fps, int) or fps <= 0:
            raise VideoError(f"fps: got {fps!r}, expected a positive integer")
        if pix_fmt not in PIX_FMTS:
            raise VideoError(f"pix_fmt: got {pix_fmt!r}, expected one of {list(PIX_FMTS)}")
        if pix_fmt == "yuv420p" and (width % 2 or height % 2):
            raise VideoError(
                f"{path}: yuv420p needs an even width and height, got {width}x{height} "
                "(crop the frames by one pixel, or use pix_fmt='yuv444p')"
            )
        enc = encoder_name(codec)
        if enc == "libsvtav1":
            if min(width, height) < SVTAV1_MIN_SIDE:
                raise VideoError(
                    f"{path}: {width}x{height} frames are too small for libsvtav1 (SVT-AV1 before 4.0, as "
                    f"in PyAV < 18, kills the process below {SVTAV1_MIN_SIDE} px); use codec 'h264'"
                )
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per encoder unless told not to
        self.path = Path(path)
        self.fps = fps
        self.width, self.height = width, height
        self.frames = 0
        self._container = av.open(str(self.path), "w", format="mp4")
        try:
            self._stream = self._container.add_stream(
                enc, rate=fps, options=encoder_options(codec, g, crf, preset)
            )
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
            if threads is not None:  # evaluation workers encode one core each
                self._stream.codec_context.thread_count = threads
        except Exception as e:
            self.abort()
            raise VideoError(f"{self.path}: cannot open the {enc} encoder ({e})") from e
        self._time_base = Fraction(1, fps)

    def add(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise VideoError(
                f"{self.path}: frame {self.frames} has shape {frame.shape} and dtype {frame.dtype}, "
                f"expected ({self.height}, {self.width}, 3) uint8"
            )
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts, vf.time_base = self.frames, self._time_base
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> int:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self.frames

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the file is deleted below: a broken trailer does not matter
            self._container.close()
        self.path.unlink(missing_ok=True)


def encode_video(
    frames: np.ndarray,
    path: str | Path,
    fps: int,
    codec: str = "libsvtav1",
    pix_fmt: str = "yuv420p",
    g: int | None = 2,
    crf: int | None = 30,
    preset: int | str | None = None,
    threads: int | None = None,
) -> None:
    """Encodes uint8 frames (T, H, W, 3) into an MP4 file; frame `i` is at `i / fps` seconds."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise VideoError(
            f"{path}: frames have shape {frames.shape} {frames.dtype}, expected (T>0, H, W, 3) uint8"
        )
    enc = VideoEncoder(
        path,
        fps=fps,
        width=frames.shape[2],
        height=frames.shape[1],
        codec=codec,
        pix_fmt=pix_fmt,
        g=g,
        crf=crf,
        preset=preset,
        threads=threads,
    )
    try:
        for f in frames:
            enc.add(f)
        enc.close()
    except BaseException:
        enc.abort()
        raise


def write_mp4(path: str | Path, frames: list[np.ndarray] | np.ndarray, fps: int) -> None:
    """Frames for a person to watch (rollouts, captioned episodes): H.264 at high quality, one thread,
    written atomically so a viewer never opens half a file. Dataset videos use `encode_video` with
    LeRobot's settings instead."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.mp4")
    try:
        encode_video(np.stack(frames), tmp, fps, codec="h264", g=None, crf=20, preset="veryfast", threads=1)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


@dataclass(frozen=True)
class VideoInfo:
    codec: str  # as the stream reports it ("av1", "h264")
    pix_fmt: str
    width: int
    height: int
    fps: int
    frames: int
    duration_s: float  # end of the last frame
    time_base: Fraction


def probe_video(path: str | Path) -> VideoInfo:
    """Stream parameters of an MP4 file, without decoding it."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError(f"{path}: no video stream")
            s = c.streams.video[0]
            tb = s.time_base
            duration = (
                float(s.duration * tb) if s.duration is not None else float(c.duration or 0) / av.time_base
            )
            rate = s.average_rate or s.base_rate
            return VideoInfo(
                codec=s.codec_context.codec.canonical_name if s.codec_context else s.codec.name,
                pix_fmt=s.pix_fmt or s.codec_context.pix_fmt,
                width=s.width,
                height=s.height,
                fps=round(float(rate)) if rate else 0,
                frames=s.frames,
                duration_s=duration,
                time_base=tb,
            )
    except av.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video ({e})") from e


def demux_end_s(path: str | Path, from_s: float = 0.0) -> tuple[float, int]:
    """(end of the last packet in seconds, packets read) of the first video stream, without decoding.

    A header can promise more than the file holds (a copy cut short keeps a header written first); the
    packets themselves cannot. `from_s` > 0 seeks to the keyframe before it first, so checking that a file
    reaches a time reads only its tail."""
    end, packets = 0.0, 0
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError(f"{path}: no video stream")
            s = c.streams.video[0]
            tb = float(s.time_base)
            if from_s > 0:
                c.seek(int(from_s / tb), stream=s, backward=True, any_frame=False)
            for packet in c.demux(s):
                if packet.pts is None:  # the flushing packet at the end of the stream
                    continue
                packets += 1
                end = max(end, (packet.pts + (packet.duration or 0)) * tb)
    except av.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video ({e})") from e
    return end, packets


# --------------------------------------------------------------------------------------------------
# Decoding


class _Open:
    def __init__(self, path: Path, key: tuple):
        self.path, self.key = path, key
        self.container = av.open(str(path))
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{path}: no video stream")
        self.stream = self.container.streams.video[0]
        # One decoding thread: DataLoader workers already use the cores, and these frames are small.
        self.stream.codec_context.thread_count = 1
        # One converter to RGB for all frames: PyAV otherwise sets up a new one per decoded frame, which
        # costs ~7x the conversion itself (0.57 vs 0.08 ms at 224x224, same pixels).
        self.to_rgb = VideoReformatter()
        self.lock = threading.Lock()


_cache: OrderedDict[str, _Open] = OrderedDict()
_inherited: list[_Open] = []  # a forked parent's entries
_cache_pid = os.getpid()
_cache_lock = threading.Lock()


def clear_video_cache() -> None:
    """Closes the containers this process keeps open."""
    global _cache_pid
    with _cache_lock:
        if _cache_pid == os.getpid():
            for entry in _cache.values():
                with contextlib.suppress(Exception):  # best effort: the handle is dropped either way
                    entry.container.close()
        else:
            _inherited.extend(_cache.values())
        _cache.clear()
        _cache_pid = os.getpid()


def _open(path: Path) -> _Open:
    global _cache_pid
    try:
        st = path.stat()
    except FileNotFoundError:
        raise VideoError(f"{path}: video file not found") from None
    # A file replaced in place (the writer renames a new file over an old one) gets a new inode or
    # size, hence a new entry.
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if _cache_pid != os.getpid():  # forked: the parent's handles are not ours to use
            # ...nor to free: their FFmpeg state may hold locks or threads of the parent, so they are
            # kept alive (never closed) rather than released in this process.
            _inherited.extend(_cache.values())
            _cache.clear()
            _cache_pid = os.getpid()
        entry = _cache.get(str(path))
        if entry is not None and entry.key == key:
            _cache.move_to_end(str(path))
            return entry
        try:
            entry = _Open(path, key)
        except av.FFmpegError as e:
            raise VideoError(f"{path}: not a readable video ({e})") from e
        _cache[str(path)] = entry
        while len(_cache) > MAX_OPEN_VIDEOS:
            _, old = _cache.popitem(last=False)
            with contextlib.suppress(Exception):  # best effort, as above
                old.container.close()
        return entry


def _decode(
    entry: _Open, req: np.ndarray, tol: float, from_start: bool
) -> tuple[list[np.ndarray | None], np.ndarray]:
    stream, container = entry.stream, entry.container
    tb = float(stream.time_base)
    out: list[np.ndarray | None] = [None] * len(req)
    err = np.full(len(req), np.inf)  # distance to the frame picked for each request
    nearest = np.full(len(req), np.nan)  # nearest decoded time, for the error message
    near_d = np.full(len(req), np.inf)
    first, last = float(req.min()), float(req.max())
    target = 0 if from_start else max(0, math.floor((first - tol) / tb))
    container.seek(target, stream=stream, backward=True, any_frame=False)
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        t = frame.pts * tb
        d = np.abs(req - t)
        closer = d < near_d
        near_d[closer], nearest[closer] = d[closer], t
        take = (d <= tol) & (d < err)
        if take.any():
            arr = entry.to_rgb.reformat(frame, format="rgb24").to_ndarray()
            for i in np.flatnonzero(take):
                out[i], err[i] = arr, d[i]
        if t > last + tol:
            break
    return out, nearest


def decode_frames(path: str | Path, timestamps: Sequence[float], tolerance_s: float = 1e-4) -> np.ndarray:
    """Frames of `path` at `timestamps` (seconds), as uint8 (N, H, W, 3) in the order asked.

    Seeks to the keyframe at or before the earliest timestamp and decodes forward to the latest, picking
    for each timestamp the frame whose presentation time is within `tolerance_s`. Raises VideoError
    naming the file, the timestamps asked and the closest frame times found when one is missing.
    """
    path = Path(path)
    req = np.asarray(list(timestamps), dtype=np.float64)
    if req.ndim != 1 or len(req) == 0 or not np.isfinite(req).all():
        raise VideoError(
            f"{path}: timestamps must be a non-empty list of finite seconds, got {list(timestamps)}"
        )
    entry = _open(path)
    with entry.lock:
        try:
            out, nearest = _decode(entry, req, tolerance_s, from_start=False)
            if any(o is None for o in out):  # an imprecise seek: decode the file from its start once
                out, nearest = _decode(entry, req, tolerance_s, from_start=True)
        except av.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed at timestamps {req.tolist()} ({e})") from e
    missing = [i for i, o in enumerate(out) if o is None]
    if missing:
        asked = [round(float(req[i]), 6) for i in missing]
        found = [None if np.isnan(nearest[i]) else round(float(nearest[i]), 6) for i in missing]
        raise VideoError(
            f"{path}: no frame within {tolerance_s} s of timestamps {asked}; the closest frames found are at "
            f"{found} (the file may be shorter than its episode, or the timestamps off the 1/fps grid)"
        )
    return np.stack(out)


# --------------------------------------------------------------------------------------------------
# Concatenation


def concat_videos(parts: Sequence[tuple[str | Path, float, float]], output: str | Path) -> list[int]:
    """Copies the time ranges `[start_s, end_s)` of several MP4 files into one, back to back.

    No re-encoding: packets are copied and shifted so each range starts where the previous one ended,
    in exact stream ticks. Every range must start on a keyframe (each episode's first frame is one).
    Returns the number of frames copied from each part.
    """
    output = Path(output)
    if not parts:
        raise VideoError(f"{output}: nothing to concatenate")
    counts: list[int] = []
    inputs = [av.open(str(p)) for p, _, _ in parts[:1]]
    ref = inputs[0].streams.video[0]
    out = av.open(str(output), "w", format="mp4", options={"movflags": "faststart"})
    try:
        ostream = out.add_stream_from_template(ref, opaque=True)
        ostream.time_base = ref.time_base
        tb = ref.time_base
        offset = 0
        for n, (path, start_s, end_s) in enumerate(parts):
            c = inputs[0] if n == 0 else av.open(str(path))
            try:
                s = c.streams.video[0]
                same = (s.width, s.height, s.codec_context.name, s.pix_fmt, s.time_base) == (
                    ref.width,
                    ref.height,
                    ref.codec_context.name,
                    ref.pix_fmt,
                    ref.time_base,
                ) and bytes(s.codec_context.extradata or b"") == bytes(ref.codec_context.extradata or b"")
                if not same:
                    raise VideoError(
                        f"{path}: encoded differently from {parts[0][0]} ({s.codec_context.name} "
                        f"{s.width}x{s.height} {s.pix_fmt} tb={s.time_base}), cannot concatenate without "
                        "re-encoding"
                    )
                start, end = round(start_s / tb), round(end_s / tb)
                if start > 0:
                    c.seek(start, stream=s, backward=True, any_frame=False)
                copied = 0
                for p in c.demux(s):
                    if p.dts is None or p.pts is None or p.pts < start:
                        continue
                    if p.pts >= end:
                        break
                    if p.pts != p.dts:
                        raise VideoError(
                            f"{path}: frames are reordered (B-frames); cannot concatenate by copy"
                        )
                    if copied == 0 and not p.is_keyframe:
                        raise VideoError(
                            f"{path}: the range starting at {start_s} s does not start on a keyframe"
                        )
                    p.pts = p.dts = p.pts - start + offset
                    p.stream = ostream
                    out.mux(p)
                    copied += 1
                counts.append(copied)
                offset += end - start
            finally:
                if n > 0:
                    c.close()
        out.close()
    except BaseException:
        with contextlib.suppress(Exception):  # the partial output is deleted below
            out.close()
        output.unlink(missing_ok=True)
        raise
    finally:
        inputs[0].close()
    return counts


# --------------------------------------------------------------------------------------------------
# PNG, for `image` features (stored inside the parquet files)


def encode_png(img: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 (H, W, 3) RGB image."""
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = img.shape[1], img.shape[0], "rgb24"
    ctx.time_base = Fraction(1, 1)
    packets = ctx.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24"))
    packets += ctx.encode(None)
    return b"".join(bytes(p) for p in packets)


def decode_png(data: bytes, where: str = "image") -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of an encoded image (PNG, or anything FFmpeg decodes as one frame)."""
    try:
        ctx = av.CodecContext.create("png", "r")
        frames = ctx.decode(av.Packet(data))
        if not frames:
            frames = ctx.decode(None)
        return frames[0].to_ndarray(format="rgb24")
    except (av.FFmpegError, IndexError) as e:
        raise VideoError(f"{where}: not a decodable PNG image ({e})") from e
