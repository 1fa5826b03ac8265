"""The robot client: LeRobot's asynchronous inference semantics over our safe protocol.

Needs numpy, msgpack and websockets only (no torch), so it runs on the robot's computer.

    from smolvla.serving.client import PolicyClient, RobotClient, RobotClientConfig
    policy = PolicyClient("ws://127.0.0.1:8000")
    client = RobotClient(robot, policy, RobotClientConfig(task="push the drawer closed", fps=30))
    report = client.run(max_ticks=600, done=lambda: robot.done)

Semantics (LeRobot's `robot_client.py`, spec §5.5), with two of its bugs fixed (spec §8):

- A control loop at `fps` pops one action per tick and sends it to the robot.
- When `queue size / chunk size <= chunk_size_threshold` (g) and no request is in flight, it captures an
  observation and sends it; a background thread waits for the chunk and merges it into the queue.
- Each chunk is tagged with the timestep of the observation it answers: action i of the chunk is for
  timestep `t_obs + i`. Incoming actions for timesteps already executed are dropped; for timesteps
  still queued the old and new actions are merged by the aggregate function (`weighted_average`
  0.3 old + 0.7 new, `latest_only`, `average`, `conservative` 0.7 old + 0.3 new).
- An observation is not sent when its normalized state is within `similarity_atol` (L2) of the last
  one sent, or when no action was executed since, unless the queue is empty ("must go").

The off-by-one fix: LeRobot tags the observation with the timestep of the last *executed* action, so
action 0 of every chunk is always dropped and the robot runs action i+1 at the step action i was
computed for. Here the observation taken after executing step k is tagged k + 1, the step it decides,
and action 0 runs when it is due. The image fix is on the server: frames are letterboxed as in training,
never squashed (see `smolvla.serving.server`); this client sends them at native resolution.

A deadline (`server_timeout_s`): an observation unanswered that long means the server is late; the queue
(planned before it) is dropped, the robot gets nothing until a fresh answer (it holds its last goal), and
the late answer is discarded when it comes. A broken connection raises `ServerUnreachable`.

`mode="sync"` is the synchronous baseline: when the queue is empty, the robot waits for a chunk and
executes its first `n_action_steps` actions (as `SmolVLAPolicy.select_action` does).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import websockets.exceptions
import websockets.sync.client

from smolvla.config import ConfigError
from smolvla.errors import SmolVLAError
from smolvla.serving.protocol import (
    DEFAULT_LIMITS,
    STATE_KEY,
    TASK_KEY,
    Limits,
    ProtocolError,
    packb,
    unpackb,
)

log = logging.getLogger("smolvla.robot")
AggregateFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
AGGREGATE_FUNCTIONS: dict[str, AggregateFn] = {
    "weighted_average": lambda old, new: 0.3 * old + 0.7 * new,
    "latest_only": lambda old, new: new,
    "average": lambda old, new: 0.5 * old + 0.5 * new,
    "conservative": lambda old, new: 0.7 * old + 0.3 * new,
}
MODES = ("async", "sync")


class ServerError(SmolVLAError, RuntimeError):
    """The server answered with an error (a text frame): the message says what it refused."""


class ServerUnreachable(ServerError):
    """The connection to the server broke (or could not be made): nothing it sent can be trusted to come."""


def unreachable(e: BaseException) -> bool:
    """Whether an error means the server cannot be reached now (worth reconnecting), not a refusal."""
    return isinstance(
        e,
        (
            ServerUnreachable,
            OSError,
            TimeoutError,
            EOFError,
            websockets.exceptions.ConnectionClosed,
            websockets.exceptions.InvalidMessage,
        ),
    )


class Policy(Protocol):
    """What the robot client needs from a policy connection (`PolicyClient` is one)."""

    metadata: dict[str, Any]

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]: ...


class PolicyClient:
    """A connection to `smolvla serve` (or any openpi-protocol server): metadata on connect, then
    `infer(obs) -> {"actions": [chunk, action_dim], ...}`. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        open_timeout: float = 10.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.url = url if url.startswith(("ws://", "wss://")) else f"ws://{url}"
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self.limits = limits
        # __enter__ gives the open connection both from websockets < 17 (connect returns it) and from
        # later versions (connect returns a context manager).
        self._ws = websockets.sync.client.connect(
            self.url,
            compression=None,
            max_size=limits.max_message_bytes,
            additional_headers=headers,
            open_timeout=open_timeout,
        ).__enter__()
        self.metadata: dict[str, Any] = self._recv()

    def _recv(self) -> Any:
        msg = self._ws.recv()
        if isinstance(msg, str):
            raise ServerError(f"the policy server refused the request: {msg.removeprefix('error: ')}")
        try:
            return unpackb(msg, self.limits)
        except ProtocolError as e:
            raise ServerError(f"unreadable answer from {self.url}: {e}") from e

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        self._ws.send(packb(obs))
        reply = self._recv()
        if not isinstance(reply, dict) or not isinstance(reply.get("actions"), np.ndarray):
            raise ServerError(f"answer from {self.url} has no 'actions' array: {reply!r:.200}")
        return reply

    def reset(self) -> None:
        """Starts a new episode on the server (clears this connection's state, e.g. RTC's last chunk)."""
        self._ws.send(packb({"__ctrl__": "episode_start"}))
        self._recv()

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class TimedAction:
    timestep: int  # the control step it is for
    action: np.ndarray
    chunk: int  # which received chunk it came from (the latest one when merged)
    # The action queued for this step before this chunk was merged in: what the previous chunk planned
    # (how far the robot's plan moved at a chunk switch; what RTC keeps small).
    replaced: np.ndarray | None = None


