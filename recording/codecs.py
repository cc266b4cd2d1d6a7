"""Image codecs for Zarr v3 arrays of RGB frames: JPEG (lossy) and PNG (lossless) through imagecodecs for
the live tier, and video segments (AV1 / H.264 through PyAV) for the archive tier.

JPEG and PNG are array→bytes codecs for chunks of exactly one frame, shape (1, H, W, 3) uint8, so that a
random read decodes one image. `VideoCodec` encodes a chunk of N consecutive frames as one segment that
starts with a keyframe (written by `xr0 dataset compact`, never while recording). Every chunk is followed
by a crc32c checksum, so a damaged chunk is reported instead of decoding to garbage.

The codec names in the array metadata are `xr0.jpeg`, `xr0.png` and `xr0.video`; `register_codecs()`
makes them known to zarr (the store modules call it before opening anything).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import google_crc32c
import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BloscCodec
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer


def _check_spec(name: str, spec: ArraySpec) -> None:
    shape = tuple(spec.shape)
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise ValueError(f"codec {name} encodes chunks of one RGB frame, shape (1, H, W, 3); got {shape}")
    if spec.dtype.to_native_dtype() != np.uint8:
        raise ValueError(f"codec {name} encodes uint8 frames, got {spec.dtype.to_native_dtype()}")


class _OffLoopCodec(ArrayBytesCodec):
    """Encoding and decoding off zarr's event loop, like zarr's own compressors: the frames (or segments)
    of a flush encode in parallel threads (imagecodecs and PyAV release the GIL while they work)."""

    is_fixed_size = False
    codec_name = ""

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError(f"{self.codec_name} output has no fixed size")


class ImageCodec(_OffLoopCodec):
    """One RGB frame per chunk."""

    def encode_image(self, image: np.ndarray) -> bytes:
        raise NotImplementedError

    def decode_image(self, data: bytes) -> np.ndarray:
        raise NotImplementedError

    def validate(self, *, shape: Any, dtype: Any, chunk_grid: Any) -> None:
        if dtype.to_native_dtype() != np.uint8:
            raise ValueError(
                f"codec {self.codec_name} stores uint8 RGB frames, not {dtype.to_native_dtype()}"
            )

    def chunk_bytes(self, image: np.ndarray) -> bytes:
        """One (H, W, 3) frame as the bytes of its chunk inside a shard (codec output + checksum)."""
        return with_checksum(self.encode_image(np.ascontiguousarray(image)))

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        _check_spec(self.codec_name, chunk_spec)
        image = np.ascontiguousarray(chunk_array.as_numpy_array()[0])
        return chunk_spec.prototype.buffer.from_bytes(self.encode_image(image))

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        image = self.decode_image(chunk_bytes.as_numpy_array().tobytes())
        want = tuple(chunk_spec.shape[1:])
        if image.shape != want:
            raise ValueError(f"{self.codec_name}: decoded a {image.shape} image where {want} was stored")
        return chunk_spec.prototype.nd_buffer.from_numpy_array(image[None])


@dataclass(frozen=True)
class JpegCodec(ImageCodec):
    """Baseline JPEG (libjpeg-turbo through imagecodecs); `quality` 1..100."""

    quality: int = 90
    codec_name = "xr0.jpeg"

    def __post_init__(self) -> None:
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"JPEG quality must be 1..100, got {self.quality}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JpegCodec:
        _, config = parse_named_configuration(data, cls.codec_name, require_configuration=False)
        return cls(**(config or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.codec_name, "configuration": {"quality": int(self.quality)}}

    def encode_image(self, image: np.ndarray) -> bytes:
        return imagecodecs.jpeg8_encode(image, level=int(self.quality))

    def decode_image(self, data: bytes) -> np.ndarray:
        return imagecodecs.jpeg8_decode(data)


@dataclass(frozen=True)
class PngCodec(ImageCodec):
    """Lossless PNG; `level` 0..9 trades speed for size (1: fast)."""

    level: int = 1
    codec_name = "xr0.png"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PngCodec:
        _, config = parse_named_configuration(data, cls.codec_name, require_configuration=False)
        return cls(**(config or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.codec_name, "configuration": {"level": int(self.level)}}

    def encode_image(self, image: np.ndarray) -> bytes:
        return imagecodecs.png_encode(image, level=int(self.level))

    def decode_image(self, data: bytes) -> np.ndarray:
        return imagecodecs.png_decode(data)


_REGISTERED = False


def register_codecs() -> None:
    """Make `xr0.jpeg`, `xr0.png` and `xr0.video` known to zarr (idempotent)."""
    global _REGISTERED
    if not _REGISTERED:
        register_codec(JpegCodec.codec_name, JpegCodec)
        register_codec(PngCodec.codec_name, PngCodec)
        register_codec(VideoCodec.codec_name, VideoCodec)
        _REGISTERED = True


def image_codec(name: str, jpeg_quality: int = 90) -> ImageCodec:
    """The codec for `recording.image_codec`: jpeg (with its quality) or png (lossless)."""
    if name == "jpeg":
        return JpegCodec(quality=jpeg_quality)
    if name == "png":
        return PngCodec()
    raise ValueError(f"image codec must be jpeg or png, got {name!r}")


@dataclass(frozen=True)
class VideoCodec(_OffLoopCodec):
    """A chunk of N consecutive RGB frames, shape (N, H, W, 3) uint8, as one self-contained video segment
    (AV1 or H.264, see `recording.video`): the archive tier. One chunk decodes to all of its frames."""

    codec: str = "av1"
    crf: int = 30
    preset: str = "8"
    fps: float = 30.0
    codec_name = "xr0.video"

    def __post_init__(self) -> None:
        from recording.video import VideoSettings

        VideoSettings(self.codec, int(self.crf), str(self.preset))  # raises on a bad setting

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoCodec:
        _, config = parse_named_configuration(data, cls.codec_name, require_configuration=False)
        return cls(**(config or {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.codec_name,
            "configuration": {
                "codec": self.codec,
                "crf": int(self.crf),
                "preset": str(self.preset),
                "fps": float(self.fps),
            },
        }

    def validate(self, *, shape: Any, dtype: Any, chunk_grid: Any) -> None:
        if dtype.to_native_dtype() != np.uint8 or len(shape) != 4 or shape[3] != 3:
            raise ValueError(f"codec {self.codec_name} stores (N, H, W, 3) uint8 frames")

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        from recording.video import VideoSettings, encode_segment

        frames = chunk_array.as_numpy_array()
        settings = VideoSettings(self.codec, int(self.crf), str(self.preset))
        return chunk_spec.prototype.buffer.from_bytes(encode_segment(frames, settings, self.fps))

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        from recording.video import decode_segment

        want = tuple(chunk_spec.shape)
        frames = decode_segment(chunk_bytes.as_numpy_array().tobytes(), self.codec, count=want[0])
        if frames.shape != want:
            raise ValueError(f"{self.codec_name}: decoded {frames.shape} frames where {want} were stored")
        return chunk_spec.prototype.nd_buffer.from_numpy_array(frames)


# -- chunk files, read and written without zarr's pipeline ----------------------------------------------
# zarr v3's default chunk keys: chunk (or shard) `i` along the step axis of an array with `ndim` dimensions
# is the file `c/<i>/0/…/0`. Every chunk is its codec's bytes followed by the crc32c codec's checksum
# (uint32, little-endian). Writing a file goes through a temporary name and a rename, as zarr's local store
# does (`NAME.<uuid4 hex>.partial`, which `xr0 dataset repair` cleans up): a file is whole or absent.
# The recorder writes the live tier this way (one zarr call per array and flush cost more than the
# encoding); compaction writes archive segments; `validate --deep` reads them. Tests compare every format
# here byte for byte with what zarr writes.
def chunk_file(array_dir: Path, index: int, ndim: int) -> Path:
    return Path(array_dir).joinpath("c", str(index), *(["0"] * (ndim - 1)))


def with_checksum(data: bytes) -> bytes:
    return data + google_crc32c.value(data).to_bytes(4, "little")


def without_checksum(data: bytes, what: str) -> bytes:
    """`data` less its trailing crc32c (the `with_checksum` format); ValueError naming `what` when it does
    not match."""
    if len(data) < 4 or google_crc32c.value(data[:-4]).to_bytes(4, "little") != data[-4:]:
        raise ValueError(f"{what}'s checksum does not match")
    return data[:-4]


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_EMPTY = 2**64 - 1  # the shard index's mark for a chunk that was never written


def shard_bytes(chunks: list[bytes | None]) -> bytes:
    """A `sharding_indexed` shard (index at the end, index codecs bytes little-endian + crc32c) holding
    `chunks` (each already with its checksum; None = not written), back to back in step order."""
    index = np.full((len(chunks), 2), _EMPTY, dtype="<u8")
    offset = 0
    for i, chunk in enumerate(chunks):
        if chunk is not None:
            index[i] = (offset, len(chunk))
            offset += len(chunk)
    return b"".join(c for c in chunks if c is not None) + with_checksum(index.tobytes())


def read_shard_chunk(array_dir: Path, step: int, shard_steps: int, ndim: int) -> bytes | None:
    """The codec bytes of step `step`'s chunk in a `shard_bytes` shard (checksums verified), or None when
    the step was never written (its shard file absent, or its index entry empty: zarr's fill value).
    Reads only the shard's index and that chunk: two small reads instead of zarr's whole pipeline, which
    costs ~6 ms per frame in Python — more than decoding the JPEG."""
    shard, i = divmod(int(step), int(shard_steps))
    index_bytes = 16 * shard_steps + 4
    try:
        fd = os.open(chunk_file(array_dir, shard, ndim), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size < index_bytes:
            raise ValueError(f"shard {shard} has {size} bytes, fewer than its index's {index_bytes}")
        index = without_checksum(os.pread(fd, index_bytes, size - index_bytes), f"shard {shard}'s index")
        offset, nbytes = (int(v) for v in np.frombuffer(index, "<u8", 2, 16 * i))
        if offset == _EMPTY and nbytes == _EMPTY:
            return None
        if nbytes < 4 or offset + nbytes > size - index_bytes:
            raise ValueError(f"shard {shard}'s index points outside the file for step {step}")
        data = os.pread(fd, nbytes, offset)
    finally:
        os.close(fd)
    if len(data) != nbytes:
        raise ValueError(f"shard {shard} ends inside step {step}'s chunk")
    return without_checksum(data, f"step {step}'s chunk")


def numeric_compressor(itemsize: int) -> BloscCodec:
    """The compressor of every numeric array of the live tier (zarr's Blosc: zstd 3, byte shuffle)."""
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=itemsize)


class NumericChunkEncoder:
    """A numeric array's chunk as zarr stores it with `numeric_compressor`: C-order little-endian bytes,
    Blosc, checksum."""

    def __init__(self, dtype: np.dtype) -> None:
        from numcodecs import Blosc

        c = numeric_compressor(np.dtype(dtype).itemsize)
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        self.blosc = Blosc(
            cname=c.cname.value, clevel=c.clevel, shuffle=shuffle[c.shuffle.value],
            blocksize=c.blocksize, typesize=c.typesize,
        )  # fmt: skip
        self.dtype = np.dtype(dtype).newbyteorder("<")

    def encode(self, chunk: np.ndarray) -> bytes:
        data = np.ascontiguousarray(chunk, dtype=self.dtype).tobytes()
        return with_checksum(bytes(self.blosc.encode(data)))


# -- the archive tier: one video segment per chunk of an (N, H, W, 3) array ------------------------------
def segment_chunk_path(array_dir: Path, chunk: int) -> Path:
    return chunk_file(array_dir, chunk, 4)


def write_segment_chunk(array_dir: Path, chunk: int, segment: bytes) -> None:
    """Store an encoded segment as chunk `chunk`, byte for byte as zarr would."""
    atomic_write(segment_chunk_path(array_dir, chunk), with_checksum(segment))


def read_segment_chunk(array_dir: Path, chunk: int) -> bytes:
    """The encoded segment of chunk `chunk`; ValueError when its checksum does not match."""
    return without_checksum(segment_chunk_path(array_dir, chunk).read_bytes(), "the segment")
