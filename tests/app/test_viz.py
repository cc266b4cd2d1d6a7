"""Rerun views written to real .rrd files and read back with Rerun's own API."""

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rerun.chunk import RrdReader

from app.compose.config import load_config
from app.compose.rig import build_sim_rig
from app.runtime.events import Publisher
from app.runtime.teleop import TeleopSession
from app.viz.logger import SERIES, RerunLogger, Sink, VizConfig, VizError, resolve_sink
from app.viz.plots import summary_png


def columns(rrd: Path) -> dict[str, list]:
    """entity path -> list of (component column name -> values) per non-static chunk."""
    out: dict[str, list] = {}
    for chunk in RrdReader(rrd).stream().to_chunks():
        if chunk.is_static:
            continue
        rb = chunk.to_record_batch()
        wanted = [n for n in rb.schema.names if n not in ("log_time", "time")]  # ns times: not needed here
        out.setdefault(str(chunk.entity_path), []).append({n: rb.column(n).to_pylist() for n in wanted})
    return out


def scalars(rrd: Path, entity: str) -> np.ndarray:
    rows = []
    for batch in columns(rrd)[entity]:
        key = next(k for k in batch if k.endswith("Scalars:scalars"))
        order = np.argsort(batch["tick"]) if "tick" in batch else slice(None)
        rows += [batch[key][i] for i in (order if isinstance(order, np.ndarray) else range(len(batch[key])))]
    return np.array(rows, dtype=np.float64)


class Capture:
    def __init__(self):
        self.actions = []

    def on_step(self, e):
        self.actions.append(e.action.copy())

    def on_episode(self, e):
        pass

    def close(self):
        pass


@pytest.fixture(scope="module")
def teleop_rrd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viz")
    cfg_file = tmp / "config.yaml"
    cfg_file.write_text("cameras:\n  cam_high: {width: 64, height: 48}\n")
    config = load_config(cfg_file)
    rrd = tmp / "teleop.rrd"
    rig = build_sim_rig(config)
    capture = Capture()
    viz = RerunLogger(
        Sink("file", path=rrd), VizConfig(queue_size=10_000), cameras=["cam_high"], with_chunks=True
    )
    chunk = SimpleNamespace(
        chunk_id=5,
        tick_start=40,
        actions=np.linspace(0, 1, 30 * 14).reshape(30, 14),
        prefix_len=3,
        delay_ticks=2,
        latency_ms=81.5,
    )
    rejected = SimpleNamespace(
        chunk_id=9,
        tick_start=80,
        actions=np.full((30, 14), 9.0),
        prefix_len=0,
        delay_ticks=3,
        latency_ms=90.0,
        outcome="rejected",
        problem="beyond the limits (a test chunk)",
    )
    publisher = Publisher([capture, viz])
    report = TeleopSession(rig, 30.0, publisher).run(2, 10.0)
    publisher.chunk(chunk)
    publisher.chunk(rejected)
    publisher.close()
    rig.close()
    return rrd, report, capture, chunk


JOINTS = [(side, joint) for side in ("left", "right") for joint in SERIES]  # the 14-vector's order


def test_cameras_joints_and_sent_actions_are_logged_per_tick(teleop_rrd):
    rrd, report, capture, _ = teleop_rrd
    cols = columns(rrd)
    assert sum(len(b["tick"]) for b in cols["/cameras/cam_high"]) == report.ticks == 600
    sent = np.array(capture.actions)
    for k, (side, joint) in enumerate(JOINTS):  # one joint per view: what was sent, after the safety layer
        got = scalars(rrd, f"/chunks/{side}/{joint}/sent").ravel()
        np.testing.assert_allclose(got, sent[:, k], rtol=0, atol=1e-12)
    np.testing.assert_allclose(scalars(rrd, "/arms/left/sent"), sent[:, :7])


def test_throughput_series_matches_the_success_events(teleop_rrd):
    rrd, report, _, _ = teleop_rrd
    successes = sum(1 for e in report.episodes if e.success)
    assert successes == 2
    assert len(scalars(rrd, "/tasks/success")) == successes
    assert scalars(rrd, "/tasks/per_minute").ravel().tolist() == [2.0]  # 20 s: one (partial) minute


