"""``rscompress train`` and ``prune`` on a detection folder with a registry detector: run dirs
like any other, their metrics the detection ones (issue 33)."""

import base64
import json
import re
import shutil

import pytest
import torch

import rscompress as rsc
from rscompress.cli import main
from rscompress.config import DETECTION_LR
from tests.detection_fakes import make_detection_dataset
from tests.fakes import make_fake_dataset

TRAIN = ["--model", "fcos_mobilenet_v3", "--img-size", "64", "--epochs", "1", "--batch-size", "2"]


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detector")
    root, _ = make_detection_dataset(tmp, "voc", size=64)
    out = tmp / "det"
    assert (
        main(["train", "--data", str(root), *TRAIN, "--cache-dir", str(tmp / "cache"), "--out", str(out), "--quiet"])
        == 0
    )
    return root, out


def test_train_a_detector_on_a_voc_folder_and_reload_it(detector_run, capsys):
    root, out = detector_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"map50", "map", "map_small", "per_class_ap", "macs", "params", "n_images", "split"} <= set(metrics)
    assert (metrics["split"], metrics["n_images"], metrics["task"]) == ("test", 1, "detection")
    assert metrics["timings"]["device"] == "cpu"
    assert json.loads((out / "split.json").read_text())["source"] == "given"
    config = json.loads((out / "config.json").read_text())
    assert (config["model_kwargs"], config["class_names"]) == ({"img_size": 64}, ["tank", "well"])
    assert config["train"]["optim"]["lr"] == DETECTION_LR  # no --lr: a detector's rate, not the classifiers' 0.1
    assert config["train"]["cutmix_alpha"] == 0  # nor the classifiers' CutMix
    assert set(rsc.load(out)([torch.zeros(3, 64, 64)])[0]) == {"boxes", "scores", "labels"}
    assert main(["train", "--data", str(root), *TRAIN, "--out", str(out)]) == 2  # never overwritten
    assert "already holds a finished run" in capsys.readouterr().err


