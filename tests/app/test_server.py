"""The policy server and client over real WebSockets on loopback: the wire format, hostile clients, the
token, the health endpoint, and a rollout that survives the server going away."""

import os
import pickle
import threading
import time
import urllib.request
from dataclasses import replace

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from app.runtime.scripted import HoldPolicy
from app.serving.client import PolicyServerError, PolicyUnavailable, RemotePolicy
from app.serving.server import PolicyServer
from app.serving.wire import (
    WireError,
    decode_array,
    decode_request,
    encode_array,
    encode_request,
    pack,
    unpack,
)
from tests.app.runner_helpers import check_commitments, scripted_session, small_config
from xr0.boundary import PolicyObservation

LIMIT = 256 * 1024


class CameraHold(HoldPolicy):
    """Holds, reads cam_high, and remembers what it was sent (to check the wire end to end)."""

    def __init__(self):
        super().__init__()
        self.spec = replace(self.spec, cameras=("cam_high",))
        self.seen = []

    def infer(self, observation, prefix):
        self.seen.append((observation, prefix))
        return super().infer(observation, prefix)


def observation(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = (
        np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    )  # smooth: JPEG-friendly
    return PolicyObservation({"cam_high": image}, rng.normal(size=14), "fold the towel", 123_456_789)


@pytest.fixture
def server():
    policy = CameraHold()
    srv = PolicyServer(policy, "127.0.0.1", 0, token="s3cret", max_request_bytes=LIMIT)
    srv.start()
    yield srv
    srv.stop()


def good_client(srv) -> RemotePolicy:
    return RemotePolicy(srv.url, token="s3cret", timeout_s=5.0)


def raw(srv, token="s3cret"):
    return connect(
        srv.url,
        additional_headers={"Authorization": f"Bearer {token}"},
        proxy=None,
        compression=None,
        max_size=None,
        legacy=True,
    )


def test_wire_round_trip_is_exact_for_arrays_and_close_for_jpeg():
    obs = observation()
    prefix = np.arange(3 * 14, dtype=np.float64).reshape(3, 14) / 7
    message = unpack(encode_request(7, obs, prefix, jpeg_quality=90), 1 << 20)
    rid, back, back_prefix = decode_request(message, CameraHold().spec)
    assert rid == 7 and back.t_ns == obs.t_ns and back.instruction == obs.instruction
    assert np.array_equal(back.state, obs.state) and np.array_equal(back_prefix, prefix)
    img = back.images["cam_high"]
    assert img.shape == (48, 64, 3) and np.abs(img.astype(int) - obs.images["cam_high"]).mean() < 3
    raw_msg = unpack(encode_request(8, obs, prefix, jpeg_quality=None), 1 << 20)
    assert np.array_equal(
        decode_request(raw_msg, CameraHold().spec)[1].images["cam_high"], obs.images["cam_high"]
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"dtype": "|O", "shape": [1], "data": b"x" * 8}, "dtype"),
        ({"dtype": "<f8", "shape": [3], "data": b"\0" * 8}, "length"),
        ({"dtype": "<f8", "shape": [1 << 30], "data": b""}, "shape|elements"),
        ({"dtype": "<f8", "shape": "3", "data": b""}, "shape"),
        # sides within the per-side bound whose product wraps int64 to 0: counted with Python ints
        ({"dtype": "|u1", "shape": [1 << 24, 1 << 24, 1 << 16, 0x10], "data": b""}, "elements"),
        ([1, 2, 3], "array map"),
    ],
)
def test_arrays_are_decoded_only_as_declared(bad, match):
    with pytest.raises(WireError, match=match):
        decode_array(bad, "x")


def test_unpack_refuses_pickle_text_and_extension_types():
    with pytest.raises(WireError):
        unpack(pickle.dumps({"type": "infer"}), 1 << 20)
    with pytest.raises(WireError, match="text"):
        unpack("hello", 1 << 20)
    with pytest.raises(WireError, match="extension"):
        unpack(msgpack.packb({"type": msgpack.ExtType(5, b"x")}), 1 << 20)
    with pytest.raises(WireError, match="limit"):
        unpack(b"\0" * 100, 10)


