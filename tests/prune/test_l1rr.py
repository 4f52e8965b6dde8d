"""L1RR: reweighted L1 sparse training, dynamic rate, attention transfer, pruning after."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict

import pytest
import torch
from torch import Tensor, nn

from rscompress.errors import UserError
from rscompress.models import create_model
from rscompress.pruning import prune_to_budget
from rscompress.pruning.methods.l1rr_losses import (
    attention_loss,
    attention_map,
    candes_weights,
    coupled_magnitudes,
    group_soft_threshold,
    layer_multipliers,
    layer_spread,
    reweighted_l1,
    sparsity,
    strength_per_rate,
)
from rscompress.pruning.methods.sparse_training import (
    SparsityConfig,
    attention_transfer,
    gamma_stack,
    next_rate,
    penalty_weights,
    prunable_channel_sets,
    reuse_differences,
    sparse_train,
    sparse_training_lr,
    target_difference,
)

IMG = 16
NUM_CLASSES = 3
SLIMMING = {"reweight": False, "dynamic": False, "self_adaptive": False, "attention_weight": 0.0}
Batches = list[tuple[Tensor, Tensor]]


def tiny_cnn() -> nn.Sequential:
    """Two conv+BN layers; γ spread over (0.05, 1) like a trained net's, not all 1."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, NUM_CLASSES),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.05, 1.0)
    return model


def data(n_batches: int = 2, batch: int = 8) -> tuple[Batches, Batches]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * batch, 3, IMG, IMG, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (n_batches * batch,), generator=gen)
    train = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    return train, [(x, y)]


def sparsity_curve(cfg: SparsityConfig) -> list[float]:
    curve: list[float] = []
    train, val = data()
    sparse_train(tiny_cnn(), train, val, cfg, progress=lambda e, s, lam, v: curve.append(s))
    return curve


# ---- pure functions -------------------------------------------------------------------


def test_penalty_weights_and_proximal_step() -> None:
    gammas = torch.tensor([[0.0, -0.5, 2.0]], requires_grad=True)  # one BN: a k = 1 stack
    weights = candes_weights(coupled_magnitudes([gammas]), eps=0.5)
    assert torch.allclose(weights[0], torch.tensor([2.0, 1.0, 0.4]))
    assert not weights[0].requires_grad
    penalty = reweighted_l1([gammas], weights)
    assert penalty.item() == pytest.approx(0 + 0.5 + 0.8)
    penalty.backward()  # differentiable in γ: the subgradient w·sign γ (0 at 0)
    assert torch.allclose(gammas.grad, torch.tensor([[0.0, -1.0, 0.4]]))
    # k = 1: the soft threshold sign(γ)·max(|γ| − t, 0)
    shrunk = group_soft_threshold(torch.tensor([[0.3, -0.3, 0.05, -2.0]]), torch.tensor([0.1, 0.5, 0.1, 1.0]))
    assert torch.allclose(shrunk, torch.tensor([[0.2, 0.0, 0.0, -1.0]]))


def test_a_coupled_channel_shrinks_along_itself_and_reaches_zero_in_every_bn_at_once() -> None:
    # one channel in two BNs per column: (0.6, 0.8) has norm 1, (0.03, 0.04) norm 0.05
    stacked = torch.tensor([[0.6, 0.03], [0.8, 0.04]])
    t = 0.05 / 2**0.5  # the column's threshold t·√k is 0.05
    shrunk = group_soft_threshold(stacked, t)
    assert torch.allclose(shrunk[:, 0], torch.tensor([0.6, 0.8]) * 0.95)  # same direction, 5 % shorter
    assert torch.equal(shrunk[:, 1], torch.zeros(2))  # both BNs at zero in the same step
    # √k·‖v‖ is the plain sum of the k |γ| when they are equal: a stream channel costs what its
    # BN channels would cost apart
    equal = torch.tensor([[0.5], [0.5], [0.5]])
    assert reweighted_l1([equal], [torch.ones(1)]).item() == pytest.approx(1.5)
    assert torch.allclose(coupled_magnitudes([equal])[0], torch.tensor([0.5]))


def test_sparsity_and_self_adaptive_multipliers() -> None:
    dense = torch.ones(10)
    half = torch.tensor([0.0] * 5 + [1.0] * 5)
    collapsed = torch.tensor([0.001] * 9 + [1.0])
    assert sparsity([dense, half], eps=0.01) == pytest.approx(5 / 20)
    m = layer_multipliers([dense, half, collapsed], eps=0.01, max_ratio=0.9)
    # untouched layers get the full push, a layer at the pruning cap none
    assert m == pytest.approx([1.0, 1 - 0.5 / 0.9, 0.0])


