"""NAS channel pruning (METHODS.md §2): gates, expected MACs, the search, the derivation."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import pytest
import torch
import torch_pruning as tp
from torch import Tensor, nn

from rscompress.errors import UserError
from rscompress.models import count_macs_params, create_model
from rscompress.pruning import apply_architecture, architecture_spec
from rscompress.pruning.budget import TOLERANCE
from rscompress.pruning.graph import apply_plan, build_graph
from rscompress.pruning.methods.nas import AlphaImportance, lambda_at, nas_search
from rscompress.pruning.methods.nas_cost import ExpectedCost, cost_awareness_loss
from rscompress.pruning.methods.nas_gates import ChannelGates, gate_layout
from rscompress.pruning.plan import plan_pruning
from rscompress.pruning.pruner import score_model

IMG = 32
CLASSES = 4
TARGET = 0.35


class Batches:
    """In-memory (images, labels) batches with a learnable class signal; order set by epoch."""

    def __init__(self, n: int, seed: int, batch_size: int = 8) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % CLASSES
        # each class shifts the image mean by its own amount: easy to learn, not trivial
        shift = (self.labels.float() - (CLASSES - 1) / 2).view(-1, 1, 1, 1)
        self.images = torch.randn(n, 3, IMG, IMG, generator=gen) * 0.5 + shift * 0.5
        self.batch_size = batch_size
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epochs[-1] if self.epochs else 0
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield self.images[rows], self.labels[rows]


class TinyVGG(nn.Module):
    """VGG's shape in small: conv-BN-ReLU stages, then hidden Linear layers with no BN."""

    def __init__(self) -> None:
        super().__init__()
        stage = lambda i, o: [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
        self.features = nn.Sequential(
            *stage(3, 32),
            nn.MaxPool2d(2),
            *stage(32, 64),
            nn.MaxPool2d(2),
            *stage(64, 64),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, CLASSES)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def parent(name: str) -> nn.Module:
    torch.manual_seed(0)
    return TinyVGG() if name == "tiny_vgg" else create_model(name, CLASSES)


def run_search(model: nn.Module, **kwargs) -> tuple[nn.Module, object, list[tuple], Batches]:
    calls: list[tuple] = []
    train = Batches(32, seed=0)
    # A few epochs with a strong cost term and fast α steps, so the tiny run reaches the target.
    settings = {"img_size": IMG, "target_macs": TARGET, "search_epochs": 4}
    settings |= {"arch_lr": 0.5, "lam": 10.0, "warmup_epochs": 1}
    pruned, report = nas_search(
        model, train, Batches(16, seed=1), progress=lambda *a: calls.append(a), **{**settings, **kwargs}
    )
    return pruned, report, calls, train


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v2"])
def searched(request) -> tuple[str, nn.Module, dict, nn.Module, object, list[tuple], Batches]:
    model = parent(request.param)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report, calls, train = run_search(model)
    return request.param, model, before, pruned, report, calls, train


def conv_linear_macs(model: nn.Module) -> int:
    """count_macs_params' conv + linear terms only, without bias adds (what E[MACs] models)."""
    _, _, layer_macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, IMG, IMG), layer_wise=True)
    total = 0
    for layer, macs in layer_macs.items():
        if isinstance(layer, nn.Linear):
            total += macs - (layer.out_features if layer.bias is not None else 0)
        elif isinstance(layer, nn.Conv2d):
            assert layer.bias is None  # true of the models below; keeps this helper exact
            total += macs
    return total


# --- expected MACs ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "gap"), [("resnet18", 0.01), ("mobilenet_v2", 0.07)])
def test_expected_macs_at_full_gates_is_the_conv_and_linear_count(name: str, gap: float) -> None:
    model = parent(name)
    example = torch.zeros(1, 3, IMG, IMG)
    cost = ExpectedCost(model, gate_layout(model, example), example)
    assert cost.full == pytest.approx(conv_linear_macs(model), rel=1e-9)
    # The rest of count_macs_params is BN (2 per element), ReLU and pooling: ~0.4 % of
    # ResNet-18's count, ~6 % of MobileNetV2's (thin 1×1/depthwise convs, many BN+ReLU6).
    macs, _ = count_macs_params(model, IMG)
    assert 0 < 1 - cost.full / macs < gap


