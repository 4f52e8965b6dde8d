from benchmarks.bars import judge


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
