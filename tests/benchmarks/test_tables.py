"""Summary tables from records: mean ± std over seeds, the by-method pivot."""

import pytest

from benchmarks.tables import by_method, markdown, plot, summarise


def record(method, target, seed, top1, parent=0.8, dataset="ucm"):
    return {
        "dataset": dataset,
        "model": "se_resnet18",
        "method": method,
        "target_macs": target,
        "seed": seed,
        "top1": top1,
        "parent_top1": parent,
        "params": 1e6,
        "macs_kept": target,
    }


def test_by_method_pivots_methods_against_dataset_and_budget():
    records = [
        record("rt", 0.1, 0, 0.70, 0.80),
        record("rt", 0.1, 1, 0.80, 0.90),
        record("l1", 0.1, 0, 0.60),
        record("l1", 0.05, 0, 0.50),
        record("l1", 0.1, 0, 0.40, dataset="rsscn7"),
    ]
    lines = by_method(summarise(records)).splitlines()
    assert lines[0] == "### se_resnet18"
    assert lines[2] == "| method | rsscn7 10 % | ucm 10 % | ucm 5 % |"
    assert lines[4] == "| l1 | 40.00 (n=1) | 60.00 (n=1) | 50.00 (n=1) |"
    assert lines[5] == "| rt |  | 75.00 ± 7.07 (n=2) |  |"
    assert lines[6] == "| parent | 80.00 | 85.00 | 80.00 |"  # ucm 10 %: rt's two parents
    # Each seed against its own parent: rt's seeds are 10 and 10 points below theirs.
    deltas = by_method(summarise(records), "delta").splitlines()
    assert deltas[4] == "| l1 | -40.00 (n=1) | -20.00 (n=1) | -30.00 (n=1) |"
    assert deltas[5] == "| rt |  | -10.00 ± 0.00 (n=2) |  |"
    assert deltas[6] == "| parent top-1 (%) | 80.00 | 85.00 | 80.00 |"


def test_latency_is_summarised_as_a_ratio_to_the_interleaved_parent():
    # Two seeds timed under different machine load: absolute ms differ 2x, the ratios agree.
    records = [
        {**record("rt", 0.1, 0, 0.7), "latency_ms_bs1": 2.0, "parent_latency_ms_bs1": 10.0},
        {**record("rt", 0.1, 1, 0.7), "latency_ms_bs1": 4.0, "parent_latency_ms_bs1": 20.0},
    ]
    (row,) = summarise(records)
    assert row["speedup"] == 5.0 and row["latency_kept"] == 0.2
    # speedup 5x at a 10x MACs ratio: half of the MAC saving became time.
    assert markdown([row]).splitlines()[2].endswith("| 5.00× | 0.50 | 2 |")


def test_params_kept_is_shown_as_a_share_and_as_times_fewer():
    records = [
        {**record("distill-dkd", None, seed, 0.8), "macs_kept": 0.05, "params_kept": kept}
        for seed, kept in ((0, 0.1), (1, 0.3))
    ]
    (row,) = summarise(records)
    assert row["params_kept"] == 0.2
    assert "| 1.00 | 20.0 % (5.0× fewer) | 80.00 ± 0.00 |" in markdown([row])


def test_records_without_a_parent_timing_get_no_latency_figures():
    (row,) = summarise([{**record("rt", 0.1, 0, 0.7), "latency_ms_bs1": 2.0}])
    assert row["speedup"] is None and row["latency_kept"] is None
    assert markdown([row]).splitlines()[2].endswith("|  |  | 1 |")


def test_a_delta_of_float_noise_around_zero_reads_zero_not_minus_zero():
    # 0.8833 - 0.9048 and 0.9095 - 0.8881 (float32 values): their mean is -3e-8, not 0.
    records = [
        record("nas", 0.35, 0, 0.8833333253860474, 0.9047619104385376),
        record("nas", 0.35, 1, 0.9095237851142883, 0.8880952596664429),
    ]
    assert "| nas | +0.00 ± 3.03 (n=2) |" in by_method(summarise(records), "delta")


def test_detection_records_are_ranked_by_map50_and_never_mixed_with_top1():
    detections = [
        {**record("l1", 0.35, seed, None), "task": "detection", "map50": m, "parent_map50": 0.6}
        for seed, m in ((0, 0.5), (1, 0.4))
    ]
    (row,) = summarise(detections)
    assert (row["metric"], row["score"], row["parent_score"]) == ("mAP@0.5", 0.45, 0.6)
    assert by_method([row], "delta").splitlines()[-1] == "| parent mAP@0.5 (%) | 60.00 |"
    with pytest.raises(ValueError, match=r"more than one task in one table: \['classification', 'detection'\]"):
        summarise([*detections, record("l1", 0.35, 0, 0.7)])


def test_a_dataset_gets_no_latency_plot_until_a_record_has_a_timing(tmp_path):
    untimed = [record("l1", 0.1, 0, 0.7, dataset="ucm")]
    timed = [{**record("l1", 0.1, 0, 0.7, dataset="aid"), "latency_ms_bs1": 2.0, "parent_latency_ms_bs1": 10.0}]
    written = plot(summarise(untimed + timed), tmp_path, "suite")
    assert sorted(p.name for p in written) == [
        "suite_aid_top1_vs_latency.png",
        "suite_aid_top1_vs_macs.png",
        "suite_ucm_top1_vs_macs.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