def test_layer_spread_is_the_median_within_layer_spread_of_gamma() -> None:
    alike, apart, single = torch.full((8,), 0.9), torch.tensor([0.1, 0.3, -0.5, 0.7]), torch.tensor([2.0])
    spread = (apart.abs().std() / apart.abs().mean()).item()
    # one BN of one channel and one all at zero have no spread and are left out
    assert layer_spread([alike, apart, apart * 3, single, torch.zeros(4)]) == pytest.approx(spread)
    assert layer_spread([alike, apart]) == pytest.approx(spread / 2, rel=1e-5)
    assert layer_spread([single]) == 0.0


def test_attention_map_is_channel_free_and_unit_norm() -> None:
    feats = torch.randn(2, 5, 4, 4)
    a = attention_map(feats)
    assert a.shape == (2, 16)
    assert torch.allclose(a.norm(dim=1), torch.ones(2))
    # duplicating every channel changes the channel count but not the map
    assert torch.allclose(attention_map(torch.cat([feats, feats], dim=1)), a)


def test_attention_loss_is_zero_between_identical_models_and_positive_otherwise() -> None:
    layers = ("layer2", "layer3", "layer4")
    x = torch.randn(2, 3, IMG, IMG)
    model = create_model("resnet18", NUM_CLASSES, small_input=True).eval()
    with attention_transfer(model, layers) as loss_of:
        model(x)
        assert loss_of(x).item() == pytest.approx(0.0, abs=1e-6)
        with torch.no_grad():
            model.layer2[0].bn1.weight.mul_(torch.linspace(0, 2, 128))
        model(x)
        loss = loss_of(x)
        assert loss.item() > 1e-4
        assert loss.requires_grad  # it trains the student
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed
    a, b = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    assert attention_loss([a], [a]).item() == 0.0
    assert attention_loss([a, a], [b, b]).item() == pytest.approx(2 * attention_loss([a], [b]).item())


def test_next_rate_raises_below_target_and_backs_off_at_it_or_on_val_loss() -> None:
    cfg = SparsityConfig(rate=0.01, target_sparsity=0.5, loss_tolerance=0.1)
    # val loss within 10 % of the dense model's: raise while below target, back off at or above it
    assert next_rate(0.01, 0.2, val_loss=1.05, ref_val_loss=1.0, cfg=cfg) == pytest.approx(0.015)
    assert next_rate(0.01, 0.5, val_loss=1.05, ref_val_loss=1.0, cfg=cfg) == pytest.approx(0.005)
    assert next_rate(0.01, 0.7, val_loss=1.05, ref_val_loss=1.0, cfg=cfg) == pytest.approx(0.005)
    # beyond tolerance: back off, whatever the sparsity
    assert next_rate(0.01, 0.2, val_loss=1.2, ref_val_loss=1.0, cfg=cfg) == pytest.approx(0.005)
    # within [rate / range, rate · range]
    assert next_rate(0.1, 0.0, 1.0, 1.0, cfg) == pytest.approx(0.1)
    assert next_rate(0.001, 0.9, 9.0, 1.0, cfg) == pytest.approx(0.001)
    fixed = SparsityConfig(rate=0.01, dynamic=False)
    assert next_rate(0.03, 0.0, 9.0, 1.0, fixed) == 0.03


def _report(cfg: SparsityConfig, sparsities: list[float]) -> dict:
    """What a SparsityReport under ``cfg`` with these per-epoch sparsities reads back as."""
    return json.loads(json.dumps({"config": asdict(cfg), "history": [{"sparsity": s} for s in sparsities]}))


def test_a_run_towards_another_target_is_the_same_run_while_no_epoch_falls_between_the_targets() -> None:
    ran = SparsityConfig(target_sparsity=0.4)
    assert target_difference(_report(ran, [0.0, 0.1, 0.39]), 0.7) is None  # below both: raised alike
    assert target_difference(_report(ran, [0.0, 0.8]), 0.7) is None  # past both: backed off alike
    assert target_difference(_report(ran, [0.0, 0.39]), 0.2) == (
        "sparse_training.target_sparsity: 0.4 there, 0.2 now, and its sparsity (up to 0.39) crossed one and not "
        "the other, so the strength would have moved otherwise"
    )
    assert target_difference(_report(ran, [0.0, 0.5]), 0.7) is not None
    # network slimming never reads the target
    assert target_difference(_report(SparsityConfig(target_sparsity=0.4, **SLIMMING), [0.5]), 0.7) is None


