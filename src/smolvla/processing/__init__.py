"""Pre/post-processing: images, language tokens, normalization, and LeRobot's processor files.

The names load lazily: the tokenizer is used without torch by the exported runtime (smolvla.runtime)."""

from smolvla import lazy_exports

_EXPORTS = {
    "LanguageTokenizer": "smolvla.processing.tokenizer",
    "MissingStatsError": "smolvla.processing.normalize",
    "Normalizer": "smolvla.processing.normalize",
    "PolicyPostprocessor": "smolvla.processing.pipeline",
    "PolicyPreprocessor": "smolvla.processing.pipeline",
    "ProcessorError": "smolvla.processing.pipeline",
    "StatsError": "smolvla.processing.normalize",
    "TokenizerError": "smolvla.processing.tokenizer",
    "build_byte_tokenizer": "smolvla.processing.tokenizer",
    "flatten_stats": "smolvla.processing.normalize",
    "load_stats": "smolvla.processing.normalize",
    "load_tokenizer": "smolvla.processing.tokenizer",
    "make_pre_post_processors": "smolvla.processing.pipeline",
    "resize_with_pad": "smolvla.processing.images",
    "sample_observation": "smolvla.processing.pipeline",
    "save_byte_tokenizer": "smolvla.processing.tokenizer",
    "unflatten_stats": "smolvla.processing.normalize",
    "unit_stats": "smolvla.processing.normalize",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
