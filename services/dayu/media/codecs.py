"""Encoding and decoding of frames and segments, for every codec of the `dayu.v1.Codec` enum.

Frames are BGR uint8 arrays of shape (height, width, 3), as OpenCV gives them. Bad data raises
InvalidArgument naming the field it came from, so a processor can refuse a task with a clear reason.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import av
import cv2
import numpy as np

from dayu.media.frames import frame_rate
from dayu.runtime.errors import InvalidArgument
from dayu.v1 import task_pb2, types_pb2

PER_FRAME_CODECS = (types_pb2.CODEC_JPEG, types_pb2.CODEC_RAW_BGR)

# H.264 CRF for quality 1..100: CRF = round(51 - 0.4 * (quality - 1)), so quality 1 is CRF 51 (the
# worst libx264 allows), 80 is CRF 19 (about JPEG q80 to the eye) and 100 is CRF 11 (near
# transparent). CRF 0 (lossless) is left out: at ultrafast it costs many times the bits for no
# difference a detector can see.
_CRF_WORST = 51
_CRF_PER_QUALITY_STEP = 0.4
# MPEG-TS, as the contract says: a container every player and ffmpeg reads, with no index to write.
_CONTAINER = "mpegts"
_X264_OPTIONS = {"preset": "ultrafast", "tune": "zerolatency"}
# Full-range chroma (0..255 around 128) to limited range (16..240 around 128).
_CHROMA_SCALE = 224 / 255
_CHROMA_OFFSET = 128 * (1 - _CHROMA_SCALE)
# The segment was written by encode_segment, so probing it is wasted work: without these options the
# demuxer decodes frames just to learn what the stream holds (about a third of the decoding time).
_DEMUX_OPTIONS = {"probesize": "32", "analyzeduration": "0"}


def _codec_name(codec: int) -> str:
    return types_pb2.Codec.Name(codec) if codec in types_pb2.Codec.values() else str(codec)


def _require_quality(quality: int) -> None:
    if not 1 <= quality <= 100:
        raise InvalidArgument("quality", f"a quality in 1..100, got {quality}")


def _require_bgr(frame: np.ndarray, field: str) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise InvalidArgument(field, f"a BGR uint8 image of shape (height, width, 3), got {frame.dtype} {frame.shape}")


def _require_resolution(frame: np.ndarray, resolution: types_pb2.Resolution, field: str, what: str) -> None:
    """A set resolution must match the decoded frames: boxes found on them are read in that resolution."""
    width, height = resolution.width, resolution.height
    if width and height and frame.shape[:2] != (height, width):
        raise InvalidArgument(field, f"{what} of {width}x{height}, got {frame.shape[1]}x{frame.shape[0]}")


def crf_for_quality(quality: int) -> int:
    """The libx264 CRF that stands for a Dayu quality (1..100, 100 best); see the mapping above."""
    _require_quality(quality)
    return round(_CRF_WORST - _CRF_PER_QUALITY_STEP * (quality - 1))


def encode_image(frame: np.ndarray, codec: int, quality: int) -> bytes:
    """One frame as a per-frame codec's bytes (JPEG or raw BGR); quality only matters for JPEG."""
    _require_bgr(frame, "frame")
    if codec == types_pb2.CODEC_JPEG:
        _require_quality(quality)
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise InvalidArgument("frame", f"an image OpenCV can encode as JPEG, got shape {frame.shape}")
        return data.tobytes()
    if codec == types_pb2.CODEC_RAW_BGR:
        return np.ascontiguousarray(frame).tobytes()
    raise InvalidArgument("codec", f"a per-frame codec (JPEG or RAW_BGR), got {_codec_name(codec)}")


def decode_image(data: bytes, codec: int, resolution: types_pb2.Resolution, field: str) -> np.ndarray:
    """One frame from a per-frame codec's bytes.

    RAW_BGR needs `resolution` to know its shape; for JPEG a set resolution (width and height > 0)
    must match the image, and an unset one accepts any size.
    """
    width, height = resolution.width, resolution.height
    if codec == types_pb2.CODEC_RAW_BGR:
        if width == 0 or height == 0:
            raise InvalidArgument(field, "raw BGR pixels need a resolution with width and height > 0")
        expected = width * height * 3
        if len(data) != expected:
            raise InvalidArgument(
                field, f"raw BGR pixels of {width}x{height} ({expected} bytes), got {len(data)} bytes"
            )
        # A copy, so the frame is writable and does not pin the message's bytes.
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
    if codec == types_pb2.CODEC_JPEG:
        frame = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
        if frame is None:
            raise InvalidArgument(field, f"a JPEG image, got {len(data)} bytes that do not decode")
        _require_resolution(frame, resolution, field, "a JPEG image")
        return frame
    raise InvalidArgument("codec", f"a per-frame codec (JPEG or RAW_BGR), got {_codec_name(codec)}")


def _common_size(frames: Sequence[np.ndarray]) -> tuple[int, int]:
    """(width, height) shared by all frames; every frame of a segment has the segment's resolution."""
    if not frames:
        raise InvalidArgument("segment.frames", "at least one frame to encode")
    height, width = frames[0].shape[:2]
    for i, frame in enumerate(frames):
        _require_bgr(frame, f"segment.frames[{i}]")
        if frame.shape[:2] != (height, width):
            raise InvalidArgument(
                f"segment.frames[{i}]",
                f"a frame of {width}x{height} like the first one, got {frame.shape[1]}x{frame.shape[0]}",
            )
    return width, height