def test_reuse_differences_name_every_other_setting_and_let_the_target_alone_pass() -> None:
    report = _report(SparsityConfig(target_sparsity=0.4, lr=0.01), [0.0, 0.1])
    assert reuse_differences(report, SparsityConfig(target_sparsity=0.7, lr=0.01)) == []
    assert reuse_differences(report, SparsityConfig(target_sparsity=0.4, lr=0.001)) == [
        "sparse_training.lr: 0.01 there, 0.001 now"
    ]
    assert reuse_differences(report, SparsityConfig(target_sparsity=0.05, lr=0.01))[0].startswith(
        "sparse_training.target_sparsity: 0.4 there, 0.05 now"
    )


def test_a_rate_moves_the_median_channel_alike_whatever_lr_steps_and_gamma_scale() -> None:
    for median, lr, steps, reweight in [(0.97, 0.001, 20, True), (0.76, 0.01, 20, True), (0.5, 0.1, 7, False)]:
        lam = 0.02 * strength_per_rate(median, 0.01, reweight, lr, 0.9, steps)
        w_median = 1 / (median + 0.01) if reweight else 1.0
        # one epoch of proximal steps lr·λ·w/(1 − μ) takes 2 % of the median off a median channel
        assert steps * lr * lam * w_median / (1 - 0.9) == pytest.approx(0.02 * median)
    # a net whose γ are mostly zero already is measured against eps, not against ~0
    assert strength_per_rate(0.0, 0.01, True, 0.01, 0.9, 20) == strength_per_rate(0.01, 0.01, True, 0.01, 0.9, 20)
    with pytest.raises(ValueError, match="steps"):
        strength_per_rate(0.5, 0.01, True, 0.01, 0.9, 0)


# ---- sparse training ------------------------------------------------------------------


def test_reweighting_reaches_sparsity_in_fewer_epochs_than_plain_l1() -> None:
    def epochs_to(target: float, curve: list[float]) -> int:
        return next((i + 1 for i, s in enumerate(curve) if s >= target), len(curve) + 1)

    # The same λ (the "same strength"), so each gets the rate that gives it λ = 1e-2.
    median = torch.cat([tiny_cnn()[i].weight.detach() for i in (1, 4)]).median().item()
    common = dict(SLIMMING, epochs=30, lr=0.1)
    rates = {rw: 1e-2 / strength_per_rate(median, 0.01, rw, 0.1, 0.9, len(data()[0])) for rw in (True, False)}
    reweighted = epochs_to(0.3, sparsity_curve(SparsityConfig(**{**common, "reweight": True}, rate=rates[True])))
    plain = epochs_to(0.3, sparsity_curve(SparsityConfig(**common, rate=rates[False])))
    assert reweighted < 10  # 4 when written
    assert plain >= 2 * reweighted  # 21 when written


def test_a_held_layer_scale_takes_channels_without_shrinking_the_layer() -> None:
    # lr so small that only the proximal step moves γ (ρ sets the push whatever the lr).
    common = dict(SLIMMING, epochs=3, lr=1e-7, rate=0.2)
    start = [tiny_cnn()[i].weight.abs().mean().item() for i in (1, 4)]
    train, val = data()
    runs = {}
    for hold in (False, True):
        model, report = sparse_train(tiny_cnn(), train, val, SparsityConfig(**common, hold_layer_scale=hold))
        runs[hold] = ([model[i].weight.abs().mean().item() for i in (1, 4)], report.final_sparsity)
    (shrunk, _), (held, sparse) = runs[False], runs[True]
    assert held == pytest.approx(start, rel=1e-4)
    assert all(m < 0.7 * s for m, s in zip(shrunk, start, strict=True))
    assert sparse > 0  # channels went all the same: those furthest below their layer's mean


def test_network_slimming_config_is_plain_l1_at_constant_strength() -> None:
    cfg = SparsityConfig(epochs=3, lr=0.05, rate=0.05, **SLIMMING)
    train, val = data()
    model, report = sparse_train(tiny_cnn(), train, val, cfg)
    per_bn = [[(0, torch.arange(16))], [(1, torch.arange(16))]]
    assert all(torch.equal(w, torch.ones(16)) for w in penalty_weights([torch.rand(16)] * 2, per_bn, cfg))
    median = torch.cat([tiny_cnn()[i].weight.detach() for i in (1, 4)]).median().item()
    assert report.median_gamma == pytest.approx(median)
    lam = 0.05 * median * (1 - 0.9) / (0.05 * len(train))  # λ for ρ = 0.05 without reweighting
    assert [row["rate"] for row in report.history] == [0.05] * 3
    assert [row["strength"] for row in report.history] == pytest.approx([lam] * 3)
    assert all(row["attention_loss"] == 0.0 for row in report.history)
    assert not any(m._forward_hooks for m in model.modules())

    # Reference: network slimming written out, SGD on CE then the L1 proximal step on every γ.
    reference = tiny_cnn()
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    threshold = 0.05 * lam / (1 - 0.9)
    for _ in range(3):
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(reference(x), y).backward()
            opt.step()
            with torch.no_grad():
                for bn in (reference[1], reference[4]):
                    bn.weight.copy_(bn.weight.sign() * (bn.weight.abs() - threshold).clamp(min=0))
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), name