def test_good_client_gets_chunks_with_timings(server):
    client = good_client(server)
    assert client.spec == server.policy.spec
    obs = observation()
    prefix = np.ones((2, 14))
    chunk = client.infer(obs, prefix)
    assert chunk.actions.shape == (30, 14) and np.array_equal(chunk.actions[:2], prefix)
    for key in ("server_decode", "server_infer", "server_total", "round_trip", "encode", "total"):
        assert key in chunk.timing_ms
    seen_obs, seen_prefix = server.policy.seen[-1]
    assert np.array_equal(seen_obs.state, obs.state) and seen_obs.instruction == "fold the towel"
    client.close()


class Exploit:
    """Unpickling this would create a file: proof that nothing on the server unpickles."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_hostile_messages_get_error_replies_and_the_good_client_keeps_being_served(server, tmp_path):
    good = good_client(server)
    obs = observation()
    marker = tmp_path / "pwned"
    valid = msgpack.unpackb(encode_request(1, obs, np.zeros((1, 14)), 90), raw=False)
    nan_prefix = dict(valid, prefix=encode_array(np.full((1, 14), np.nan)))
    long_prefix = dict(valid, prefix=encode_array(np.zeros((9, 14))))
    no_camera = dict(valid, observation=dict(valid["observation"], images={}))
    bad_state = dict(valid, observation=dict(valid["observation"], state=encode_array(np.zeros(3))))
    hostile = [
        (pickle.dumps(Exploit(str(marker))), "msgpack"),
        (os.urandom(2000), "msgpack|map"),
        ("a text frame", "text"),
        (pack({"type": "shutdown"}), "unknown message type"),
        (pack([1, 2, 3]), "map"),
        (pack(nan_prefix), "NaN"),
        (pack(long_prefix), "at most 6"),
        (pack(no_camera), "cam_high"),
        (pack(bad_state), "observation.state"),
        (
            pack(
                dict(
                    valid,
                    observation=dict(
                        valid["observation"], images={"cam_high": {"codec": "jpeg", "data": b"\xff\xd8junk"}}
                    ),
                )
            ),
            "JPEG",
        ),
    ]
    for shape, what in (((0, 0, 3), "0×0"), ((1, 4000, 3), "4000×1")):
        image = {"codec": "raw", "array": encode_array(np.zeros(shape, np.uint8))}
        msg = dict(valid, observation=dict(valid["observation"], images={"cam_high": image}))
        hostile.append((pack(msg), f"a {what} image is not a camera frame"))
    with raw(server) as ws:
        hello = unpack(ws.recv(timeout=5), 1 << 20)
        assert hello["type"] == "hello" and hello["version"] == 1
        for payload, match in hostile:
            ws.send(payload)
            reply = unpack(ws.recv(timeout=5), 1 << 20)
            assert reply["type"] == "error", payload[:20]
            assert __import__("re").search(match, reply["error"]), (match, reply["error"])
            assert good.infer(obs, np.zeros((0, 14))).actions.shape == (30, 14)  # meanwhile, still served
    assert not marker.exists()
    assert server.rejected >= len(hostile)
    good.close()


def test_oversized_frame_closes_that_connection_only(server):
    good = good_client(server)
    with raw(server) as ws:
        ws.recv(timeout=5)
        ws.send(b"\0" * (LIMIT + 1))
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009  # "message too big"
    assert good.infer(observation(), np.zeros((0, 14))).actions.shape == (30, 14)
    good.close()


def test_wrong_or_missing_token_is_refused_at_the_handshake(server):
    with pytest.raises(InvalidStatus) as e:
        raw(server, token="guess")
    assert e.value.response.status_code == 401
    with pytest.raises(PolicyUnavailable, match="refused the token"):
        RemotePolicy(server.url, token=None)
    good = good_client(server)
    assert good.infer(observation(), np.zeros((0, 14))).actions.shape == (30, 14)
    good.close()


def test_health_endpoint(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
        assert r.status == 200 and r.read() == b"ok\n"


def test_policy_failure_is_an_error_reply_not_a_dead_server(server):
    good = good_client(server)
    original = server.policy.infer
    server.policy.infer = lambda o, p: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
    with pytest.raises(PolicyServerError, match="CUDA out of memory"):
        good.infer(observation(), np.zeros((0, 14)))
    server.policy.infer = original
    assert good.infer(observation(), np.zeros((0, 14))).actions.shape == (30, 14)
    good.close()


def test_unreachable_server_is_one_sentence():
    with pytest.raises(PolicyUnavailable, match="could not reach the policy server at ws://127.0.0.1:9"):
        RemotePolicy("ws://127.0.0.1:9", timeout_s=2.0)


def test_rollout_over_the_wire_survives_the_server_going_away(tmp_path):
    """Lockstep rollout with the scripted policy behind a real server. At tick 60 the server stops: the
    committed chunk runs out, the arms hold (counted), the client keeps retrying; at tick 150 the server
    is back on the same port and the rollout resumes with new chunks."""
    cfg = small_config(tmp_path)
    holder = {}

    def served(scripted):
        holder["srv"] = srv = PolicyServer(scripted, "127.0.0.1", 0)
        srv.start()
        holder["scripted"] = scripted
        return RemotePolicy(srv.url, timeout_s=5.0, reconnect_s=0.05)

    rig, runner, session, log = scripted_session(cfg, make_policy=served)
    session.publisher.subscribers.append(holder["scripted"])  # the served policy follows the task too
    port = holder["srv"].port

    class Outage:
        def on_step(self, e):
            if e.tick == 60:
                holder["srv"].stop()
            if e.tick == 150:
                holder["srv"] = PolicyServer(holder["scripted"], "127.0.0.1", port)
                holder["srv"].start()

    session.publisher.subscribers.append(Outage())
    try:
        session.run(10.0)
    finally:
        holder["srv"].stop()
        runner.policy.close()
        rig.close()
    steps = log.by_tick()
    st = runner.stats
    assert st.inference_errors >= 1
    starved = [k for k, e in steps.items() if e.hold == "starved"]
    assert starved and 60 < starved[0] <= 60 + 30  # the committed chunk finished first
    assert all(steps[k].planned is None for k in starved)
    assert all(np.array_equal(steps[k].action, steps[starved[0]].action) for k in starved if k < 150)  # held
    resumed = [sw for sw in runner.switches if sw.spliced and sw.request.tick >= 150]
    assert resumed, "the client did not reconnect"
    assert runner.policy.reconnects >= 1
    assert any(e.planned is not None for k, e in steps.items() if k > resumed[0].arrival_tick)
    check_commitments(runner, log)


def test_threads_do_not_leak(server):
    before = threading.active_count()
    for _ in range(3):
        c = good_client(server)
        c.infer(observation(), np.zeros((0, 14)))
        c.close()
    assert threading.active_count() <= before + 2


class Overflowing(CameraHold):
    """A policy whose arithmetic overflows on an absurd (but finite) state, as a model's can."""

    def infer(self, observation, prefix):
        chunk = super().infer(observation, prefix)
        with np.errstate(over="ignore"):
            return replace(chunk, actions=chunk.actions + observation.state[0] * 1e10)


