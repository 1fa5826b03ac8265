"""`smolvla serve`: one policy behind a WebSocket, for many robot clients at once.

    smolvla serve --policy.path=DIR --host=127.0.0.1 --port=8000 [--api_key_env=VAR] [--rtc.enabled=true]

The protocol is openpi's (see `smolvla.serving.protocol`): metadata on connect, then one answer per
observation: a map with `actions` [chunk_size, action_dim] (unnormalized, float32) and
`server_timing`, or a text frame `error: ...` naming the bad field, after which the connection keeps
going. `{"__ctrl__": "episode_start"}` (openpi-client's `episode_start`) resets the connection's state.

How it differs from LeRobot's policy server (spec §5.4, §8): msgpack instead of pickle, so a message
cannot run code; the policy is loaded once, not at every client handshake; images go through the same
preprocessor as synchronous inference (aspect-preserving resize-with-pad at native resolution) instead
of being squashed to the config's stored shape; the server never sleeps to pad its answers unless asked
to simulate a slower device (`--latency`); it binds to loopback unless told otherwise, and can require an
API key (openpi-client's `Authorization: Api-Key ...` header).

Concurrency: the event loop only moves frames; decoding and checking a message runs on one decode
thread and inference on one inference thread, so requests from different clients are served one at a
time, in arrival order. A connection's next message is not taken until its previous one is answered, so
no client has more than one message in either queue, and the decoder's work per message is bounded
(`protocol.Limits`). After an error answer the connection's next message waits (`ERROR_DELAY_S`,
`ERROR_BYTES_PER_S`), so a client sending garbage back to back cannot take the server from the others.
Each connection has its own state (request count, the previous chunk for RTC).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import http
import itertools
import json
import logging
import math
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import websockets
from websockets.asyncio.server import Request, Response, ServerConnection, serve

from smolvla.config import ConfigError
from smolvla.errors import SmolVLAError
from smolvla.runtime.select import Predictor, load_policy

if TYPE_CHECKING:
    from smolvla.model.rtc import RealTimeChunker, RTCConfig
from smolvla.serving.protocol import (
    CONTROL_KEY,
    Limits,
    ObservationSpec,
    ProtocolError,
    api_key_from_env,
    packb,
    unpackb,
)

log = logging.getLogger("smolvla.serve")
PROTOCOL_VERSION = 1
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# After an error answer a connection's next message is read only this much later: a fixed part, and one
# proportional to the refused message's size. Receiving and refusing garbage costs the server time per
# message and per byte; this caps what one connection sending garbage back to back can take from the
# others (here at most 100 messages/s and 64 MiB/s), while a robot that makes one mistake loses 10 ms.
ERROR_DELAY_S = 0.01
ERROR_BYTES_PER_S = 64 * 2**20


class InferenceEngine:
    """A loaded policy (`smolvla.runtime.Predictor`: torch, ONNX Runtime or OpenVINO) behind the
    server: raw observation -> unnormalized action chunk. Not thread-safe: the server calls it from its
    single inference thread."""

    def __init__(
        self,
        predictor: Predictor,
        rtc: RTCConfig | None = None,
        latency: float = 0.0,
        max_task_chars: int = 1024,
    ) -> None:
        if not (isinstance(latency, (int, float)) and math.isfinite(latency) and latency >= 0):
            raise ConfigError(f"latency: got {latency!r}, expected seconds >= 0")
        if rtc is not None and (predictor.backend != "torch" or predictor.precision == "int8"):
            # RTC's guidance differentiates the denoiser: int8 layers and exported graphs have no gradient
            raise ConfigError(
                f"--rtc.enabled=true: RTC differentiates the policy, which {predictor.backend} "
                f"{predictor.precision} cannot; serve with --policy.backend=torch and "
                "--policy.inference_mode=bf16 or fp32"
            )
        self.predictor = predictor
        self.policy_path: str | None = None  # what --policy.path named, for clients to check against
        self.rtc = rtc
        self.latency = float(latency)
        self.spec = ObservationSpec(
            cameras=tuple(predictor.cameras),
            state_dim=predictor.state_dim,
            empty_cameras=predictor.empty_cameras,
            max_task_chars=max_task_chars,
            max_inference_delay=predictor.chunk_size,
        )

    @classmethod
    def load(
        cls,
        path: str,
        device: str = "cpu",
        num_steps: int | None = None,
        inference_mode: str | None = None,
        backend: str = "torch",
        threads: int | None = None,
        **kwargs: Any,
    ) -> InferenceEngine:
        """`backend` (torch | onnxruntime | openvino | auto) and `inference_mode` (fp32 | bf16 | int8 |
        auto; None: the plain policy for torch, fp32 otherwise): see `smolvla.runtime.load_policy`."""
        if kwargs.get("rtc") is not None and (backend != "torch" or inference_mode in ("auto", "int8")):
            # checked before loading: a refused combination should not cost a minute of loading first
            raise ConfigError(
                f"--rtc.enabled=true: RTC differentiates the policy, so it runs on --policy.backend=torch "
                f"with --policy.inference_mode fp32 or bf16, not {backend} {inference_mode}"
            )
        predictor = load_policy(
            path, backend, inference_mode, device=device, num_steps=num_steps, threads=threads, log=log.info
        )
        engine = cls(predictor, **kwargs)
        engine.policy_path = str(path)
        return engine

    def metadata(self) -> dict[str, Any]:
        p = self.predictor
        return {
            "protocol": "openpi-websocket-msgpack",
            "version": PROTOCOL_VERSION,
            "policy": "smolvla",
            "backend": p.backend,
            "precision": p.precision,
            "chunk_size": p.chunk_size,
            "n_action_steps": p.n_action_steps,
            "action_dim": p.action_dim,
            "camera_shapes": {k: list(v) for k, v in p.cameras.items()},
            "observation": self.spec.to_metadata(),
            "state_normalization": p.state_normalization(),
            # the dataset's action min/max (None without such stats): a robot client's joint limits
            "action_range": p.action_range(),
            "device": p.device,
            "policy_path": self.policy_path,
            "rtc": None
            if self.rtc is None
            else {
                "execution_horizon": self.rtc.execution_horizon,
                "max_guidance_weight": self.rtc.max_guidance_weight,
                "schedule": self.rtc.schedule,
            },
            "simulated_latency_s": self.latency,
        }

    def infer(
        self,
        obs: dict[str, Any],
        seed: int | None = None,
        rtc: RealTimeChunker | None = None,
        timestep: int | None = None,
        inference_delay: int = 0,
    ) -> np.ndarray:
        """Actions [chunk_size, action_dim] float32 for an observation validated by `self.spec`. With
        `rtc` (one per connection) the chunk is guided toward that stream's last chunk. The images go
        through the checkpoint's own preprocessing, as synchronous inference: never a squash to the
        config's stored shape (LeRobot's async path does that, spec §8.6)."""
        t0 = time.perf_counter()
        p = self.predictor
        noise = None if seed is None else p.noise(seed)
        if rtc is not None:
            import torch

            batch = p.preprocess(obs)
            t = None if noise is None else torch.from_numpy(noise)
            actions = p.postprocess(rtc.sample(batch, timestep, inference_delay, noise=t))
        else:
            actions = p.predict_chunk(obs, noise)
        if self.latency:  # stands in for a slower model or device; see `smolvla deploy --latency`
            time.sleep(max(0.0, self.latency - (time.perf_counter() - t0)))
        return actions.astype(np.float32)


@dataclass
class _Connection:
    id: int
    peer: str
    rtc: RealTimeChunker | None = None  # this connection's last chunk, when RTC is on
    requests: int = 0
    errors: int = 0
    prev_total_ms: float | None = None
    read_after: float = 0.0  # time.monotonic() before which its next message is not read (after an error)

    def reset(self) -> None:
        self.prev_total_ms = None
        if self.rtc is not None:
            self.rtc.reset()


def _check_int(name: str, v: Any, lo: int, hi: int, unit: str = "") -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{name}: got {v!r}, expected an integer{unit} in [{lo}, {hi}]")


def _check_seconds(name: str, v: Any, hi: float) -> None:
    # `not 0 < v <= hi` is also true of NaN, which compares false with everything
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= hi:
        raise ConfigError(f"{name}: got {v!r}, expected a finite number of seconds in (0, {hi:g}]")


MAX_MESSAGE_BYTES = 2**30  # past this one message would not fit in a small server's memory
# Messages websockets reads ahead of the handler per connection before it stops reading the socket. A
# robot sends one request and waits for its answer; more read-ahead only holds a flooder's garbage.
MAX_QUEUE = 2


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_message_bytes: int = 16 * 2**20
    idle_timeout: float = 300.0  # a connection that sends nothing for this long is closed
    shutdown_timeout: float = 10.0  # how long SIGTERM waits for in-flight requests
    # Each connection may hold about (MAX_QUEUE + 3) messages of max_message_bytes (queued, being read,
    # being answered): this bounds the server's memory and the decode queue. Connections past it are
    # refused with HTTP 503 at the handshake, so the robots already connected keep their service.
    max_connections: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host: got {self.host!r}, expected an interface name or address")
        _check_int("port", self.port, 0, 65535)
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < 8):
            raise ConfigError("api_key: expected a string of at least 8 characters")
        _check_int("max_message_bytes", self.max_message_bytes, 1024, MAX_MESSAGE_BYTES, " of bytes")
        _check_seconds("idle_timeout", self.idle_timeout, 7 * 86400.0)
        _check_seconds("shutdown_timeout", self.shutdown_timeout, 3600.0)
        _check_int("max_connections", self.max_connections, 1, 10000)

    @staticmethod
    def message_bytes(mb: Any, name: str = "--max_message_mb") -> int:
        """`max_message_bytes` from a size in MiB (the command line's unit), or a ConfigError naming
        `name`: int(nan * 2**20) would otherwise fail with Python's own message."""
        lo, hi = 1024 / 2**20, MAX_MESSAGE_BYTES / 2**20
        if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not lo <= mb <= hi:
            raise ConfigError(f"{name}: got {mb!r}, expected a size in MiB in [{lo:g}, {hi:g}]")
        return int(mb * 2**20)


@dataclass
class _Stats:
    connections: int = 0
    requests: int = 0
    errors: int = 0
    infer_ms: list[float] = field(default_factory=list)


class PolicyServer:
    """Serves an `InferenceEngine` over WebSocket (see the module doc)."""

    def __init__(self, engine: InferenceEngine, config: ServerConfig = ServerConfig()) -> None:
        self.engine = engine
        self.config = config
        self.limits = Limits(max_message_bytes=config.max_message_bytes)
        self.stats = _Stats()
        self.port: int | None = None
        self._ids = itertools.count(1)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smolvla-infer")
        # Decoding and checking a message is Python work on the GIL; on the event loop it would stall
        # every connection for as long as it takes. One thread: a second would only contend for the GIL.
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smolvla-decode")
        self._open = 0  # connections past the handshake
        self._inflight = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._metadata = packb(engine.metadata())

    # -- HTTP before the WebSocket handshake --------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self._open >= self.config.max_connections:
            log.warning("refused %s: %d connections open", connection.remote_address, self._open)
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"server full: {self._open} connections open, at most {self.config.max_connections}\n",
            )
        if self.config.api_key is not None:
            sent = request.headers.get_all("Authorization")
            if len(sent) > 1:  # which one to believe is ambiguous: refuse rather than guess
                log.warning("rejected %s: %d Authorization headers", connection.remote_address, len(sent))
                return connection.respond(
                    http.HTTPStatus.BAD_REQUEST,
                    f"Authorization: got {len(sent)} headers, expected one 'Authorization: Api-Key ...'\n",
                )
            got = sent[0] if sent else ""
            want = f"Api-Key {self.config.api_key}"
            if not hmac.compare_digest(got.encode(), want.encode()):
                log.warning("rejected %s: missing or wrong API key", connection.remote_address)
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    "missing or wrong API key: send 'Authorization: Api-Key ...'\n",
                )
        return None

    # -- one connection -----------------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        rtc = None
        if self.engine.rtc is not None:
            from smolvla.model.rtc import RealTimeChunker

            rtc = RealTimeChunker(self.engine.predictor.policy, self.engine.rtc)
        conn = _Connection(next(self._ids), str(ws.remote_address), rtc)
        self.stats.connections += 1
        self._open += 1
        log.info("connection %d from %s", conn.id, conn.peer)
        try:
            await ws.send(self._metadata)
            while True:
                wait = conn.read_after - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    message = await asyncio.wait_for(ws.recv(), timeout=self.config.idle_timeout)
                except asyncio.TimeoutError:
                    await ws.close(1008, f"idle for {self.config.idle_timeout:g} s")
                    return
                await self._answer(ws, conn, message)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._open -= 1
            log.info(
                "connection %d closed after %d requests (%d errors)", conn.id, conn.requests, conn.errors
            )

    async def _error(self, ws: ServerConnection, conn: _Connection, text: str, size: int = 0) -> None:
        conn.errors += 1
        conn.read_after = time.monotonic() + ERROR_DELAY_S + size / ERROR_BYTES_PER_S
        self.stats.errors += 1
        log.info("connection %d: %s", conn.id, text)
        await ws.send(f"error: {text}")  # a text frame: openpi-client raises it as RuntimeError

    async def _answer(self, ws: ServerConnection, conn: _Connection, message: str | bytes) -> None:
        t0 = time.perf_counter()
        if isinstance(message, str):
            await self._error(ws, conn, "got a text frame, expected a binary msgpack message", len(message))
            return
        loop = asyncio.get_running_loop()
        try:
            ctrl, obs, fields = await loop.run_in_executor(self._decoder, self._decode, message)
        except ProtocolError as e:
            await self._error(ws, conn, str(e), len(message))
            return
        if ctrl is not None:
            await self._control(ws, conn, ctrl)
            return
        timestep = fields.get("timestep")
        queued = time.perf_counter()
        self._inflight += 1
        try:
            started: list[float] = []

            def run() -> np.ndarray:
                started.append(time.perf_counter())
                delay = fields.get("inference_delay", 0)
                return self.engine.infer(obs, fields.get("seed"), conn.rtc, timestep, delay)

            actions = await loop.run_in_executor(self._executor, run)
        except Exception as e:  # the policy refused this input (e.g. a processor check): say why, go on
            log.debug("inference failed: %s", traceback.format_exc())
            await self._error(ws, conn, f"{type(e).__name__}: {e}", len(message))
            return
        finally:
            self._inflight -= 1
        done = time.perf_counter()
        conn.requests += 1
        self.stats.requests += 1
        infer_ms = (done - started[0]) * 1000
        self.stats.infer_ms.append(infer_ms)
        timing = {
            "infer_ms": infer_ms,
            "queue_ms": (started[0] - queued) * 1000,
            "total_ms": (done - t0) * 1000,
        }
        if conn.prev_total_ms is not None:
            timing["prev_total_ms"] = conn.prev_total_ms
        reply: dict[str, Any] = {
            "actions": actions,
            "chunk_index": conn.requests - 1,
            "server_timing": timing,
        }
        for k in ("timestep", "request_id"):
            if k in fields:
                reply[k] = fields[k]
        if conn.rtc is not None and conn.rtc.last_prefix_len:
            reply["rtc_prefix_len"] = conn.rtc.last_prefix_len
        await ws.send(packb(reply))
        conn.prev_total_ms = (time.perf_counter() - t0) * 1000

    def _decode(self, message: bytes) -> tuple[Any, dict[str, Any], dict[str, int]]:
        """(control value or None, observation, request fields), or ProtocolError. Runs on the decode
        thread."""
        msg = unpackb(message, self.limits)
        if isinstance(msg, dict) and CONTROL_KEY in msg:
            return msg[CONTROL_KEY], {}, {}
        obs, fields = self.engine.spec.validate(msg)
        return None, obs, fields

    async def _control(self, ws: ServerConnection, conn: _Connection, ctrl: Any) -> None:
        if ctrl in ("episode_start", "episode_end", "reset"):
            conn.reset()
            await ws.send(packb({"__ack__": ctrl}))
        else:
            await ws.send(packb({"__ack__": "ignored"}))  # what openpi's server answers

    # -- lifetime -----------------------------------------------------------------------------------

    async def run(self, ready: Any = None, handle_signals: bool = True) -> None:
        """Serves until `stop()` (or SIGTERM / SIGINT when `handle_signals`). `ready(port)` is called
        once listening."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                # Windows' event loop has no signal handlers (NotImplementedError), and only the main
                # thread may add them (RuntimeError / ValueError: tests and embedders run the server
                # in a thread). There, `stop()` shuts the server down.
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    self._loop.add_signal_handler(sig, self._stop.set)
        c = self.config
        try:
            listening = await serve(
                self._handler,
                c.host,
                c.port,
                compression=None,
                max_size=c.max_message_bytes,
                max_queue=MAX_QUEUE,
                process_request=self._process_request,
                open_timeout=10,
                close_timeout=5,
            )
        except OSError as e:
            self._executor.shutdown(wait=False)
            self._decoder.shutdown(wait=False)
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port: {c.port} on {c.host} is already in use, expected a free port "
                    "(another server running? pick another with --port, or --port 0 for any free one)"
                ) from None
            raise ConfigError(
                f"host/port: cannot listen on {c.host}:{c.port} ({e.strerror or e}), expected an "
                "address of this machine and a port this user may bind"
            ) from None
        async with listening as server:
            self.port = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready(self.port)
            await self._stop.wait()
            log.info("shutting down: no new connections, finishing %d request(s)", self._inflight)
            server.close(close_connections=False)
            deadline = time.monotonic() + c.shutdown_timeout
            while self._inflight and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            for ws in list(server.connections):
                await ws.close(1001, "server shutting down")
            await server.wait_closed()
        self._executor.shutdown(wait=True)
        self._decoder.shutdown(wait=True)

    def stop(self) -> None:
        """Thread-safe: asks `run()` to shut down gracefully."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