def test_a_predicted_chunk_lands_on_the_ticks_it_covers_one_joint_per_view(teleop_rrd):
    rrd, _, _, chunk = teleop_rrd
    for k in (0, 6, 13):  # left waist, left gripper, right gripper
        side, joint = JOINTS[k]
        batch = columns(rrd)[f"/chunks/{side}/{joint}/predicted/slot{chunk.chunk_id % 4}"][0]
        assert batch["tick"] == list(range(40, 70))
        key = next(k for k in batch if k.endswith("Scalars:scalars"))
        np.testing.assert_allclose(np.array(batch[key]).ravel(), chunk.actions[:, k])
    assert scalars(rrd, "/chunk_timing/latency_ms").ravel().tolist() == [81.5, 90.0]  # its own axis
    assert scalars(rrd, "/chunk_timing/ticks/delay").ravel().tolist() == [2.0, 3.0]


def test_a_rejected_chunk_is_drawn_apart_with_its_reason(teleop_rrd):
    rrd, *_ = teleop_rrd
    batch = columns(rrd)["/chunks/left/waist/rejected"][0]
    assert batch["tick"] == list(range(80, 110))
    texts = [
        str(t) for b in columns(rrd)["/events"] for k, v in b.items() if k.endswith("TextLog:text") for t in v
    ]
    assert any("chunk 9 rejected: beyond the limits" in t for t in texts)


def test_the_blueprint_lays_out_the_documented_views_on_the_tick_timeline(teleop_rrd):
    rrd, *_ = teleop_rrd
    reader = RrdReader(rrd)
    (bp,) = reader.blueprints()
    origins, timelines = set(), set()
    for chunk in reader.stream(store=bp).to_chunks():
        rb = chunk.to_record_batch()
        for name, found in (
            ("ViewBlueprint:space_origin", origins),
            ("TimePanelBlueprint:timeline", timelines),
        ):
            if name in rb.schema.names:
                found.update(str(x) for v in rb.column(name).to_pylist() if v is not None for x in v)
    expected = {"cameras/cam_high", "arms/left", "arms/right", "chunks/left/waist", "chunks/right/gripper",
                "chunk_timing/latency_ms", "chunk_timing/ticks", "loop", "tasks", "counters", "events"}  # fmt: skip
    assert expected <= origins, expected - origins
    assert timelines == {"tick"}


