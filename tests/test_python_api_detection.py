"""The Python API on a detector and detection loaders: train, evaluate, prune, save/load and
export take it as they take a classifier (issue 33)."""

import pytest
import torch

import rscompress as rsc
from rscompress.data.detection_loader import DetectionBatches
from rscompress.data.detection_prepare import prepare_detection
from rscompress.errors import UserError
from tests.detection_fakes import make_detection_dataset

EXAMPLE = torch.zeros(1, 3, 64, 64)


@pytest.fixture(scope="module")
def loaders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api-det")
    root, _ = make_detection_dataset(tmp, "yolo", size=64)
    data = prepare_detection(root, 64, cache_dir=tmp / "cache")
    norm = {"mean": (0.45,) * 3, "std": (0.25,) * 3, "batch_size": 2}
    return (
        DetectionBatches(data, data.split["train"], shuffle=True, augment=True, **norm),
        DetectionBatches(data, data.split["val"], **norm),
    )


def test_train_evaluate_prune_save_and_export_a_detector(loaders, tmp_path):
    train, val = loaders
    torch.manual_seed(0)
    model = rsc.create_model("fcos_mobilenet_v3", 2, img_size=64)
    trained = rsc.train(model, train, val, epochs=1, lr=0.01, out=tmp_path / "parent")
    assert {"map50", "map"} <= set(trained.val.summary()) and len(trained.history) == 1
    assert rsc.evaluate(model, val).summary()["map50"] == trained.val.summary()["map50"]
    reloaded = rsc.load(tmp_path / "parent")
    x = torch.rand(1, 3, 64, 64)
    model.eval()
    assert torch.equal(reloaded.head(list(reloaded.backbone(x).values()))["cls_logits"],
                       model.head(list(model.backbone(x).values()))["cls_logits"])  # fmt: skip

    pruned = rsc.prune(model, train, val, example_input=EXAMPLE, method="l1", target_macs=0.5, finetune_epochs=1)
    assert pruned.macs_kept == pytest.approx(0.5, rel=0.01) and "map50" in pruned.val.summary()
    assert pruned.model.head.classification_head.cls_logits.out_channels == 2  # its predictions kept
    report = rsc.export_onnx(pruned.model, tmp_path / "pruned.onnx", example_input=EXAMPLE)
    assert report.ok
    with pytest.raises(UserError, match="loss dkd is for classifiers"):
        rsc.prune(model, train, val, example_input=EXAMPLE, method="l1", target_macs=0.5, loss="dkd")
    # A latency budget reaches the prune settings (the timed search itself: test_detection_cli).
    with pytest.raises(UserError, match="--method nas trains before it prunes"):
        rsc.prune(model, train, val, example_input=EXAMPLE, method="nas", target_speedup=1.3)


def test_a_detectors_batchnorm_statistics_are_recomputed_over_the_calibration_loader_only(loaders, monkeypatch):
    from rscompress.engine import trainer

    train, val = loaders
    plain = DetectionBatches(train.data, train.indices, batch_size=2, mean=train.mean, std=train.std, shuffle=True)
    seen = []
    monkeypatch.setattr(
        trainer, "recompute_batchnorm_statistics", lambda model, batches, n, *_: seen.append((batches, n))
    )
    for calibration in (plain, None):
        torch.manual_seed(0)
        model = rsc.create_model("fcos_mobilenet_v3", 2, img_size=64)
        rsc.train(model, train, val, epochs=1, lr=0.01, calibration_loader=calibration)
    # Given plain batches, once before the epoch's val, over the detector default's 8 of them;
    # without them none: train_loader's batches are augmented.
    assert [(batches.batches, n) for batches, n in seen] == [(plain, 8)]


def test_options_a_detectors_fit_cannot_honour_are_refused_before_out_is_written(loaders, tmp_path):
    train, val = loaders
    model = rsc.create_model("fcos_mobilenet_v3", 2, img_size=64)
    with pytest.raises(UserError, match="--precise-bn-batches"):  # no calibration_loader: no plain batches
        rsc.train(model, train, val, epochs=1, precise_bn_batches=2, out=tmp_path / "train")
    with pytest.raises(UserError, match="classifiers only"):
        rsc.prune(model, train, val, example_input=EXAMPLE, method="l1", target_macs=0.5, cutmix_alpha=1.0,
                  out=tmp_path / "prune")  # fmt: skip
    assert not (tmp_path / "train").exists() and not (tmp_path / "prune").exists()