def test_only_prunable_batchnorms_are_penalised_and_residual_streams_as_one() -> None:
    model = nn.Sequential(*tiny_cnn(), nn.BatchNorm1d(NUM_CLASSES))  # BN over the logits
    bns, sets = prunable_channel_sets(model, torch.zeros(1, 3, IMG, IMG), couple=True)
    assert bns == [model[1], model[4]]
    assert [[(p, idxs.tolist()) for p, idxs in c] for c in sets] == [[(0, list(range(16)))], [(1, list(range(16)))]]

    resnet = create_model("resnet18", NUM_CLASSES, small_input=True)
    bns, sets = prunable_channel_sets(resnet, torch.zeros(1, 3, IMG, IMG), couple=True)
    assert len(bns) == 20  # all of them
    name = {bn: n for n, bn in resnet.named_modules()}
    streams = sorted(sorted(name[bns[p]] for p, _ in c) for c in sets if len(c) > 1)
    assert streams == [
        ["bn1", "layer1.0.bn2", "layer1.1.bn2"],
        ["layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2"],
        ["layer3.0.bn2", "layer3.0.downsample.1", "layer3.1.bn2"],
        ["layer4.0.bn2", "layer4.0.downsample.1", "layer4.1.bn2"],
    ]
    # every channel of every BN in exactly one set
    counts = [torch.zeros(bn.num_features) for bn in bns]
    for c in sets:
        for p, idxs in c:
            counts[p][idxs] += 1
    assert all(torch.equal(n, torch.ones_like(n)) for n in counts)
    # not coupled (network slimming): one set per BN
    assert [len(c) for c in prunable_channel_sets(resnet, torch.zeros(1, 3, IMG, IMG), couple=False)[1]] == [1] * 20


def test_config_errors_name_the_bad_value() -> None:
    with pytest.raises(UserError, match=r"target_sparsity=1\.5"):
        SparsityConfig(target_sparsity=1.5)
    train, val = data(n_batches=1)
    with pytest.raises(UserError, match="'layer9'"):
        sparse_train(tiny_cnn(), train, val, SparsityConfig(epochs=1, attention_layers=("layer9",)))


def test_sparse_resnet_prunes_residual_streams_consistently_and_reports() -> None:
    torch.manual_seed(0)
    parent = create_model("resnet18", NUM_CLASSES, small_input=True)
    with torch.no_grad():  # a trained net's spread of γ rather than all ones
        for bn in parent.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.uniform_(0.05, 1.0)
    train, val = data(n_batches=2, batch=4)
    cfg = SparsityConfig(epochs=3, lr=0.05, rate=0.02, target_sparsity=0.3)
    seen: list[tuple] = []
    model, report = sparse_train(copy.deepcopy(parent), train, val, cfg, progress=lambda *a: seen.append(a))

    # report: one row per epoch, what progress saw, ρ moved by next_rate, λ = ρ · strength_per_rate
    assert report.epochs == 3 and len(report.history) == 3
    assert (report.prunable_bns, report.channels) == (20, 4800)
    assert [(r["epoch"], r["sparsity"], r["rate"], r["val_loss"]) for r in report.history] == seen
    assert report.final_sparsity == report.history[-1]["sparsity"] > 0
    for row, nxt in zip(report.history, [*report.history[1:], None], strict=False):
        rate = next_rate(row["rate"], row["sparsity"], row["val_loss"], report.ref_val_loss, cfg)
        assert rate == pytest.approx(nxt["rate"] if nxt else report.final_rate)
        assert row["strength"] == pytest.approx(row["rate"] * report.strength_per_rate)
    assert all(row["attention_loss"] > 0 for row in report.history)
    # a stream channel is at zero in all of its BNs or in none
    bns, sets = prunable_channel_sets(model, torch.zeros(1, 3, IMG, IMG), couple=True)
    gammas = [bn.weight for bn in bns]
    streams = [gamma_stack(gammas, c) == 0 for c in sets if len(c) > 1]
    assert report.coupled_sets == len(streams) == 4
    assert sum(int(z[0].sum()) for z in streams) > 0
    assert all(torch.equal(z, z[:1].expand_as(z)) for z in streams)
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["config"]["attention_layers"] == list(cfg.attention_layers)
    assert not any(m._forward_hooks for m in model.modules())

    # residual reconstruction: the layer1 stream loses the same channels everywhere
    pruned, budget = prune_to_budget(model, "bn", IMG, target_macs=0.3, global_pruning=True)
    assert abs(budget.macs_kept / 0.3 - 1) <= 0.01
    width = pruned.bn1.num_features
    stream = [pruned.conv1.out_channels, pruned.layer2[0].conv1.in_channels]
    stream.append(pruned.layer2[0].downsample[0].in_channels)
    for block in pruned.layer1:
        stream += [block.conv1.in_channels, block.conv2.out_channels, block.bn2.num_features]
    assert set(stream) == {width} and width < 64
    with torch.no_grad():
        assert pruned.eval()(torch.randn(2, 3, IMG, IMG)).shape == (2, NUM_CLASSES)