def conv_linear_weights(model: nn.Module) -> int:
    """Weights of every conv and Linear layer (biases, BN and the like are not gated costs)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "g_ghost_regnetx_tiny", "tiny_vgg"])
def test_expected_params_at_full_gates_are_the_conv_and_linear_weights(name: str) -> None:
    model = parent(name)
    example = torch.zeros(1, 3, IMG, IMG)
    cost = ExpectedCost(model, gate_layout(model, example), example, "params")
    assert cost.full == pytest.approx(conv_linear_weights(model), rel=1e-9)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "g_ghost_regnetx_tiny", "tiny_vgg"])
def test_expected_macs_with_hard_gates_equal_the_pruned_models(name: str) -> None:
    """Gates of 0/1 (removed/kept) give exactly the conv+linear MACs of the pruned model:
    residual couplings, depthwise convs, grouped convs, concats (G-Ghost) and hidden linear
    layers without BN (VGG) included."""
    model = parent(name)
    example = torch.zeros(1, 3, IMG, IMG)
    layout = gate_layout(model, example, gate_without_bn=True)
    gates = ChannelGates(layout, tau=1.0)
    with torch.no_grad():
        gates.alpha.normal_(generator=torch.Generator().manual_seed(0))
    scores = score_model(build_graph(model, example), AlphaImportance(model, gates.group_alphas()), example)
    plan = plan_pruning(scores, 0.5, global_pruning=True)
    hard = torch.ones(layout.n_gates + 1)
    for root, start, size in zip(layout.roots, layout.offsets(), layout.sizes, strict=True):
        for channel in plan.get(root, []):
            hard[start + channel % size] = 0
    pruned = copy.deepcopy(model)
    apply_plan(build_graph(pruned, example), plan)
    cost = ExpectedCost(model, layout, example)
    assert float(cost(hard)) == pytest.approx(conv_linear_macs(pruned), rel=1e-9)
    assert 0.15 < float(cost.ratio(hard)) < 0.5
    params = ExpectedCost(model, layout, example, "params")
    assert float(params(hard)) == pytest.approx(conv_linear_weights(pruned), rel=1e-9)


# --- gates --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "g_ghost_regnetx_tiny", "tiny_vgg"])
@pytest.mark.parametrize("train_mode", [False, True])
def test_folded_gates_compute_what_the_gated_model_computed(name: str, train_mode: bool) -> None:
    model = parent(name).train(train_mode)
    x = torch.randn(4, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    gates = ChannelGates(gate_layout(model, torch.zeros(1, 3, IMG, IMG), gate_without_bn=True), tau=1.0)
    with torch.no_grad():
        gates.alpha.normal_(generator=torch.Generator().manual_seed(0))  # gates spread over (0, 1)
    plain = copy.deepcopy(model)
    run = lambda m: (torch.manual_seed(2), m(x))[1]  # the same dropout mask in train mode
    gates.attach(model)
    with torch.no_grad():
        gated = run(model)
        gates.fold_into(model)
        gates.remove()
        # float rounding only (train mode renormalises 4-image batches: a little more of it)
        assert torch.allclose(run(model), gated, rtol=1e-3, atol=1e-3 * gated.abs().max())
        assert not torch.allclose(run(plain), gated, rtol=0.1, atol=0)  # dropping the gates changes it


def test_residual_stream_bns_share_one_gate_vector() -> None:
    model = parent("resnet18")
    layout = gate_layout(model, torch.zeros(1, 3, IMG, IMG))
    gates = ChannelGates(layout, tau=1.0)
    with torch.no_grad():
        gates.alpha.normal_(generator=torch.Generator().manual_seed(0))
    gate = lambda name: gates.flat()[layout.gated[name]]  # what the hook on BN ``name`` multiplies by
    # layer2's stream: the downsample BN and both blocks' last BNs meet at residual adds
    stream = ["layer2.0.downsample.1", "layer2.0.bn2", "layer2.1.bn2"]
    first = layout.gated[stream[0]]
    k = layout.roots.index("layer2.0.downsample.0")
    start = layout.offsets()[k]
    assert torch.equal(first, torch.arange(start, start + layout.sizes[k]))  # one α per channel
    in_group = lambda where: bool(((where >= start) & (where < start + layout.sizes[k])).any())
    readers = {name for name, where in layout.gated.items() if in_group(where)}
    assert readers == set(stream)
    for name in stream[1:]:
        assert torch.equal(layout.gated[name], first)  # the same α entries...
        assert torch.equal(gate(name), gate(stream[0]))  # ...so the same gates
    # a BN inside a block has its own group and gates
    assert not torch.equal(gate("layer2.0.bn1"), gate("layer2.0.bn2"))
    # the classifier's outputs are never gated
    assert "fc" not in layout.outputs and "fc" in layout.inputs


def test_groups_without_bn_gate_the_outputs_of_the_layers_producing_them_when_asked() -> None:
    model = parent("vgg16_bn")
    example = torch.zeros(1, 3, IMG, IMG)
    bns = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert gate_layout(model, example).gated.keys() == bns  # by default the BNs only
    layout = gate_layout(model, example, gate_without_bn=True)
    # the hidden classifier layers (Linear → ReLU → Dropout) carry their own gates...
    assert {"classifier.0", "classifier.3"} <= layout.gated.keys() and {"classifier.0", "classifier.3"} <= set(
        layout.roots
    )
    # ...which the next layer's inputs read; the logits are never gated
    assert torch.equal(layout.gated["classifier.0"], layout.inputs["classifier.3"])
    assert "classifier.6" not in layout.outputs and "classifier.6" not in layout.gated
    # every BN is gated, no conv that a BN follows is
    assert layout.gated.keys() == bns | {"classifier.0", "classifier.3"}


@pytest.mark.parametrize("gate_without_bn", [False, True])
def test_hidden_linear_layers_without_bn_are_searched_and_pruned_only_when_asked(gate_without_bn: bool) -> None:
    model = parent("tiny_vgg")
    pruned, report, _, _ = run_search(model, gate_without_bn=gate_without_bn)
    assert abs(report.macs_kept / TARGET - 1) <= TOLERANCE
    assert report.gated_without_bn == gate_without_bn
    widths = lambda m: [m.classifier[i].out_features for i in (0, 3, 5)]
    assert widths(model) == [128, 96, CLASSES]
    hidden = widths(pruned)
    if gate_without_bn:
        assert hidden[0] < 128 and hidden[1] < 96 and hidden[2] == CLASSES
    else:
        assert hidden == [128, 96, CLASSES]


def test_gates_multiply_bn_outputs_and_come_off_without_trace() -> None:
    model = parent("resnet18").eval()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        plain = model(x)
    gates = ChannelGates(gate_layout(model, x[:1]), tau=1.0)
    gates.attach(model)
    bn = model.layer1[0].bn1
    seen: dict[str, Tensor] = {}
    probes = [
        # __setitem__ returns None: a hook that returns a value would replace the tensor
        bn.register_forward_pre_hook(lambda m, i: seen.__setitem__("in", i[0])),
        # runs after the gate; a clone, since the in-place ReLU that follows overwrites it
        bn.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o.clone())),
    ]
    with torch.no_grad():
        gated = model(x)
        ungated = nn.BatchNorm2d.forward(bn, seen["in"])  # forward() itself: no hooks
    for probe in probes:
        probe.remove()
    gate = gates.flat()[gates.layout.gated["layer1.0.bn1"]].detach()
    assert torch.allclose(seen["out"], ungated * gate.view(1, -1, 1, 1))
    assert not torch.allclose(gated, plain)  # g = sigmoid(3) ≈ 0.95 changes the function a bit
    gates.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), plain)


# --- search and derivation ----------------------------------------------------------------


def test_search_moves_the_expected_ratio_to_the_target(searched) -> None:
    _, _, _, _, report, calls, train = searched
    assert report.initial_expected_ratio > 0.9
    # Closes at least 3/4 of the gap (0.91 → 0.35). An absolute 0.1 held on one machine and
    # not on another (0.227 here, at the same commit): these 4 fast epochs overshoot by an
    # amount float kernels move. Hitting the target exactly is the bisection's job (below).
    assert abs(report.final_expected_ratio - TARGET) < 0.25 * abs(report.initial_expected_ratio - TARGET)
    # Epoch 0 is CE alone (λ warms up from 0): it may open gates as well as close them.
    assert report.expected_ratio[-1] < min(report.expected_ratio[0], report.initial_expected_ratio)
    assert [c[0] for c in calls] == [0, 1, 2, 3] and train.epochs == [0, 1, 2, 3]
    assert [c[1] for c in calls] == report.expected_ratio and all(c[2] == TARGET for c in calls)
    assert [c[3] for c in calls] == report.score_ce


def test_derived_model_hits_target_macs(searched) -> None:
    name, model, before, pruned, report, _, _ = searched
    macs, params = count_macs_params(pruned, IMG)
    parent_macs, parent_params = count_macs_params(model, IMG)
    assert abs(macs / parent_macs / TARGET - 1) <= TOLERANCE
    assert report.macs_kept == pytest.approx(macs / parent_macs)
    assert report.params_kept == pytest.approx(params / parent_params)
    assert report.budget["target"] == TARGET and report.budget["macs"] == macs
    # the parent is left as it was; the pruned weights are the ones trained in the search
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    head = "fc" if name == "resnet18" else "classifier.1"
    assert not torch.equal(pruned.get_submodule(head).bias, model.get_submodule(head).bias)


def test_derived_model_is_plain_and_equals_its_rebuilt_architecture(searched) -> None:
    name, model, _, pruned, report, _, _ = searched
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pruned.modules())
    assert not any(isinstance(m, ChannelGates) for m in pruned.modules())
    assert [m.training for m in pruned.modules()] == [m.training for m in model.modules()]
    rebuilt = apply_architecture(create_model(name, CLASSES), architecture_spec(pruned))
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(pruned.eval()(x), rebuilt.eval()(x))
    assert report.to_dict()["budget"]["macs_kept"] == report.macs_kept


def test_same_seed_same_result() -> None:
    runs = [run_search(parent("resnet18"), search_epochs=2, target_macs=0.5) for _ in range(2)]
    (a, ra, _, _), (b, rb, _, _) = runs
    assert ra.expected_ratio == rb.expected_ratio
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_the_validation_images_only_validate_no_score_step_learns_from_them() -> None:
    """Val is the selection split: the gates (folded into the model) must not be fitted to it."""
    settings = {"img_size": IMG, "target_macs": 0.5, "search_epochs": 2, "arch_lr": 0.5, "lam": 10.0}
    val = Batches(16, seed=1)
    other_val = Batches(16, seed=1)
    other_val.labels = (other_val.labels + 1) % CLASSES  # every val label wrong
    a, ra = nas_search(parent("resnet18"), Batches(32, seed=0), val, **settings)
    b, rb = nas_search(parent("resnet18"), Batches(32, seed=0), other_val, **settings)
    assert ra.expected_ratio == rb.expected_ratio and ra.score_ce == rb.score_ce
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_bf16_channels_last_search_runs_in_them_and_returns_a_float32_default_layout_model() -> None:
    model = parent("resnet18")
    seen: list[tuple[torch.dtype, bool]] = []
    # deepcopy carries the hook into the searched copy: it sees the search's forward passes.
    model.conv1.register_forward_hook(
        lambda _m, inputs, out: seen.append((out.dtype, inputs[0].is_contiguous(memory_format=torch.channels_last)))
    )
    pruned, report, _, _ = run_search(model, search_epochs=2, target_macs=0.5, bf16=True, channels_last=True)
    # every weight and score step of 2 epochs × 4 train batches; the rest (graph tracing, MACs
    # counts) are outside the search's training
    assert seen.count((torch.bfloat16, True)) == 2 * 4 * 2
    macs, _ = count_macs_params(pruned, IMG)
    assert abs(macs / count_macs_params(model, IMG)[0] / 0.5 - 1) <= TOLERANCE
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in pruned.parameters())
    fp32 = run_search(parent("resnet18"), search_epochs=2, target_macs=0.5)[1]
    assert report.expected_ratio != fp32.expected_ratio


def test_lambda_warms_up_linearly_from_zero() -> None:
    assert [lambda_at(e, 2.0, 2) for e in range(4)] == [0.0, 1.0, 2.0, 2.0]
    assert lambda_at(0, 2.0, 0) == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_macs": 0},
        {"target_macs": 1.5},
        {"target_macs": -0.2},
        {"target_params": 0},
        {"target_params": float("inf")},
        {"search_epochs": 0},
        {"img_size": 0},
        {"tau": 0.0},
        {"lam": -1.0},
        {"arch_lr": float("nan")},
    ],
)
def test_bad_settings_are_user_errors(kwargs: dict) -> None:
    with pytest.raises(UserError, match=next(iter(kwargs))):
        nas_search(parent("resnet18"), Batches(8, 0), Batches(8, 1), **{"img_size": IMG, **kwargs})


def test_one_budget_at_most() -> None:
    with pytest.raises(UserError, match="target_macs or target_params, not both"):
        nas_search(parent("resnet18"), Batches(8, 0), Batches(8, 1), img_size=IMG, target_macs=0.5, target_params=0.5)


def test_a_params_budget_steers_params_and_is_hit() -> None:
    model = parent("resnet18")
    pruned, report, _, _ = run_search(model, target_macs=None, target_params=TARGET)
    _, params = count_macs_params(pruned, IMG)
    assert abs(params / count_macs_params(model, IMG)[1] / TARGET - 1) <= TOLERANCE
    assert (report.target_macs, report.target_params) == (None, TARGET)
    assert report.budget["target_metric"] == "params"
    # the search steered E[params]: it starts near 0.9 (the gates' start) and closes on the target
    example = torch.zeros(1, 3, IMG, IMG)
    layout = gate_layout(model, example)
    with torch.no_grad():
        start = float(ExpectedCost(model, layout, example, "params").ratio(ChannelGates(layout, 1.0).flat()))
    assert report.initial_expected_ratio == pytest.approx(start)
    # Closes most of the gap; score steps on train batches, whose CE a tiny model has fitted,
    # resist the strong cost term little, so the 16 fast steps may overshoot the target.
    assert abs(report.final_expected_ratio - TARGET) < abs(report.initial_expected_ratio - TARGET) / 3


def test_no_validation_batches_is_a_user_error() -> None:
    with pytest.raises(UserError, match="validation batches"):
        nas_search(parent("resnet18"), Batches(8, 0), [], img_size=IMG, search_epochs=1)


RESUMABLE = {"img_size": IMG, "target_macs": 0.5, "arch_lr": 0.5, "lam": 10.0, "warmup_epochs": 1}


def kill_search_in_epoch_two(checkpoint_dir, settings: dict) -> None:
    """A resnet18 search killed after epoch 1's work, before its state is committed."""

    def stop_in_epoch_two(epoch, *_):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nas_search(
            parent("resnet18"),
            Batches(32, seed=0),
            Batches(16, seed=1),
            progress=stop_in_epoch_two,
            checkpoint_dir=checkpoint_dir,
            **settings,
        )