def test_every_series_docs_name_is_in_the_recording(teleop_rrd):
    """docs/runner.md lists the view's entities; a teleop with a policy chunk must have each of them."""
    import re

    rrd, *_ = teleop_rrd
    text = (Path(__file__).resolve().parents[2] / "docs" / "runner.md").read_text()
    section = text.split("## The Rerun view", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:arms|chunks|chunk_timing|tasks|loop|cameras)/[^`<>]+)`", section))
    assert named, "docs/runner.md lists no entities"
    logged = {str(c.entity_path).lstrip("/") for c in RrdReader(rrd).stream().to_chunks() if not c.is_static}
    missing = [n for n in named if not any(p == n or p.startswith(n + "/") for p in logged)]
    assert not missing, f"entities in docs/runner.md but not in the recording: {missing}"


def test_a_slow_sink_never_changes_loop_timing(tmp_path):
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text("cameras:\n  cam_high: {width: 64, height: 48}\ncontrol: {sim_timing: realtime}\n")
    config = load_config(cfg_file)

    class SlowLogger(RerunLogger):
        def _log_step(self, e):
            time.sleep(0.2)  # a viewer on a congested network
            super()._log_step(e)

    class TimedPublisher(Publisher):
        """Measures how long the control thread spends handing each step to the subscribers."""

        def __init__(self, subs):
            super().__init__(subs)
            self.step_ms = []

        def step(self, event):
            t0 = time.perf_counter()
            super().step(event)
            self.step_ms.append((time.perf_counter() - t0) * 1e3)

    def run(with_slow_sink: bool):
        rig = build_sim_rig(config)
        subs = (
            [SlowLogger(Sink("file", path=tmp_path / "slow.rrd"), VizConfig(queue_size=8))]
            if with_slow_sink
            else []
        )
        publisher = TimedPublisher(subs)
        report = TeleopSession(rig, 30.0, publisher).run(1, 1.5)
        publisher.close()
        rig.close()
        return report, subs, publisher

    baseline, _, _ = run(False)
    slow, subs, publisher = run(True)
    assert subs[0].dropped > 0  # the sink really was too slow: viz messages were dropped, counted
    assert slow.ticks == baseline.ticks == 45  # no tick was lost
    # The control thread never waits for the sink: handing a step over stays far below a tick.
    assert np.percentile(publisher.step_ms, 99) < 5.0, publisher.step_ms
    # And the loop's lateness is not made worse by it (margin for a shared machine).
    assert slow.lateness_ms["p99"] < baseline.lateness_ms["p99"] + 20.0, (
        slow.lateness_ms,
        baseline.lateness_ms,
    )


def test_sink_bad_input_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    sink, note = resolve_sink(Sink("spawn"), fallback_file=tmp_path / "x.rrd")
    assert (
        sink == Sink("file", path=tmp_path / "x.rrd")
        and "no display" in note
        and str(tmp_path / "x.rrd") in note
    )
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(VizError, match=f"port {port} is already in use"):
            resolve_sink(Sink("web", port=port), fallback_file=tmp_path / "x.rrd")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(VizError, match="cannot create the folder"):
        resolve_sink(Sink("file", path=blocker / "sub" / "v.rrd"), fallback_file=tmp_path / "x.rrd")
    with pytest.raises(ValueError, match="use off, spawn, web, web:PORT or a FILE.rrd"):
        Sink.parse("viewer")


def test_summary_png_has_the_expected_size(tmp_path):
    from PIL import Image

    path = summary_png(
        tmp_path / "summary.png",
        1800.0,
        [30.0 * k for k in range(1, 40)],
        list(np.random.default_rng(0).normal(90, 10, 500)),
        {"policy": "scripted", "success": "39/39 (100%)"},
    )
    with Image.open(path) as img:
        assert img.size == (1500, 400)


def test_summary_figure_without_successes_starts_its_axis_at_zero_and_states_the_facts():
    import matplotlib.pyplot as plt

    from app.viz.plots import summary_figure

    fig = summary_figure(120.0, [], [40.0, 50.0], {"policy": "…/run/checkpoints/step-001500 (step 1500)"})
    throughput, _, facts = fig.axes
    assert throughput.get_ylim() == (0.0, 1.1)  # not −0.04…0.04 around zero successes
    assert "step 1500" in facts.texts[0].get_text()
    plt.close(fig)


def _logged_ticks(rrd: Path, flush_s: float, ticks: int = 40, footer: bool = False) -> None:
    from app.runtime.events import StepEvent
    from drivers.robot import Observation

    logger = RerunLogger(Sink("file", path=rrd), VizConfig(file_flush_seconds=flush_s, file_footer=footer))
    for k in range(ticks):  # 1.2 s of a 30 Hz loop, no cameras
        s = np.sin(k / 30 + np.arange(14))
        obs = Observation(s, None, None, k * 33_333_333, {}, {}, {})
        logger.on_step(StepEvent(k, k * 33_333_333, 0, 0, obs, None, None, s, 0, 0, False))
        time.sleep(1 / 30)
    logger.close()


def test_a_rrd_file_gets_few_large_chunks_as_configured(tmp_path):
    """Rerun's default batching (0.2 s) writes a chunk per entity five times a second; each costs file
    bytes and SDK memory that is never given back. A file sink batches for viz.file_flush_seconds."""
    _logged_ticks(tmp_path / "slow.rrd", flush_s=60.0)
    _logged_ticks(tmp_path / "fast.rrd", flush_s=0.1)
    assert len(columns(tmp_path / "slow.rrd")["/arms/left/measured"]) == 1  # flushed once, at close
    assert len(columns(tmp_path / "fast.rrd")["/arms/left/measured"]) > 3


def test_a_rrd_file_has_no_footer_unless_asked_and_reads_the_same_either_way(tmp_path):
    """Rerun's SDK holds the footer's manifest (an entry per written chunk) in memory until the file
    closes, so a long session's logging process grew without bound; the default writes none."""
    import warnings

    assert VizConfig().file_footer is False
    _logged_ticks(tmp_path / "plain.rrd", flush_s=0.1)
    _logged_ticks(tmp_path / "footer.rrd", flush_s=0.1, footer=True)

    def footerless(path: Path) -> bool:  # Rerun's reader says so when a file has no manifest
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            RrdReader(path)
        return any("no footer" in str(w.message) for w in caught)

    assert footerless(tmp_path / "plain.rrd") and not footerless(tmp_path / "footer.rrd")
    plain, indexed = columns(tmp_path / "plain.rrd"), columns(tmp_path / "footer.rrd")
    assert set(plain) == set(indexed)
    assert np.vstack(plain["/arms/left/measured"]).shape == np.vstack(indexed["/arms/left/measured"]).shape


def test_a_bad_file_flush_interval_is_named():
    with pytest.raises(ValueError, match="file_flush_seconds"):
        VizConfig(file_flush_seconds=0)


# -- Rerun in a process of its own ---------------------------------------------------------------------------
def _steps(logger, ticks: int, image: np.ndarray | None = None) -> list[np.ndarray]:
    from app.runtime.events import StepEvent
    from drivers.robot import Observation

    sent = []
    for k in range(ticks):
        s = np.sin(k / 30 + np.arange(14))
        images = {"cam_high": image} if image is not None else {}
        obs = Observation(
            s, None, None, k * 33_333_333, images, {n: k for n in images}, {n: k for n in images}
        )
        logger.on_step(StepEvent(k, k * 33_333_333, 0, 0, obs, None, None, s, 0, 0, False))
        sent.append(s)
    return sent


def test_the_logging_process_writes_what_the_loop_sent_and_leaves_the_loop_process_alone(tmp_path):
    from app.viz.logger import RerunProcess

    rrd = tmp_path / "p.rrd"
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    logger = RerunProcess(Sink("file", path=rrd), VizConfig(queue_size=1000), cameras=["cam_high"])
    assert logger.process.pid != os.getpid() and logger.process.is_alive()
    sent = _steps(logger, 60, image)
    logger.close()
    assert logger.error is None and logger.dropped == 0 and logger.logged == 60
    assert not logger.process.is_alive() and logger.process.exitcode == 0
    np.testing.assert_allclose(scalars(rrd, "/arms/left/measured"), np.array(sent)[:, :7], rtol=0, atol=1e-12)
    assert sum(len(b["tick"]) for b in columns(rrd)["/cameras/cam_high"]) == 60


def test_a_logging_process_that_dies_costs_the_loop_nothing_but_its_view(tmp_path):
    from app.viz.logger import RerunProcess

    logger = RerunProcess(Sink("file", path=tmp_path / "d.rrd"), VizConfig(queue_size=4))
    logger.process.kill()
    logger.process.join(10)
    _steps(logger, 20)  # the queue fills and the loss is noticed; nothing raises on the control thread
    assert logger.dropped > 0 and "ended (exit code -9)" in logger.error
    logger.close()


def test_a_sink_the_logging_process_cannot_open_is_one_sentence(tmp_path):
    from app.viz.logger import RerunProcess

    (tmp_path / "dir.rrd").mkdir()  # a folder where the file should be
    with pytest.raises(VizError, match=r"could not open .*dir\.rrd"):
        RerunProcess(Sink("file", path=tmp_path / "dir.rrd"), VizConfig())


def test_the_logging_process_gives_freed_memory_back_at_once(tmp_path, monkeypatch, capfd):
    """Rerun's allocator (mimalloc) starts in the logging process with a purge delay of 0; it prints its
    options when MIMALLOC_VERBOSE is set, so the child's own report is what is checked."""
    from app.viz.logger import RerunProcess

    monkeypatch.setenv("MIMALLOC_VERBOSE", "1")
    monkeypatch.delenv("MIMALLOC_PURGE_DELAY", raising=False)
    logger = RerunProcess(Sink("file", path=tmp_path / "m.rrd"), VizConfig())
    logger.close()
    assert logger.error is None
    assert "option 'purge_delay': 0" in capfd.readouterr().err