def test_interrupted_sparse_training_resumes_to_the_same_end(tmp_path) -> None:
    torch.manual_seed(0)
    parent = create_model("resnet18", NUM_CLASSES, small_input=True)
    train, val = data(n_batches=2, batch=4)
    cfg = SparsityConfig(epochs=3, lr=0.05, rate=0.004, target_sparsity=0.3)  # L1RR: attention, dynamic ρ
    whole, whole_report = sparse_train(copy.deepcopy(parent), train, val, cfg)

    def stop_in_epoch_two(epoch, *_):
        if epoch == 1:
            raise KeyboardInterrupt  # a kill after epoch 1's work, before its state is committed

    with pytest.raises(KeyboardInterrupt):
        sparse_train(copy.deepcopy(parent), train, val, cfg, progress=stop_in_epoch_two, checkpoint_dir=tmp_path)
    epochs_run: list[int] = []
    resumed, report = sparse_train(
        copy.deepcopy(parent), train, val, cfg, progress=lambda e, *_: epochs_run.append(e), checkpoint_dir=tmp_path
    )
    assert epochs_run == [1, 2]
    for (name, p), q in zip(resumed.state_dict().items(), whole.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert drop(report.history) == drop(whole_report.history)
    assert report.final_rate == whole_report.final_rate

    with pytest.raises(UserError, match=r"other settings \(sparse_training\.epochs: \d+ there, 4 now"):
        sparse_train(copy.deepcopy(parent), train, val, SparsityConfig(epochs=4), checkpoint_dir=tmp_path)


def test_bf16_channels_last_sparse_training_runs_in_them_and_returns_float32_default_layout() -> None:
    torch.manual_seed(0)
    parent = create_model("resnet18", NUM_CLASSES, small_input=True)
    train, val = data(n_batches=2, batch=4)
    seen: list[tuple[torch.dtype, bool]] = []

    def record(module: nn.Module, _inputs: object, out: Tensor) -> None:
        if module.training:  # the student's steps; the frozen reference copy runs in eval mode
            seen.append((out.dtype, out.is_contiguous(memory_format=torch.channels_last)))

    parent.layer1.register_forward_hook(record)
    cfg = SparsityConfig(epochs=2, lr=0.05, rate=0.004, target_sparsity=0.3, bf16=True, channels_last=True)
    model, report = sparse_train(parent, train, val, cfg)
    # the student's training forwards (2 epochs × 2 batches); validation runs in eval mode, float32
    assert seen == [(torch.bfloat16, True)] * 4
    assert report.history[-1]["attention_loss"] > 0 and report.final_sparsity >= 0
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    fp32 = sparse_train(
        copy.deepcopy(parent), train, val, SparsityConfig(epochs=2, lr=0.05, rate=0.004, target_sparsity=0.3)
    )[1]
    assert fp32.history[-1]["train_ce"] != report.history[-1]["train_ce"]


def test_sparse_training_lr_follows_the_parents_sgd_rate():
    assert sparse_training_lr(None, {"optimizer": "sgd", "lr": 0.01}) == pytest.approx(0.001)
    assert sparse_training_lr(0.02, {"optimizer": "sgd", "lr": 0.01}) == 0.02  # given wins
    # AdamW's rates are not SGD's; a run dir with no optimizer record: SparsityConfig's rate
    assert sparse_training_lr(None, {"optimizer": "adamw", "lr": 1e-3}) == SparsityConfig().lr
    assert sparse_training_lr(None, {}) == SparsityConfig().lr
