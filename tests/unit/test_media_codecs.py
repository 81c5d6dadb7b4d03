"""Round trips of every codec on a textured, moving scene, and the errors bad data gets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dayu.media.codecs import crf_for_quality, decode_image, decode_segment, encode_image, encode_segment
from dayu.runtime.errors import InvalidArgument
from dayu.v1 import task_pb2, types_pb2

JPEG, H264, RAW = types_pb2.CODEC_JPEG, types_pb2.CODEC_H264, types_pb2.CODEC_RAW_BGR


def scene(width: int = 160, height: int = 96, frames: int = 5) -> list[np.ndarray]:
    """Grey texture over a colour gradient, with sharp-edged coloured shapes, panning 2 pixels per frame.

    Colour varies slowly, as in camera footage: chroma subsampling (JPEG and H.264) loses what varies
    faster, which would measure the subsampling rather than the codec.
    """
    rng = np.random.default_rng(3)
    wide_width = width + 2 * frames
    texture = cv2.resize(
        rng.integers(0, 160, (height // 6, wide_width // 6), dtype=np.uint8),
        (wide_width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    gradient = np.linspace((0, 40, 90), (90, 60, 0), wide_width, dtype=np.uint8)
    wide = np.ascontiguousarray(texture[:, :, None] + gradient[None, :, :])
    for _ in range(12):
        x, y = int(rng.integers(0, wide_width - 20)), int(rng.integers(0, height - 20))
        cv2.rectangle(wide, (x, y), (x + 16, y + 12), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    return [np.ascontiguousarray(wide[:, 2 * i : 2 * i + width]) for i in range(frames)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def segment(codec: int, frames: int, fps: float = 10.0) -> task_pb2.Segment:
    return task_pb2.Segment(codec=codec, fps=fps, frame_indices=range(100, 100 + frames))


def encoded(codec: int, frames: list[np.ndarray], quality: int = 80, fps: float = 10.0) -> task_pb2.Segment:
    result = segment(codec, len(frames), fps)
    encode_segment(result, frames, quality)
    return result


def encoded_size(result: task_pb2.Segment) -> int:
    return len(result.stream) + sum(len(data) for data in result.frames)


@pytest.mark.parametrize(("codec", "min_psnr"), [(JPEG, 30.0), (H264, 30.0), (RAW, float("inf"))])
def test_round_trip_keeps_every_frame_close_to_the_original(codec: int, min_psnr: float) -> None:
    frames = scene()
    result = encoded(codec, frames)
    assert (result.resolution.width, result.resolution.height) == (160, 96)
    decoded = decode_segment(result)
    assert len(decoded) == len(frames)
    for original, back in zip(frames, decoded, strict=True):
        assert back.shape == original.shape and back.dtype == np.uint8
        assert psnr(original, back) >= min_psnr


def test_per_frame_codecs_fill_frames_and_stream_codecs_fill_stream() -> None:
    frames = scene(frames=3)
    for codec in (JPEG, RAW):
        result = encoded(codec, frames)
        assert len(result.frames) == 3 and not result.stream
    result = encoded(H264, frames)
    assert result.stream and not result.frames


@pytest.mark.parametrize("codec", [JPEG, H264, RAW])
@pytest.mark.parametrize("count", [1, 7])
def test_frame_count_is_preserved(codec: int, count: int) -> None:
    assert len(decode_segment(encoded(codec, scene(frames=count)))) == count


def test_h264_takes_fractional_frame_rates() -> None:
    assert len(decode_segment(encoded(H264, scene(frames=4), fps=29.97))) == 4


def test_reencoding_replaces_the_previous_data() -> None:
    frames = scene(frames=3)
    result = encoded(JPEG, frames)
    result.codec = H264
    encode_segment(result, frames, 80)
    assert not result.frames and len(decode_segment(result)) == 3


@pytest.mark.parametrize("codec", [JPEG, H264])
def test_higher_quality_gives_more_bytes(codec: int) -> None:
    frames = scene()
    sizes = [encoded_size(encoded(codec, frames, quality)) for quality in (10, 50, 90)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def test_crf_mapping_runs_from_worst_to_near_transparent() -> None:
    assert crf_for_quality(1) == 51
    assert crf_for_quality(80) == 19
    assert crf_for_quality(100) == 11
    crfs = [crf_for_quality(quality) for quality in range(1, 101)]
    assert crfs == sorted(crfs, reverse=True)


def test_image_round_trip_without_a_segment() -> None:
    frame = scene(frames=1)[0]
    resolution = types_pb2.Resolution(width=160, height=96)
    assert np.array_equal(decode_image(encode_image(frame, RAW, 80), RAW, resolution, "frame"), frame)
    assert psnr(decode_image(encode_image(frame, JPEG, 95), JPEG, types_pb2.Resolution(), "frame"), frame) > 30


def test_undecodable_image_names_its_field() -> None:
    with pytest.raises(InvalidArgument, match="a JPEG image") as bad:
        decode_image(b"not a jpeg", JPEG, types_pb2.Resolution(), "request.image")
    assert bad.value.field == "request.image"


def test_image_of_another_resolution_is_refused() -> None:
    data = encode_image(scene(frames=1)[0], JPEG, 80)
    with pytest.raises(InvalidArgument, match="160x96") as bad:
        decode_image(data, JPEG, types_pb2.Resolution(width=320, height=192), "image")
    assert bad.value.field == "image"


def test_raw_pixels_of_the_wrong_size_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="bytes") as bad:
        decode_image(b"\x00" * 100, RAW, types_pb2.Resolution(width=160, height=96), "frames[0]")
    assert bad.value.field == "frames[0]"


def test_bad_frame_in_a_segment_is_named_by_index() -> None:
    result = encoded(JPEG, scene(frames=3))
    result.frames[1] = b"\xff\xd8 truncated"
    with pytest.raises(InvalidArgument) as bad:
        decode_segment(result)
    assert bad.value.field == "segment.frames[1]"


def test_per_frame_segment_with_missing_frames_is_refused() -> None:
    result = encoded(RAW, scene(frames=3))
    result.frame_indices.append(200)
    with pytest.raises(InvalidArgument) as bad:
        decode_segment(result)
    assert bad.value.field == "segment.frames"


@pytest.mark.parametrize("stream", [b"", b"garbage" * 100, b"\x47" + b"\x00" * 187])
def test_undecodable_stream_is_refused(stream: bytes) -> None:
    result = segment(H264, 3)
    result.stream = stream
    with pytest.raises(InvalidArgument) as bad:
        decode_segment(result)
    assert bad.value.field == "segment.stream"


@pytest.mark.parametrize("frame_indices", [2, 4])
def test_stream_with_another_frame_count_is_refused(frame_indices: int) -> None:
    result = encoded(H264, scene(frames=3))
    del result.frame_indices[:]
    result.frame_indices.extend(range(frame_indices))
    with pytest.raises(InvalidArgument, match="3") as bad:
        decode_segment(result)
    assert bad.value.field == "segment.stream"


def test_truncated_stream_is_refused() -> None:
    result = encoded(H264, scene(frames=6))
    result.stream = result.stream[: len(result.stream) // 2]
    with pytest.raises(InvalidArgument) as bad:
        decode_segment(result)
    assert bad.value.field == "segment.stream"


def test_h264_needs_even_sides() -> None:
    with pytest.raises(InvalidArgument) as bad:
        encoded(H264, scene(width=161, frames=2))
    assert bad.value.field == "segment.resolution"


def test_frames_of_different_sizes_are_refused() -> None:
    frames = [*scene(frames=2), scene(width=80, height=48, frames=1)[0]]
    with pytest.raises(InvalidArgument) as bad:
        encoded(JPEG, frames)
    assert bad.value.field == "segment.frames[2]"


def test_unspecified_codec_and_bad_quality_are_refused() -> None:
    with pytest.raises(InvalidArgument) as codec:
        encoded(types_pb2.CODEC_UNSPECIFIED, scene(frames=1))
    assert codec.value.field == "segment.codec"
    with pytest.raises(InvalidArgument) as quality:
        encoded(JPEG, scene(frames=1), quality=0)
    assert quality.value.field == "quality"
