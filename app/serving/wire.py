"""The policy wire format: msgpack messages with explicitly typed numpy arrays, never pickle.

Every message is one binary WebSocket frame holding a msgpack map with a string `type`:

    server → client, on connect   {type: hello, protocol: "xr0-policy", version: 1, spec: {...}}
    client → server               {type: infer, id, observation: {state, t_ns, instruction, images}, prefix}
    server → client               {type: chunk, id, actions, timing_ms: {...}}
                                  {type: error, id, error: "one sentence"}

An array is a map {dtype, shape, data}: `dtype` is one of a short list of numeric dtypes (no objects, so
nothing can execute on decode), `shape` a list of ints, `data` the raw little-endian bytes, whose length
must match. Images travel JPEG-compressed ({codec: jpeg, data}) or raw ({codec: raw, array}); decoded
sizes are bounded before decoding. Decoding follows the schema: each field is checked for its type,
dtype, shape and finiteness, and any violation raises `WireError` with a sentence naming the field.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from xr0.boundary import PRIVILEGED, PolicyObservation, PolicySpec

PROTOCOL = "xr0-policy"
VERSION = 1
# dtypes an array may have on the wire (little-endian numeric only).
DTYPES = {"|u1": np.uint8, "<f4": np.float32, "<f8": np.float64, "<i4": np.int32, "<i8": np.int64}
MAX_IMAGE_PIXELS = 4096 * 4096
MIN_IMAGE_SIDE = 8  # pixels: smaller frames are not camera images (and break image processors)
MAX_IMAGE_ASPECT = 8.0  # width/height (or height/width) beyond this is not a camera frame
MAX_INSTRUCTION = 2000


class WireError(ValueError):
    """A message does not follow the wire format; the text says which field and why."""


# -- messages ------------------------------------------------------------------------------------------------
def pack(message: dict) -> bytes:
    import msgpack

    return msgpack.packb(message, use_bin_type=True)


def unpack(data: bytes | str, max_bytes: int) -> dict:
    """One received frame -> a message map with a string `type`."""
    import msgpack

    if isinstance(data, str):
        raise WireError("text frames are not accepted: send msgpack in binary frames")
    if len(data) > max_bytes:
        raise WireError(f"the message has {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, ext_hook=_no_ext)
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for malformed input
        raise WireError(f"the message is not valid msgpack ({type(e).__name__})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise WireError("a message must be a msgpack map with a string 'type'")
    return message


def _no_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension types are not accepted (got ext type {code})")


def error_message(text: str, request_id: int | None = None) -> bytes:
    return pack({"type": "error", "id": request_id, "error": text})


# -- arrays ----------------------------------------------------------------------------------------------------
def encode_array(a: np.ndarray) -> dict:
    a = np.asarray(a)
    dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    if dtype.str not in DTYPES:
        raise WireError(f"arrays of dtype {a.dtype} cannot be sent; use one of {', '.join(DTYPES)}")
    return {
        "dtype": dtype.str,
        "shape": list(a.shape),
        "data": np.ascontiguousarray(a, dtype=dtype).tobytes(),
    }


def decode_array(obj: Any, where: str, ndim: int | None = None, max_elements: int = 1 << 24) -> np.ndarray:
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise WireError(f"{where}: expected an array map with dtype, shape and data")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if dtype not in DTYPES:
        raise WireError(f"{where}: dtype {dtype!r} is not accepted; use one of {', '.join(DTYPES)}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(s, int) and 0 <= s <= max_elements for s in shape)
        or len(shape) > 4
    ):
        raise WireError(f"{where}: shape must be a list of at most 4 non-negative ints, got {shape!r}")
    if ndim is not None and len(shape) != ndim:
        raise WireError(f"{where}: expected {ndim} dimensions, got shape {shape}")
    n = math.prod(shape)  # Python ints: a product of huge sides cannot wrap around to a small number
    if n > max_elements:
        raise WireError(f"{where}: {n} elements is more than the limit of {max_elements}")
    if not isinstance(data, bytes) or len(data) != n * np.dtype(DTYPES[dtype]).itemsize:
        raise WireError(f"{where}: data length does not match dtype {dtype} and shape {shape}")
    return np.frombuffer(data, dtype=DTYPES[dtype]).reshape(shape).copy()


def decode_actions(obj: Any, where: str, rows: int | None = None) -> np.ndarray:
    """A (rows, 14) finite float array of absolute targets."""
    a = decode_array(obj, where, ndim=2)
    if a.dtype.kind != "f" or a.shape[1] != 14 or (rows is not None and a.shape[0] != rows):
        want = f"({rows if rows is not None else 'P'}, 14) float"
        raise WireError(f"{where}: expected a {want} array, got {a.dtype} {a.shape}")
    if not np.all(np.isfinite(a)):
        raise WireError(f"{where}: contains NaN or inf")
    return a.astype(np.float64)


# -- images ----------------------------------------------------------------------------------------------------
def encode_image(image: np.ndarray, jpeg_quality: int | None) -> dict:
    """JPEG (quality 1..100) or raw (None) — the client compresses in its worker thread, not the loop."""
    if jpeg_quality is None:
        return {"codec": "raw", "array": encode_array(image)}
    import imagecodecs

    return {"codec": "jpeg", "data": bytes(imagecodecs.jpeg8_encode(image, level=jpeg_quality))}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's frame header, read without decoding."""
    i = 2
    if data[:2] != b"\xff\xd8":
        raise WireError("not a JPEG (no start-of-image marker)")
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise WireError("a JPEG marker is malformed")
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                break
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return h, w
        i += 2 + length
    raise WireError("a JPEG has no frame header")


