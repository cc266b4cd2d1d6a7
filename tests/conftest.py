"""Shared test set-up: offscreen MuJoCo rendering through EGL, small configs, and thread settings that
do not leak from one test to the next."""

import os
import sys

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_ENV_AT_START = {name: os.environ.get(name) for name in THREAD_ENV}
_torch_threads: list[int] = []  # torch's count before any test changed it


def _torch_default() -> int:
    """What torch starts with in this session: OMP_NUM_THREADS if it was set, else one per CPU."""
    try:
        return max(1, int(_ENV_AT_START["OMP_NUM_THREADS"] or ""))
    except ValueError:
        return len(os.sched_getaffinity(0))


@pytest.fixture(autouse=True)
def _thread_settings_stay_put():
    """Commands run in-process (`main([...])`) set torch's thread count and OMP_NUM_THREADS for their
    process (app/runtime/threads.py); put both back after each test."""
    torch = sys.modules.get("torch")
    if torch is not None and not _torch_threads:
        _torch_threads.append(torch.get_num_threads())
    yield
    for name, value in _ENV_AT_START.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    torch = sys.modules.get("torch")
    if torch is not None:
        if not _torch_threads:  # loaded during this test, perhaps after the test changed the environment
            _torch_threads.append(_torch_default())
        torch.set_num_threads(_torch_threads[0])