def test_interrupted_search_resumes_to_the_same_end(tmp_path) -> None:
    settings = {**RESUMABLE, "search_epochs": 3}
    whole, whole_report, _, _ = run_search(parent("resnet18"), **settings)
    kill_search_in_epoch_two(tmp_path, settings)
    epochs_run: list[int] = []
    resumed, report = nas_search(
        parent("resnet18"),
        Batches(32, seed=0),
        Batches(16, seed=1),
        progress=lambda e, *_: epochs_run.append(e),
        checkpoint_dir=tmp_path,
        **settings,
    )
    assert epochs_run == [1, 2]
    assert report.expected_ratio == whole_report.expected_ratio and report.score_ce == whole_report.score_ce
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in resumed.state_dict().items())
    with pytest.raises(UserError, match=r"other settings \(nas_search\.lam: 10\.0 there, 1\.0 now\)"):
        nas_search(
            parent("resnet18"),
            Batches(32, seed=0),
            Batches(16, seed=1),
            checkpoint_dir=tmp_path,
            **{**settings, "lam": 1.0},
        )
    with pytest.raises(
        UserError, match=r"other settings \(nas_search\.bf16: false there, true now\)"
    ):  # nor in another precision
        nas_search(
            parent("resnet18"),
            Batches(32, seed=0),
            Batches(16, seed=1),
            checkpoint_dir=tmp_path,
            **{**settings, "bf16": True},
        )
    with pytest.raises(
        UserError, match=r"\(nas_search\.gate_without_bn: false there, true now\)"
    ):  # nor another gate layout
        nas_search(
            parent("resnet18"),
            Batches(32, seed=0),
            Batches(16, seed=1),
            checkpoint_dir=tmp_path,
            **{**settings, "gate_without_bn": True},
        )