def test_the_server_never_sends_a_chunk_it_would_not_execute():
    srv = PolicyServer(Overflowing(), "127.0.0.1", 0, token="s3cret", max_request_bytes=LIMIT)
    srv.start()
    try:
        client = good_client(srv)
        huge = replace(observation(), state=np.full(14, 1e308))  # finite, so the wire accepts it
        with pytest.raises(PolicyServerError, match="unusable chunk .* NaN or inf"):
            client.infer(huge, np.zeros((0, 14)))
        assert client.infer(observation(), np.zeros((0, 14))).actions.shape == (30, 14)
        client.close()
    finally:
        srv.stop()


def test_serving_beyond_loopback_needs_a_token_from_a_file_or_the_environment(tmp_path, capsys, monkeypatch):
    from app.cli.main import main

    monkeypatch.delenv("XR0_POLICY_TOKEN", raising=False)
    assert main(["serve", "--robot", "sim", "--policy", "hold", "--host", "0.0.0.0"]) == 1
    assert "--host 0.0.0.0 opens the policy to the network: set XR0_POLICY_TOKEN" in capsys.readouterr().err
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert main(["serve", "--robot", "sim", "--policy", "hold", "--token-file", str(empty)]) == 1
    assert "is empty" in capsys.readouterr().err


