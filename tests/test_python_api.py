"""The Python API on a user's nn.Module and DataLoader (rscompress.python_api)."""

import json
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rscompress as rsc
from rscompress.errors import UserError
from rscompress.models.external import identify_external

EXAMPLE = torch.zeros(1, 3, 32, 32)


def _loaders(n=48, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % classes
    return (
        DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True),
        DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16),
    )


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_prune_a_torchvision_model_to_a_budget_and_reload_it_in_a_fresh_process(tmp_path):
    train, val = _loaders()
    model = torchvision.models.resnet18(num_classes=4)
    before = _params(model)
    result = rsc.prune(
        model, train, val, example_input=EXAMPLE, method="l1", target_macs=0.35, finetune_epochs=1, out=tmp_path / "run"
    )
    assert result.macs_kept == pytest.approx(0.35, abs=0.01)
    assert _params(result.model) == pytest.approx(result.params_kept * before)
    assert _params(model) == before  # the user's model is not changed
    assert len(result.history) == 1 and result.out == tmp_path / "run"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == "torchvision/resnet18"

    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    result.model.eval()
    expected = result.model(x)
    code = (
        "import sys, torch, rscompress as rsc; m = rsc.load(sys.argv[1]); "
        "torch.save(m(torch.load(sys.argv[2])), sys.argv[3])"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], check=True
    )
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, atol=1e-5)


class _Killed(Exception):
    pass


def test_a_phase_resumed_with_other_batches_is_refused(tmp_path, monkeypatch):
    """The loader is the caller's: a killed sparse training resumed on other batches (another
    batch size) is refused by the fit loop's own record of batches per epoch."""
    from rscompress import python_api

    train, val = _loaders()  # 48 images in batches of 16
    model = torchvision.models.resnet18(num_classes=4)
    kwargs = dict(
        example_input=EXAMPLE,
        method="slim",
        target_macs=0.5,
        finetune_epochs=1,
        method_options={"sparse_epochs": 2},
        quiet=False,
    )

    def log(line):
        if line.startswith("sparse epoch 2/"):
            raise _Killed

    with monkeypatch.context() as m:
        m.setattr(python_api, "print", log, raising=False)
        with pytest.raises(_Killed):
            rsc.prune(model, train, val, out=tmp_path / "r", **kwargs)
    smaller = DataLoader(train.dataset, batch_size=8, shuffle=True)
    with pytest.raises(UserError, match="trained on 3 batches per epoch, this run has 6"):
        rsc.prune(model, smaller, val, out=tmp_path / "r", resume=True, **{**kwargs, "quiet": True})


def test_a_killed_prune_resumes_to_the_uninterrupted_result(tmp_path):
    train, val = _loaders()
    model = torchvision.models.resnet18(num_classes=4)

    def ce(m, x, y, epoch):
        logits = m(x)
        return nn.functional.cross_entropy(logits, y, label_smoothing=0.1), logits

    def dies_in_epoch_2(m, x, y, epoch):
        if epoch == 1:
            raise _Killed
        return ce(m, x, y, epoch)

    # The run is killed through its own loss_fn, so every run here fine-tunes with one: the same CE.
    kwargs = dict(example_input=EXAMPLE, method="l1", target_macs=0.5, finetune_epochs=2, loss_fn=ce)
    whole = rsc.prune(model, train, val, out=tmp_path / "whole", **kwargs)
    with pytest.raises(_Killed):
        rsc.prune(model, train, val, out=tmp_path / "killed", **{**kwargs, "loss_fn": dies_in_epoch_2})
    with pytest.raises(UserError, match="unfinished run; pass resume=True"):
        rsc.prune(model, train, val, out=tmp_path / "killed", **kwargs)
    resumed = rsc.prune(model, train, val, out=tmp_path / "killed", resume=True, **kwargs)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(UserError, match="already holds a finished run"):
        rsc.prune(model, train, val, out=tmp_path / "killed", resume=True, **kwargs)


def test_resuming_with_other_settings_is_refused(tmp_path):
    train, val = _loaders()
    model = torchvision.models.resnet18(num_classes=4)
    (tmp_path / "run").mkdir()
    with pytest.raises(_Killed):
        rsc.prune(
            model,
            train,
            val,
            example_input=EXAMPLE,
            method="l1",
            target_macs=0.5,
            finetune_epochs=2,
            out=tmp_path / "run",
            loss_fn=lambda *a: (_ for _ in ()).throw(_Killed()),
        )
    with pytest.raises(UserError, match="other settings"):
        rsc.prune(
            model,
            train,
            val,
            example_input=EXAMPLE,
            method="l1",
            target_macs=0.4,
            finetune_epochs=2,
            out=tmp_path / "run",
            resume=True,
        )


