"""Pre/post-processing: images, language tokens, normalization, and LeRobot's processor files."""

from smolvla.processing.images import resize_with_pad
from smolvla.processing.normalize import (
    MissingStatsError,
    Normalizer,
    StatsError,
    flatten_stats,
    load_stats,
    unflatten_stats,
    unit_stats,
)
from smolvla.processing.pipeline import (
    PolicyPostprocessor,
    PolicyPreprocessor,
    ProcessorError,
    make_pre_post_processors,
    sample_observation,
)
from smolvla.processing.tokenizer import (
    LanguageTokenizer,
    TokenizerError,
    build_byte_tokenizer,
    load_tokenizer,
    save_byte_tokenizer,
)

__all__ = [
    "LanguageTokenizer",
    "MissingStatsError",
    "Normalizer",
    "PolicyPostprocessor",
    "PolicyPreprocessor",
    "ProcessorError",
    "StatsError",
    "TokenizerError",
    "build_byte_tokenizer",
    "flatten_stats",
    "load_stats",
    "load_tokenizer",
    "make_pre_post_processors",
    "resize_with_pad",
    "sample_observation",
    "save_byte_tokenizer",
    "unflatten_stats",
    "unit_stats",
]
