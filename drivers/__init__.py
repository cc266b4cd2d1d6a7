"""Hardware and simulation behind small interfaces: arms, cameras, the clock, the simulated ALOHA.

A leaf layer: nothing here imports torch, zarr, rerun or any other project package. Optional SDKs
(dynamixel-sdk, pyrealsense2, mujoco) are imported inside the functions that need them.
"""