def test_an_se_parent_is_folded_and_the_pruned_model_saves_as_the_plain_architecture(tmp_path):
    train, val = _loaders()
    model = rsc.create_model("se_resnet18", 4, small_input=True)
    result = rsc.prune(
        model,
        train,
        val,
        example_input=EXAMPLE,
        method="remotetrimmer",
        target_macs=0.35,
        loss="aml+ce",
        finetune_epochs=1,
    )
    assert result.macs_kept == pytest.approx(0.35, abs=0.01) and result.out is None
    path = rsc.save(result.model, tmp_path / "saved", example_input=EXAMPLE, class_names=["a", "b", "c", "d"])
    config = json.loads((path / "config.json").read_text())
    assert (config["model"], config["model_kwargs"], config["class_names"]) == (
        "resnet18",
        {"small_input": True},
        ["a", "b", "c", "d"],
    )
    x = torch.randn(2, 3, 32, 32)
    result.model.eval()
    assert torch.allclose(rsc.load(path)(x), result.model(x), atol=1e-5)


def test_prune_then_distill_from_the_unpruned_model_as_teacher():
    train, val = _loaders()
    torch.manual_seed(0)
    model = rsc.create_model("se_resnet18", 4, small_input=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def prune(loss, **kd):
        return rsc.prune(
            model, train, val, example_input=EXAMPLE, method="l1", target_macs=0.35, loss=loss, finetune_epochs=1, **kd
        ).model

    plain, distilled = prune("ce"), prune("dkd", kd={"temperature": 2.0})
    # the teacher's term changed the fine-tuning; the SE model given is the teacher and stays as it was
    assert not torch.equal(plain.fc.weight, distilled.fc.weight)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(UserError, match=r"kd\.temperature"):
        prune("kd", kd={"temperature": 0})


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda m, t, v: rsc.prune(m, t, v, example_input=torch.zeros(1, 3, 32, 48), method="l1", target_macs=0.5),
            r"example_input must be a 1×3×S×S tensor .* got \(1, 3, 32, 48\)",
        ),
        (
            lambda m, t, v: rsc.prune(m, t, v, example_input=EXAMPLE, method="remotetrimmer", target_macs=0.5),
            "remotetrimmer needs a parent with SE blocks .* ResNet has none",
        ),
        (
            lambda m, t, v: rsc.prune(m, t, v, example_input=EXAMPLE, method="l9", target_macs=0.5),
            "unknown method 'l9'",
        ),
        (
            lambda m, t, v: rsc.prune(m, iter(t), v, example_input=EXAMPLE, method="l1", target_macs=0.5),
            "train_loader must be re-iterable with a length .* not an iterator",
        ),
    ],
)
def test_bad_calls_get_one_clear_error(call, message):
    train, val = _loaders()
    with pytest.raises((UserError, ValueError), match=message):
        call(torchvision.models.resnet18(num_classes=4), train, val)


