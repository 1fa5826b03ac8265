"""smolvla: SmolVLA, faithful to LeRobot's, fast on consumer hardware."""

from smolvla.config import BackboneConfig, SmolVLAConfig, preset
from smolvla.policy import SmolVLAPolicy
from smolvla.processing import make_pre_post_processors

__all__ = ["BackboneConfig", "SmolVLAConfig", "SmolVLAPolicy", "make_pre_post_processors", "preset"]
__version__ = "0.1.0"
