"""Meta-World env: instructions, difficulty buckets, seeding, camera, scripted experts, bad input."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

import numpy as np
import pytest

from smolvla.envs import DIFFICULTY, INSTRUCTIONS, TASKS, MetaWorldEnv, expert_action, tasks_for
from smolvla.envs.metaworld import CAMERA, ENV_STATE, STATE


def _has_metaworld() -> bool:
    try:
        import metaworld  # noqa: F401
    except ImportError:
        return False
    return True


needs_metaworld = pytest.mark.skipif(not _has_metaworld(), reason="metaworld is not installed")

SIZE = 32  # small images keep the file fast; the camera test uses larger ones


@pytest.fixture(scope="module")
def reach() -> Iterator[MetaWorldEnv]:
    env = MetaWorldEnv("reach-v3", image_size=SIZE)
    yield env
    env.close()


# -- instructions and buckets (no simulator needed) -------------------------------------------------


def test_instructions_cover_the_50_tasks_and_are_distinct() -> None:
    assert len(TASKS) == 50 and set(INSTRUCTIONS) == set(TASKS)
    texts = list(INSTRUCTIONS.values())
    assert len(set(texts)) == 50
    for name, text in INSTRUCTIONS.items():
        assert text == text.strip().lower() and text[0].isalpha(), name
        assert not text.endswith("."), name
        assert not text.startswith(("the ", "a ", "robot")), f"{name}: not imperative: {text!r}"


def test_buckets_partition_the_50_tasks() -> None:
    assert list(DIFFICULTY) == ["easy", "medium", "hard", "very_hard"]
    assert [len(v) for v in DIFFICULTY.values()] == [28, 11, 6, 5]
    flat = [t for names in DIFFICULTY.values() for t in names]
    assert len(flat) == len(set(flat)) == 50
    assert set(flat) == set(TASKS)


@needs_metaworld
def test_task_names_are_metaworlds_mt1_names() -> None:
    import metaworld

    assert set(TASKS) == set(metaworld.MT1.ENV_NAMES)
    from metaworld.policies import ENV_POLICY_MAP

    assert set(TASKS) <= set(ENV_POLICY_MAP)


def test_tasks_for() -> None:
    assert tasks_for("reach-v3,drawer-close-v3") == ["reach-v3", "drawer-close-v3"]
    assert tasks_for(" reach-v3 , drawer-close-v3 ") == ["reach-v3", "drawer-close-v3"]
    for bucket, names in DIFFICULTY.items():
        assert tasks_for(bucket) == names
    assert tasks_for("all") == list(TASKS)
    both = tasks_for("hard,very_hard,push-v3")  # no repeats, first occurrence kept
    assert both == DIFFICULTY["hard"] + DIFFICULTY["very_hard"]


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("reach-v2", "reach-v3"),
        ("drawer_close-v3", "drawer-close-v3"),
        ("very-hard", "very_hard"),
        ("al", "all"),
    ],
)
def test_tasks_for_unknown_names_suggest_the_closest(spec: str, hint: str) -> None:
    with pytest.raises(ValueError, match=f"did you mean '{hint}'"):
        tasks_for(f"push-v3,{spec}")


@pytest.mark.parametrize("spec", ["", " ", ",", None])
def test_tasks_for_empty(spec) -> None:
    with pytest.raises(ValueError, match="tasks"):
        tasks_for(spec)


# -- the env ----------------------------------------------------------------------------------------


@needs_metaworld
def test_observation_layout(reach: MetaWorldEnv) -> None:
    obs, info = reach.reset(seed=0)
    assert set(obs) == {CAMERA, STATE, ENV_STATE}
    assert obs[CAMERA].dtype == np.uint8 and obs[CAMERA].shape == (SIZE, SIZE, 3)
    assert obs[CAMERA].flags.c_contiguous
    assert obs[STATE].dtype == np.float32 and obs[STATE].shape == (4,)
    assert obs[ENV_STATE].shape == (39,)
    np.testing.assert_array_equal(obs[STATE], obs[ENV_STATE][:4].astype(np.float32))
    assert np.any(obs[ENV_STATE][36:] != 0)  # the goal is observable (the expert needs it)
    assert reach.observation_space.contains(obs)
    assert info == {"success": False}
    assert reach.task == "reach the red goal point" and reach.task_name == "reach-v3"
    assert reach.max_episode_steps == 500
    obs, reward, terminated, truncated, info = reach.step(np.zeros(4, np.float32))
    assert isinstance(reward, float) and info["success"] is False
    assert not terminated and not truncated and reach.elapsed_steps == 1


@needs_metaworld
def test_same_seed_same_initial_state(reach: MetaWorldEnv) -> None:
    a, _ = reach.reset(seed=7)
    for _ in range(3):  # episode order must not matter
        reach.step(np.ones(4))
    reach.reset(seed=8)
    b, _ = reach.reset(seed=7)
    with MetaWorldEnv("reach-v3", image_size=SIZE) as other:  # nor the env instance
        c, _ = other.reset(seed=7)
    for o in (b, c):
        np.testing.assert_array_equal(a[ENV_STATE], o[ENV_STATE])
        np.testing.assert_array_equal(a[CAMERA], o[CAMERA])


@needs_metaworld
@pytest.mark.parametrize("task", ["reach-v3", "drawer-close-v3"])
def test_different_seeds_move_object_or_goal(task: str) -> None:
    with MetaWorldEnv(task, image_size=8) as env:
        states = [env.reset(seed=s)[0][ENV_STATE] for s in range(5)]
    objects = np.array([s[4:7] for s in states])
    goals = np.array([s[36:39] for s in states])
    assert len(np.unique(objects, axis=0)) == 5 and len(np.unique(goals, axis=0)) == 5
    np.testing.assert_array_equal(states[0][:4], states[1][:4])  # the hand starts at the same pose


@needs_metaworld
def test_unseeded_reset_continues_the_stream(reach: MetaWorldEnv) -> None:
    reach.reset(seed=3)
    a, _ = reach.reset()
    reach.reset(seed=3)
    b, _ = reach.reset()
    first, _ = reach.reset(seed=3)
    np.testing.assert_array_equal(a[ENV_STATE], b[ENV_STATE])
    assert not np.array_equal(a[ENV_STATE], first[ENV_STATE])


@needs_metaworld
def test_camera_is_corner2_moved_and_flipped_upright() -> None:
    with MetaWorldEnv("reach-v3", image_size=96) as env:
        obs, _ = env.reset(seed=0)
        img = obs[CAMERA]
        assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50
        raw = env.unwrapped.render()
        np.testing.assert_array_equal(img, raw[::-1, ::-1])
        assert not np.array_equal(img, raw)
        model = env.unwrapped.model
        np.testing.assert_allclose(model.cam_pos[model.camera("corner2").id], [0.75, 0.075, 0.7])
        assert model.vis.quality.offsamples == 0 and not model.light_castshadow.any()

        def finger_row(image: np.ndarray) -> float:  # the gripper's cyan fingers
            cyan = (image[..., 0] < 100) & (image[..., 1] > 150) & (image[..., 2] > 150)
            rows = np.nonzero(cyan)[0]
            assert len(rows) >= 3
            return rows.mean()

        for _ in range(20):
            obs, *_ = env.step([0, 0, -1, 0])
        low = finger_row(obs[CAMERA])
        for _ in range(25):
            obs, *_ = env.step([0, 0, 1, 0])
        high = finger_row(obs[CAMERA])
        assert high < low - 5  # the hand went up, so it is higher in the (upright) image


@needs_metaworld
@pytest.mark.parametrize("task", ["reach-v3", "drawer-close-v3"])
def test_scripted_expert_solves(task: str) -> None:
    with MetaWorldEnv(task, image_size=SIZE) as env:
        obs, _ = env.reset(seed=0)
        assert env.render() is obs[CAMERA]
        for _ in range(env.max_episode_steps):
            action = expert_action(env, obs)
            assert action.dtype == np.float32 and action.shape == (4,) and np.all(np.abs(action) <= 1)
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        assert info["success"] is True and terminated and not truncated
        assert env.elapsed_steps < 150
        with pytest.raises(RuntimeError, match=r"success.*reset"):
            env.step(np.zeros(4))


@needs_metaworld
def test_max_episode_steps_truncates() -> None:
    with MetaWorldEnv("drawer-close-v3", image_size=8, max_episode_steps=3) as env:
        assert env.unwrapped.max_path_length == 3
        env.reset(seed=0)
        flags = [env.step(np.zeros(4))[3] for _ in range(3)]
        assert flags == [False, False, True]
        with pytest.raises(RuntimeError, match=r"max_episode_steps.*reset"):
            env.step(np.zeros(4))
        env.reset(seed=0)  # a new episode
        env.step(np.zeros(4))
    with MetaWorldEnv("reach-v3", image_size=8, max_episode_steps=800) as env:
        assert env.max_episode_steps == env.unwrapped.max_path_length == 800


@needs_metaworld
def test_out_of_range_actions_are_clipped(reach: MetaWorldEnv) -> None:
    reach.reset(seed=1)
    a = reach.step([5.0, -3.0, 2.0, 1.5])[0]
    reach.reset(seed=1)
    b = reach.step(np.array([1.0, -1.0, 1.0, 1.0], np.float32))[0]
    np.testing.assert_array_equal(a[ENV_STATE], b[ENV_STATE])


@needs_metaworld
def test_terminate_on_success_off_keeps_going() -> None:
    with MetaWorldEnv("reach-v3", image_size=8, terminate_on_success=False) as env:
        obs, _ = env.reset(seed=0)
        successes = []
        for _ in range(120):
            obs, _, terminated, truncated, info = env.step(expert_action(env, obs))
            assert not terminated and not truncated
            successes.append(info["success"])
        assert any(successes)


# -- bad input ----------------------------------------------------------------------------------


def test_unknown_task_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match=r"task: got 'reach-v2'.*did you mean 'reach-v3'"):
        MetaWorldEnv("reach-v2")
    with pytest.raises(ValueError, match="did you mean 'drawer-close-v3'"):
        MetaWorldEnv("drawer-closed-v3")


@pytest.mark.parametrize("size", [0, -64, 2.5, True, "64"])
def test_bad_image_size(size) -> None:
    with pytest.raises(ValueError, match=f"image_size: got {size!r}, expected a positive integer"):
        MetaWorldEnv("reach-v3", image_size=size)


@pytest.mark.parametrize("steps", [0, -1, 1.5])
def test_bad_max_episode_steps(steps) -> None:
    with pytest.raises(ValueError, match="max_episode_steps"):
        MetaWorldEnv("reach-v3", image_size=8, max_episode_steps=steps)


@needs_metaworld
@pytest.mark.parametrize(
    ("action", "match"),
    [
        (np.zeros(3), r"shape \(3,\), expected \(4,\)"),
        (np.zeros((1, 4)), r"shape \(1, 4\), expected \(4,\)"),
        (np.zeros((2, 50, 4)), r"shape \(2, 50, 4\)"),
        ([0.0, np.nan, 0.0, 0.0], "finite"),
        ([0.0, 0.0, np.inf, 0.0], "finite"),
        ("left", "expected 4 floats"),
    ],
)
def test_bad_actions(reach: MetaWorldEnv, action, match: str) -> None:
    reach.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        reach.step(action)


@needs_metaworld
def test_misuse() -> None:
    env = MetaWorldEnv("reach-v3", image_size=8)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4))
    with pytest.raises(RuntimeError, match="reset"):
        env.render()
    for seed in (-1, 1.5, True, "0"):
        with pytest.raises(ValueError, match="seed"):
            env.reset(seed=seed)
    with pytest.raises(ValueError, match="options"):
        env.reset(seed=0, options={"mode": "hard"})
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match=r"observation\.environment_state"):
        expert_action(env, {STATE: obs[STATE]})
    with pytest.raises(ValueError, match=r"\(39,\)"):
        expert_action(env, {ENV_STATE: obs[STATE]})
    with pytest.raises(TypeError, match="MetaWorldEnv"):
        expert_action(env.unwrapped, obs)
    env.close()
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.reset(seed=0)
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.zeros(4))
