"""Video decoding seeks: sparse samples of a long video are decoded without decoding it all."""

import pytest
import torch

from media_factory import write_video
from qwen2vl.processing import MediaLimits, VisionSettings
from qwen2vl.processing.video import VideoOptions, decode_sampled_frames, sample_indices


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """Two minutes at 10 fps (1200 frames), a keyframe every 10 frames."""
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", 120, 64, 48, 10, keyframe_interval=10)


def test_sparse_sampling_decodes_a_small_fraction_of_the_frames(long_video):
    frames, decoded = decode_sampled_frames(long_video, VideoOptions(fps=0.1), VisionSettings(), "video 1", MediaLimits())
    assert frames.shape[0] == 12
    assert decoded < 1200 // 4


def test_seeking_returns_the_frames_a_full_decode_returns(long_video):
    import decord

    options = VideoOptions(fps=0.1, resized_height=48, resized_width=64)
    frames, _ = decode_sampled_frames(long_video, options, VisionSettings(), "video 1", MediaLimits())
    reader = decord.VideoReader(str(long_video))
    indices = sample_indices(0, len(reader) - 1, 12)
    expected = torch.from_numpy(reader.get_batch(indices).asnumpy()).permute(0, 3, 1, 2)  # [T, 3, H, W]
    # 64x48 is not a multiple of 28: both sides are resized the same way, so compare at the decoded size.
    assert frames.shape[-2:] == (56, 56)
    reference = torch.nn.functional.interpolate(expected.float(), size=(56, 56), mode="bicubic", align_corners=False,
                                                antialias=True).clamp(0, 255).round().to(torch.uint8)
    assert torch.equal(frames, reference)
