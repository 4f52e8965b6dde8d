"""``rscompress train`` on a detection folder with a registry detector: a run dir like any
other, its metrics the detection ones (issue 33)."""

import json

import torch

import rscompress as rsc
from rscompress.cli import main
from tests.detection_fakes import make_detection_dataset


def test_train_a_detector_on_a_voc_folder_and_reload_it(tmp_path, capsys):
    root, _ = make_detection_dataset(tmp_path, "voc", size=64)
    out = tmp_path / "det"
    args = ["train", "--data", str(root), "--model", "fcos_mobilenet_v3", "--img-size", "64", "--epochs", "1"]
    assert main([*args, "--batch-size", "2", "--out", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"map50", "map", "map_small", "per_class_ap", "macs", "params", "n_images", "split"} <= set(metrics)
    assert (metrics["split"], metrics["n_images"], metrics["task"]) == ("test", 1, "detection")
    assert json.loads((out / "split.json").read_text())["source"] == "given"
    config = json.loads((out / "config.json").read_text())
    assert (config["model_kwargs"], config["class_names"]) == ({"img_size": 64}, ["tank", "well"])
    model = rsc.load(out)
    assert set(model([torch.zeros(3, 64, 64)])[0]) == {"boxes", "scores", "labels"}
    # a finished run is never overwritten
    assert main([*args, "--batch-size", "2", "--out", str(out)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
