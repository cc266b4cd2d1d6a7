"""Shared test set-up: offscreen MuJoCo rendering through EGL, and small configs."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
