"""Normalisation statistics: one streaming pass, checked against numpy on the whole data."""

import numpy as np
import pytest

from recording.reader import EpisodeStore
from recording.stats import NormStats, RunningStats, compute_stats, relative_windows, write_stats
from recording.writer import StoreWriter
from tests.recording.synthetic import make_spec, make_step


def test_running_stats_match_numpy_over_batches_whose_range_grows():
    rng = np.random.default_rng(0)
    # Batches with growing spread force the histograms to be re-binned several times.
    batches = [rng.normal(loc=i, scale=1 + 3 * i, size=(200 + 50 * i, 3)) for i in range(6)]
    rs = RunningStats()
    for b in batches:
        rs.update(b)
    data = np.concatenate(batches)
    r = rs.result()
    assert r["count"] == len(data)
    np.testing.assert_allclose(r["mean"], data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(r["std"], data.std(0), rtol=1e-10)
    np.testing.assert_array_equal(r["min"], data.min(0))
    np.testing.assert_array_equal(r["max"], data.max(0))
    for q, key in ((0.01, "q01"), (0.99, "q99")):  # the estimate's rank in the data is within 0.2 %
        rank = (data <= np.array(r[key])).mean(axis=0)
        assert np.all(np.abs(rank - q) < 0.002), (key, rank)


def test_running_stats_reject_nan():
    with pytest.raises(ValueError, match="NaN"):
        RunningStats().update(np.array([[1.0], [np.nan]]))


def test_store_stats_are_computed_stored_and_loaded(tmp_path):
    path = tmp_path / "s.zarr"
    spec = make_spec(cameras={})
    rng = np.random.default_rng(1)
    with StoreWriter(path, spec) as w:
        for n in (40, 25):
            ep = w.begin_episode({"task": "t"})
            for t in range(n):
                ep.append(make_step(spec, t, rng))
            ep.commit()
    store = EpisodeStore(path)
    stats = compute_stats(store, relative_horizon=6)
    write_stats(path, stats)

    loaded = EpisodeStore(path).stats
    assert loaded["episodes"] == 2 and loaded["steps"] == 65
    assert set(loaded["keys"]) == {
        "observation.state",
        "observation.velocity",
        "observation.effort",
        "action",
        "leader.action",
    }
    actions = np.concatenate([store.get(e, "action") for e in store.episodes])
    ns = NormStats.from_dict(loaded["keys"]["action"])
    np.testing.assert_allclose(ns.mean, actions.mean(0), rtol=1e-10)
    np.testing.assert_allclose(ns.std, actions.std(0), rtol=1e-10)

    # Relative chunks use the reader's padding rule: a window past the end repeats the last action.
    rel = loaded["relative_action"]
    assert rel["shape"] == [6, 14] and rel["horizon"] == 6 and rel["relative_to"] == "observation.state"
    windows = []
    for e in store.episodes:
        for t in range(store.length(e)):
            a, _ = store.window(e, "action", t, 6)
            windows.append(a - store.get(e, "observation.state", t))
    want = np.stack(windows)
    rel_stats = NormStats.from_dict(rel, shape=(6, 14))
    np.testing.assert_allclose(rel_stats.mean, want.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rel_stats.max, want.max(0))
    a, s = store.get(0, "action"), store.get(0, "observation.state")
    assert np.array_equal(relative_windows(a, s, 6)[-1, 3], a[-1] - s[-1])
