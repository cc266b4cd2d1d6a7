"""A policy behind a WebSocket, for rollouts driven from another machine (a GPU box); `xr0 serve` composes it.

On connect the server sends a versioned hello with the policy's spec (cameras, chunk length, maximum
prefix, fps, robot type); then each binary frame is an `infer` request answered by a `chunk` with the
server's own timings, or by an `error` sentence (app/serving/wire.py). A malformed, hostile or oversized message
gets its error reply (an oversized frame: close code 1009 before it is read) and never disturbs the other
clients. One inference thread answers the requests: when it is free it takes every request waiting (at
most `max_batch`, after waiting up to `batch_window_ms` for more) and answers them together when the
policy can (`infer_batch`: one VLM prefill and one DiT sampling for all), so several robots share one model
at little more than one robot's cost. Each client has at most one request in flight, so a batch holds at
most one request per client: clients take turns, none can starve another. `GET /healthz` answers `ok`.
With a token the WebSocket handshake must carry `Authorization: Bearer TOKEN`, else it is refused with 401.
Importable without torch: the policy it serves is handed in.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

import numpy as np

from app.serving.wire import (
    PROTOCOL,
    VERSION,
    WireError,
    decode_request,
    encode_array,
    encode_spec,
    error_message,
    pack,
    unpack,
)
from xr0.boundary import Chunk, Policy, PolicyObservation

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection
    from websockets.http11 import Request, Response

log = logging.getLogger(__name__)
TOKEN_ENV = "XR0_POLICY_TOKEN"


@dataclass(frozen=True)
class ServerConfig:
    # Address `xr0 serve` binds: 127.0.0.1 accepts this machine only; 0.0.0.0 opens it to the network
    # (then set a token).
    host: str = "127.0.0.1"
    # TCP port of `xr0 serve`.
    port: int = 8765
    # Largest request accepted, MiB (three 320×240 JPEG views are ~0.1 MiB); a larger frame closes the
    # connection with code 1009.
    max_request_mb: float = 16.0
    # JPEG quality of the camera images the client sends (0: raw, lossless, ~10× the bytes).
    jpeg_quality: int = 90
    # Client: seconds to wait for an answer before the request counts as failed (the connection is redone).
    timeout_s: float = 10.0
    # Client: seconds between attempts to reconnect to a server that went away.
    reconnect_s: float = 1.0
    # Server: clients connected at once; more are refused (HTTP 503) before the WebSocket opens.
    max_connections: int = 8
    # Server: a connection that sends nothing for this long is closed (half-open ones are found by pings).
    idle_timeout_s: float = 120.0
    # Server: most requests (robots) answered together in one model pass; 1 answers them one by one.
    max_batch: int = 8
    # Server: after the first waiting request, how long to wait for others to join its batch (ms). 0: take
    # just the ones already waiting — requests queue while the model runs, so batches form without delay.
    batch_window_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"server.port must be 0..65535, got {self.port}")
        if not 0.01 <= self.max_request_mb <= 1024:
            raise ValueError(f"server.max_request_mb must be in [0.01, 1024] MiB, got {self.max_request_mb}")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"server.jpeg_quality must be 0 (raw) or 1..100, got {self.jpeg_quality}")
        if not self.timeout_s > 0 or not self.reconnect_s > 0:
            raise ValueError("server.timeout_s and server.reconnect_s must be > 0 s")
        if not 1 <= self.max_connections <= 1024:
            raise ValueError(f"server.max_connections must be 1..1024, got {self.max_connections}")
        if not self.idle_timeout_s > 0:
            raise ValueError(f"server.idle_timeout_s must be > 0 s, got {self.idle_timeout_s}")
        if not 1 <= self.max_batch <= 256:
            raise ValueError(f"server.max_batch must be 1..256, got {self.max_batch}")
        if not 0 <= self.batch_window_ms <= 1000:
            raise ValueError(f"server.batch_window_ms must be in [0, 1000] ms, got {self.batch_window_ms}")

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)


class PolicyServer:
    """Serves one policy to any number of clients; `start()` runs it in a background thread (tests,
    in-process use), `serve_forever()` in the calling thread."""

    def __init__(
        self,
        policy: Policy,
        host: str = "127.0.0.1",
        port: int = 8765,
        token: str | None = None,
        max_request_bytes: int = 16 << 20,
        max_connections: int = 8,
        idle_timeout_s: float = 120.0,
        max_batch: int = 8,
        batch_window_ms: float = 0.0,
    ) -> None:
        self.policy = policy
        self.host = host
        self.port = port
        self.token = token or None
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.active = 0  # clients connected now
        self.served = 0  # requests answered with a chunk
        self.rejected = 0  # messages answered with an error
        self.connections = 0
        self._hello = pack(
            {"type": "hello", "protocol": PROTOCOL, "version": VERSION, "spec": encode_spec(policy.spec)}
        )
        # One inference thread that answers the waiting requests together (arrival order; each client has
        # at most one in flight, so clients take turns); decoding runs on its own threads, so one client's
        # large images never hold the model up for the others.
        self.batches = 0  # model passes; served / batches is the mean batch size
        self._batcher = _Batcher(self._infer_many, max_batch, batch_window_ms / 1e3, lambda: self.active)
        self._decoders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="policy-decode")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._warn_lock = threading.Lock()
        self._warned_at, self._warnings_held = -1e9, 0

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve in this (main) thread until SIGINT or SIGTERM, which stop it cleanly: the listening socket
        closes, open connections are closed, and the inference thread is released."""
        try:
            asyncio.run(self._main(stop_on_signals=True))
        finally:
            self._batcher.close()
            self._decoders.shutdown(wait=False, cancel_futures=True)

    def start(self, timeout_s: float = 10.0) -> int:
        """Serve from a background thread; returns the bound port (useful with port 0)."""
        self._thread = threading.Thread(target=self._thread_main, name="policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the policy server did not start within {timeout_s} s")
        if self._failure is not None:
            raise self._failure
        return self.port

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._failure = e
            self._ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._batcher.close()
        self._decoders.shutdown(wait=False, cancel_futures=True)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def _main(self, stop_on_signals: bool = False) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if stop_on_signals:  # a stop, not a KeyboardInterrupt thrown into whatever the loop was awaiting
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stop.set)
        async with serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.max_request_bytes,
            compression=None,  # images are JPEG already; deflate would only cost CPU
            open_timeout=10,  # a client that never finishes its handshake is dropped
            ping_interval=20,  # half-open connections (a client that vanished) are found and closed
            ping_timeout=20,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            log.info(
                "serving the policy on %s (health: http://%s:%d/healthz)", self.url, self.host, self.port
            )
            self._ready.set()
            await self._stop.wait()

    def _warn(self, message: str) -> None:
        """A warning at most every 5 s; the ones held back are counted in the next (a hostile client
        must not flood the log)."""
        now = time.monotonic()
        with self._warn_lock:
            if now - self._warned_at < 5.0:
                self._warnings_held += 1
                log.debug(message)
                return
            held, self._warnings_held, self._warned_at = self._warnings_held, 0, now
        log.warning(message + (f" ({held} similar suppressed)" if held else ""))

    # -- HTTP: health and authentication -------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if self.active >= self.max_connections:
            self.rejected += 1
            self._warn(f"refused a client: {self.active} are connected (server.max_connections)")
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the server serves at most {self.max_connections} clients at once (server.max_connections)\n",
            )
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                self.rejected += 1
                self._warn("refused a client with a missing or wrong token")
                return connection.respond(
                    HTTPStatus.UNAUTHORIZED, "a valid token is required (Authorization: Bearer TOKEN)\n"
                )
        return None

    # -- WebSocket ---------------------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        from websockets.exceptions import ConnectionClosed

        self.connections += 1
        self.active += 1
        peer = ws.remote_address
        log.info("client %s connected", peer)
        loop = asyncio.get_running_loop()
        try:
            await ws.send(self._hello)
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
                except TimeoutError:
                    log.info("client %s idle for %.0f s: closing", peer, self.idle_timeout_s)
                    await ws.close(1000, "idle")
                    break
                decoded = await loop.run_in_executor(self._decoders, self._decode, message, peer)
                if isinstance(decoded, bytes):  # an error reply: nothing to infer
                    reply = decoded
                else:
                    reply = await asyncio.wrap_future(self._batcher.submit(decoded))
                await ws.send(reply)
        except ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code == 1009 or (e.sent is not None and e.sent.code == 1009):
                self.rejected += 1
                log.warning(
                    "client %s sent a frame over %d bytes; connection closed", peer, self.max_request_bytes
                )
        finally:
            self.active -= 1
            log.info("client %s disconnected", peer)

    def _answer(self, data: bytes | str, peer: object) -> bytes:
        """Decode, infer, encode in one call (tests and in-process use; the server splits the two)."""
        decoded = self._decode(data, peer)
        return decoded if isinstance(decoded, bytes) else self._infer_many([decoded])[0]

    def _decode(
        self, data: bytes | str, peer: object
    ) -> bytes | tuple[int, PolicyObservation, np.ndarray, float, float]:
        """The request checked against the served policy's spec, on a decoding thread: (id, observation,
        prefix, t0, t1) to infer, or the error reply (bytes) for a bad message."""
        t0 = time.perf_counter()
        request_id = None
        try:
            message = unpack(data, self.max_request_bytes)
            if message["type"] != "infer":
                raise WireError(f"unknown message type {message['type']!r}; the server answers 'infer'")
            request_id, observation, prefix = decode_request(message, self.policy.spec)
        except WireError as e:
            self.rejected += 1
            self._warn(f"rejected a message from {peer}: {e}")
            return error_message(str(e), request_id)
        except Exception as e:  # noqa: BLE001 - never a handler traceback for a malformed message
            self.rejected += 1
            self._warn(f"rejected a malformed message from {peer} ({type(e).__name__})")
            return error_message(f"the message is malformed ({type(e).__name__})", request_id)
        return request_id, observation, prefix, t0, time.perf_counter()

    def _infer_many(
        self, requests: list[tuple[int, PolicyObservation, np.ndarray, float, float]]
    ) -> list[bytes]:
        """The policy's answers to a batch of requests, each checked, on the one inference thread. A batch
        the policy refuses as a whole is answered request by request, so one bad request costs only its own
        answer."""
        t_start = time.perf_counter()
        self.batches += 1
        infer_batch = getattr(self.policy, "infer_batch", None)
        if len(requests) > 1 and infer_batch is not None:
            try:
                chunks = infer_batch([r[1] for r in requests], [r[2] for r in requests])
            except Exception:  # noqa: BLE001 - answered one by one below, each with its own sentence
                log.debug(
                    "a batch of %d failed; answering its requests one by one", len(requests), exc_info=True
                )
            else:
                return [
                    self._reply(r, chunk, t_start, len(requests))
                    for r, chunk in zip(requests, chunks, strict=True)
                ]
        replies = []
        for r in requests:
            t_one = time.perf_counter()
            try:
                outcome: Chunk | Exception = self.policy.infer(r[1], r[2])
            except Exception as e:  # noqa: BLE001 - the client gets the sentence, the server keeps serving
                log.exception("the policy failed on request %s", r[0])
                outcome = e
            replies.append(self._reply(r, outcome, t_one, 1))
        return replies

    def _reply(
        self,
        request: tuple[int, PolicyObservation, np.ndarray, float, float],
        outcome: Chunk | Exception,
        t_start: float,
        batch: int,
    ) -> bytes:
        """The chunk message for one request, or its error sentence; the server checks its own output."""
        request_id, _, _, t0, t1 = request
        if isinstance(outcome, Exception):
            return error_message(f"the policy failed: {type(outcome).__name__}: {outcome}", request_id)
        chunk = outcome
        actions = np.asarray(chunk.actions, dtype=np.float64)
        spec = self.policy.spec
        if actions.shape != (spec.chunk_length, 14) or not np.all(np.isfinite(actions)):
            # the server checks its own output: a chunk it would not execute itself is never sent
            self.rejected += 1
            self._warn(f"the policy's answer to request {request_id} was unusable ({actions.shape}, finite: "
                       f"{bool(np.all(np.isfinite(actions)))}); an error was sent instead")  # fmt: skip
            return error_message(
                f"the policy produced an unusable chunk for this observation (shape {actions.shape}, "
                f"{'finite' if np.all(np.isfinite(actions)) else 'NaN or inf'}); nothing was sent",
                request_id,
            )
        t2 = time.perf_counter()
        timing = {f"policy_{k}": float(v) for k, v in chunk.timing_ms.items()}
        timing.update(
            server_decode=(t1 - t0) * 1e3,
            server_wait=(t_start - t1) * 1e3,
            server_infer=(t2 - t_start) * 1e3,
            server_batch=float(batch),
        )
        reply = {"type": "chunk", "id": request_id, "actions": encode_array(actions), "timing_ms": timing}
        timing["server_total"] = (time.perf_counter() - t0) * 1e3
        self.served += 1
        return pack(reply)


