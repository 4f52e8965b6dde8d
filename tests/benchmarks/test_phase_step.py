"""The phase-timing benchmark runs both phases in both precisions through the real code path."""

from benchmarks.phase_step import VARIANTS, measure


def test_measure_times_both_phases_in_both_precisions():
    result = measure("resnet18", rounds=1, batches=1, img_size=16)
    assert set(result) == {"nas_search", "l1rr_sparse_training"}
    for variants in result.values():
        assert set(variants) == set(VARIANTS)
        assert all(v["median_s"] > 0 and len(v["rounds_s"]) == 1 for v in variants.values())
        assert variants["fp32"]["speedup_vs_fp32"] == 1.0
