import pytest

from benchmarks.bars import judge, judge_detection, table_text


def _records(method, target, top1s, parent=0.85, params_kept=0.3, dataset="ucm"):
    return [
        {"dataset": dataset, "model": "se_resnet18", "method": method, "target_macs": target, "seed": s, "top1": t,
         "parent_top1": parent, "params_kept": params_kept, "params": 1000}
        for s, t in enumerate(top1s)
    ]  # fmt: skip


def _verdicts(records, planned):
    return {v.bar.split(":")[0]: v.verdict for v in judge(records, "ucm", planned)}


def test_bars_hold_and_fail_on_seed_means():
    records = [
        *_records("remotetrimmer-aml+ce", 0.1, [0.845, 0.845, 0.845]),  # Δ -0.5, +2.5 over l1
        *_records("l1", 0.1, [0.82, 0.82, 0.82]),
        *_records("nas", 0.1, [0.81, 0.81, 0.81]),  # below l1
        *_records("nas", 0.35, [0.85, 0.85, 0.85]),
        *_records("l1", 0.35, [0.85, 0.84, 0.86]),  # level with NAS: holds
        *_records("l1rr", 0.35, [0.85, 0.845, 0.845], params_kept=0.26),  # params over 25 %
    ]
    planned = {("remotetrimmer-aml+ce", 0.1), ("l1", 0.1), ("nas", 0.1), ("nas", 0.35), ("l1", 0.35), ("l1rr", 0.35)}
    assert _verdicts(records, planned) == {
        "RemoteTrimmer 10 %": "holds",
        "NAS 35 %": "holds",
        "NAS 10 %": "fails",
        "L1RR 35 %": "fails",
    }


def test_a_bar_stays_open_until_every_cell_it_compares_has_three_seeds():
    records = [
        *_records("remotetrimmer-aml+ce", 0.1, [0.90, 0.90, 0.90]),
        *_records("l1", 0.1, [0.80, 0.80]),
    ]
    # bn is planned but has not run: it must not drop out of the comparison.
    planned = {("remotetrimmer-aml+ce", 0.1), ("l1", 0.1), ("bn", 0.1)}
    verdict = _verdicts(records, planned)["RemoteTrimmer 10 %"]
    assert verdict == "open (seeds: l1 10 % 2/3, bn 10 % 0/3)"


def test_a_complete_cell_that_already_loses_to_a_complete_baseline_fails_before_the_others_finish():
    records = [
        *_records("remotetrimmer-aml+ce", 0.1, [0.80, 0.80, 0.80]),
        *_records("l1", 0.1, [0.81, 0.81, 0.81]),  # complete, and above RemoteTrimmer
        *_records("bn", 0.1, [0.70]),  # one seed of three: can only raise the best baseline
    ]
    planned = {("remotetrimmer-aml+ce", 0.1), ("l1", 0.1), ("bn", 0.1)}
    assert _verdicts(records, planned)["RemoteTrimmer 10 %"] == "fails"


def _detections(method, target, map50s, parent=0.70, params_kept=0.2, **extra):
    return [
        {"dataset": "wells", "model": "fcos_mobilenet_v3", "method": method, "target_macs": target, "seed": s,
         "task": "detection", "map50": m, "parent_map50": parent, "params_kept": params_kept, "params": 1000,
         "macs_kept": target, "onnx_parity": True, "latency_ms_bs1": 10.0, "parent_latency_ms_bs1": 25.0, **extra}
        for s, m in enumerate(map50s)
    ]  # fmt: skip


def test_detection_bars_judge_l1rr_budgets_parity_and_speed():
    planned = {("l1rr", 0.35), ("slim", 0.35), ("l1", 0.35)}
    records = [
        *_detections("l1rr", 0.35, [0.695, 0.695, 0.695]),  # Δ -0.5, above both
        *_detections("slim", 0.35, [0.68, 0.68, 0.68]),
        *_detections("l1", 0.35, [0.60, 0.60, 0.60], latency_ms_bs1=12.5),  # 2x at 2.86x: ratio 0.70
    ]
    verdicts = {v.bar.split(":")[0]: (v.measured, v.verdict) for v in judge_detection(records, "wells", planned)}
    assert verdicts["L1RR 35 %"] == ("69.50 vs slim 68.00 (+1.50); Δ parent -0.50; params kept 20.0 %", "holds")
    assert verdicts["Every record within ±1 % of its MACs target"] == ("9/9 records; worst 0.00 % off", "holds")
    assert verdicts["ONNX parity for every pruned detector"] == ("9/9 records", "holds")
    assert verdicts["bs1 speedup ÷ MACs reduction ≥ 0.8 at 35 %"] == ("l1 0.70, l1rr 0.87, slim 0.87", "fails")


def test_one_detection_record_off_its_budget_or_parity_fails_its_bar_before_the_grid_is_full():
    planned = {("l1rr", 0.35), ("l1rr", 0.2)}
    records = [
        *_detections("l1rr", 0.35, [0.70], params_kept=0.3),
        *_detections("l1rr", 0.2, [0.60], onnx_parity=False, macs_kept=0.203),
    ]
    verdicts = {v.bar.split(":")[0]: v.verdict for v in judge_detection(records, "wells", planned)}
    assert verdicts["L1RR 35 %"] == "open (seeds: l1rr 35 % 1/3)"  # its params fail only once complete
    assert verdicts["Every record within ±1 % of its MACs target"] == "fails"  # 0.203 is 1.5 % over 0.2
    assert verdicts["ONNX parity for every pruned detector"] == "fails"
    assert verdicts["bs1 speedup ÷ MACs reduction ≥ 0.8 at 35 %"] == "open (1/3 runs)"


def test_a_grid_with_no_records_yet_shows_the_bars_of_its_own_task():
    planned = {"wells": {("l1rr", 0.35), ("l1", 0.35)}}
    text = table_text([], planned, "detection")
    assert "| measured (test mAP@0.5, seed means) |" in text and "RemoteTrimmer" not in text
    assert "| wells | ONNX parity for every pruned detector | no records | open (0/6 runs) |" in text
    with pytest.raises(ValueError, match="classification bars asked of detection records"):
        table_text(_detections("l1", 0.35, [0.6]), planned, "classification")


def test_a_slow_cell_fails_the_speed_bar_only_once_it_has_every_seed():
    planned = {("l1", 0.35)}
    slow = _detections("l1", 0.35, [0.6], latency_ms_bs1=12.5)  # ratio 0.70, one seed of three
    bar = {v.bar: v.verdict for v in judge_detection(slow, "wells", planned)}
    assert bar["bs1 speedup ÷ MACs reduction ≥ 0.8 at 35 %"] == "open (1/3 runs)"
    three = _detections("l1", 0.35, [0.6, 0.6, 0.6], latency_ms_bs1=12.5)
    bar = {v.bar: v.verdict for v in judge_detection(three, "wells", planned)}
    assert bar["bs1 speedup ÷ MACs reduction ≥ 0.8 at 35 %"] == "fails"