def test_prune_a_detector_to_a_macs_budget_keeping_its_prediction_convs(detector_run, tmp_path, capsys):
    _, parent = detector_run
    args = ["prune", str(parent), "--target-macs", "0.5", "--finetune-epochs", "1", "--batch-size", "2"]
    assert main([*args, "--method", "l1", "--out", str(tmp_path / "l1"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["macs_kept"] == pytest.approx(0.5, rel=0.01) and metrics["params_kept"] < 1
    assert {"map50", "parent_map50", "map_small"} <= set(metrics) and metrics["task"] == "detection"
    config = json.loads((tmp_path / "l1" / "config.json").read_text())
    assert config["method_params"]["loss"] == "ce"  # no --loss: the detector's own; a classifier's distils
    head = rsc.load(tmp_path / "l1").head
    assert (head.classification_head.cls_logits.out_channels, head.regression_head.bbox_reg.out_channels) == (2, 4)
    # taylor's gradients come from the detector's own loss on the calibration images.
    assert main([*args, "--method", "taylor", "--out", str(tmp_path / "taylor"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs_kept"] == pytest.approx(0.5, rel=0.01)
    assert main([*args, "--method", "remotetrimmer", "--out", str(tmp_path / "rt")]) == 2
    assert "method remotetrimmer on a detector is not built yet" in capsys.readouterr().err
    # A latency budget times the candidates as they deploy: up to the raw head outputs.
    speed = ["prune", str(parent), "--method", "l1", "--target-speedup", "1.3", "--round-to", "8", *args[4:]]
    assert main([*speed, "--out", str(tmp_path / "fast"), "--json"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["target_speedup"] == 1.3 and fast["latency_budget"]["target_ratio"] == pytest.approx(1 / 1.3)
    assert fast["latency_budget"]["precision"] == "fp32" and fast["macs_kept"] < 1
    assert fast["latency_budget"]["macs_share"] in [t["macs_share"] for t in fast["latency_budget"]["trials"]]
    nas = [*args, "--method", "nas", "--search-epochs", "2", "--out", str(tmp_path / "nas"), "--json"]
    assert main(nas) == 0
    searched = json.loads(capsys.readouterr().out)
    assert searched["macs_kept"] == pytest.approx(0.5, rel=0.01) and len(searched["nas_search"]["score_ce"]) == 2


def test_mixing_a_detectors_batches_is_refused_in_one_line_before_writing_anything(detector_run, tmp_path, capsys):
    root, parent = detector_run
    train = ["train", "--data", str(root), *TRAIN, "--out", str(tmp_path / "train")]
    prune = ["prune", str(parent), "--method", "l1", "--target-macs", "0.5", "--out", str(tmp_path / "prune")]
    for args in (train, prune):
        assert main([*args, "--cutmix-alpha", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--cutmix-alpha" in err[0] and "classifiers only" in err[0]
    assert not (tmp_path / "train").exists() and not (tmp_path / "prune").exists()


def test_evaluate_a_detector_on_its_split_and_on_another_folder(detector_run, tmp_path, capsys):
    _, run = detector_run
    assert main(["evaluate", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    keys = {"map50", "map", "map_small", "per_class_ap", "macs", "params", "n_images", "split", "num_classes"}
    assert keys <= set(report) and (report["split"], report["n_images"]) == ("test", 1)
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["map50"] == metrics["map50"]  # the test split, tested again: the same figure
    other, truth = make_detection_dataset(tmp_path, "coco", n_images=4, size=64)
    assert main(["evaluate", str(run), "--data", str(other), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["split"], report["n_images"]) == ("all", len(truth))


def test_export_a_pruned_detector_with_parity_and_time_it_against_its_parent(detector_run, tmp_path, capsys):
    _, parent = detector_run
    pruned = tmp_path / "l1"
    prune = ["prune", str(parent), "--method", "l1", "--target-macs", "0.35", "--finetune-epochs", "1"]
    assert main([*prune, "--batch-size", "2", "--out", str(pruned), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(pruned), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_scaled_diff"] <= 1e-4 and report["parity_images"].startswith("test split of")
    boxes = report["box_parity"]  # decoded boxes against PyTorch's, not only the raw outputs
    assert boxes["matched"] + boxes["unmatched_at_threshold"] == boxes["boxes_torch"] and boxes["n_images"] == 1
    args = ["bench", str(parent), str(pruned), "--batch-size", "1", "--threads", "1", "--engine", "onnxruntime"]
    assert main([*args, "--warmup", "1", "--repeats", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    small = next(r for r in rows if r["model"] == str(pruned))
    assert small["macs_ratio"] == pytest.approx(1 / 0.35, rel=0.02) and small["reference"] == str(parent)


def test_l1rr_trains_a_detector_sparse_with_attention_on_its_fpn_levels_then_prunes_it(detector_run, tmp_path, capsys):
    _, parent = detector_run
    args = ["prune", str(parent), "--method", "l1rr", "--target-macs", "0.5", "--sparse-epochs", "2"]
    assert main([*args, "--finetune-epochs", "1", "--batch-size", "2", "--out", str(tmp_path / "l1rr"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    sparse = metrics["sparse_training"]
    assert metrics["macs_kept"] == pytest.approx(0.5, rel=0.01) and metrics["task"] == "detection"
    assert sparse["config"]["attention_layers"] == [f"backbone.fpn.layer_blocks.{i}" for i in range(3)]
    assert len(sparse["history"]) == 2 and sparse["history"][-1]["attention_loss"] > 0
    assert {"map50", "map"} <= set(sparse["ref_val"]) and sparse["ref_val_loss"] > 0


def test_report_on_detectors_plots_map_against_macs_and_draws_predicted_boxes(detector_run, tmp_path, capsys):
    _, parent = detector_run
    pruned = tmp_path / "l1"
    prune = ["prune", str(parent), "--method", "l1", "--target-macs", "0.5", "--finetune-epochs", "1"]
    assert main([*prune, "--batch-size", "2", "--out", str(pruned), "--quiet"]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(parent), str(pruned), "--out", str(out), "--repeats", "2"]) == 0, capsys.readouterr()
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert all(column in page for column in ("mAP@0.5 (%)", "mAP@0.5:0.95 (%)", "MACs kept", "latency bs1 (ms)"))
    assert "top1" not in page and "Confusion" not in page
    keys = ("pareto_macs", "pareto_latency", "per_class", "boxes")
    assert all((tmp_path / "report_files" / f"{k}.png").is_file() for k in keys)

    # A run whose data folder has moved still gets its report, without the picture, saying why.
    moved = tmp_path / "moved"
    shutil.copytree(parent, moved)
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(
        json.dumps({**config, "data": {**config["data"], "path": str(tmp_path / "gone")}})
    )
    assert main(["report", str(moved), "--out", str(tmp_path / "moved.html"), "--no-latency"]) == 0
    assert "No box picture: moved&#x27;s data folder" in (tmp_path / "moved.html").read_text()

    classifier = make_fake_dataset(tmp_path / "cls", name="rsscn7", per_class=4, size=16)
    train = ["train", "--data", str(classifier), "--model", "resnet18", "--img-size", "16", "--epochs", "1"]
    assert main([*train, "--batch-size", "8", "--out", str(tmp_path / "cls-run"), "--quiet"]) == 0
    assert main(["report", str(parent), str(tmp_path / "cls-run"), "--out", str(tmp_path / "mixed.html")]) == 2
    assert "these mix classification and detection runs" in capsys.readouterr().err


def test_int8_decoding_scores_the_deployed_file_as_the_model_scores_itself(detector_run):
    # Both "sessions" give the exact raw outputs: decoded, their mAP must be evaluate_detection's.
    from rscompress.artifacts import RunDir
    from rscompress.data.detection_loader import DetectionBatches
    from rscompress.data.detection_prepare import prepare_detection
    from rscompress.deploy.int8 import compare_detections
    from rscompress.engine.detection import evaluate_detection
    from rscompress.models.detection import RawPredictions

    root, run = detector_run
    model, config = RunDir(run).load_model()
    model.eval().score_thresh = 0.0  # an untrained detector scores low; keep every box to score
    data = prepare_detection(root, 64)
    batches = DetectionBatches(data, range(len(data.boxes)), batch_size=2, mean=config.mean, std=config.std)

    class Exact:
        def run(self, names, feed):
            with torch.no_grad():
                return [RawPredictions(model)(torch.from_numpy(feed["images"])).numpy()]

    check = compare_detections(Exact(), Exact(), batches, model, 64)
    expected = evaluate_detection(model, batches, data.class_names)
    assert check.n_images == len(data.boxes) and check.drop_points == 0
    assert (check.map50_fp32, check.map_fp32) == pytest.approx((expected.map50, expected.map))


def test_int8_export_of_a_detector_is_checked_by_map_and_refused_past_max_drop(
    detector_run, tmp_path, monkeypatch, capsys
):
    from rscompress.deploy import int8

    _, run = detector_run
    dest = tmp_path / "det.int8.onnx"
    args = ["export", str(run), "--int8", "--calib-images", "4", "--repeats", "2", "--out", str(dest)]
    assert main(args) == 0, capsys.readouterr().err
    assert "mAP@0.5: FP32" in capsys.readouterr().out and dest.is_file()
    row = json.loads((run / "int8.jsonl").read_text().splitlines()[-1])
    assert row["written"] and row["task"] == "detection" and {"map50_fp32", "map50_int8"} <= set(row)
    assert set(row["val"]) == {"n_images", "map50_fp32", "map50_int8", "map_fp32", "map_int8", "drop_points"}
    # bench puts the INT8 file beside FP32 with each one's recorded test mAP@0.5 (here the run's own file).
    assert main(["export", str(run), "--int8", "--calib-images", "4", "--repeats", "2"]) == 0
    capsys.readouterr()
    bench = ["bench", str(run), "--int8", "--engine", "onnxruntime", "--repeats", "2", "--warmup", "1", "--json"]
    assert main(bench) == 0
    rows = {r["precision"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    # bench rounds its table for people, to 4 places (deploy/latency.bench_table).
    assert rows["fp32"]["test_map50"] == round(json.loads((run / "metrics.json").read_text())["map50"], 4)
    assert rows["int8"]["test_map50"] == round(row["test"]["map50_int8"], 4)
    assert rows["int8"]["size_mb"] < rows["fp32"]["size_mb"]

    def worse(*args, **kwargs):
        return int8.MapCheck(1, 0.5, 0.4, 0.3, 0.2)

    monkeypatch.setattr(int8, "compare_detections", worse)
    refused = tmp_path / "refused.int8.onnx"
    assert main([*args[:-1], str(refused)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val mAP@0.5 0.5000 FP32 -> 0.4000 INT8, a drop of 10.00 points > --max-drop 1" in err[0]
    assert not refused.exists()


def test_box_parity_matches_every_box_and_names_a_file_that_moves_them(detector_run, tmp_path):
    from rscompress.artifacts import RunDir
    from rscompress.deploy.box_parity import BoxParityError, check_box_parity
    from rscompress.deploy.onnx import export_onnx
    from rscompress.models.detection import deployable

    _, run = detector_run
    model, _ = RunDir(run).load_model()
    model.eval().score_thresh = 0.0  # every location a box: up to 100 per image (after NMS) to match
    onnx = export_onnx(deployable(model), 64, tmp_path / "det.onnx")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    parity = check_box_parity(model, onnx, images)
    assert parity.ok and parity.boxes_torch > 150 and parity.matched == parity.boxes_torch and parity.worst_iou > 0.999

    # A file whose boxes come out elsewhere: its regression head's bias shifted after export.
    with torch.no_grad():
        model.head.regression_head.bbox_reg.bias += 1.0
    with pytest.raises(BoxParityError, match="box parity failed"):
        check_box_parity(model, onnx, images)


def test_pruned_from_fine_tunes_another_detector_runs_pruned_model_without_pruning_again(
    detector_run, tmp_path, monkeypatch, capsys
):
    from rscompress.pruning import select

    _, parent = detector_run
    args = ["prune", str(parent), "--method", "l1", "--target-macs", "0.5", "--batch-size", "2", "--json"]
    assert main([*args, "--finetune-epochs", "1", "--out", str(tmp_path / "first")]) == 0
    first = json.loads(capsys.readouterr().out)

    def must_not_run(*a, **k):
        raise AssertionError("pruned again")

    monkeypatch.setattr(select, "select_and_prune", must_not_run)
    longer = [*args, "--finetune-epochs", "2", "--pruned-from", str(tmp_path / "first"), "--out", str(tmp_path / "b")]
    assert main(longer) == 0, capsys.readouterr().err
    second = json.loads(capsys.readouterr().out)
    assert (second["macs"], second["finetune_epochs"]) == (first["macs"], 2)
    assert second["pruned_from"] == str((tmp_path / "first").resolve())


def test_the_bn_statistics_benchmark_scores_saved_and_recomputed_statistics_of_the_same_weights(detector_run):
    from benchmarks.detection_bn_statistics import measure

    _, run = detector_run
    row = measure(run, [1, 0])
    assert list(row["map50"]) == ["stored", "plain 1", "plain all", "augmented all"]
    assert all(0.0 <= score <= 1.0 for arm in row["map50"].values() for score in arm.values())
    # The saved statistics score the test split as the run's own test did.
    assert row["map50"]["stored"]["test"] == json.loads((run / "metrics.json").read_text())["map50"]
    # --weights: a checkpoint of the run's architecture; the run's own weights give the same row.
    assert measure(run, [1, 0], weights=run / "model.safetensors")["map50"] == row["map50"]
