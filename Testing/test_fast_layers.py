"""The fine head's fast CPU layers compute what their ``nn`` parents compute, and the geodesic
cache returns exactly what a fresh computation returns, click after click."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from SAMMed3DLib.model.click_maps import ClickMapCache, reuse_click_maps
from SAMMed3DLib.model.fast_layers import Conv3d, ConvTranspose3d, InstanceNorm3d
from SAMMed3DLib.model.fine_head import NEW_FINE_HEAD, FineHead
from SAMMed3DLib.model.geodesic import UNREACHED, GeodesicCache, geodesic_distance


@pytest.fixture(autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _twin(fast: nn.Module, plain_type: type[nn.Module], **kwargs: object) -> nn.Module:
    plain = plain_type(**kwargs)
    plain.load_state_dict(fast.state_dict())
    return plain


@pytest.mark.parametrize(
    "shape, cin, cout, kernel, stride, padding",
    [
        ((1, 16, 32, 32, 32), 16, 16, 3, 1, 1),  # the size PyTorch sends to its direct kernel
        ((1, 14, 24, 20, 16), 14, 8, 3, 1, 1),  # non-cubic
        ((2, 8, 16, 16, 16), 8, 16, 2, 2, 0),  # batch 2, strided
        ((1, 8, 20, 20, 20), 8, 1, 1, 1, 0),  # the head's 1×1×1 output
    ],
)
def test_conv3d_matches_nn_conv3d(shape, cin, cout, kernel, stride, padding) -> None:
    torch.manual_seed(0)
    fast = Conv3d(cin, cout, kernel, stride=stride, padding=padding)
    plain = _twin(fast, nn.Conv3d, in_channels=cin, out_channels=cout, kernel_size=kernel, stride=stride, padding=padding)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)


def test_conv_transpose3d_matches_nn_for_block_upsampling() -> None:
    torch.manual_seed(1)
    for cin, cout, side in ((16, 8, 12), (32, 16, 5)):
        fast = ConvTranspose3d(cin, cout, 2, stride=2)
        plain = _twin(fast, nn.ConvTranspose3d, in_channels=cin, out_channels=cout, kernel_size=2, stride=2)
        for x in (torch.randn(2, cin, side, side + 1, side + 2), torch.randn(1, cin, side, side, side).contiguous(memory_format=torch.channels_last_3d)):
            with torch.no_grad():
                out = fast(x)
                torch.testing.assert_close(out, plain(x), rtol=1e-5, atol=1e-5)
            assert out.shape == (x.shape[0], cout, 2 * x.shape[2], 2 * x.shape[3], 2 * x.shape[4])
    # Other geometries are the parent's job.
    odd = ConvTranspose3d(4, 2, 3, stride=2, padding=1)
    x = torch.randn(1, 4, 5, 5, 5)
    with torch.no_grad():
        assert torch.equal(odd(x), nn.ConvTranspose3d.forward(odd, x))


@pytest.mark.parametrize("shape", [(1, 8, 16, 16, 16), (2, 16, 7, 9, 11), (1, 3, 32, 32, 32)])
def test_instance_norm_matches_nn_and_stays_channels_last(shape) -> None:
    torch.manual_seed(7)
    fast = InstanceNorm3d(shape[1], affine=True)
    with torch.no_grad():
        fast.weight.normal_(1.0, 0.5)
        fast.bias.normal_(0.0, 0.5)
    plain = _twin(fast, nn.InstanceNorm3d, num_features=shape[1], affine=True)
    # An offset and scale per channel, as a convolution's output has: a one-pass variance in float32
    # would lose digits here.
    x = torch.randn(shape) * 3.0 + torch.arange(shape[1], dtype=torch.float32).view(1, -1, 1, 1, 1) * 10.0
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        xin = x.contiguous(memory_format=layout)
        with torch.no_grad():
            out = fast(xin)
            torch.testing.assert_close(out, plain(xin), rtol=1e-5, atol=5e-5)
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
    # Without affine parameters, or keeping running statistics, it is PyTorch's own layer.
    bare = InstanceNorm3d(shape[1])
    with torch.no_grad():
        assert torch.equal(bare(x), nn.InstanceNorm3d.forward(bare, x))


def test_conv3d_channel_shares_add_up_to_the_whole_convolution() -> None:
    torch.manual_seed(6)
    conv = Conv3d(14, 8, 3, padding=1)
    x = torch.randn(1, 14, 16, 16, 16)
    with torch.no_grad():
        split = conv.forward_channels(x[:, :8], 0, True) + conv.forward_channels(x[:, 8:], 8, False)
        torch.testing.assert_close(split, conv(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="inference"):
        conv.forward_channels(x.requires_grad_(), 0, True)


def test_training_keeps_pytorchs_own_layers_and_their_gradients() -> None:
    torch.manual_seed(3)
    fast = nn.Sequential(Conv3d(2, 4, 3, padding=1), InstanceNorm3d(4, affine=True), ConvTranspose3d(4, 2, 2, stride=2))
    plain = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.ConvTranspose3d(4, 2, 2, stride=2))
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(1, 2, 6, 6, 6)
    out_fast, out_plain = fast(x), plain(x)
    assert torch.equal(out_fast, out_plain)  # the very same kernels while a gradient is needed
    out_fast.square().sum().backward()
    out_plain.square().sum().backward()
    for a, b in zip(fast.parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad)


def _head() -> FineHead:
    torch.manual_seed(4)
    head = FineHead(32, geodesic_reach=NEW_FINE_HEAD["geodesic_reach"]).eval()
    with torch.no_grad():  # a trained-looking head: the zero-initialised output would hide differences
        head.out.weight.normal_(0.0, 0.5)
    return head


def test_fine_head_fast_inference_matches_the_plain_layers(monkeypatch) -> None:
    from SAMMed3DLib.model import fast_layers, fine_head

    head = _head()
    image = torch.randn(1, 1, 32, 32, 32)
    logits = torch.randn(1, 1, 8, 8, 8) * 4
    coords = torch.tensor([[[10.0, 12.0, 9.0], [20.0, 20.0, 22.0]]])
    labels = torch.tensor([[1, 0]])
    with torch.inference_mode():
        fast = head(image, logits, coords, labels)
        with torch.profiler.profile() as prof:
            head(image, logits, coords, labels)
        cache = ClickMapCache()
        with reuse_click_maps(cache):  # a session window: the image's share is kept, then reused
            in_window = [head(image, logits, coords, labels) for _ in range(2)]
            other = image.flip(2)  # another window's image: nothing of the first may be reused
            other_in_window = head(other, logits, coords, labels)
        other_fresh = head(other, logits, coords, labels)
        with monkeypatch.context() as patch:  # every layer takes PyTorch's own forward
            patch.setattr(fast_layers, "fast_path_usable", lambda x, w: False)
            patch.setattr(fine_head, "fast_path_usable", lambda x, w: False)
            plain = head(image, logits, coords, labels)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(out, fast) for out in in_window)
    assert torch.equal(other_in_window, other_fresh)
    slow = [e.key for e in prof.key_averages() if "slow_conv" in e.key]
    assert not slow, f"the fine head fell back to PyTorch's direct convolution kernels: {slow}"


def test_a_window_image_changed_in_place_is_not_reused() -> None:
    head = _head()
    image = torch.randn(1, 1, 32, 32, 32)
    logits = torch.randn(1, 1, 8, 8, 8) * 4
    coords, labels = torch.tensor([[[10.0, 12.0, 9.0]]]), torch.tensor([[1]])
    cache = ClickMapCache()
    with torch.inference_mode():
        with reuse_click_maps(cache):
            head(image, logits, coords, labels)
    image.mul_(-1.0)  # the same tensor, other values (its version counter moves)
    with torch.inference_mode():
        with reuse_click_maps(cache):
            again = head(image, logits, coords, labels)
        fresh = head(image, logits, coords, labels)
    assert torch.equal(again, fresh)


def _seeds(*cells: tuple[int, int, int, int]) -> torch.Tensor:
    seeds = torch.zeros((1, 2, 12, 10, 14), dtype=torch.bool)
    for channel, z, y, x in cells:
        seeds[0, channel, z, y, x] = True
    return seeds


def test_geodesic_cache_equals_a_fresh_computation_click_after_click() -> None:
    torch.manual_seed(5)
    image = torch.randn(1, 1, 12, 10, 14).cumsum(-1) / 4
    other_image = image.flip(-1)
    cache = GeodesicCache()
    steps = [
        (image, _seeds((0, 3, 3, 3))),  # first click
        (image, _seeds((0, 3, 3, 3), (1, 8, 2, 11))),  # a negative click: channel 1 starts
        (image, _seeds((0, 3, 3, 3), (0, 10, 8, 1), (1, 8, 2, 11))),  # another positive: added to channel 0
        (image, _seeds((0, 3, 3, 3), (0, 10, 8, 1), (1, 8, 2, 11))),  # nothing new
        (image, _seeds((0, 10, 8, 1), (1, 8, 2, 11))),  # an undo removed a seed: channel 0 starts over
        (other_image, _seeds((0, 10, 8, 1), (1, 8, 2, 11))),  # another window's image
    ]
    for img, seeds in steps:
        for weight, sweeps in ((20.0, 2), (5.0, 1)):
            assert torch.equal(cache.distance(img, seeds, weight, sweeps), geodesic_distance(img, seeds, weight, sweeps))


def test_a_polarity_without_clicks_is_unreached_and_leaves_the_other_unchanged() -> None:
    torch.manual_seed(7)
    image = torch.randn(2, 1, 12, 10, 14)
    seeds = torch.zeros((2, 2, 12, 10, 14), dtype=torch.bool)
    seeds[0, 0, 3, 3, 3] = True  # item 0: a positive click only; item 1: no click at all
    dist = geodesic_distance(image, seeds, 20.0, 2)
    assert torch.equal(dist[0, 0], geodesic_distance(image[:1], seeds[:1, :1], 20.0, 2)[0, 0])
    assert bool((dist[0, 1] == UNREACHED).all()) and bool((dist[1] == UNREACHED).all())
    assert torch.equal(GeodesicCache().distance(image, seeds, 20.0, 2), dist)


def test_geodesic_maps_in_a_session_window_equal_the_maps_without_cache() -> None:
    head = _head()
    image = torch.randn(1, 1, 32, 32, 32)
    clicks = [([6.0, 7.0, 8.0], 1), ([25.0, 20.0, 9.0], 0), ([14.0, 28.0, 20.0], 1)]
    cache = ClickMapCache()
    for k in range(1, len(clicks) + 1):
        coords = torch.tensor([[c for c, _ in clicks[:k]]])
        labels = torch.tensor([[lab for _, lab in clicks[:k]]])
        with torch.inference_mode():
            fresh = head.geodesic_maps(image, coords, labels)
            with reuse_click_maps(cache):
                cached = head.geodesic_maps(image, coords, labels)
        assert torch.equal(cached, fresh)