@dataclass(frozen=True)
class RobotClientConfig:
    """LeRobot's client defaults (fps 30, g 0.5, weighted_average). `similarity_atol` is the L2
    distance between normalized states under which an observation counts as already answered (LeRobot
    hard-codes 1.0 on raw joints); 0 disables the filter. `actions_per_chunk`: how many actions of each
    chunk to use (None: all of them; in sync mode the server's n_action_steps)."""

    task: str = ""
    fps: float = 30.0
    chunk_size_threshold: float = 0.5
    aggregate_fn_name: str = "weighted_average"
    similarity_atol: float = 0.01
    actions_per_chunk: int | None = None
    mode: str = "async"
    server_timeout_s: float | None = None  # None: wait as long as it takes

    def __post_init__(self) -> None:
        if not isinstance(self.task, str):
            raise ConfigError(f"task: got {type(self.task).__name__}, expected a string")
        if not (isinstance(self.fps, (int, float)) and 0 < self.fps <= 1000):
            raise ConfigError(f"fps: got {self.fps!r}, expected a number in (0, 1000]")
        if not (isinstance(self.chunk_size_threshold, (int, float)) and 0 <= self.chunk_size_threshold <= 1):
            raise ConfigError(
                f"chunk_size_threshold: got {self.chunk_size_threshold!r}, expected a number in [0, 1]"
            )
        if self.aggregate_fn_name not in AGGREGATE_FUNCTIONS:
            raise ConfigError(
                f"aggregate_fn_name: got {self.aggregate_fn_name!r}, "
                f"expected one of {list(AGGREGATE_FUNCTIONS)}"
            )
        if not (isinstance(self.similarity_atol, (int, float)) and self.similarity_atol >= 0):
            raise ConfigError(f"similarity_atol: got {self.similarity_atol!r}, expected a number >= 0")
        if self.actions_per_chunk is not None and (
            not isinstance(self.actions_per_chunk, int) or self.actions_per_chunk < 1
        ):
            raise ConfigError(
                f"actions_per_chunk: got {self.actions_per_chunk!r}, expected a positive integer"
            )
        if self.mode not in MODES:
            raise ConfigError(f"mode: got {self.mode!r}, expected one of {list(MODES)}")
        if self.server_timeout_s is not None and not (
            isinstance(self.server_timeout_s, (int, float)) and 0 < self.server_timeout_s < math.inf
        ):
            raise ConfigError(f"server_timeout_s: got {self.server_timeout_s!r}, expected seconds > 0")


class RobotLike(Protocol):
    def get_observation(self) -> dict[str, np.ndarray]: ...

    def send_action(self, action: np.ndarray) -> Any: ...


@dataclass
class ClientStats:
    ticks: int = 0
    executed: int = 0
    idle_ticks: int = 0  # ticks with an empty queue: the robot waited
    observations_sent: int = 0
    skipped_similar: int = 0
    chunks: int = 0
    dropped_stale: int = 0  # incoming actions for steps already executed
    aggregated: int = 0  # incoming actions merged with a queued one
    late_discarded: int = 0  # answers that came after the deadline, dropped
    holds: int = 0  # times the deadline passed and the robot held
    # observation sent -> answer (merged, or dropped as late)
    latencies_s: list[float] = field(default_factory=list)
    log: list[TimedAction] = field(default_factory=list)  # what the robot executed, in order


