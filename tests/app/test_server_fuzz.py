"""A fuzz suite for the policy server: structure-aware mutations of a valid request (every field replaced by
values of the wrong type, absurd sizes, NaN/inf, deleted and extra keys), random bytes and text, sent by
several clients at once beside idle connections and a client that never finishes its handshake — while a
good client keeps asking for chunks. Every message is answered (an error sentence or, for a harmless
mutation, a chunk), nothing ends in a handler traceback, and the server and the good client go on."""

import copy
import logging
import math
import random
import socket
import threading
import time

import msgpack
import numpy as np
from websockets.exceptions import ConnectionClosed

from app.serving.server import PolicyServer
from app.serving.wire import encode_array, encode_request, pack, unpack
from tests.app.test_server import LIMIT, CameraHold, good_client, observation, raw

MESSAGES_PER_ATTACKER = 120
ATTACKERS = 3
VALUES = [
    None, True, -1, 0, 2**31, 2**63, 2**64, -(2**70), 1e308, -1e308, math.nan, math.inf, -math.inf,
    "", "x" * 5000, b"", b"\x00" * 16, [], {}, [1, 2, 3], {"a": 1}, [[[[[]]]]], 3.5,
]  # fmt: skip
SHAPES = [[2**32, 2**32], [2**62, 4], [-1], [0], [0, 0, 3], [1, 4000, 3], [1e9], ["a"], [], [14, 14, 14, 14]]
DTYPES = ["|O", "<U10", "V8", "bogus", "<f2", "<c16", "", None, 7]


def leaves(obj, path=()):
    """Every (path, value) in a nested map/list, maps and lists included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, (*path, i))


def put(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def mutate(valid: dict, rng: random.Random) -> bytes | str:
    kind = rng.random()
    if kind < 0.08:
        return rng.randbytes(rng.randint(0, 3000))
    if kind < 0.12:
        return "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 200)))
    msg = copy.deepcopy(valid)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p, _ in leaves(msg) if p]
        path = rng.choice(paths)
        r = rng.random()
        if path[-1] == "shape" and r < 0.6:
            put(msg, path, rng.choice(SHAPES))
        elif path[-1] == "dtype" and r < 0.6:
            put(msg, path, rng.choice(DTYPES))
        elif path[-1] == "data" and r < 0.5:
            put(msg, path, rng.randbytes(rng.randint(0, 64)))
        elif r < 0.15:  # delete the key
            parent = msg
            for k in path[:-1]:
                parent = parent[k]
            del parent[path[-1]]
        elif r < 0.25:  # an extra key beside it
            parent = msg
            for k in path[:-1]:
                parent = parent[k]
            if isinstance(parent, dict):
                parent[rng.choice(["extra", "__class__", "pickle", 0])] = rng.choice(VALUES)
        else:
            put(msg, path, rng.choice(VALUES))
    try:
        return pack(msg)
    except (TypeError, ValueError, OverflowError):  # not even packable: send it as raw msgpack bytes
        return msgpack.packb(str(msg))


def test_fuzzed_clients_get_answers_and_the_server_and_the_good_client_go_on(caplog):
    caplog.set_level(logging.WARNING)
    policy = CameraHold()
    server = PolicyServer(policy, "127.0.0.1", 0, token="s3cret", max_request_bytes=LIMIT)
    server.start()
    obs = observation()
    valid = msgpack.unpackb(encode_request(1, obs, np.zeros((1, 14)), 90), raw=False)
    valid["prefix"] = encode_array(np.zeros((2, 14)))
    outcomes: dict[str, int] = {"error": 0, "chunk": 0, "closed 1009": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def attacker(seed: int) -> None:
        rng = random.Random(seed)
        ws = raw(server)
        ws.recv(timeout=5)  # hello
        try:
            for _ in range(MESSAGES_PER_ATTACKER):
                payload = mutate(valid, rng)
                try:
                    ws.send(payload)
                    reply = unpack(ws.recv(timeout=20), 1 << 22)
                except ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd is not None else None
                    with lock:
                        if code == 1009:  # an oversized frame: that connection only, by design
                            outcomes["closed 1009"] += 1
                        else:
                            failures.append(f"connection closed with {code} after {payload[:60]!r}")
                    ws = raw(server)
                    ws.recv(timeout=5)
                    continue
                with lock:
                    if reply.get("type") in outcomes:
                        outcomes[reply["type"]] += 1
                    else:
                        failures.append(f"reply {reply!r} to {payload[:60]!r}")
        finally:
            ws.close()

    idle = [raw(server) for _ in range(2)]  # connected, never send
    loris = socket.create_connection(("127.0.0.1", server.port))  # never finishes its handshake
    loris.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    good = good_client(server)
    good_latency_ms: list[float] = []
    stop = threading.Event()

    def good_loop() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            chunk = good.infer(obs, np.zeros((0, 14)))
            good_latency_ms.append((time.perf_counter() - t0) * 1e3)
            if chunk.actions.shape != (30, 14) or not np.all(np.isfinite(chunk.actions)):
                failures.append("the good client got a bad chunk")

    threads = [threading.Thread(target=attacker, args=(seed,)) for seed in range(ATTACKERS)]
    good_thread = threading.Thread(target=good_loop)
    try:
        good_thread.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        stop.set()
        good_thread.join(timeout=30)
        assert not any(t.is_alive() for t in threads) and not good_thread.is_alive()
        assert not failures, failures[:5]
        assert sum(outcomes.values()) == ATTACKERS * MESSAGES_PER_ATTACKER
        assert outcomes["error"] > ATTACKERS * MESSAGES_PER_ATTACKER // 2, outcomes
        # after the attack: still serving, still healthy
        assert good.infer(obs, np.zeros((0, 14))).actions.shape == (30, 14)
        assert len(good_latency_ms) > 10
        tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert not tracebacks, [r.getMessage() for r in tracebacks[:3]]
    finally:
        stop.set()
        good.close()
        loris.close()
        for ws in idle:
            ws.close()
        server.stop()
