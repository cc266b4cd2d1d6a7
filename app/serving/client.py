"""`RemotePolicy`: the `Policy` boundary over a WebSocket to `xr0 serve` (app/serving/server.py).

It runs in the runner's inference worker, never in the control thread: JPEG compression, the send and the
wait for the answer all happen there. It connects once at construction (so a wrong address fails at start
with a clear sentence) and reads the policy's spec from the server's hello. If the server goes away, the
call raises `PolicyUnavailable`; the runner counts it, finishes the committed chunk and holds, and the next
call reconnects (at most one attempt per `reconnect_s`).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from app.serving.wire import PROTOCOL, VERSION, WireError, decode_actions, decode_spec, encode_request, unpack
from xr0.boundary import Chunk, PolicyObservation, PolicySpec

log = logging.getLogger(__name__)


class PolicyUnavailable(RuntimeError):
    """The policy server cannot be reached, refused us, or went away."""


class PolicyServerError(RuntimeError):
    """The server answered a request with an error sentence."""


class RemotePolicy:
    def __init__(
        self,
        uri: str,
        token: str | None = None,
        jpeg_quality: int | None = 90,
        timeout_s: float = 10.0,
        reconnect_s: float = 1.0,
        max_message_bytes: int = 64 << 20,
    ) -> None:
        self.uri = uri
        self.token = token or None
        self.jpeg_quality = jpeg_quality or None
        self.timeout_s = timeout_s
        self.reconnect_s = reconnect_s
        self.max_message_bytes = max_message_bytes
        self._ws = None
        self._next_id = 0
        self._last_attempt = -1e9
        self.reconnects = 0
        self.spec: PolicySpec = self._connect()

    def _connect(self) -> PolicySpec:
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect

        self._last_attempt = time.monotonic()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = connect(
                self.uri,
                additional_headers=headers,
                compression=None,
                proxy=None,
                open_timeout=self.timeout_s,
                close_timeout=1.0,
                max_size=self.max_message_bytes,
                legacy=True,  # a plain connection object (websockets 17 asks to opt in explicitly)
            )
        except InvalidStatus as e:
            code = e.response.status_code
            why = "refused the token" if code == 401 else f"answered HTTP {code}"
            raise PolicyUnavailable(f"the policy server at {self.uri} {why}") from None
        except InvalidURI:
            raise PolicyUnavailable(f"{self.uri!r} is not a WebSocket address (ws://HOST:PORT)") from None
        except (OSError, TimeoutError, InvalidHandshake) as e:
            raise PolicyUnavailable(f"could not reach the policy server at {self.uri}: {e}") from None
        try:
            hello = unpack(ws.recv(timeout=self.timeout_s), self.max_message_bytes)
            if hello["type"] != "hello" or hello.get("protocol") != PROTOCOL:
                raise WireError(f"expected an {PROTOCOL} hello, got a {hello['type']!r} message")
            if hello.get("version") != VERSION:
                raise WireError(f"the server speaks version {hello.get('version')}, this client {VERSION}")
            spec = decode_spec(hello.get("spec"))
        except (WireError, TimeoutError, OSError) as e:
            ws.close()
            raise PolicyUnavailable(f"the server at {self.uri} is not an xr0 policy server: {e}") from None
        except Exception as e:  # noqa: BLE001 - websockets' ConnectionClosed family
            ws.close()
            raise PolicyUnavailable(f"the server at {self.uri} closed the connection: {e}") from None
        if hasattr(self, "spec"):  # a reconnection: it must still be the same policy
            if spec != self.spec:
                ws.close()
                raise PolicyUnavailable(f"the server at {self.uri} now serves a different policy ({spec})")
            self.reconnects += 1
            log.info("reconnected to the policy server at %s", self.uri)
        self._ws = ws
        return spec

    def _drop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                pass
            self._ws = None

    def close(self) -> None:
        self._drop()

    def infer(self, observation: PolicyObservation, prefix: np.ndarray) -> Chunk:
        from websockets.exceptions import ConnectionClosed

        if self._ws is None:
            wait = self.reconnect_s - (time.monotonic() - self._last_attempt)
            if wait > 0:
                raise PolicyUnavailable(f"not connected to {self.uri}; the next attempt in {wait:.1f} s")
            self._connect()
        t0 = time.perf_counter()
        request_id = self._next_id
        self._next_id += 1
        data = encode_request(request_id, observation, prefix, self.jpeg_quality)
        t1 = time.perf_counter()
        try:
            self._ws.send(data)
            raw = self._ws.recv(timeout=self.timeout_s)
        except TimeoutError:
            self._drop()  # a late answer would arrive out of step with the next request
            raise PolicyUnavailable(
                f"the policy server at {self.uri} did not answer within {self.timeout_s} s"
            ) from None
        except (ConnectionClosed, OSError) as e:
            self._drop()
            raise PolicyUnavailable(
                f"the connection to the policy server at {self.uri} was lost: {e}"
            ) from None
        t2 = time.perf_counter()
        try:
            reply = unpack(raw, self.max_message_bytes)
            if reply["type"] == "error":
                raise PolicyServerError(
                    f"the policy server refused request {request_id}: {reply.get('error')}"
                )
            if reply["type"] != "chunk" or reply.get("id") != request_id:
                raise WireError(
                    f"expected the chunk of request {request_id}, got {reply['type']} {reply.get('id')}"
                )
            actions = decode_actions(reply.get("actions"), "chunk.actions", rows=self.spec.chunk_length)
            timing_in = reply.get("timing_ms") or {}
            timing = {str(k): float(v) for k, v in timing_in.items() if isinstance(v, int | float)}
        except WireError as e:
            self._drop()
            raise PolicyUnavailable(f"the policy server at {self.uri} sent a malformed answer: {e}") from None
        timing.update(
            encode=(t1 - t0) * 1e3, round_trip=(t2 - t1) * 1e3, total=(time.perf_counter() - t0) * 1e3
        )
        return Chunk(actions, timing)