def _encode_h264(frames: Sequence[np.ndarray], width: int, height: int, fps: float, quality: int) -> bytes:
    """The frames as one GOP of H.264 (libx264) in an in-memory MPEG-TS container."""
    if width % 2 or height % 2:
        raise InvalidArgument(
            "segment.resolution", f"an even width and height for H.264 (yuv420p), got {width}x{height}"
        )
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=_CONTAINER) as container:
        stream = container.add_stream("libx264", rate=frame_rate(fps, "segment.fps"))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # One GOP per segment: every segment starts with a key frame and decodes on its own.
        stream.codec_context.gop_size = len(frames)
        stream.options = {**_X264_OPTIONS, "crf": str(crf_for_quality(quality))}
        for pts, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(_bgr_to_i420(frame), format="yuv420p")
            video_frame.pts = pts
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _bgr_to_i420(frame: np.ndarray) -> np.ndarray:
    """BT.601 limited-range I420 (what libswscale and H.264 decoders assume), 3 to 5 times cheaper than
    libswscale's bgr24 -> yuv420p.

    OpenCV's own BGR -> I420 gives the right luma but samples chroma from one pixel of each 2x2 block,
    which aliases on coloured edges (2 dB worse PSNR); chroma is instead converted from the frame
    shrunk by area averaging (averaging commutes with the linear colour transform), then mapped
    from full range (0..255, OpenCV's YCrCb) to limited range (16..240).
    """
    height, width = frame.shape[:2]
    planar = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)
    half = cv2.resize(frame, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    _, cr, cb = cv2.split(cv2.cvtColor(half, cv2.COLOR_BGR2YCrCb))
    samples = planar.reshape(-1)
    u_start, v_start = width * height, width * height + cb.size
    samples[u_start:v_start] = cv2.convertScaleAbs(cb, alpha=_CHROMA_SCALE, beta=_CHROMA_OFFSET).reshape(-1)
    samples[v_start:] = cv2.convertScaleAbs(cr, alpha=_CHROMA_SCALE, beta=_CHROMA_OFFSET).reshape(-1)
    return planar


def _decode_h264(data: bytes, resolution: types_pb2.Resolution, expected_frames: int, field: str) -> list[np.ndarray]:
    if not data:
        raise InvalidArgument(field, "an H.264 stream in MPEG-TS, got no bytes")
    frames: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r", format=_CONTAINER, options=_DEMUX_OPTIONS) as container:
            if not container.streams.video:
                raise InvalidArgument(field, "an H.264 stream in MPEG-TS, got a container without video")
            for video_frame in container.decode(container.streams.video[0]):
                frames.append(_to_bgr(video_frame))
    # IndexError: corrupt MPEG-TS can announce a stream while demuxing, which PyAV 18 does not expect.
    except (av.FFmpegError, IndexError) as error:
        raise InvalidArgument(field, f"an H.264 stream in MPEG-TS that decodes, got: {error}") from None
    if len(frames) != expected_frames:
        raise InvalidArgument(
            field, f"an H.264 stream of {expected_frames} frames (one per frame index), got {len(frames)}"
        )
    for frame in frames:
        _require_resolution(frame, resolution, field, "H.264 frames")
    return frames


def _to_bgr(video_frame: av.VideoFrame) -> np.ndarray:
    if video_frame.format.name == "yuv420p":
        return cv2.cvtColor(video_frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)
    return video_frame.to_ndarray(format="bgr24")


def encode_segment(segment: task_pb2.Segment, frames: Sequence[np.ndarray], quality: int) -> None:
    """Fills the segment's data and resolution from its frames, with the codec and fps the caller set.

    Per-frame codecs fill `segment.frames` (one image per frame); H.264 fills `segment.stream`.
    """
    if segment.codec not in PER_FRAME_CODECS and segment.codec != types_pb2.CODEC_H264:
        raise InvalidArgument("segment.codec", f"a codec (JPEG, H264 or RAW_BGR), got {_codec_name(segment.codec)}")
    width, height = _common_size(frames)
    _require_quality(quality)
    # Encoded before the segment is touched, so a refused segment is left as it was.
    if segment.codec in PER_FRAME_CODECS:
        images = [encode_image(frame, segment.codec, quality) for frame in frames]
        segment.ClearField("stream")
        segment.frames[:] = images
    else:
        stream = _encode_h264(frames, width, height, segment.fps, quality)
        del segment.frames[:]
        segment.stream = stream
    segment.resolution.width, segment.resolution.height = width, height


def decode_segment(segment: task_pb2.Segment) -> list[np.ndarray]:
    """The segment's BGR frames, exactly one per frame index."""
    expected = len(segment.frame_indices)
    if segment.codec in PER_FRAME_CODECS:
        if len(segment.frames) != expected:
            raise InvalidArgument(
                "segment.frames", f"one encoded frame per frame index ({expected}), got {len(segment.frames)}"
            )
        return [
            decode_image(data, segment.codec, segment.resolution, f"segment.frames[{i}]")
            for i, data in enumerate(segment.frames)
        ]
    if segment.codec == types_pb2.CODEC_H264:
        return _decode_h264(segment.stream, segment.resolution, expected, "segment.stream")
    raise InvalidArgument("segment.codec", f"a codec (JPEG, H264 or RAW_BGR), got {_codec_name(segment.codec)}")