def test_a_search_saved_before_gate_without_bn_existed_still_resumes(tmp_path) -> None:
    settings = {**RESUMABLE, "search_epochs": 2}
    kill_search_in_epoch_two(tmp_path, settings)
    state = next(tmp_path.glob("checkpoint/epoch-*/state.json"))
    meta = json.loads(state.read_text())
    del meta["extra"]["settings"]["gate_without_bn"]  # what an older version wrote
    state.write_text(json.dumps(meta))
    epochs_run: list[int] = []
    nas_search(
        parent("resnet18"),
        Batches(32, seed=0),
        Batches(16, seed=1),
        progress=lambda e, *_: epochs_run.append(e),
        checkpoint_dir=tmp_path,
        **settings,
    )
    assert epochs_run == [1]


def test_cost_awareness_loss_is_the_miss_relative_to_the_target() -> None:
    ratio = torch.tensor(0.3, requires_grad=True)
    assert cost_awareness_loss(torch.tensor(0.1), 0.1) == 0
    for target in (0.2, 0.1, 0.05):
        (grad,) = torch.autograd.grad(cost_awareness_loss(ratio, target), ratio)
        # Above the target the push is 1/r*: a harder target is pushed harder, not the same.
        assert grad == pytest.approx(1 / target)
    assert cost_awareness_loss(torch.tensor(0.05), 0.1) == pytest.approx(0.5)


def test_harder_targets_get_a_different_search_that_ends_nearer_them() -> None:
    # Moderate settings, so the toy search does not reach the targets and the trajectories
    # show the push: with the absolute miss both would have been identical.
    ends = {
        target: run_search(parent("resnet18"), target_macs=target, lam=2.0, arch_lr=0.1)[1].expected_ratio
        for target in (0.2, 0.05)
    }
    assert ends[0.05][-1] < ends[0.2][-1]
