"""A robot session: a robot (LeRobot's API) driven by a policy server, episode by episode, with the
mapping checked before anything moves, the safety limits on every action, and a record of what happened.

    config = SessionConfig(client=RobotClientConfig(task="pick up the cube"))
    report = RobotSession(robot, lambda: PolicyClient(url), config).run()

What a person next to the arm can rely on:

- nothing moves before the robot's features fit the policy's (`smolvla.serving.mapping`);
- every action passes the step and joint limits (`smolvla.serving.safety`) before the driver;
- the server late past `server_timeout_s`: the queued actions are dropped and the arm holds its last goal
  until a fresh answer; the server gone: the arm holds and the session reconnects every second (or
  ends the episode, `reconnect=False`), and the old queue is never resumed;
- the episode's time limit, Ctrl-C and SIGTERM stop sending actions, then the robot disconnects as its
  driver does (LeRobot's SO arms disable torque unless `--robot.disable_torque_on_disconnect=false`).

The record: per episode a JSON (ticks, per-tick work time and period, action-queue sizes, inference
latencies, holds, reconnects, clamps) and a PNG of the queue and tick times; with a dataset folder, every
tick as a LeRobotDataset v3 frame (the robot's cameras and joints under its own names, the action
executed, the task), as `lerobot-record --policy.path` records evaluation episodes. Recording runs on
its own thread, so video encoding does not hold up the control loop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from smolvla.config import ConfigError
from smolvla.errors import SmolVLAError
from smolvla.io import write_json
from smolvla.serving.client import (
    Policy,
    RobotClient,
    RobotClientConfig,
    ServerUnreachable,
    unreachable,
)
from smolvla.serving.mapping import PolicyFeatures, RobotFeatures, RobotMapping, check_mapping
from smolvla.serving.safety import ActionGuard, SafetyConfig

log = logging.getLogger("smolvla.robot")
RECONNECT_EVERY_S = 1.0
RECORD_QUEUE_S = 10.0  # frames the recorder may fall behind by before the control loop waits for it


@dataclass(frozen=True)
class SessionConfig:
    client: RobotClientConfig = field(default_factory=RobotClientConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    rename_map: dict[str, str] = field(default_factory=dict)
    episode_time_s: float = 60.0
    num_episodes: int = 1
    reset_time_s: float = 10.0  # between episodes: the arm holds while a person resets the scene
    output_dir: str = "outputs/robot_client"
    dataset: str | None = None  # a folder to record into (LeRobotDataset v3); None: no recording
    video_codec: str | None = None
    queue_plot: bool = True
    # what the server must be serving (LeRobot's --pretrained_name_or_path / --policy_device): refused if not
    expect_policy: str | None = None
    expect_device: str | None = None

    def __post_init__(self) -> None:
        for name in ("episode_time_s", "reset_time_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"{name}: got {v!r}, expected seconds >= 0")
        if self.episode_time_s <= 0:
            raise ConfigError(f"episode_time_s: got {self.episode_time_s!r}, expected seconds > 0")
        if (
            isinstance(self.num_episodes, bool)
            or not isinstance(self.num_episodes, int)
            or self.num_episodes < 1
        ):
            raise ConfigError(f"num_episodes: got {self.num_episodes!r}, expected a positive integer")
        if self.dataset is not None and self.client.task == "":
            raise ConfigError(
                "task: empty, but a recorded dataset needs the task of its episodes; pass --task"
            )


class MappedRobot:
    """The robot as `RobotClient` drives it: policy observations in, action vectors out, through the
    mapping and the guard. `observe()` reads the robot once per tick; the client's `get_observation()` in
    the same tick reuses that reading."""

    def __init__(self, robot: Any, mapping: RobotMapping, guard: ActionGuard) -> None:
        self.robot, self.mapping, self.guard = robot, mapping, guard
        self._raw: dict[str, Any] | None = None
        self.sent: np.ndarray | None = None  # the last action the driver reported sending

    def observe(self) -> dict[str, Any]:
        self._raw = dict(self.robot.get_observation())
        return self._raw

    def end_tick(self) -> None:
        self._raw = None

    def get_observation(self) -> dict[str, np.ndarray]:
        raw = self._raw if self._raw is not None else self.robot.get_observation()
        return self.mapping.observation(raw)

    def send_action(self, action: np.ndarray) -> np.ndarray:
        safe = self.guard(action)
        reported = self.robot.send_action(self.mapping.action_dict(safe))
        # LeRobot's drivers report the goal they wrote (after their own max_relative_target); one that
        # reports nothing wrote what it was given
        sent = self.mapping.action_vector(reported if isinstance(reported, dict) else {}, safe)
        self.guard.reset(sent)  # the next step is measured from the goal the motors really got
        self.sent = sent
        return sent


class Recorder:
    """Frames to a `DatasetWriter` on a background thread (video encoding takes milliseconds per frame)."""

    def __init__(
        self, root: Path, features: dict[str, dict[str, Any]], fps: int, robot_type: str, codec: str | None
    ) -> None:
        from smolvla.data import DatasetWriter
        from smolvla.data.format import DEFAULT_FEATURES, INFO_PATH

        if (root / INFO_PATH).is_file():
            self.writer = DatasetWriter.resume(root)
            have = {k: v for k, v in self.writer.features.items() if k not in DEFAULT_FEATURES}
            mismatch = [
                k
                for k in set(features) | set(have)
                if k not in have
                or k not in features
                or list(have[k]["shape"]) != list(features[k]["shape"])
                or have[k].get("names") != features[k].get("names")
            ]
            if mismatch or self.writer.fps != fps:
                self.writer.close()
                raise SmolVLAError(
                    f"dataset {root}: holds other features or fps than this robot records "
                    f"({sorted(mismatch)}; fps {self.writer.fps} vs {fps}); record into a new folder"
                )
            log.info("recording: appending to %s (%d episodes already)", root, self.writer.num_episodes)
        else:
            kwargs = {} if codec is None else {"video_codec": codec}
            self.writer = DatasetWriter.create(
                root, fps=fps, features=features, robot_type=robot_type, **kwargs
            )
            log.info("recording: new dataset %s", root)
        self.root = root
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(RECORD_QUEUE_S * fps)))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="smolvla-recorder", daemon=True)
        self._thread.start()
        self.waits = 0  # times the control loop waited for the recorder

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            kind, payload = item
            try:
                if self._error is None:
                    if kind == "frame":
                        self.writer.add_frame(payload)
                    elif kind == "save":
                        payload.append(self.writer.save_episode())
                    elif kind == "clear":
                        self.writer.clear_episode()
            except BaseException as e:  # surfaced to the control thread at its next call
                self._error = e
            finally:
                if kind != "frame" and isinstance(payload, threading.Event):
                    payload.set()

    def _put(self, item: Any) -> None:
        if self._error is not None:
            raise SmolVLAError(f"recording into {self.root} failed: {self._error}") from self._error
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.waits += 1
            if self.waits == 1:
                log.warning(
                    "recording: the video encoder is %.0f s behind; the control loop waits for it",
                    RECORD_QUEUE_S,
                )
            self._q.put(item)

    def add(self, frame: dict[str, Any]) -> None:
        self._put(("frame", frame))

    def save_episode(self) -> int:
        out: list[int] = []
        self._put(("save", out))
        self._drain()
        if self._error is not None:
            raise SmolVLAError(f"recording into {self.root} failed: {self._error}") from self._error
        return out[0]

    def _drain(self) -> None:
        done = threading.Event()
        self._q.put(("sync", done))
        done.wait()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is None:
            self.writer.finalize()  # joins the per-episode videos
        else:
            self.writer.close()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the session as Ctrl-C does (a service manager's stop, a test harness)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class RobotSession:
    """See the module doc. `connect_policy()` opens a connection to the server (`PolicyClient(url)`);
    it is called again to reconnect."""

    def __init__(self, robot: Any, connect_policy: Callable[[], Policy], config: SessionConfig) -> None:
        self.robot, self.connect_policy, self.config = robot, connect_policy, config
        self.policy: Policy | None = None
        self.mapping: RobotMapping | None = None
        self.guard: ActionGuard | None = None
        self.recorder: Recorder | None = None
        self.out = Path(config.output_dir)
        self._plot = False

    # -- before anything moves ------------------------------------------------------------------------

    def prepare(self) -> RobotMapping:
        """Connects to the server and checks the mapping and the safety settings; the robot is not
        connected yet, so a refusal moves nothing."""
        cfg = self.config
        self.policy = self.connect_policy()
        meta = self.policy.metadata if isinstance(self.policy.metadata, dict) else {}
        self._check_expected(meta)
        features = RobotFeatures.of(self.robot)
        self.mapping = check_mapping(features, PolicyFeatures.from_metadata(meta), cfg.rename_map)
        self.guard = ActionGuard.from_config(cfg.safety, features.action, meta.get("action_range"))
        m = self.mapping
        log.info("robot %s: %s", features.robot_type, features.describe())
        log.info("policy: %s", m.policy.describe())
        log.info("observation.state = %s (the order the dataset was recorded in)", list(features.state))
        for cam, key in m.cameras.items():
            log.info("camera %s -> %s", cam, key)
        log.info("action -> %s", list(features.action))
        for note in m.notes:
            log.info("note: %s", note)
        log.info("safety: %s", self.guard.describe())
        self._plot = cfg.queue_plot and importlib.util.find_spec("matplotlib") is not None
        if cfg.queue_plot and not self._plot:
            log.warning("no queue plots: matplotlib is not installed (pip install matplotlib); JSON only")
        if cfg.dataset is not None:
            fps = cfg.client.fps
            if fps != int(fps):
                raise ConfigError(
                    f"fps: got {fps!r}; a recorded dataset needs a whole number of frames per second"
                )
            self.recorder = Recorder(
                Path(cfg.dataset), features.dataset_features(), int(fps), features.robot_type, cfg.video_codec
            )
        return self.mapping

    def _check_expected(self, meta: dict[str, Any]) -> None:
        cfg = self.config
        served, device = meta.get("policy_path"), meta.get("device")
        if cfg.expect_policy is not None and served != cfg.expect_policy:
            raise ConfigError(
                f"pretrained_name_or_path: got {cfg.expect_policy!r}, but the server serves {served!r}; "
                "start "
                f"`smolvla serve --policy.path={cfg.expect_policy}` or leave the flag out"
            )
        if cfg.expect_device is not None and str(device).split(":")[0] != cfg.expect_device.split(":")[0]:
            raise ConfigError(
                f"policy_device: got {cfg.expect_device!r}, but the server runs the policy on {device!r}; "
                f"the device is the server's: `smolvla serve --policy.device={cfg.expect_device}`, or leave "
                "the flag out"
            )

    # -- the run --------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Every episode; returns the session report (also written as `session.json`)."""
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        episodes: list[dict[str, Any]] = []
        stop = "completed"
        try:
            with _sigterm_as_interrupt():
                if self.mapping is None:
                    self.prepare()
                if not self.robot.is_connected:
                    self.robot.connect()
                    log.info("robot connected")
                for i in range(cfg.num_episodes):
                    ep = self._episode(i)
                    episodes.append(ep)
                    if ep["stop"] != "time limit":
                        stop = ep["stop"]
                        break
                    if i + 1 < cfg.num_episodes and cfg.reset_time_s > 0:
                        log.info(
                            "reset the scene: episode %d starts in %.0f s (the arm holds)",
                            i + 2,
                            cfg.reset_time_s,
                        )
                        time.sleep(cfg.reset_time_s)
        except KeyboardInterrupt:
            stop = "interrupted"
            log.warning("stopped (Ctrl-C or SIGTERM): no more actions; disconnecting")
        except BaseException as e:
            stop = f"error: {type(e).__name__}: {e}"
            raise
        finally:
            self._close()
            report = {
                "stop": stop,
                "episodes": episodes,
                "config": asdict(cfg),
                "mapping": None
                if self.mapping is None
                else {
                    "state": list(self.mapping.robot.state),
                    "cameras": self.mapping.cameras,
                    "action": list(self.mapping.robot.action),
                    "notes": list(self.mapping.notes),
                },
                "dataset": cfg.dataset,
            }
            write_json(self.out / "session.json", report)
        return report

    def _close(self) -> None:
        self._drop_policy()
        if getattr(self.robot, "is_connected", False):
            self.robot.disconnect()
            log.info("robot disconnected (torque as its driver leaves it on disconnect)")
        if self.recorder is not None:
            self.recorder.close()

    def _new_client(self, mapped: MappedRobot) -> RobotClient:
        assert self.policy is not None
        client_cfg = replace(self.config.client, server_timeout_s=self.config.safety.server_timeout_s)
        return RobotClient(mapped, self.policy, client_cfg).start()

    def _connect(self, deadline: float, why: BaseException | None) -> bool:
        """A connection that answers, with the episode started on the server: at once when the current
        one works; else the arm holds while this retries every second, until the episode's time is up
        or at once with `--safety.reconnect=false` (False)."""
        if why is not None:
            log.warning("server unreachable (%s); holding position", why)
        while True:
            try:
                if self.policy is None:
                    self.policy = self.connect_policy()
                    self._check_same_policy()
                    log.info("server reachable again; a fresh observation, the old queue is not resumed")
                self.policy.reset()  # type: ignore[attr-defined]  # the episode starts on the server
                return True
            except Exception as e:
                if not unreachable(e):
                    raise
                err = e
            self._drop_policy()
            if why is None:
                why = err
                log.warning("server unreachable (%s: %s); holding position", type(err).__name__, err)
            if not self.config.safety.reconnect or time.monotonic() + RECONNECT_EVERY_S >= deadline:
                return False
            log.info("reconnecting in %.0f s (%s: %s)", RECONNECT_EVERY_S, type(err).__name__, err)
            time.sleep(RECONNECT_EVERY_S)

    def _check_same_policy(self) -> None:
        assert self.policy is not None and self.mapping is not None
        meta = self.policy.metadata if isinstance(self.policy.metadata, dict) else {}
        now = PolicyFeatures.from_metadata(meta)
        if now != self.mapping.policy:
            raise SmolVLAError(
                f"the server came back with another policy ({now.describe()}, was "
                f"{self.mapping.policy.describe()}); stopping"
            )

    def _drop_policy(self) -> None:
        if self.policy is not None:
            with contextlib.suppress(
                Exception
            ):  # a broken connection may fail to close; it is gone either way
                self.policy.close()  # type: ignore[attr-defined]
        self.policy = None

    def _episode(self, index: int) -> dict[str, Any]:
        cfg, mapping, guard, recorder = self.config, self.mapping, self.guard, self.recorder
        assert mapping is not None and guard is not None
        mapped = MappedRobot(self.robot, mapping, guard)
        guard.reset(mapping.joint_positions(mapped.observe()))
        mapped.end_tick()
        ticks: list[dict[str, Any]] = []
        lat: list[float] = []
        totals = dict.fromkeys(
            ("observations_sent", "chunks", "dropped_stale", "late_discarded", "holds", "skipped_similar"), 0
        )
        reconnects, frames = 0, 0
        period = 1.0 / cfg.client.fps
        log.info("episode %d: %.0f s, task %r", index, cfg.episode_time_s, cfg.client.task)
        start = time.monotonic()
        deadline = start + cfg.episode_time_s
        stop = "time limit"
        client: RobotClient | None = None
        try:
            if self._connect(deadline, None):
                client = self._new_client(mapped)
            else:
                stop = "server unreachable" if not cfg.safety.reconnect else "time limit"
            next_t = last_t = start
            while client is not None and time.monotonic() < deadline:
                t0 = time.monotonic()
                raw = mapped.observe() if recorder is not None else None
                qsize = client.queue_size()
                try:
                    executed = client.tick()
                except ServerUnreachable as e:
                    executed = None
                    self._fold(totals, lat, client)
                    self._drop_policy()  # unblocks the client's network thread
                    client.stop()
                    client = None
                    reconnects += 1
                    if self._connect(deadline, e):
                        client = self._new_client(mapped)
                    elif not cfg.safety.reconnect:
                        stop = "server unreachable"
                if raw is not None:
                    recorder.add(self._frame(raw, mapped, cfg.client.task))  # type: ignore[union-attr]
                    frames += 1
                mapped.end_tick()
                ticks.append(
                    {
                        "t": t0 - start,
                        "work_ms": (time.monotonic() - t0) * 1e3,
                        "period_ms": (t0 - last_t) * 1e3,
                        "queue": qsize,
                        "executed": executed is not None,
                    }
                )
                last_t = t0
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:  # an overrun pushes the schedule back rather than bursting to catch up
                    next_t = time.monotonic()
        except KeyboardInterrupt:
            stop = "interrupted"
            log.warning("stopped (Ctrl-C or SIGTERM): no more actions")
        except BaseException:
            if recorder is not None and frames:  # the frames up to the failure help find its cause
                try:
                    recorder.save_episode()
                    log.warning("the failed episode's %d frames are saved in %s", frames, recorder.root)
                except Exception as e:
                    log.warning("the failed episode's frames could not be saved: %s", e)
            raise
        finally:
            if client is not None:
                self._fold(totals, lat, client)
                if stop == "interrupted":
                    self._drop_policy()  # unblocks the network thread at once
                client.stop()
            mapped.end_tick()
        seconds = time.monotonic() - start
        saved = recorder.save_episode() if recorder is not None and frames else None
        row = self._episode_report(index, stop, seconds, ticks, lat, totals, reconnects, guard, saved)
        write_json(self.out / f"episode_{index:03d}.json", row)
        if self._plot and ticks:
            plot_ticks(ticks, self.out / f"episode_{index:03d}.png", f"episode {index}: {cfg.client.task}")
        p50 = row["inference_latency_ms"]["p50"]
        log.info(
            "episode %d: %s after %.1f s; %d ticks, %d actions (%d clamped), %d chunks, queue p50 %s, "
            "inference p50 %s ms",
            index,
            stop,
            seconds,
            len(ticks),
            row["executed"],
            row["safety"]["actions_clamped"],
            row["chunks"],
            row["queue"]["p50"],
            None if p50 is None else round(p50),
        )
        return row

    @staticmethod
    def _fold(totals: dict[str, int], lat: list[float], client: RobotClient) -> None:
        s = client.stats
        for k in totals:
            totals[k] += getattr(s, k)
        lat.extend(s.latencies_s)

    def _frame(self, raw: dict[str, Any], mapped: MappedRobot, task: str) -> dict[str, Any]:
        m = mapped.mapping
        frame: dict[str, Any] = {
            f"observation.images.{c}": raw[c] for c, s in m.robot.cameras.items() if s[2] == 3
        }
        if m.robot.state:
            frame["observation.state"] = m.state(raw)
        if mapped.sent is not None:
            action = mapped.sent
        else:  # nothing sent yet: the arm is where it is
            action = np.nan_to_num(m.joint_positions(raw)).astype(np.float32)
        frame["action"] = np.asarray(action, np.float32)
        frame["task"] = task
        return frame

    def _episode_report(
        self,
        index: int,
        stop: str,
        seconds: float,
        ticks: list[dict[str, float]],
        lat: list[float],
        totals: dict[str, int],
        reconnects: int,
        guard: ActionGuard,
        saved: int | None,
    ) -> dict[str, Any]:
        work = [t["work_ms"] for t in ticks]
        period = [t["period_ms"] for t in ticks[1:]]
        qs = [t["queue"] for t in ticks]
        executed = sum(1 for t in ticks if t["executed"])
        lat_ms = [x * 1e3 for x in lat]
        return {
            "episode": index,
            "stop": stop,
            "seconds": seconds,
            "fps_target": self.config.client.fps,
            "ticks": len(ticks),
            "executed": executed,
            # ticks the arm got no new action: it held its last goal (waiting for the server)
            "server_waits": len(ticks) - executed,
            "tick_work_ms": {"p50": _pct(work, 50), "p95": _pct(work, 95), "max": max(work, default=None)},
            "tick_period_ms": {
                "p50": _pct(period, 50),
                "p95": _pct(period, 95),
                "max": max(period, default=None),
            },
            "queue": {
                "p50": _pct(qs, 50),
                "min": min(qs, default=None),
                "max": max(qs, default=None),
                "mean": float(np.mean(qs)) if qs else None,
                "empty_ticks": sum(1 for q in qs if q == 0),
            },
            "inference_latency_ms": {
                "p50": _pct(lat_ms, 50),
                "p95": _pct(lat_ms, 95),
                "max": max(lat_ms, default=None),
            },
            **totals,
            "reconnects": reconnects,
            "safety": guard.report(),
            "dataset_episode": saved,
            "recorder_waits": None if self.recorder is None else self.recorder.waits,
        }


def plot_ticks(ticks: list[dict[str, float]], png: Path, title: str) -> None:
    """The action queue and the tick times over the episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [x["t"] for x in ticks]
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    a.step(t, [x["queue"] for x in ticks], where="post")
    a.set_ylabel("actions queued")
    a.grid(alpha=0.3)
    b.plot(t[1:], [x["period_ms"] for x in ticks[1:]], label="tick period")  # the first has no previous
    b.plot(t, [x["work_ms"] for x in ticks], label="tick work")
    b.set_ylabel("ms")
    b.set_xlabel("time (s)")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
