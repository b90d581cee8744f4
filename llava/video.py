"""Reading videos for Video-LLaVA: which frames to take (`frame_indices`, `SAMPLING_RULES`) and decoding them to RGB
PIL images (`read_video`), with one error type for bad files (`VideoError`).

Decoder: PyAV (`pip install -e ".[video]"`, package `av`). It is maintained (18.1.0 is on PyPI), ships CPU wheels
with FFmpeg bundled (x86-64 and aarch64 Linux, arm64 macOS among them), and is what transformers' Video-LLaVA docs
use. decord, which the original Video-LLaVA uses, also installs and imports on x86-64 Linux, but its last PyPI
release (0.6.0) was built in June 2021 and has no aarch64-Linux or arm64-macOS wheel, so it is not used.
What is kept from decord is its frame count: `len(decord.VideoReader)` is the number of video packets the demuxer
returns (dmlc/decord src/video/video_reader.cc: `IndexKeyframes` fills `frame_ts_` one entry per packet and
`GetFrameCount` returns its size), and `read_video` counts the same way, so its sampled indices match decord's.

Sampling (8 frames, uniform). Two public rules exist and they differ:

* ``"linspace"`` (default): the original Video-LLaVA, used for its benchmarks and by FasterVLM's video branch
  (PKU-YuanGroup/Video-LLaVA videollava/model/multimodal_encoder/languagebind/video/processing_video.py,
  `load_and_transform_video`, decord backend, which is the LanguageBind video config's `video_decode_backend`
  default; `num_frames=8` from the checkpoint's vision config):
  ``np.linspace(0, total - 1, 8, dtype=int)``, i.e. index k = floor(k * (total - 1) / 7): first and last frame
  always taken.
* ``"arange"``: transformers' `VideoLlavaForConditionalGeneration` docstring for the -hf checkpoint
  (`read_video_pyav` example): ``np.arange(0, total, total / 8).astype(int)``, i.e. index k = floor(k * total / 8):
  first frame taken, the last one only when total <= 8.

Example, 20 frames: linspace -> [0, 2, 5, 8, 10, 13, 16, 19], arange -> [0, 2, 5, 7, 10, 12, 15, 17].
Both are computed here in exact integer arithmetic; for 8 frames numpy's float results are exact too, so they are
equal (tests/test_video_io.py checks it for every total up to 2,000).

Videos with fewer frames than asked for: neither public rule refuses them; both repeat frames (7 frames, linspace
-> [0, 0, 1, 2, 3, 4, 5, 6]), and so does this module. What is refused is a file whose frames cannot all be
decoded: when the decoder stops before a sampled index (a damaged or cut-off stream), `read_video` raises
`VideoError` ("fewer frames than needed") instead of silently using other frames.
"""

from __future__ import annotations

import os

from PIL import Image

try:  # optional extra [video]: the image path and the rest of llava must import without PyAV
    import av
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    av = None

NUM_FRAMES = 8  # Video-LLaVA's vision config `num_frames`; the LLM sees 8 x 256 visual tokens per video
DEFAULT_RULE = "linspace"
SAMPLING_RULES = ("linspace", "arange")
INSTALL_HINT = 'pip install -e ".[video]"'


class VideoError(ValueError):
    """A video file that cannot be used: missing, not a video, no frames, or frames that do not decode."""


def frame_indices(total_frames: int, num_frames: int = NUM_FRAMES, rule: str = DEFAULT_RULE) -> list[int]:
    """The frame positions to sample, in increasing order, repeats allowed (see the module docstring).

    Args:
        total_frames: frames in the video (>= 1).
        num_frames: frames to take (>= 1).
        rule: ``"linspace"`` (original Video-LLaVA, default) or ``"arange"`` (transformers' -hf example).

    Returns:
        ``num_frames`` indices in ``[0, total_frames)``.
    """
    if rule not in SAMPLING_RULES:
        raise ValueError(f"Unknown frame sampling rule {rule!r}; expected one of {SAMPLING_RULES}")
    if total_frames < 1 or num_frames < 1:
        raise ValueError(f"Need total_frames >= 1 and num_frames >= 1, got {total_frames} and {num_frames}")
    if rule == "arange":
        return [k * total_frames // num_frames for k in range(num_frames)]
    if num_frames == 1:  # np.linspace with one sample returns just the start
        return [0]
    return [k * (total_frames - 1) // (num_frames - 1) for k in range(num_frames)]


def read_video(path: str | os.PathLike, num_frames: int = NUM_FRAMES, rule: str = DEFAULT_RULE) -> list[Image.Image]:
    """Decode the sampled frames of a local video file as RGB PIL images, in time order.

    Frames are counted as decord counts them (video packets), sampled by :func:`frame_indices`, then decoded in
    one sequential pass (no seeking, so the frame at index i is exactly the i-th decoded frame).

    Raises:
        VideoError: missing file, not a readable video (or no video stream), zero frames, or fewer decodable
            frames than the sampled indices need; the message names the file.
        ImportError: PyAV is not installed (the message gives the install command).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(f"Video file not found: {path}")
    total = _count_frames(path)
    if total == 0:
        raise VideoError(f"Video has zero frames: {path}")
    return _decode_frames(path, frame_indices(total, num_frames, rule), total)


def _require_av():
    """The PyAV module, or an ImportError saying how to install it."""
    if av is None:
        raise ImportError(f"Reading videos needs PyAV, which is not installed; install it with: {INSTALL_HINT}")
    return av


def _open(path: str):
    """Open ``path`` with PyAV and return (container, its first video stream)."""
    pyav = _require_av()
    try:
        container = pyav.open(path)
    except pyav.FFmpegError as err:
        raise VideoError(f"Not a readable video file: {path} ({err})") from err
    if not container.streams.video:
        container.close()
        raise VideoError(f"File has no video stream: {path}")
    return container, container.streams.video[0]


def _count_frames(path: str) -> int:
    """Number of video packets in ``path`` (decord's `len(VideoReader)`); demuxing only, nothing is decoded.

    PyAV ends each stream with an empty flush packet (no data, no dts), which the demuxer itself never returns:
    it is not a frame, so it is not counted.
    """
    container, stream = _open(path)
    try:
        return sum(1 for packet in container.demux(stream) if packet.size > 0 or packet.dts is not None)
    except av.FFmpegError as err:
        raise VideoError(f"Not a readable video file: {path} ({err})") from err
    finally:
        container.close()


def _decode_frames(path: str, indices: list[int], total: int) -> list[Image.Image]:
    """Decode ``path`` front to back and return the frames at ``indices`` (sorted, repeats allowed) as RGB;
    ``total`` (the packet count) is only for the error message."""
    wanted = set(indices)
    picked: dict[int, Image.Image] = {}
    decoded, failure = 0, ""
    container, stream = _open(path)
    try:
        for position, frame in enumerate(container.decode(stream)):
            decoded = position + 1
            if position in wanted:
                picked[position] = frame.to_image()  # rgb24
            if position >= indices[-1]:
                break
    except av.FFmpegError as err:  # a damaged packet: report it below only if a needed frame is missing
        failure = f"; decoder error: {err}"
    finally:
        container.close()
    if indices[-1] not in picked:
        raise VideoError(f"Video has fewer frames than needed: {path} has {total} frame packets but only {decoded} "
                         f"decoded, and frame {indices[-1]} is needed (sampled indices {indices}){failure}")
    return [picked[i] for i in indices]
