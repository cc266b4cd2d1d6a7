"""Exceptions the drivers raise. Each carries a sentence that names the device and the fix."""


class DeviceError(RuntimeError):
    """A device (arm, bus, camera, simulator) could not do what was asked."""


class DependencyMissing(DeviceError):
    """An optional SDK or system library is not installed."""


class StaleSampleError(DeviceError):
    """A camera frame or joint sample is older than the configured bound."""


class CameraTimeout(DeviceError):
    """No new frame arrived within the timeout."""