class ServerThread:
    """A `PolicyServer` on a background thread (tests, `smolvla deploy` without a separate server)."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="smolvla-server", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self.server.run(lambda _: self._ready.set(), handle_signals=False))
        except BaseException as e:
            self._error = e
            self._ready.set()

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        started = self._ready.wait(timeout)
        if isinstance(self._error, SmolVLAError):  # bad input (e.g. a port in use): its own one line
            raise self._error
        if not started or self._error is not None:
            raise RuntimeError(f"the policy server did not start: {self._error!r}")
        return self

    @property
    def url(self) -> str:
        return f"ws://{self.server.config.host}:{self.server.port}"

    def stop(self, timeout: float = 30.0) -> None:
        self.server.stop()
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class ServePolicyConfig:
    """The served policy and its speed options (`smolvla deploy sim` passes them to its servers)."""

    path: str | None = None  # checkpoint folder, hub repo id, or an export folder (smolvla export)
    # torch | onnxruntime | openvino | auto (auto: the fastest measured here, see `smolvla info --speed`);
    # a checkpoint asked for onnxruntime or openvino is exported once into the cache
    backend: str = "torch"
    # cpu, cuda, mps (torch); cpu, cuda, tensorrt (onnxruntime); cpu, gpu, npu (openvino)
    device: str = "cpu"
    num_steps: int | None = None  # denoising steps (None: the checkpoint's)
    # fp32 | bf16 | int8 | auto: the precision (None: torch's plain policy, fp32 for the exported backends)
    inference_mode: str | None = None


@dataclass(frozen=True)
class ServeRTCConfig:
    enabled: bool = False  # real-time chunking: guide each chunk toward the previous one
    execution_horizon: int = 10  # actions of the previous chunk the new one is guided toward
    max_guidance_weight: float = 10.0  # the largest weight guidance may take (RTC's beta)
    schedule: str = "linear"  # how guidance decays along the horizon: one of smolvla.model.rtc.SCHEDULES


@dataclass(frozen=True)
class ServeConfig:
    """Serve a SmolVLA policy over WebSocket (openpi's protocol)."""

    policy: ServePolicyConfig = field(default_factory=ServePolicyConfig)
    host: str = "127.0.0.1"  # interface to bind (default: loopback only)
    port: int = 8000  # 0 picks a free port
    # name of an environment variable holding the API key clients must send ('Authorization: Api-Key
    # KEY'); the key itself stays off the command line so `ps` does not show it
    api_key_env: str | None = None
    max_message_mb: float = 16.0  # largest accepted message
    idle_timeout: float = 300.0  # close connections silent this long (s)
    max_connections: int = 32  # past this many, new handshakes get HTTP 503; connected robots keep service
    # pad each inference to at least this many seconds: stands in for a slower model or device
    latency: float = 0.0
    rtc: ServeRTCConfig = field(default_factory=ServeRTCConfig)
    threads: int | None = None  # intra-op threads of the backend (None: its default)
    log_level: str = "INFO"  # DEBUG, INFO, WARNING, ERROR (the server's log on stderr)


def run_server(cfg: ServeConfig) -> None:
    """Loads the policy and serves until SIGINT/SIGTERM; prints one JSON line when listening."""
    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    if not cfg.policy.path:
        raise ConfigError("--policy.path is required: a checkpoint folder or hub repo id")
    api_key = api_key_from_env(cfg.api_key_env)
    if cfg.host not in LOOPBACK:
        log.warning(
            "binding to %s: reachable from other machines%s",
            cfg.host,
            "" if api_key else " WITHOUT an API key",
        )
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ConfigError(f"--threads: got {cfg.threads}, expected a positive integer")
        if cfg.policy.backend in ("torch", "auto"):  # the exported backends take it at loading
            import torch

            torch.set_num_threads(cfg.threads)
    rtc = None
    if cfg.rtc.enabled:
        from smolvla.model.rtc import SCHEDULES, RTCConfig

        if cfg.rtc.schedule not in SCHEDULES:
            raise ConfigError(f"--rtc.schedule: got {cfg.rtc.schedule!r}, expected one of {list(SCHEDULES)}")
        rtc = RTCConfig(cfg.rtc.execution_horizon, cfg.rtc.max_guidance_weight, cfg.rtc.schedule)
    # Checked before the policy loads: a bad limit should not cost a minute of loading first.
    server_config = ServerConfig(
        host=cfg.host,
        port=cfg.port,
        api_key=api_key,
        max_message_bytes=ServerConfig.message_bytes(cfg.max_message_mb),
        idle_timeout=cfg.idle_timeout,
        max_connections=cfg.max_connections,
    )
    p = cfg.policy
    engine = InferenceEngine.load(
        p.path,
        p.device,
        p.num_steps,
        p.inference_mode,
        backend=p.backend,
        threads=cfg.threads,
        rtc=rtc,
        latency=cfg.latency,
    )
    server = PolicyServer(engine, server_config)

    def ready(port: int) -> None:
        # One machine-readable line on stdout: `smolvla deploy` starts a server and reads its port here.
        print(json.dumps({"event": "listening", "url": f"ws://{cfg.host}:{port}"}), flush=True)

    asyncio.run(server.run(ready))
    print(json.dumps({"event": "stopped", "requests": server.stats.requests}), flush=True)
