"""The data layer: LeRobot datasets (v3.0 written, v3.0/v2.x read), video, stats, augmentation.

    from smolvla.data import DatasetWriter, LeRobotDataset

    with DatasetWriter.create("data/reach", fps=30, features=features) as writer:
        ...  # writer.add_frame({..., "task": "reach"}) per step, writer.save_episode() per episode
    ds = LeRobotDataset("data/reach", chunk_size=50)

Names load lazily, as in the top-level package: recording (`smolvla.data.writer`, `.video`, `.stats`)
needs numpy, pyarrow and PyAV but not torch; reading (`.dataset`) and `.augment` need torch.
"""

from __future__ import annotations

from smolvla import lazy_exports

try:
    import av  # noqa: F401
    import pyarrow  # noqa: F401
except ImportError as e:  # the data layer's own dependencies are an extra
    raise ImportError(
        f"smolvla.data needs PyAV and pyarrow ({e.name} is missing): pip install 'smolvla[data]'"
    ) from e

_EXPORTS = {
    "AugmentConfig": "smolvla.data.augment",
    "ImageAugment": "smolvla.data.augment",
    "CheckReport": "smolvla.data.check",
    "check_dataset": "smolvla.data.check",
    "EpisodeMeta": "smolvla.data.dataset",
    "LeRobotDataset": "smolvla.data.dataset",
    "LeRobotDatasetMeta": "smolvla.data.dataset",
    "MultiLeRobotDataset": "smolvla.data.dataset",
    "concat": "smolvla.data.dataset",
    "resolve_dataset_root": "smolvla.data.dataset",
    "DatasetError": "smolvla.data.errors",
    "VideoError": "smolvla.data.errors",
    "StatsAccumulator": "smolvla.data.stats",
    "aggregate_feature_stats": "smolvla.data.stats",
    "aggregate_stats": "smolvla.data.stats",
    "stats_from_json": "smolvla.data.stats",
    "stats_to_json": "smolvla.data.stats",
    "vector_stats": "smolvla.data.stats",
    "clear_video_cache": "smolvla.data.video",
    "concat_videos": "smolvla.data.video",
    "decode_frames": "smolvla.data.video",
    "encode_video": "smolvla.data.video",
    "probe_video": "smolvla.data.video",
    "DEFAULT_VIDEO_CODEC": "smolvla.data.writer",
    "DatasetWriter": "smolvla.data.writer",
    "VideoSettings": "smolvla.data.writer",
}
__all__ = list(_EXPORTS)


__getattr__ = lazy_exports("smolvla.data", _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
