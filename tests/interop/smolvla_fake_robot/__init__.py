"""The fake arm as a LeRobot robot: a `RobotConfig` registered in LeRobot's own registry and a `Robot`
subclass that LeRobot's `make_robot_from_config` finds by name, as a third-party plugin would be. Loaded
in LeRobot's interpreter with `--robot.discover_packages_path=smolvla_fake_robot` (LeRobot's plugin
flag); the hardware it stands for is `tests.serving.fake_arm.FakeArmCore` (no serial port, no camera)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.robots import Robot, RobotConfig

from tests.serving.fake_arm import SO101_MOTORS, FakeArmCore


@RobotConfig.register_subclass("smolvla_fake_arm")
@dataclass(kw_only=True)
class SmolvlaFakeArmConfig(RobotConfig):
    motors: list[str] = field(default_factory=lambda: list(SO101_MOTORS))
    camera_names: list[str] = field(default_factory=lambda: ["front", "wrist"])
    height: int = 24
    width: int = 32
    start: list[float] | None = None
    # as LeRobot's SO follower: a cap on each goal's distance from the present position
    max_relative_target: float | None = None
    disable_torque_on_disconnect: bool = True
    log_path: str | None = None  # JSON lines of every connect, goal and disconnect, for the test to read


class SmolvlaFakeArm(FakeArmCore, Robot):
    config_class = SmolvlaFakeArmConfig
    name = "smolvla_fake_arm"

    def __init__(self, config: SmolvlaFakeArmConfig) -> None:
        Robot.__init__(self, config)
        FakeArmCore.__init__(
            self,
            motors=tuple(config.motors),
            cameras=tuple(config.camera_names),
            height=config.height,
            width=config.width,
            start=None if config.start is None else tuple(config.start),
            max_relative_target=config.max_relative_target,
            disable_torque_on_disconnect=config.disable_torque_on_disconnect,
            log_path=config.log_path,
        )
