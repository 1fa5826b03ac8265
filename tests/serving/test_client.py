"""The robot client's async semantics, with a scripted policy (no server, no torch): timesteps, the
off-by-one fix, merging, the send threshold, the similarity filter, must-go, sync mode."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading

import numpy as np
import pytest

from smolvla.serving.client import AGGREGATE_FUNCTIONS, RobotClient, RobotClientConfig, ServerError


class CountingRobot:
    """Its state is how many actions it has executed; it records the actions."""

    def __init__(self) -> None:
        self.executed: list[float] = []

    def get_observation(self) -> dict:
        return {"observation.state": np.array([len(self.executed)], np.float32)}

    def send_action(self, action: np.ndarray) -> None:
        self.executed.append(float(action[0]))


class PlanningPolicy:
    """Answers an observation taken after n executed actions with the plan [n, n+1, ...]: the action
    meant for step n + i has the value n + i. So an action that runs at the step it was computed for
    has value == its step. `manual`: each answer waits until the test calls `release()`."""

    def __init__(self, chunk: int = 6, manual: bool = False, n_action_steps: int | None = None) -> None:
        self.chunk = chunk
        self.metadata = {"chunk_size": chunk, "n_action_steps": n_action_steps or chunk}
        self.requests: list[dict] = []
        self.manual = manual
        self._go: queue.Queue = queue.Queue()
        self.waiting = threading.Event()

    def infer(self, obs: dict) -> dict:
        self.requests.append(obs)
        if self.manual:
            self.waiting.set()
            self._go.get(timeout=10)
            self.waiting.clear()
        n = int(obs["observation.state"][0])
        return {
            "actions": (n + np.arange(self.chunk, dtype=np.float32))[:, None],
            "timestep": obs["timestep"],
        }

    def release(self) -> None:
        self._go.put(None)


def test_client_imports_without_torch():
    code = (
        "import sys; import smolvla.serving.client, smolvla.serving.robot, smolvla.serving.protocol; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_aggregate_functions_are_lerobots():
    old, new = np.array([1.0]), np.array([2.0])
    got = {k: float(f(old, new)[0]) for k, f in AGGREGATE_FUNCTIONS.items()}
    assert got == pytest.approx(
        {"weighted_average": 1.7, "latest_only": 2.0, "average": 1.5, "conservative": 1.3}
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fps": 0}, "fps: got 0"),
        ({"chunk_size_threshold": 1.5}, "chunk_size_threshold: got 1.5"),
        ({"aggregate_fn_name": "median"}, "aggregate_fn_name: got 'median'"),
        ({"similarity_atol": -1}, "similarity_atol: got -1"),
        ({"mode": "batch"}, "mode: got 'batch'"),
        ({"actions_per_chunk": 0}, "actions_per_chunk: got 0"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RobotClientConfig(**kwargs)


def run_ticks(client: RobotClient, n: int, settle: bool = True) -> None:
    for _ in range(n):
        client.tick()
        if settle:
            client.wait_idle()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_action_runs_at_the_step_it_was_computed_for(mode):
    """The off-by-one of spec §8.8: LeRobot tags the observation with the last executed step, so chunk
    action 0 is always dropped and the robot runs action k+1 at step k. Here action i of a chunk runs
    at step t_obs + i: the executed values are exactly 0, 1, 2, ..."""
    robot, policy = CountingRobot(), PlanningPolicy(chunk=6)
    with RobotClient(robot, policy, RobotClientConfig(mode=mode, similarity_atol=0)) as client:
        run_ticks(client, 40)
    assert robot.executed[:39] == list(range(39))
    assert client.stats.dropped_stale == 0
    if mode == "sync":  # a new chunk every 6 steps, each executed from its first action
        assert [int(r["observation.state"][0]) for r in policy.requests] == list(range(0, 40, 6))


def test_latency_drops_the_stale_actions_only():
    """A chunk that arrives 3 ticks after its observation: its first 3 actions are for steps already
    executed and are dropped; the rest still run at their own steps."""
    robot, policy = CountingRobot(), PlanningPolicy(chunk=10, manual=True)
    cfg = RobotClientConfig(chunk_size_threshold=0.5, aggregate_fn_name="latest_only", similarity_atol=0)
    with RobotClient(robot, policy, cfg) as client:
        client.tick()  # idle, sends the first observation (step 0)
        policy.waiting.wait(5)
        policy.release()
        client.wait_idle()
        for _ in range(5):  # executes 0..4; queue 5 -> 5/10 <= 0.5: sends the observation for step 5
            client.tick()
        assert policy.waiting.wait(5)
        assert [int(r["timestep"]) for r in policy.requests] == [0, 5]
        for _ in range(3):  # steps 5, 6, 7 run from the old chunk while the new one is computed
            client.tick()
        policy.release()
        client.wait_idle()
        assert client.stats.dropped_stale == 3 and client.stats.aggregated == 2  # steps 8, 9
        for _ in range(5):
            client.tick()
        policy.release()  # answer whatever was asked meanwhile
        client.wait_idle()
    assert robot.executed == list(range(len(robot.executed)))


def test_merge_aggregates_overlaps_and_drops_executed():
    robot = CountingRobot()
    client = RobotClient(
        robot, PlanningPolicy(chunk=4), RobotClientConfig(aggregate_fn_name="weighted_average")
    )
    client._merge({"actions": np.zeros((4, 1), np.float32)}, timestep=0, sent_at=0.0)
    client.tick()  # executes step 0
    client.tick()  # executes step 1
    client._merge({"actions": np.ones((4, 1), np.float32)}, timestep=1, sent_at=0.0)
    queued = [(a.timestep, float(a.action[0])) for a in client._queue]
    # step 1 is executed (dropped); 2 and 3 were queued (0.3 * 0 + 0.7 * 1); 4 is new
    assert queued == [(2, pytest.approx(0.7)), (3, pytest.approx(0.7)), (4, 1.0)]
    assert client.stats.dropped_stale == 1 and client.stats.aggregated == 2


def test_observations_wait_for_the_threshold():
    robot, policy = CountingRobot(), PlanningPolicy(chunk=10)
    cfg = RobotClientConfig(chunk_size_threshold=0.3, similarity_atol=0)
    with RobotClient(robot, policy, cfg) as client:
        run_ticks(client, 8)
    # first at step 0 (no chunk yet), then when 3 of 10 are left: after executing step 6
    assert [r["timestep"] for r in policy.requests] == [0, 7]


class StillRobot(CountingRobot):
    """A robot whose state never changes (e.g. blocked)."""

    def get_observation(self) -> dict:
        return {"observation.state": np.zeros(2, np.float32)}


def test_similar_observations_are_filtered_but_must_go_when_empty():
    robot = StillRobot()
    policy = PlanningPolicy(chunk=4)
    policy.metadata["state_normalization"] = {"offset": [0.0, 0.0], "scale": [10.0, 10.0]}
    policy.infer = lambda obs, _p=policy: (
        _p.requests.append(obs),
        {"actions": np.zeros((4, 1), np.float32)},
    )[1]
    with RobotClient(
        robot, policy, RobotClientConfig(chunk_size_threshold=1.0, similarity_atol=0.5)
    ) as client:
        run_ticks(client, 12)
    # chunks of 4; the threshold allows a send every tick, but the state never moves: only must-go
    # observations (queue empty) are sent, one per chunk
    assert client.stats.skipped_similar > 0
    assert len(policy.requests) == 3 and client.stats.idle_ticks == 1


def test_sync_mode_executes_n_action_steps_per_chunk():
    robot, policy = CountingRobot(), PlanningPolicy(chunk=6, n_action_steps=4)
    client = RobotClient(robot, policy, RobotClientConfig(mode="sync"))
    run_ticks(client, 12, settle=False)
    assert [int(r["timestep"]) for r in policy.requests] == [0, 4, 8]
    assert robot.executed == list(range(12))


def test_server_errors_surface_in_the_control_loop():
    class Failing(PlanningPolicy):
        def infer(self, obs):
            raise ServerError("the policy server refused the request: observation.state: shape [1]")

    with RobotClient(CountingRobot(), Failing(), RobotClientConfig()) as client:
        client.tick()
        client.wait_idle()
        with pytest.raises(ServerError, match=r"observation\.state: shape"):
            client.tick()


def test_an_answer_for_another_timestep_is_refused():
    class Confused(PlanningPolicy):
        def infer(self, obs):
            return {**super().infer(obs), "timestep": obs["timestep"] + 1}

    with RobotClient(CountingRobot(), Confused(), RobotClientConfig()) as client:
        client.tick()
        client.wait_idle()
        with pytest.raises(ServerError, match="answer for timestep 1, expected the one sent, 0"):
            client.tick()