def test_connections_are_capped_and_idle_ones_closed():
    srv = PolicyServer(
        CameraHold(), "127.0.0.1", 0, max_request_bytes=LIMIT, max_connections=2, idle_timeout_s=1.0
    )
    srv.start()
    try:
        with connect(srv.url) as first, connect(srv.url) as second:
            for ws in (first, second):
                assert unpack(ws.recv(timeout=5), 1 << 20)["type"] == "hello"
            with pytest.raises(InvalidStatus) as e:  # a third is refused before its WebSocket opens
                connect(srv.url)
            assert e.value.response.status_code == 503 and b"at most 2 clients" in e.value.response.body
            with pytest.raises(ConnectionClosed) as closed:  # the idle ones are closed after idle_timeout_s
                first.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.reason == "idle"
        time.sleep(0.2)
        with connect(srv.url) as again:  # room again once they are gone
            assert unpack(again.recv(timeout=5), 1 << 20)["type"] == "hello"
    finally:
        srv.stop()


def test_frames_far_larger_than_the_checkpoints_are_refused_before_decoding():
    from xr0.boundary import PolicySpec

    spec = PolicySpec(cameras=("cam_high",), chunk_length=30, max_prefix=6, state_dim=14, fps=30.0,
                      robot_type="aloha", contract={"cameras": [{"name": "cam_high", "height": 240, "width": 320}]})  # fmt: skip
    big = observation(h=960, w=1280)  # 16× the trained area: far beyond the budget (4×, at least 640×480)
    message = msgpack.unpackb(encode_request(1, big, np.zeros((0, 14)), 90), raw=False)
    with pytest.raises(
        WireError, match=r"1280x960 image is outside the accepted size \(at most 307200 pixels\)"
    ):
        decode_request(message, spec)
    ok = msgpack.unpackb(encode_request(2, observation(h=480, w=640), np.zeros((0, 14)), 90), raw=False)
    assert decode_request(ok, spec)[1].images["cam_high"].shape == (480, 640, 3)


class BatchHold(CameraHold):
    """Holds; answers batches together (slowly, so that requests queue up) and refuses a whole batch that
    holds a request for "explode", as a model refuses a batch with one bad input."""

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def infer(self, observation, prefix):
        if observation.instruction == "explode":
            raise ValueError("this request cannot be answered")
        return super().infer(observation, prefix)

    def infer_batch(self, observations, prefixes):
        self.batch_sizes.append(len(observations))
        time.sleep(0.15)
        if any(o.instruction == "explode" for o in observations):
            raise ValueError("the batch holds a bad request")
        return [CameraHold.infer(self, o, p) for o, p in zip(observations, prefixes, strict=True)]


def test_waiting_requests_are_answered_together_each_client_its_own_chunk():
    policy = BatchHold()
    srv = PolicyServer(policy, "127.0.0.1", 0, max_request_bytes=LIMIT, max_batch=8)
    srv.start()
    results, errors = {}, {}

    def client(k: int) -> None:
        c = RemotePolicy(srv.url, timeout_s=10.0)
        try:
            for i in range(4):
                obs = replace(observation(seed=k), instruction="explode" if (k, i) == (3, 1) else "fold")
                prefix = np.full((2, 14), 10.0 * k + i)
                try:
                    results[k, i] = (c.infer(obs, prefix).actions, obs.state)
                except PolicyServerError as e:
                    errors[k, i] = str(e)
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    srv.stop()
    assert max(policy.batch_sizes) > 1 and max(policy.batch_sizes) <= 4  # one request per client at most
    assert set(errors) == {(3, 1)} and "cannot be answered" in errors[3, 1]  # only the bad one failed
    assert len(results) == 15
    for (k, i), (actions, _) in results.items():
        assert np.array_equal(actions, np.full((30, 14), 10.0 * k + i))  # its own prefix, held
    assert srv.served == 15 and srv.batches < 16


def test_the_batch_window_never_delays_a_client_that_is_alone():
    srv = PolicyServer(BatchHold(), "127.0.0.1", 0, max_request_bytes=LIMIT, batch_window_ms=1000)
    srv.start()
    client = RemotePolicy(srv.url, timeout_s=10.0)
    try:
        client.infer(observation(), np.zeros((0, 14)))  # connect and warm up
        t0 = time.perf_counter()
        client.infer(observation(), np.zeros((0, 14)))
        assert time.perf_counter() - t0 < 0.8  # 0.15 s of model time; the 1-s window would show
    finally:
        client.close()
        srv.stop()
