"""Video input (llava/video.py): frame sampling against Video-LLaVA's public rules and on video files written here
with PyAV, and the error for each kind of bad file.

Sources of truth: indices computed by hand from the two public rules (original Video-LLaVA
`np.linspace(0, total - 1, 8, dtype=int)`, PKU-YuanGroup/Video-LLaVA .../languagebind/video/processing_video.py;
transformers' -hf example `np.arange(0, total, total / 8).astype(int)`), the same numpy expressions as an oracle,
and pixel values that encode each written frame's index."""

from fractions import Fraction

import numpy as np
import pytest

import llava.video as video
from llava.video import VideoError, frame_indices, read_video

av = pytest.importorskip("av", reason='PyAV is the [video] extra: pip install -e ".[video]"')

SIZE = 32
# Expected indices per total frame count, computed by hand from the two public rules above.
LINSPACE = {
    8: [0, 1, 2, 3, 4, 5, 6, 7],
    20: [0, 2, 5, 8, 10, 13, 16, 19],    # floor(k * 19 / 7)
    100: [0, 14, 28, 42, 56, 70, 84, 99],  # floor(k * 99 / 7)
    7: [0, 0, 1, 2, 3, 4, 5, 6],         # floor(k * 6 / 7): fewer frames than asked -> frame 0 repeats
    1: [0] * 8,
}
ARANGE = {
    8: [0, 1, 2, 3, 4, 5, 6, 7],
    20: [0, 2, 5, 7, 10, 12, 15, 17],    # floor(k * 2.5)
    100: [0, 12, 25, 37, 50, 62, 75, 87],  # floor(k * 12.5)
    7: [0, 0, 1, 2, 3, 4, 5, 6],         # floor(k * 0.875)
    1: [0] * 8,
}


def _frame_pixels(index: int) -> np.ndarray:
    """A solid 32x32 RGB frame whose colour encodes ``index`` (R = index, G = 255 - index, B = 100)."""
    frame = np.empty((SIZE, SIZE, 3), np.uint8)
    frame[...] = (index, 255 - index, 100)
    return frame


def _write_lossless(path, total: int) -> None:
    """An .mkv of ``total`` FFV1 frames (lossless, RGB), frame i coloured by :func:`_frame_pixels`."""
    container = av.open(str(path), "w")
    stream = _video_stream(container, "ffv1", "bgr0")
    for index in range(total):
        _encode(container, stream, _frame_pixels(index))
    _encode(container, stream, None)
    container.close()


def _video_stream(container, codec: str, pix_fmt: str):
    stream = container.add_stream(codec, rate=10)
    stream.width = stream.height = SIZE
    stream.pix_fmt = pix_fmt
    return stream


def _encode(container, stream, pixels) -> None:
    """Encode one frame (``None`` flushes the encoder) and mux its packets."""
    frame = None if pixels is None else av.VideoFrame.from_ndarray(pixels, format="rgb24")
    for packet in stream.encode(frame):
        container.mux(packet)