def _with_random_bn_statistics(model):
    """BNs far from identity, so a fold that ignored them would show."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()


@pytest.mark.parametrize(
    "build",
    [
        lambda: torchvision.models.mobilenet_v3_small(
            num_classes=4
        ),  # SE after ReLU (into BN) and Hardswish (into conv)
        lambda: pytest.importorskip("timm").create_model("seresnet18", num_classes=4),  # SE right after a BN
        lambda: pytest.importorskip("timm").create_model("mobilenetv3_small_100", num_classes=4),  # BatchNormAct2d
    ],
)
def test_another_librarys_se_layers_fold_exactly(build):
    from rscompress.pruning.importance import CAP_ATTENTION
    from rscompress.pruning.parent import fold_foreign_se_layers, foreign_se_layers

    model = _with_random_bn_statistics(build())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    names = fold_foreign_se_layers(model, [(x, torch.zeros(1, dtype=torch.long))])  # s̄ is this image's attention
    assert names and not foreign_se_layers(model)
    assert all(isinstance(model.get_submodule(n), nn.Identity) for n in names)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)
    if "mobilenet" in type(model).__name__.lower():  # Hardswish blocks: s̄ went into a conv, CAP reads it from the BN
        assert any(hasattr(m, CAP_ATTENTION) for m in model.modules())


def test_remotetrimmer_prunes_a_torchvision_model_with_its_own_se_blocks(tmp_path):
    train, val = _loaders()
    model = torchvision.models.mobilenet_v3_small(num_classes=4)
    result = rsc.prune(
        model, train, val, example_input=EXAMPLE, method="remotetrimmer", target_macs=0.35, finetune_epochs=1
    )
    assert result.macs_kept == pytest.approx(0.35, abs=0.01)  # of the model as given, SE layers and all
    assert not any("SqueezeExcitation" in type(m).__name__ for m in result.model.modules())
    assert not any(hasattr(m, "_cap_attention") for m in result.model.modules())
    path = rsc.save(result.model, tmp_path / "m", example_input=EXAMPLE)
    assert json.loads((path / "config.json").read_text())["model"] == "torchvision/mobilenet_v3_small"
    x = torch.randn(2, 3, 32, 32)
    result.model.eval()
    assert torch.allclose(rsc.load(path)(x), result.model(x), atol=1e-5)


def test_remotetrimmer_names_an_se_layer_it_cannot_fold():
    from torchvision.ops import SqueezeExcitation

    class Residual(nn.Module):  # the SE reads a conv (no BN) and feeds an addition (no conv)
        def __init__(self):
            super().__init__()
            self.conv, self.se = nn.Conv2d(3, 16, 3, padding=1), SqueezeExcitation(16, 4)
            self.bn, self.fc = nn.BatchNorm2d(16), nn.Linear(16, 4)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(self.bn(y + self.se(y)).mean((2, 3)))

    train, val = _loaders()
    with pytest.raises(
        UserError, match=r"cannot fold SqueezeExcitation at se: its input does not come from a BatchNorm"
    ):
        rsc.prune(Residual(), train, val, example_input=EXAMPLE, method="remotetrimmer", target_macs=0.5)


def test_a_model_nobody_can_rebuild_is_refused_by_save_naming_its_class(tmp_path):
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).mean((2, 3)))

    with pytest.raises(UserError, match=r"cannot tell how to rebuild a .*Tiny without pickle"):
        rsc.save(Tiny(), tmp_path / "tiny", example_input=EXAMPLE)
    assert not (tmp_path / "tiny").exists()


def test_torchvision_models_are_recognised_by_layout_pruned_or_not():
    model = torchvision.models.mobilenet_v3_small(num_classes=5)
    assert identify_external(model, 5) == "torchvision/mobilenet_v3_small"
    assert identify_external(torchvision.models.resnet34(num_classes=5), 5) == "torchvision/resnet34"
    assert identify_external(nn.Linear(3, 5), 5) is None
    made = rsc.create_model("torchvision/regnet_x_400mf", 5)
    assert rsc.models.built_as(made) == ("torchvision/regnet_x_400mf", {})
    with pytest.raises(UserError, match="small_input reshapes the stem"):
        rsc.create_model("torchvision/resnet18", 5, small_input=True)


class _EmptyButSized:
    def __len__(self):
        return 3

    def __iter__(self):
        return iter(())


def test_train_keeps_the_best_epoch_and_its_run_dir_loads(tmp_path):
    train, val = _loaders()
    model = rsc.create_model("torchvision/resnet18", 4)
    result = rsc.train(model, train, val, epochs=2, out=tmp_path / "run")
    assert [row["epoch"] for row in result.history] == [0, 1]
    assert result.val.top1 == max(row["val_top1"] for row in result.history)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.allclose(rsc.load(tmp_path / "run")(x), model(x), atol=1e-5)
    with pytest.raises(UserError, match="training batches of epoch 1 were empty"):
        rsc.train(rsc.create_model("torchvision/resnet18", 4), _EmptyButSized(), val, epochs=1)


def test_train_mixes_a_classifiers_batches_by_default_unless_it_has_your_loss(tmp_path):
    from rscompress.config import CLASSIFIER_TRAIN_CUTMIX_ALPHA

    train, val = _loaders()

    def cross_entropy(model, x, y, epoch):
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y), logits

    for name, options in (("default", {}), ("own-loss", {"loss_fn": cross_entropy}), ("off", {"cutmix_alpha": 0})):
        rsc.train(rsc.create_model("resnet18", 4), train, val, epochs=1, out=tmp_path / name, **options)
    cutmix = {
        n: json.loads((tmp_path / n / "config.json").read_text())["train"]["cutmix_alpha"]
        for n in ("default", "own-loss", "off")
    }
    assert cutmix == {"default": CLASSIFIER_TRAIN_CUTMIX_ALPHA, "own-loss": 0.0, "off": 0.0}


def test_distill_a_registry_student_and_a_pruned_one_from_a_teacher_module(tmp_path):
    train, val = _loaders()
    teacher = torchvision.models.resnet18(num_classes=4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fresh = rsc.distill(
        teacher, "g_ghost_regnetx_004", train, val, loss="dkd", epochs=1, small_input=True, out=tmp_path / "student"
    )
    assert rsc.models.built_as(fresh.model)[0] == "g_ghost_regnetx_004"
    assert json.loads((tmp_path / "student" / "config.json").read_text())["method"] == "distill-dkd"
    pruned = rsc.prune(teacher, train, val, example_input=EXAMPLE, method="l1", target_macs=0.5, finetune_epochs=1)
    tuned = rsc.distill(teacher, pruned.model, train, val, loss="kd", epochs=1, kd={"temperature": 2.0})
    assert len(tuned.history) == 1
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # the teacher is not changed
    with pytest.raises(UserError, match="the student has 5 outputs, the teacher 4"):
        rsc.distill(teacher, torchvision.models.resnet18(num_classes=5), train, val, epochs=1)


def test_export_onnx_checks_parity_and_bench_times_modules_against_the_first(tmp_path):
    model = torchvision.models.resnet18(num_classes=4)
    report = rsc.export_onnx(model, tmp_path / "m.onnx", example_input=EXAMPLE)
    assert report.ok and report.n_images == 8 and (tmp_path / "m.onnx").is_file()
    with pytest.raises(UserError, match=r"m\.pt must end in \.onnx"):
        rsc.export_onnx(model, tmp_path / "m.pt", example_input=EXAMPLE)
    rows = rsc.bench(
        model, torchvision.models.resnet18(num_classes=4), example_input=EXAMPLE, engines=("torch",), repeats=3
    )
    assert [(r["name"], r["engine"], r["batch_size"]) for r in rows] == [
        ("model 0", "torch", 1),
        ("model 1", "torch", 1),
    ]
    assert rows[0]["speedup"] == 1.0 and rows[1]["median_ms"] > 0


def test_save_refuses_a_model_load_could_not_rebuild_and_keeps_nothing(tmp_path):
    model = rsc.create_model("torchvision/resnet18", 4)
    model.fc = nn.Sequential(nn.Dropout(0.1), nn.Linear(512, 4))  # changed after it was built
    with pytest.raises(UserError, match=r"cannot save this ResNet so that load rebuilds it .*nothing kept"):
        rsc.save(model, tmp_path / "m", example_input=EXAMPLE)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"finetune_epochs": 0}, r"epochs: .*greater than 0 \(got 0\)"),
        ({"method_options": {"sparse_epohcs": 3}}, r"sparse_epohcs: Extra inputs are not permitted"),
        ({"weight_decay": -1.0}, r"weight_decay: .*greater than or equal to 0"),
    ],
)
def test_bad_options_are_one_user_error_naming_the_option(options, message):
    train, val = _loaders()
    with pytest.raises(UserError, match=message):
        rsc.prune(
            torchvision.models.resnet18(num_classes=4),
            train,
            val,
            example_input=EXAMPLE,
            method="l1",
            target_macs=0.5,
            **options,
        )


def test_se_attention_is_read_from_the_gate_even_where_a_channel_is_all_zero():
    from rscompress.pruning.parent import fold_foreign_se_layers

    model = _with_random_bn_statistics(torchvision.models.mobilenet_v3_small(num_classes=4))
    x = torch.randn(2, 3, 32, 32)
    attention = {}

    def keep(name):
        return lambda _m, _i, out: attention.__setitem__(name, out.mean(0).flatten())

    se = model.features[1].block[1]  # after a ReLU: some channels are all zero for an image
    handle = se.scale_activation.register_forward_hook(keep("gate"))
    with torch.no_grad():
        model(x)
    handle.remove()
    bn = model.features[1].block[0][1]
    gamma = bn.weight.detach().clone()
    fold_foreign_se_layers(model, [(x, torch.zeros(2, dtype=torch.long))])
    assert torch.allclose(bn.weight, gamma * attention["gate"], atol=1e-6)  # folded into that BN: s̄ exactly
