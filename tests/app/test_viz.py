"""Rerun views written to real .rrd files and read back with Rerun's own API."""

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rerun.chunk import RrdReader

from app.compose import build_sim_rig
from app.config import VizConfig, load_config
from app.events import Publisher
from app.teleop import TeleopSession
from app.viz import RerunLogger, Sink, VizError, resolve_sink, summary_png


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
    publisher = Publisher([capture, viz])
    report = TeleopSession(rig, 30.0, publisher).run(2, 10.0)
    publisher.chunk(chunk)
    publisher.close()
    rig.close()
    return rrd, report, capture, chunk


def test_cameras_joints_and_committed_actions_are_logged_per_tick(teleop_rrd):
    rrd, report, capture, _ = teleop_rrd
    cols = columns(rrd)
    assert sum(len(b["tick"]) for b in cols["/cameras/cam_high"]) == report.ticks == 600
    committed = scalars(rrd, "/chunks/committed")
    np.testing.assert_allclose(committed, np.array(capture.actions), rtol=0, atol=1e-12)  # what was sent
    left = scalars(rrd, "/arms/left/commanded")
    np.testing.assert_allclose(left, np.array(capture.actions)[:, :7])


def test_throughput_series_matches_the_success_events(teleop_rrd):
    rrd, report, _, _ = teleop_rrd
    successes = sum(1 for e in report.episodes if e.success)
    assert successes == 2
    assert len(scalars(rrd, "/tasks/success")) == successes
    assert scalars(rrd, "/tasks/per_minute").ravel().tolist() == [1.0, 2.0]  # both within the first minute


def test_a_predicted_chunk_lands_on_the_ticks_it_covers(teleop_rrd):
    rrd, _, _, chunk = teleop_rrd
    batch = columns(rrd)[f"/chunks/predicted/slot{chunk.chunk_id % 4}"][0]
    assert batch["tick"] == list(range(40, 70))
    key = next(k for k in batch if k.endswith("Scalars:scalars"))
    np.testing.assert_allclose(np.array(batch[key]), chunk.actions)
    assert scalars(rrd, "/chunks/latency_ms").ravel().tolist() == [81.5]


def test_the_blueprint_is_in_the_file(teleop_rrd):
    rrd, *_ = teleop_rrd
    assert len(RrdReader(rrd).blueprints()) == 1


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

    from app.viz import summary_figure

    fig = summary_figure(120.0, [], [40.0, 50.0], {"policy": "…/run/checkpoints/step-001500 (step 1500)"})
    throughput, _, facts = fig.axes
    assert throughput.get_ylim() == (0.0, 1.1)  # not −0.04…0.04 around zero successes
    assert "step 1500" in facts.texts[0].get_text()
    plt.close(fig)