class RobotClient:
    """Drives a robot with a policy server (see the module doc). One control thread calls `tick()` or
    `run()`; in async mode a background thread talks to the server."""

    def __init__(self, robot: RobotLike, policy: Policy, config: RobotClientConfig) -> None:
        self.robot, self.policy, self.config = robot, policy, config
        self.aggregate = AGGREGATE_FUNCTIONS[config.aggregate_fn_name]
        meta = policy.metadata if isinstance(policy.metadata, dict) else {}
        norm = meta.get("state_normalization") or None
        self._state_offset = np.asarray(norm["offset"], np.float64) if norm else None
        self._state_scale = np.asarray(norm["scale"], np.float64) if norm else None
        self._n_action_steps = int(meta.get("n_action_steps") or 0) or None
        self._max_delay = int((meta.get("observation") or {}).get("max_inference_delay") or 1024)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.stats = ClientStats()
        self._queue: deque[TimedAction] = deque()
        self._latest = -1  # timestep of the last executed action
        self._chunk_size = -1  # the largest chunk received so far (LeRobot's action_chunk_size)
        self._pending: tuple[dict[str, Any], int, float] | None = None
        self._inflight = False
        self._inflight_since = 0.0
        self._abandoned = False  # the in-flight request passed its deadline: its answer is dropped
        self._error: BaseException | None = None
        self._last_sent_state: np.ndarray | None = None
        self._last_sent_timestep: int | None = None
        self._latency_ewma: float | None = None
        self._request_id = 0
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- the network side (async mode) --------------------------------------------------------------

    def start(self) -> RobotClient:
        if self.config.mode == "async" and self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._network_loop, name="smolvla-client", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> RobotClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _network_loop(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                request, timestep, sent_at = self._pending  # type: ignore[misc]
                self._pending = None
            try:
                reply = self.policy.infer(request)
                self._merge(reply, timestep, sent_at)
            except BaseException as e:  # surfaced in the control thread at its next tick
                with self._wake:
                    self._error, self._inflight = e, False
                return

    def _raise_error(self) -> None:
        e = self._error
        if e is None:
            return
        if isinstance(e, ServerError):
            raise e
        cls = ServerUnreachable if unreachable(e) else ServerError
        raise cls(f"{type(e).__name__}: {e}") from e

    def _merge(self, reply: dict[str, Any], timestep: int, sent_at: float) -> None:
        echoed = reply.get("timestep", timestep)
        if echoed != timestep:  # the answer to another observation: merging it would misplace actions
            raise ServerError(f"answer for timestep {echoed!r}, expected the one sent, {timestep}")
        actions = self._actions(reply)
        with self._lock:
            if self._abandoned:  # computed from an observation older than the deadline: not executed
                self._abandoned, self._inflight = False, False
                self.stats.late_discarded += 1
                took = time.monotonic() - sent_at
                self.stats.latencies_s.append(took)
                log.warning(
                    "server: the answer to timestep %d came after %.2f s, past the %.2f s deadline; dropped "
                    "(if the policy is that slow on its device, raise --safety.server_timeout_s above it)",
                    timestep,
                    took,
                    self.config.server_timeout_s,
                )
                return
        if actions.shape[0] > 0:
            self._chunk_size = max(self._chunk_size, actions.shape[0])
        with self._lock:
            chunk = self.stats.chunks
            self.stats.chunks += 1
            queued = {a.timestep: a for a in self._queue}
            merged: deque[TimedAction] = deque()
            for i, action in enumerate(actions):
                ts = timestep + i
                if ts <= self._latest:  # already executed (or skipped) while the chunk was computed
                    self.stats.dropped_stale += 1
                    continue
                replaced = None
                if ts in queued:
                    replaced = queued[ts].action
                    action = self.aggregate(replaced, action)
                    self.stats.aggregated += 1
                merged.append(TimedAction(ts, action, chunk, replaced))
            # Queued actions the new chunk does not cover are dropped, as in LeRobot.
            self._queue = merged
            latency = time.monotonic() - sent_at
            self.stats.latencies_s.append(latency)
            self._latency_ewma = (
                latency if self._latency_ewma is None else 0.7 * self._latency_ewma + 0.3 * latency
            )
            self._inflight = False

    def _actions(self, reply: dict[str, Any]) -> np.ndarray:
        actions = np.asarray(reply["actions"], dtype=np.float32)
        if actions.ndim != 2:
            raise ServerError(f"actions: got shape {list(actions.shape)}, expected [chunk, action_dim]")
        n = self.config.actions_per_chunk
        if n is None and self.config.mode == "sync":
            n = self._n_action_steps
        return actions[:n] if n else actions

    # -- the control side ---------------------------------------------------------------------------

    def _normalized_state(self, obs: dict[str, Any]) -> np.ndarray | None:
        st = obs.get(STATE_KEY)
        if st is None:
            return None
        st = np.asarray(st, np.float64)
        if self._state_offset is not None and self._state_offset.shape == st.shape:
            return self._state_offset + self._state_scale * st
        return st

    def _request(self, obs: dict[str, Any], timestep: int) -> dict[str, Any]:
        self._request_id += 1
        req = {**obs, TASK_KEY: self.config.task, "timestep": timestep, "request_id": self._request_id}
        if STATE_KEY in req:
            req[STATE_KEY] = np.asarray(req[STATE_KEY], np.float32)
        if self._latency_ewma is not None:  # RTC's d: the steps that run before this answer arrives
            req["inference_delay"] = min(math.ceil(self._latency_ewma * self.config.fps), self._max_delay)
        return req

    def tick(self) -> TimedAction | None:
        """One control step: execute the next queued action (if any), then maybe send an observation.
        Returns the executed action."""
        self._raise_error()
        if self.config.mode == "sync":
            return self._tick_sync()
        self._check_deadline()
        with self._lock:
            action = self._queue.popleft() if self._queue else None
            if action is not None:
                self._latest = action.timestep
            qsize = len(self._queue)
        self.stats.ticks += 1
        if action is not None:
            self.robot.send_action(action.action)
            self.stats.executed += 1
            self.stats.log.append(action)
        else:
            self.stats.idle_ticks += 1
        with self._lock:
            busy = self._inflight
        ready = self._chunk_size <= 0 or qsize / self._chunk_size <= self.config.chunk_size_threshold
        if busy or not ready:
            return action
        timestep = self._latest + 1
        must_go = qsize == 0
        if not must_go and timestep == self._last_sent_timestep:  # nothing executed since the last one
            return action
        obs = self.robot.get_observation()
        state = self._normalized_state(obs)
        if (
            not must_go
            and state is not None
            and self._last_sent_state is not None
            and self.config.similarity_atol > 0
            and float(np.linalg.norm(state - self._last_sent_state)) < self.config.similarity_atol
        ):
            self.stats.skipped_similar += 1
            return action
        self._last_sent_state, self._last_sent_timestep = state, timestep
        request = self._request(obs, timestep)
        with self._wake:
            self._inflight, self._inflight_since = True, time.monotonic()
            self._pending = (request, timestep, self._inflight_since)
            self._wake.notify_all()
        self.stats.observations_sent += 1
        return action

    def _check_deadline(self) -> None:
        timeout = self.config.server_timeout_s
        with self._lock:
            late = (
                timeout is not None
                and self._inflight
                and not self._abandoned
                and time.monotonic() - self._inflight_since > timeout
            )
            if not late:
                return
            self._abandoned = True
            dropped = len(self._queue)
            self._queue.clear()
            self.stats.holds += 1
        log.warning(
            "server: no answer within %.2f s (--safety.server_timeout_s); holding position, %d queued "
            "actions dropped, waiting for a fresh answer",
            timeout,
            dropped,
        )

    def queue_size(self) -> int:
        with self._lock:
            return len(self._queue)

    def _tick_sync(self) -> TimedAction | None:
        self.stats.ticks += 1
        if not self._queue:
            timestep = self._latest + 1
            sent_at = time.monotonic()
            try:
                reply = self.policy.infer(self._request(self.robot.get_observation(), timestep))
            except ServerError:
                raise
            except BaseException as e:
                if not unreachable(e):
                    raise
                raise ServerUnreachable(f"{type(e).__name__}: {e}") from e
            self.stats.observations_sent += 1
            timeout = self.config.server_timeout_s
            if timeout is not None and time.monotonic() - sent_at > timeout:
                with self._lock:
                    self._abandoned = True  # dropped by _merge; the next tick asks again
                self.stats.holds += 1
            self._merge(reply, timestep, sent_at)
        if not self._queue:
            self.stats.idle_ticks += 1
            return None
        action = self._queue.popleft()
        self._latest = action.timestep
        self.robot.send_action(action.action)
        self.stats.executed += 1
        self.stats.log.append(action)
        return action

    def reset(self) -> None:
        """A new episode: empties the queue and the timesteps (call between episodes, not while running)."""
        with self._lock:
            if self._inflight:
                raise RuntimeError("reset: a request is in flight; call it between episodes")
            self._abandoned = False
            self._queue.clear()
            self._latest, self._chunk_size = -1, -1
            self._last_sent_state = self._last_sent_timestep = None
            self.stats = ClientStats()
        reset = getattr(self.policy, "reset", None)
        if callable(reset):
            reset()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Waits for the in-flight request, if any, to be answered."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._inflight:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from the policy server within {timeout} s")
            time.sleep(0.001)

    def run(self, max_ticks: int, done: Callable[[], bool] = lambda: False) -> ClientStats:
        """Ticks at `fps` (real time) until `done()` or `max_ticks`. A tick that overruns (sync mode
        waiting for the server) pushes the schedule back rather than bursting to catch up."""
        period = 1.0 / self.config.fps
        self.start()
        next_t = time.monotonic()
        for _ in range(max_ticks):
            self.tick()
            if done():
                break
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()
        self.wait_idle()
        return self.stats