def _decoded_index(image) -> int:
    """The written index of a decoded lossless frame, checked against the colour's other channels."""
    red, green, blue = image.getpixel((SIZE // 2, SIZE // 2))
    assert (green, blue) == (255 - red, 100)
    return red


@pytest.mark.parametrize("total", sorted(LINSPACE))
def test_frame_indices_hand_computed(total):
    assert frame_indices(total) == LINSPACE[total]  # default = original Video-LLaVA's rule
    assert frame_indices(total, rule="linspace") == LINSPACE[total]
    assert frame_indices(total, rule="arange") == ARANGE[total]


def test_frame_indices_equal_the_public_numpy_expressions():
    for total in range(1, 2001):
        assert frame_indices(total) == np.linspace(0, total - 1, 8, dtype=int).tolist(), total
        assert frame_indices(total, rule="arange") == np.arange(0, total, total / 8).astype(int).tolist(), total


def test_frame_indices_other_counts_and_bad_arguments():
    assert frame_indices(10, num_frames=4) == [0, 3, 6, 9]  # floor(k * 9 / 3)
    assert frame_indices(10, num_frames=4, rule="arange") == [0, 2, 5, 7]  # floor(k * 2.5)
    assert frame_indices(10, num_frames=1) == [0]
    with pytest.raises(ValueError, match="rule"):
        frame_indices(10, rule="uniform")
    with pytest.raises(ValueError, match="total_frames"):
        frame_indices(0)


@pytest.mark.parametrize("total", [8, 20, 100, 7])
def test_read_video_returns_the_documented_frames(tmp_path, total):
    path = tmp_path / f"v{total}.mkv"
    _write_lossless(path, total)
    frames = read_video(path)
    assert [image.mode for image in frames] == ["RGB"] * 8
    assert [_decoded_index(image) for image in frames] == LINSPACE[total]
    assert [_decoded_index(image) for image in read_video(path, rule="arange")] == ARANGE[total]


def test_read_video_mp4_lossy(tmp_path):
    """The common benchmark container: MPEG-4 in .mp4; grey levels 12 apart survive the lossy codec."""
    path = tmp_path / "grey.mp4"
    container = av.open(str(path), "w")
    stream = _video_stream(container, "mpeg4", "yuv420p")
    stream.options = {"qscale": "1"}
    for index in range(20):
        _encode(container, stream, np.full((SIZE, SIZE, 3), 12 * index, np.uint8))
    _encode(container, stream, None)
    container.close()
    greys = [np.asarray(image, dtype=float).mean() for image in read_video(path)]
    assert [round(grey / 12) for grey in greys] == LINSPACE[20]


def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match=r"not found: .*nothing\.mp4"):
        read_video(tmp_path / "nothing.mp4")


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n")
    with pytest.raises(VideoError, match=r"Not a readable video file: .*notes\.mp4"):
        read_video(path)


def test_zero_frame_video(tmp_path):
    path = tmp_path / "empty.avi"  # AVI keeps a video stream with no frames; MP4/MKV drop or truncate it
    container = av.open(str(path), "w")
    stream = _video_stream(container, "mpeg4", "yuv420p")
    container.start_encoding()
    _encode(container, stream, None)
    container.close()
    with pytest.raises(VideoError, match=r"zero frames: .*empty\.avi"):
        read_video(path)


def test_audio_only_file(tmp_path):
    path = tmp_path / "sound.mkv"
    container = av.open(str(path), "w")
    stream = container.add_stream("pcm_s16le", rate=8000)
    stream.layout = "mono"
    samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    samples.sample_rate = 8000
    for packet in [*stream.encode(samples), *stream.encode(None)]:
        container.mux(packet)
    container.close()
    with pytest.raises(VideoError, match=r"no video stream: .*sound\.mkv"):
        read_video(path)


def test_fewer_decodable_frames_than_needed(tmp_path):
    """20 good frames then 3 packets of noise: 23 frames counted (as decord counts), the last sampled one
    (index 22) does not decode, so the read is refused rather than filled with other frames."""
    path = tmp_path / "damaged.mkv"
    container = av.open(str(path), "w")
    stream = _video_stream(container, "ffv1", "bgr0")
    for index in range(20):
        _encode(container, stream, _frame_pixels(index))
    _encode(container, stream, None)
    noise = np.random.default_rng(0).integers(0, 256, (3, 200), dtype=np.uint8)
    for offset, payload in enumerate(noise):
        packet = av.Packet(payload.tobytes())
        packet.stream, packet.time_base = stream, Fraction(1, 10)
        packet.pts = packet.dts = 20 + offset
        container.mux(packet)
    container.close()
    with pytest.raises(VideoError, match=r"fewer frames than needed: .*damaged\.mkv has 23 .* only 20 decoded"):
        read_video(path)
    # The same file cut to fewer frames than asked for is fine: frames repeat, as in Video-LLaVA.
    short = tmp_path / "short.mkv"
    _write_lossless(short, 3)
    assert [_decoded_index(image) for image in read_video(short)] == [0, 0, 0, 0, 1, 1, 1, 2]  # floor(k * 2 / 7)


def test_missing_decoder_gives_install_hint(tmp_path, monkeypatch):
    path = tmp_path / "v.mkv"
    _write_lossless(path, 8)
    monkeypatch.setattr(video, "av", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[video\]"'):
        read_video(path)