def decode_image(obj: Any, where: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An H×W×3 uint8 image; its size is checked (against `max_pixels`) before anything is decoded."""
    if not isinstance(obj, dict) or obj.get("codec") not in ("jpeg", "raw"):
        raise WireError(f"{where}: expected an image map with codec jpeg or raw")
    if obj["codec"] == "raw":
        img = decode_array(obj.get("array"), where, ndim=3, max_elements=max_pixels * 3)
    else:
        data = obj.get("data")
        if not isinstance(data, bytes):
            raise WireError(f"{where}: JPEG data must be bytes")
        h, w = jpeg_size(data)
        if h * w > max_pixels or h == 0 or w == 0:
            raise WireError(
                f"{where}: a {w}x{h} image is outside the accepted size (at most {max_pixels} pixels)"
            )
        import imagecodecs

        try:
            img = imagecodecs.jpeg8_decode(data)
        except Exception as e:  # noqa: BLE001 - the codec's own error types
            raise WireError(f"{where}: the JPEG could not be decoded ({e})") from None
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise WireError(f"{where}: expected an H×W×3 uint8 RGB image, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE or max(h, w) > MAX_IMAGE_ASPECT * min(h, w):
        raise WireError(
            f"{where}: a {w}×{h} image is not a camera frame (sides ≥ {MIN_IMAGE_SIDE} px, aspect ≤ "
            f"{MAX_IMAGE_ASPECT:g})"
        )
    return img


# -- the policy boundary on the wire ---------------------------------------------------------------------------
def encode_spec(spec: PolicySpec) -> dict:
    return {
        "cameras": list(spec.cameras),
        "chunk_length": spec.chunk_length,
        "max_prefix": spec.max_prefix,
        "state_dim": spec.state_dim,
        "fps": spec.fps,
        "robot_type": spec.robot_type,
        **({"contract": spec.contract} if spec.contract is not None else {}),
        **({"privileged": list(spec.privileged)} if spec.privileged else {}),
    }


def decode_spec(obj: Any) -> PolicySpec:
    try:
        spec = PolicySpec(
            cameras=tuple(str(c) for c in obj["cameras"]),
            chunk_length=int(obj["chunk_length"]),
            max_prefix=int(obj["max_prefix"]),
            state_dim=int(obj["state_dim"]),
            fps=float(obj["fps"]),
            robot_type=str(obj["robot_type"]),
            contract=obj.get("contract") if isinstance(obj.get("contract"), dict) else None,
            privileged=tuple(str(n) for n in obj.get("privileged", ())),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise WireError(f"the hello message's spec is incomplete or malformed ({e})") from None
    if spec.chunk_length < 1 or not 0 <= spec.max_prefix < spec.chunk_length:
        raise WireError(f"the hello message's spec is inconsistent: {spec}")
    return spec


def encode_request(
    request_id: int, observation: PolicyObservation, prefix: np.ndarray, jpeg_quality: int | None
) -> bytes:
    return pack(
        {
            "type": "infer",
            "id": request_id,
            "observation": {
                "state": encode_array(np.asarray(observation.state, dtype=np.float64)),
                "t_ns": int(observation.t_ns),
                "instruction": observation.instruction,
                "images": {n: encode_image(img, jpeg_quality) for n, img in observation.images.items()},
                **(
                    {
                        "privileged": {
                            n: encode_array(np.asarray(v, np.float64))
                            for n, v in observation.privileged.items()
                        }
                    }
                    if observation.privileged
                    else {}
                ),
            },
            "prefix": encode_array(np.asarray(prefix, dtype=np.float64).reshape(-1, 14)),
        }
    )


def decode_request(message: dict, spec: PolicySpec) -> tuple[int, PolicyObservation, np.ndarray]:
    """Validate an infer message against the served policy's spec."""
    request_id = message.get("id")
    if not isinstance(request_id, int):
        raise WireError("infer.id must be an integer")
    obs = message.get("observation")
    if not isinstance(obs, dict):
        raise WireError("infer.observation must be a map")
    state = decode_array(obs.get("state"), "observation.state", ndim=1)
    if state.shape != (spec.state_dim,) or state.dtype.kind != "f" or not np.all(np.isfinite(state)):
        raise WireError(
            f"observation.state must be {spec.state_dim} finite floats, got {state.dtype} {state.shape}"
        )
    t_ns = obs.get("t_ns")
    if not isinstance(t_ns, int):
        raise WireError("observation.t_ns must be an integer (ns)")
    instruction = obs.get("instruction")
    if not isinstance(instruction, str) or len(instruction) > MAX_INSTRUCTION:
        raise WireError(f"observation.instruction must be a string of at most {MAX_INSTRUCTION} characters")
    images_in = obs.get("images")
    if not isinstance(images_in, dict):
        raise WireError("observation.images must be a map of camera name to image")
    missing = [c for c in spec.cameras if c not in images_in]
    if missing:
        raise WireError(f"observation.images lacks camera(s) {', '.join(missing)} that the policy reads")
    budget = pixel_budgets(spec)
    images = {c: decode_image(images_in[c], f"observation.images.{c}", budget.get(c, MAX_IMAGE_PIXELS)) for c in spec.cameras}  # fmt: skip
    _check_frames(images, spec)
    prefix = decode_actions(message.get("prefix"), "prefix")
    if len(prefix) > spec.max_prefix:
        raise WireError(f"prefix has {len(prefix)} rows; the policy takes at most {spec.max_prefix}")
    privileged = _decode_privileged(obs.get("privileged", {}), spec)
    return (
        request_id,
        PolicyObservation(images, state.astype(np.float64), instruction, t_ns, privileged),
        prefix,
    )


def pixel_budgets(spec: PolicySpec) -> dict[str, int]:
    """The largest frame accepted per camera: 4× the area the checkpoint was trained on (at least 640×480;
    the processor resizes to its budget anyway), so one client's oversized images cannot tie up the
    server's decoding. Cameras without a contract size get MAX_IMAGE_PIXELS."""
    out = {}
    for cam in (spec.contract or {}).get("cameras") or []:
        h, w = cam.get("height"), cam.get("width")
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            out[cam.get("name")] = min(MAX_IMAGE_PIXELS, max(4 * h * w, 640 * 480))
    return out


def _check_frames(images: dict[str, np.ndarray], spec: PolicySpec) -> None:
    """Frames against the served checkpoint's contract: the aspect ratio it was trained on (the processor
    resizes to its pixel budget, so the size itself may differ)."""
    from xr0.contract import ASPECT_TOLERANCE

    cameras = (spec.contract or {}).get("cameras") or []
    for cam in cameras:
        name, ch, cw = cam.get("name"), cam.get("height"), cam.get("width")
        if name not in images or not ch or not cw:
            continue
        h, w = images[name].shape[:2]
        if abs(w / h - cw / ch) > ASPECT_TOLERANCE * cw / ch:
            raise WireError(
                f"observation.images.{name}: a {w}×{h} frame; the policy was trained on {cw}×{ch} frames "
                "(another aspect ratio)"
            )


def _decode_privileged(values: Any, spec: PolicySpec) -> dict[str, np.ndarray]:
    """The simulator-only inputs the served policy asked for: each a short vector of finite floats."""
    if not isinstance(values, dict):
        raise WireError("observation.privileged must be a map of name to array")
    out = {}
    for name in spec.privileged:
        if name not in values:
            raise WireError(f"observation.privileged lacks {name!r}, which the policy reads")
        width = PRIVILEGED.get(name, 0)
        a = decode_array(values[name], f"observation.privileged.{name}", ndim=1)
        if a.shape != (width,) or a.dtype.kind != "f" or not np.all(np.isfinite(a)):
            raise WireError(
                f"observation.privileged.{name} must be {width} finite floats, got {a.dtype} {a.shape}"
            )
        out[name] = a.astype(np.float64)
    return out
