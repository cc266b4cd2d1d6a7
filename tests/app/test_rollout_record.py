"""`xr0 rollout --record`: a policy rollout stored as episodes, with its chunks, and viewed back in Rerun."""

import numpy as np
import pytest
from rerun.chunk import RrdReader

from app.cli.main import main
from recording.reader import EpisodeStore


@pytest.fixture(scope="module")
def rollout_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout")
    cfg = tmp / "config.yaml"
    cfg.write_text("cameras:\n  cam_high: {width: 64, height: 48}\n")
    store = tmp / "rollout.zarr"
    argv = ["rollout", "--config", str(cfg), "--robot", "sim", "--policy", "scripted", "--duration", "15s"]
    assert main([*argv, "--record", str(store), "--summary", str(tmp / "summary.json")]) == 0
    return tmp, cfg, store


def test_rollout_episodes_are_stored_with_their_chunks(rollout_store):
    tmp, _, path = rollout_store
    store = EpisodeStore(path)
    assert len(store.episodes) >= 2 and store.info(store.episodes[0])["success"] is True
    assert (tmp / "summary.png").is_file()  # the end-of-rollout plot beside the summary
    for ep in store.episodes:
        ids, rows = store.get(ep, "policy.chunk_id"), store.get(ep, "policy.chunk_index")
        planned, new_ids = store.get(ep, "policy.planned"), store.get(ep, "policy.new_chunk_id")
        received = {
            int(new_ids[t]): store.get(ep, "policy.new_chunk", int(t)) for t in np.flatnonzero(new_ids >= 0)
        }
        executed = np.flatnonzero(ids >= 0)
        assert len(received) > 0 and len(executed) > 0
        for t in executed:  # every executed action is traceable to (chunk id, row) of a stored chunk
            if int(ids[t]) in received:
                np.testing.assert_array_equal(planned[t], received[int(ids[t])][rows[t]])


def test_dataset_view_draws_the_stored_chunks(rollout_store):
    tmp, cfg, path = rollout_store
    rrd = tmp / "view.rrd"
    assert main(["dataset", "view", "--dataset", str(path), "--config", str(cfg), "--rerun", str(rrd)]) == 0
    entities = {str(c.entity_path) for c in RrdReader(rrd).stream().to_chunks() if not c.is_static}
    assert "/chunks/left/waist/sent" in entities
    assert any(e.startswith("/chunks/right/gripper/predicted/slot") for e in entities)
    assert len(RrdReader(rrd).blueprints()) == 1
