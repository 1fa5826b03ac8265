"""The robot/policy mapping: LeRobot's feature order, camera renames, and the refusals with their fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smolvla.serving.mapping import (
    MappingError,
    PolicyFeatures,
    RobotFeatures,
    check_mapping,
    parse_rename_map,
)
from tests.serving.fake_arm import SO101_MOTORS, FakeArmCore

POLICY = PolicyFeatures(
    cameras={"observation.images.camera1": (24, 32), "observation.images.camera2": (24, 32)},
    state_dim=6,
    action_dim=6,
)
RENAME = {
    "observation.images.front": "observation.images.camera1",
    "observation.images.wrist": "observation.images.camera2",
}


def test_features_follow_lerobots_order():
    f = RobotFeatures.of(FakeArmCore())
    assert f.state == f.action == tuple(f"{m}.pos" for m in SO101_MOTORS)
    assert f.cameras == {"front": (24, 32, 3), "wrist": (24, 32, 3)}
    ds = f.dataset_features()
    assert ds["observation.state"]["names"] == list(f.state)  # as hw_to_dataset_features names them
    assert ds["action"]["names"] == list(f.action)
    assert ds["observation.images.front"]["shape"] == [24, 32, 3]


def test_mapping_builds_the_policys_observation_and_sends_actions_by_motor_name():
    arm = FakeArmCore(start=tuple(range(6)))
    m = check_mapping(RobotFeatures.of(arm), POLICY, RENAME)
    arm.connect()
    obs = m.observation(arm.get_observation())
    assert set(obs) == {"observation.images.camera1", "observation.images.camera2", "observation.state"}
    assert obs["observation.state"].tolist() == [0, 1, 2, 3, 4, 5]
    assert np.array_equal(obs["observation.images.camera2"], arm.render(1))  # wrist is camera2
    assert m.action_dict(np.arange(6.0)) == {f"{n}.pos": float(i) for i, n in enumerate(SO101_MOTORS)}


def test_camera_names_that_do_not_fit_are_refused_with_both_sides_and_the_fix():
    arm = FakeArmCore()
    with pytest.raises(MappingError) as e:
        check_mapping(RobotFeatures.of(arm), POLICY, {})
    msg = str(e.value)
    assert "robot  (fake_arm): state 6" in msg and "cameras [front 24x32, wrist 24x32]" in msg
    assert "policy: state 6, cameras [camera1 24x32, camera2 24x32]" in msg
    assert "robot camera 'front' (observation.images.front) is no camera of the policy" in msg
    fix = msg.split("--rename_map='")[1].split("'")[0]
    assert json.loads(fix) == RENAME
    assert not arm.events  # nothing connected, nothing moved


@pytest.mark.parametrize(
    ("arm", "policy", "rename", "match"),
    [
        (FakeArmCore(motors=SO101_MOTORS[:5]), POLICY, RENAME, r"state: the robot has 5 joint readings"),
        (
            FakeArmCore(motors=SO101_MOTORS[:5]),
            POLICY,
            RENAME,
            r"action: the policy gives 6 values, the robot takes 5",
        ),
        (
            FakeArmCore(height=48, width=48),
            POLICY,
            RENAME,
            r"camera 'front' gives 48x48 frames .* another aspect ratio",
        ),
        (
            FakeArmCore(cameras=("front",)),
            POLICY,
            {"observation.images.front": "observation.images.camera1"},
            r"policy camera\(s\) \['observation.images.camera2'\] get no robot camera",
        ),
        (
            FakeArmCore(),
            POLICY,
            {**RENAME, "observation.images.top": "observation.images.camera1"},
            r"renames 'observation.images.top', which is no camera of the robot",
        ),
        (
            FakeArmCore(),
            POLICY,
            {
                "observation.images.front": "observation.images.camera1",
                "observation.images.wrist": "observation.images.camera1",
            },
            r"camera1' would be fed by several robot cameras",
        ),
    ],
)
def test_mismatches_are_refused(arm, policy, rename, match):
    with pytest.raises(MappingError, match=match):
        check_mapping(RobotFeatures.of(arm), policy, rename)


def test_same_aspect_other_size_and_left_out_cameras_are_notes():
    policy = PolicyFeatures({**POLICY.cameras, "observation.images.camera3": (24, 32)}, 6, 6, empty_cameras=1)
    m = check_mapping(RobotFeatures.of(FakeArmCore(height=48, width=64)), policy, RENAME)
    assert any("48x64 frames for observation.images.camera1, trained on 24x32: resized" in n for n in m.notes)
    assert any("camera3'] left out" in n for n in m.notes)


def test_policy_features_from_the_servers_metadata_and_bad_input():
    meta = {
        "camera_shapes": {"observation.images.camera1": [3, 24, 32]},
        "action_dim": 6,
        "observation": {"cameras": ["observation.images.camera1"], "state_dim": 6, "empty_cameras": 0},
    }
    assert PolicyFeatures.from_metadata(meta) == PolicyFeatures(
        {"observation.images.camera1": (24, 32)}, 6, 6
    )
    with pytest.raises(MappingError, match="does not describe the policy's features"):
        PolicyFeatures.from_metadata({"action_dim": 6})
    with pytest.raises(MappingError, match="is not JSON"):
        parse_rename_map("{front: camera1")
    with pytest.raises(MappingError, match="expected a map of observation key to policy key"):
        parse_rename_map('["a"]')
    assert parse_rename_map(json.dumps(RENAME)) == RENAME


def test_bad_robot_readings_are_named():
    arm = FakeArmCore()
    m = check_mapping(RobotFeatures.of(arm), POLICY, RENAME)
    arm.connect()
    obs = arm.get_observation()
    with pytest.raises(MappingError, match=r"observation\['elbow_flex.pos'\]: got None"):
        m.observation({**obs, "elbow_flex.pos": None})
    with pytest.raises(MappingError, match=r"camera 'wrist': got float64 \[24, 32, 3\], expected uint8"):
        m.observation({**obs, "wrist": obs["wrist"].astype(float)})
    with pytest.raises(MappingError, match="observation_features\\['x'\\]: got 'deg'"):
        RobotFeatures.of(type("R", (), {"observation_features": {"x": "deg"}, "action_features": {}})())
