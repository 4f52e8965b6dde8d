import torch

from benchmarks.train_step import VARIANTS, measure


def test_a_detector_step_is_timed_in_every_precision_and_layout():
    torch.set_num_threads(1)
    result = measure("fcos_mobilenet_v3", img_size=64, batch_size=2, rounds=1, steps=1)
    assert set(result) == set(VARIANTS)
    assert all(r["median_s"] > 0 and len(r["rounds_s"]) == 1 for r in result.values())
    assert result["fp32"]["speedup_vs_fp32"] == 1.0
