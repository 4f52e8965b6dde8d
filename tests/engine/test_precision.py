import pytest
import torch
from torch import nn

from rscompress.engine.precision import bf16_autocast, bf16_conv_gradient_is_wrong


def _weight_grads(conv: nn.Conv2d, x: torch.Tensor, grad_out: torch.Tensor, bf16: bool) -> torch.Tensor:
    conv.weight.grad = None
    with bf16_autocast(conv, bf16):
        y = conv(x)
    y.float().backward(grad_out)
    return conv.weight.grad.clone()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_strided_conv_on_a_map_smaller_than_its_stride_gets_float32_gradients(threads):
    # Plain bf16 autocast gives weight gradients up to ~1e37 here in most repetitions.
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        conv = nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False)
        for _ in range(20):
            x = torch.randn(8, 64, 1, 1)
            grad_out = torch.randn(8, 128, 1, 1)
            expected = _weight_grads(conv, x, grad_out, bf16=False)
            torch.testing.assert_close(_weight_grads(conv, x, grad_out, bf16=True), expected)
    finally:
        torch.set_num_threads(previous)


def test_other_convs_still_run_in_bf16_and_the_model_is_left_as_it_was():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1))
    keys = list(model.state_dict())
    outputs = {}
    hooks = [
        m.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out.dtype)) for i, m in enumerate(model)
    ]
    with bf16_autocast(model, True):
        model(torch.randn(2, 3, 3, 3))  # 3×3 → 2×2 (bf16), then 2×2 with stride 2 (bf16 is right)
    assert outputs == {0: torch.bfloat16, 1: torch.bfloat16}
    with bf16_autocast(model, True):
        model(torch.randn(2, 3, 2, 2))  # 2×2 → 1×1, then 1×1 with stride 2: float32
    assert outputs == {0: torch.bfloat16, 1: torch.float32}
    for hook in hooks:
        hook.remove()
    assert all("forward" not in vars(m) for m in model) and list(model.state_dict()) == keys
    with bf16_autocast(model, False):
        assert model(torch.randn(2, 3, 8, 8)).dtype == torch.float32


def test_only_ungrouped_convs_smaller_than_their_stride_are_flagged():
    conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)
    depthwise = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)
    assert bf16_conv_gradient_is_wrong(conv, torch.zeros(1, 4, 1, 1))
    assert bf16_conv_gradient_is_wrong(conv, torch.zeros(1, 4, 8, 1))
    assert not bf16_conv_gradient_is_wrong(conv, torch.zeros(1, 4, 2, 2))
    assert not bf16_conv_gradient_is_wrong(depthwise, torch.zeros(1, 4, 1, 1))
