import numpy as np
import pytest
import torch

from rscompress.data.transforms import (
    DihedralParams,
    apply_dihedral,
    channel_mean_std,
    normalize_batch,
    sample_dihedral,
)


def test_normalize_layout_and_values():
    batch = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    out = normalize_batch(batch, mean, std)
    expected = (batch.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 4) and out.is_contiguous()
    torch.testing.assert_close(out, expected)
    cl = normalize_batch(batch, mean, std, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, expected)


def params(h, v, k):
    return DihedralParams(torch.tensor(h), torch.tensor(v), torch.tensor(k))


def test_each_move_matches_numpy():
    img = torch.arange(16 * 3, dtype=torch.uint8).view(1, 4, 4, 3)
    ref = img[0].numpy()
    cases = [
        (params([True], [False], [0]), ref[:, ::-1]),
        (params([False], [True], [0]), ref[::-1]),
        (params([False], [False], [1]), np.rot90(ref, 1)),
        (params([False], [False], [3]), np.rot90(ref, 3)),
        (params([True], [True], [2]), np.rot90(ref[::-1, ::-1], 2)),
    ]
    for p, expected in cases:
        np.testing.assert_array_equal(apply_dihedral(img, p)[0].numpy(), expected)
    assert torch.equal(img, torch.arange(16 * 3, dtype=torch.uint8).view(1, 4, 4, 3))  # input untouched


def test_sampling_is_seeded_and_covers_all_eight_symmetries():
    a = sample_dihedral(400, torch.Generator().manual_seed(5))
    b = sample_dihedral(400, torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values(), strict=True))
    img = torch.arange(4, dtype=torch.uint8).view(1, 2, 2, 1).expand(400, 2, 2, 1)
    views = {tuple(v.flatten().tolist()) for v in apply_dihedral(img, a)}
    assert len(views) == 8


def test_apply_checks_shapes():
    p = sample_dihedral(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="square"):
        apply_dihedral(torch.zeros(2, 4, 6, 3, dtype=torch.uint8), p)
    with pytest.raises(ValueError, match="batch of 3"):
        apply_dihedral(torch.zeros(3, 4, 4, 3, dtype=torch.uint8), p)


def test_channel_mean_std_matches_numpy_in_small_chunks():
    images = np.random.default_rng(0).integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
    images[..., 2] = 9  # constant channel: std floor instead of a zero
    idx = [7, 1, 3, 4]
    mean, std = channel_mean_std(images, idx, pixels_per_chunk=40)
    sel = images[idx].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, sel.mean(0))
    np.testing.assert_allclose(std[:2], sel.std(0)[:2])
    assert std[2] == pytest.approx(1 / 255)
    with pytest.raises(ValueError):
        channel_mean_std(images, [])