class _Batcher:
    """One inference thread: when free, it takes the requests waiting (up to `max_batch`, waiting up to
    `window_s` for more after the first, but never for more than `clients()` — each client has at most one
    request in flight, so once every connected client is in the batch nobody else can join) and answers
    them with one call of `answer`."""

    def __init__(
        self,
        answer: Callable[[list], list[bytes]],
        max_batch: int,
        window_s: float,
        clients: Callable[[], int] = lambda: 1 << 30,
    ) -> None:
        self._answer, self._max, self._window, self._clients = answer, max_batch, window_s, clients
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="policy", daemon=True)
        self._thread.start()

    def submit(self, request: tuple) -> Future:
        future: Future = Future()
        self._queue.put((request, future))
        return future

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, closing = [first], False
            deadline = time.perf_counter() + self._window
            while len(batch) < self._max:
                remaining = deadline - time.perf_counter()
                if remaining > 0 and len(batch) >= self._clients():
                    remaining = 0.0  # every connected client is in: take only what is queued already
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            live = [(r, f) for r, f in batch if f.set_running_or_notify_cancel()]
            try:
                replies = self._answer([r for r, _ in live]) if live else []
            except BaseException as e:  # noqa: BLE001 - every waiting client is answered, never left hanging
                for _, f in live:
                    f.set_exception(e)
            else:
                for (_, f), reply in zip(live, replies, strict=True):
                    f.set_result(reply)
            if closing:
                break
