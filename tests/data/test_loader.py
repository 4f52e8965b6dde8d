import numpy as np
import pytest
import torch

from rscompress.data.loader import BatchLoader

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)


def loader(images, **kw):
    labels = np.arange(len(images)) % 4
    args = dict(batch_size=4, shuffle=True, augment=True, mean=MEAN, std=STD, seed=7)
    args.update(kw)
    indices = args.pop("indices", np.arange(2, 22))
    return BatchLoader(images, labels, indices, **args)


def epoch(ld, e):
    ld.set_epoch(e)
    return [(x.clone(), y.clone()) for x, y in ld]


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True)
    )


def test_batches_shapes_and_len(images):
    ld = loader(images, batch_size=6)
    batches = epoch(ld, 0)
    assert len(ld) == len(batches) == 4
    assert [len(y) for _, y in batches] == [6, 6, 6, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (6, 3, 8, 8) and y.dtype == torch.int64
    for draw in ("batch", "sample"):
        dropped = loader(images, batch_size=6, drop_last=True, augment_draw=draw)
        assert len(dropped) == 3 and [len(y) for _, y in epoch(dropped, 0)] == [6, 6, 6]


def test_plain_pass_covers_split_once_with_exact_pixels(images):
    ld = loader(images, shuffle=False, augment=False)
    x = torch.cat([x for x, _ in ld])
    y = torch.cat([y for _, y in ld])
    rows = np.arange(2, 22)
    expected = (torch.from_numpy(images[rows]).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)
    assert y.tolist() == (rows % 4).tolist()


def test_shuffled_epoch_is_a_permutation_with_views_of_the_same_images(images):
    ld = loader(images, batch_size=20)
    ((x, _),) = epoch(ld, 0)
    pixels = (x * 0.25 + 0.5) * 255
    sums = sorted(torch.round(pixels.sum(dim=(1, 2, 3))).tolist())
    assert sums == sorted(float(images[r].astype(np.int64).sum()) for r in range(2, 22))


def test_epoch_depends_only_on_seed_and_epoch(images):
    fresh = loader(images)
    resumed_at_3 = epoch(fresh, 3)
    ran_through = loader(images)
    for e in range(3):
        epoch(ran_through, e)
    assert same(epoch(ran_through, 3), resumed_at_3)
    assert same(epoch(loader(images), 3), resumed_at_3)
    assert not same(epoch(fresh, 4), resumed_at_3)
    assert not same(epoch(loader(images, seed=8), 3), resumed_at_3)


def row_loader(images, indices, **kw):
    """Labels = row numbers, so y shows which rows a loader returned."""
    args = dict(shuffle=True, augment=False, mean=MEAN, std=STD, seed=7)
    args.update(kw)
    return BatchLoader(images, np.arange(len(images)), indices, **args)


def test_ranks_take_disjoint_equal_shards_of_the_global_order(images):
    rows = np.arange(2, 22)
    shards = []
    for rank in range(3):
        ld = row_loader(images, rows, batch_size=3, rank=rank, world_size=3)
        shards.append(torch.cat([y for _, y in epoch(ld, 2)]).tolist())
    assert [len(s) for s in shards] == [7, 7, 7]  # 20 rows padded to 21
    everything = [row for shard in shards for row in shard]
    assert sorted(set(everything)) == rows.tolist()
    assert len(everything) - len(set(everything)) == 1  # only the one padding sample repeats
    ((_, order),) = epoch(row_loader(images, rows, batch_size=20), 2)
    interleaved = [shards[i % 3][i // 3] for i in range(21)]
    assert interleaved[:20] == order.tolist() and interleaved[20] == order[0]


def test_augmentation_of_a_sample_does_not_depend_on_world_size(images):
    rows = np.arange(2, 22)
    ((x_all, y_all),) = epoch(row_loader(images, rows, batch_size=20, augment=True, augment_draw="sample"), 5)
    for rank in range(2):
        ld = row_loader(images, rows, batch_size=20, augment=True, augment_draw="sample", rank=rank, world_size=2)
        ((x, y),) = epoch(ld, 5)
        assert torch.equal(y, y_all[rank::2]) and torch.equal(x, x_all[rank::2])


SYMMETRIES = [lambda a, k=k, f=f: np.rot90(a[:, ::-1] if f else a, k) for f in (False, True) for k in range(4)]


def symmetries_of(batch_x, images, rows):
    """For each image of a batch, the dihedral symmetries that map its source image onto it."""
    pixels = torch.round((batch_x * 0.25 + 0.5) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [
        {i for i, sym in enumerate(SYMMETRIES) if np.array_equal(sym(images[r]), p)}
        for r, p in zip(rows, pixels, strict=True)
    ]


def test_batch_draw_moves_each_batch_as_one_and_varies_between_batches(images):
    rows = np.arange(2, 22)
    ld = row_loader(images, rows, batch_size=5, augment=True, augment_draw="batch")
    seen = []
    for e in range(4):
        for x, y in epoch(ld, e):
            common = set.intersection(*symmetries_of(x, images, y.numpy()))
            assert len(common) == 1, "every image of a batch must share one symmetry"
            seen.append(common.pop())
    assert len(set(seen)) >= 4  # 16 batches, one of 8 symmetries each: not one stuck view
    ld2 = row_loader(images, rows, batch_size=5, augment=True, augment_draw="batch")
    assert same(epoch(ld2, 3), epoch(ld, 3))  # a resumed epoch sees the same views
    per_sample = row_loader(images, rows, batch_size=20, augment=True, augment_draw="sample")
    assert any(
        len(set.intersection(*symmetries_of(x, images, y.numpy()))) != 1
        for e in range(4)
        for x, y in epoch(per_sample, e)
    )


def test_channels_last_and_argument_checks(images):
    x, _ = next(iter(loader(images, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="rank"):
        loader(images, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        loader(images, batch_size=0)
    with pytest.raises(ValueError, match="augment_draw"):
        loader(images, augment_draw="pixel")
    with pytest.raises(ValueError, match="square"):
        loader(np.zeros((4, 8, 6, 3), np.uint8), indices=[0, 1])


@pytest.mark.parametrize(
    ("n_train", "batch_size", "world_size", "drop_last", "drops"),
    [
        (1470, 64, 1, False, False),  # UC Merced's 70 %: a last batch of 62 is trained on, as the reference does
        (1470, 64, 1, True, True),
        (129, 64, 1, False, True),  # a last batch of one image would break BatchNorm
        (1, 64, 1, False, False),  # the only batch is never dropped
        (40, 64, 1, True, False),
        (258, 64, 2, False, True),  # 129 per rank
        (256, 64, 2, False, False),
    ],
)
def test_the_ragged_last_batch_is_kept_unless_asked_or_it_holds_one_image(
    n_train, batch_size, world_size, drop_last, drops
):
    from rscompress.api import drops_ragged_batch

    assert drops_ragged_batch(n_train, batch_size, world_size, drop_last) is drops


def test_batch_draw_across_ranks_moves_each_ranks_batch_as_one_and_resumes_alike(images):
    rows = np.arange(2, 22)
    views = []
    for rank in range(2):
        ld = row_loader(images, rows, batch_size=5, augment=True, augment_draw="batch", rank=rank, world_size=2)
        batches = epoch(ld, 6)
        assert same(
            batches,
            epoch(
                row_loader(images, rows, batch_size=5, augment=True, augment_draw="batch", rank=rank, world_size=2), 6
            ),
        )
        for x, y in batches:
            common = set.intersection(*symmetries_of(x, images, y.numpy()))
            assert len(common) == 1
            views.append(common.pop())
    assert len(views) == 4
