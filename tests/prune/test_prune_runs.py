"""``rscompress prune`` end to end on tiny data: budgets, SE folding, AML fine-tuning, run dirs."""

import json

import pytest
import torch

from rscompress import api
from rscompress.artifacts import RunDir
from rscompress.cli import main
from rscompress.config import DataConfig, FitConfig, PruneConfig, TrainConfig
from rscompress.errors import UserError
from rscompress.pruning.methods.slim import Slim
from rscompress.pruning.methods.sparse_training import SparsityConfig
from tests.fakes import make_fake_dataset, progress_printer_killed_at


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune-runs")
    data = make_fake_dataset(root, name="rsscn7", per_class=8, size=24)
    out = {}
    for name in ("se_resnet18", "resnet18"):
        out[name] = root / name
        api.train(
            DataConfig(path=data, img_size=24), TrainConfig(model=name, epochs=1, batch_size=8), out[name], quiet=True
        )
    return out


def _cfg(method, **kw):
    return PruneConfig(method=method, finetune=FitConfig(epochs=1, batch_size=8), **kw)


def test_remotetrimmer_hits_target_folds_se_and_reloads(parents, tmp_path):
    out = tmp_path / "rt"
    metrics = api.prune(parents["se_resnet18"], _cfg("remotetrimmer", target_macs=0.3, loss="aml+ce"), out, quiet=True)
    assert abs(metrics["macs_kept"] / 0.3 - 1) <= 0.01
    assert metrics["macs"] < metrics["parent_macs"] and metrics["params"] < metrics["parent_params"]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "resnet18" and config["method"] == "remotetrimmer"
    assert config["method_params"]["se_folded"] is True and config["architecture"]
    assert (out / "split.json").read_bytes() == (parents["se_resnet18"] / "split.json").read_bytes()
    # A fresh load (config.json + safetensors, no pickle) gives the test metrics again.
    result = api.evaluate(out, quiet=True)
    assert result["top1"] == pytest.approx(metrics["top1"])
    assert result["macs"] == metrics["macs"]
    model, _ = RunDir(out).load_model()
    assert not any("se" in name.split(".")[-1] for name, _ in model.named_modules())


@pytest.mark.parametrize("method,global_pruning", [("l1", True), ("taylor", False), ("bn", False)])
def test_baselines_hit_target(parents, tmp_path, method, global_pruning):
    metrics = api.prune(
        parents["resnet18"], _cfg(method, target_macs=0.1, global_pruning=global_pruning), tmp_path / "p", quiet=True
    )
    assert abs(metrics["macs_kept"] / 0.1 - 1) <= 0.01


def test_a_classifier_fine_tunes_with_dkd_from_its_parent_unless_told_otherwise(parents, tmp_path, monkeypatch):
    from rscompress.distillation import objective

    calls = []

    def counted_dkd_loss(*args, **kwargs):
        calls.append(1)
        return dkd_loss(*args, **kwargs)

    dkd_loss = objective.dkd_loss
    monkeypatch.setattr(objective, "dkd_loss", counted_dkd_loss)
    args = ["prune", str(parents["resnet18"]), "--method", "l1", "--target-macs", "0.5", "--finetune-epochs", "1"]
    assert main([*args, "--batch-size", "8", "--out", str(tmp_path / "dkd"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "dkd" / "metrics.json").read_text())
    assert metrics["loss"] == "dkd" and metrics["kd"]["kd_warmup_epochs"] == 0 and calls
    assert RunDir(tmp_path / "dkd").load_config().method_params["loss"] == "dkd"  # named, not left to a default
    calls.clear()
    # Mixed labels cannot train the default loss: refused before anything is written.
    assert main([*args, "--cutmix-alpha", "1", "--out", str(tmp_path / "mixed"), "--quiet"]) == 2
    assert not (tmp_path / "mixed").exists()
    assert main([*args, "--batch-size", "8", "--loss", "ce", "--out", str(tmp_path / "ce"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "ce" / "metrics.json").read_text())
    assert metrics["loss"] == "ce" and "kd" not in metrics and not calls


def test_target_params_and_ratio(parents, tmp_path):
    m = api.prune(parents["resnet18"], _cfg("l2", target_params=0.2), tmp_path / "a", quiet=True)
    assert abs(m["params_kept"] / 0.2 - 1) <= 0.01
    m = api.prune(parents["resnet18"], _cfg("l1", ratio=0.5), tmp_path / "b", quiet=True)
    assert m["budget"]["ratio"] == 0.5


def test_remotetrimmer_needs_se_parent(parents, tmp_path):
    with pytest.raises(UserError, match=r"needs a parent with SE blocks .* ResNet has none"):
        api.prune(parents["resnet18"], _cfg("remotetrimmer", target_macs=0.3), tmp_path / "x", quiet=True)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--method", "l1"], "exactly one of"),
        (["--method", "l1", "--target-macs", "0.3", "--ratio", "0.5"], "exactly one of"),
        (["--method", "l1", "--target-macs", "1.5"], "--target-macs"),
        (["--method", "l1", "--target-macs", "0"], "--target-macs"),
        (["--method", "l9", "--target-macs", "0.3"], "l9"),
        (["--method", "l1", "--target-macs", "0.3", "--loss", "focal"], "--loss"),
        (["--method", "l1", "--target-macs", "0.3", "--gate-without-bn"], "--gate-without-bn"),
        (["--method", "nas", "--target-macs", "0.3", "--sparse-lr", "0.001"], "--sparse-lr"),
        (["--method", "l1rr", "--target-macs", "0.3", "--sparse-lr", "0"], "--sparse-lr"),
        (["--method", "l1", "--target-macs", "0.3", "--sparse-rate", "0.02"], "--sparse-rate"),
        (["--method", "slim", "--target-macs", "0.3", "--sparse-rate", "-1"], "--sparse-rate"),
    ],
)
def test_cli_rejects_bad_budgets(parents, tmp_path, capsys, args, needle):
    code = main(["prune", str(parents["resnet18"]), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_pruned_model_is_really_smaller(parents, tmp_path):
    out = tmp_path / "small"
    api.prune(parents["resnet18"], _cfg("l1", target_macs=0.3), out, quiet=True)
    parent, _ = RunDir(parents["resnet18"]).load_model()
    pruned, _ = RunDir(out).load_model()
    assert pruned.conv1.out_channels < parent.conv1.out_channels
    assert pruned(torch.zeros(2, 3, 24, 24)).shape == (2, 7)


@pytest.mark.parametrize("method", ["slim", "l1rr"])
def test_sparse_methods_train_then_prune_globally(parents, tmp_path, method):
    cfg = _cfg(method, target_macs=0.35, sparse_epochs=2)
    metrics = api.prune(parents["resnet18"], cfg, tmp_path / method, quiet=True)
    assert abs(metrics["macs_kept"] / 0.35 - 1) <= 0.01
    sparse = metrics["sparse_training"]
    assert sparse["epochs"] == 2 and len(sparse["history"]) == 2
    assert (sparse["config"]["reweight"], sparse["config"]["attention_weight"] > 0) == (
        (True, True) if method == "l1rr" else (False, False)
    )
    # Each method's own rate when none is given: L1RR's controller starts low and raises it,
    # slim holds the one chosen for it on val.
    assert sparse["config"]["rate"] == (SparsityConfig.rate if method == "l1rr" else Slim.default_rate)


def test_sparse_lr_is_a_tenth_of_the_parents_unless_given_and_the_rate_and_loss_tolerance_reach_it(parents, tmp_path):
    parent_lr = json.loads((parents["resnet18"] / "config.json").read_text())["train"]["optim"]["lr"]
    derived = api.prune(parents["resnet18"], _cfg("slim", target_macs=0.5, sparse_epochs=1), tmp_path / "d", quiet=True)
    assert derived["sparse_training"]["config"]["lr"] == pytest.approx(parent_lr / 10)
    out = tmp_path / "given"
    assert (
        main(
            [
                "prune",
                str(parents["resnet18"]),
                "--method",
                "l1rr",
                "--target-macs",
                "0.5",
                "--sparse-epochs",
                "1",
                "--sparse-lr",
                "0.002",
                "--sparse-loss-tolerance",
                "0.3",
                "--sparse-rate",
                "0.05",
                "--finetune-epochs",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    given = json.loads((out / "metrics.json").read_text())["sparse_training"]["config"]
    assert (given["lr"], given["loss_tolerance"], given["rate"]) == (0.002, 0.3, 0.05)


def test_run_dir_from_before_sparse_lr_and_rate_still_resumes(parents, tmp_path, kill_at_the_end):
    out, cfg = tmp_path / "r", _cfg("slim", target_macs=0.5, sparse_epochs=1)
    kill_at_the_end(api.prune, parents["resnet18"], cfg, out, quiet=True)
    config = json.loads((out / "config.json").read_text())
    # what a version before sparse_lr and sparse_rate wrote (sparse_rate was sparse_strength)
    del config["method_params"]["sparse_lr"], config["method_params"]["sparse_rate"]
    config["method_params"]["sparse_strength"] = 1e-4
    (out / "config.json").write_text(json.dumps(config))
    assert api.prune(parents["resnet18"], cfg, out, resume=True, quiet=True)["epochs"] == 1


def test_cli_bf16_channels_last_reach_sparse_training_and_finetuning(parents, tmp_path):
    out = tmp_path / "l1rr-bf16"
    assert (
        main(
            [
                "prune",
                str(parents["resnet18"]),
                "--method",
                "l1rr",
                "--target-macs",
                "0.35",
                "--sparse-epochs",
                "1",
                "--finetune-epochs",
                "1",
                "--batch-size",
                "8",
                "--bf16",
                "--channels-last",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["bf16"], train["channels_last"]) == (True, True)
    sparse = json.loads((out / "metrics.json").read_text())["sparse_training"]["config"]
    assert (sparse["bf16"], sparse["channels_last"]) == (True, True)


def test_interrupted_finetune_resumes_without_pruning_again(parents, tmp_path, monkeypatch, kill_at_the_end):
    cfg = PruneConfig(method="l1", target_macs=0.3, finetune=FitConfig(epochs=2, batch_size=8))
    full = api.prune(parents["resnet18"], cfg, tmp_path / "full", quiet=True)
    out = tmp_path / "r"
    kill_at_the_end(api.prune, parents["resnet18"], cfg, out, quiet=True)
    from rscompress.pruning import select

    def must_not_run(*a, **k):
        raise AssertionError("pruned again on resume")

    monkeypatch.setattr(select, "select_and_prune", must_not_run)
    resumed = api.prune(parents["resnet18"], cfg, out, resume=True, quiet=True)
    assert resumed["macs"] == full["macs"] and resumed["top1"] == full["top1"]


def test_a_pruned_run_from_before_prune_json_named_its_architecture_is_refused_by_name(
    parents, tmp_path, kill_at_the_end
):
    out = tmp_path / "r"
    kill_at_the_end(api.prune, parents["resnet18"], _cfg("l1", target_macs=0.3), out, quiet=True)
    record = json.loads((out / "prune.json").read_text())
    (out / "prune.json").write_text(json.dumps({k: v for k, v in record.items() if k != "architecture"}))
    with pytest.raises(UserError, match=r"prune\.json was written by an older rscompress .* prune anew"):
        api.prune(parents["resnet18"], _cfg("l1", target_macs=0.3), out, resume=True, quiet=True)


def test_resume_with_another_budget_or_recipe_is_refused(parents, tmp_path, kill_at_the_end):
    out = tmp_path / "r"
    kill_at_the_end(api.prune, parents["resnet18"], _cfg("l1", target_macs=0.3), out, quiet=True)
    with pytest.raises(UserError, match=r"method_params\.target_macs: 0\.3 there, 0\.2 now"):
        api.prune(parents["resnet18"], _cfg("l1", target_macs=0.2), out, resume=True, quiet=True)
    longer = PruneConfig(method="l1", target_macs=0.3, finetune=FitConfig(epochs=3, batch_size=8))
    with pytest.raises(UserError, match=r"train\.epochs: 1 there, 3 now"):
        api.prune(parents["resnet18"], longer, out, resume=True, quiet=True)
    assert api.prune(parents["resnet18"], _cfg("l1", target_macs=0.3), out, resume=True, quiet=True)["epochs"] == 1


def test_run_dir_from_before_gate_without_bn_existed_still_resumes(parents, tmp_path):
    out, cfg = tmp_path / "r", _cfg("nas", target_macs=0.5, search_epochs=1)
    api.prune(parents["resnet18"], cfg, out, quiet=True)
    config = json.loads((out / "config.json").read_text())
    del config["method_params"]["gate_without_bn"]  # what a version without the setting wrote

    def killed_in_finetuning_by_that_version():
        (out / "metrics.json").unlink(missing_ok=True)
        (out / "config.json").write_text(json.dumps(config))

    killed_in_finetuning_by_that_version()
    assert api.prune(parents["resnet18"], cfg, out, resume=True, quiet=True)["epochs"] == 1
    # such a run was made without it, so asking for it now is another run
    killed_in_finetuning_by_that_version()
    with pytest.raises(UserError, match=r"other settings \(method_params\.gate_without_bn: false there, true now\)"):
        api.prune(parents["resnet18"], cfg.model_copy(update={"gate_without_bn": True}), out, resume=True, quiet=True)


def test_run_killed_in_sparse_training_resumes_there(parents, tmp_path, monkeypatch):
    cfg = _cfg("l1rr", target_macs=0.35, sparse_epochs=2)
    full = api.prune(parents["resnet18"], cfg, tmp_path / "full", quiet=True)
    out = tmp_path / "killed"

    with monkeypatch.context() as m:
        m.setattr(api, "_progress_printer", progress_printer_killed_at("sparse epoch 2/"))
        with pytest.raises(KeyboardInterrupt):
            api.prune(parents["resnet18"], cfg, out, quiet=True)
    assert (out / "prune-phase" / "checkpoint" / "latest.json").is_file() and not (out / "prune.json").exists()
    with pytest.raises(UserError, match="--resume"):
        api.prune(parents["resnet18"], cfg, out, quiet=True)
    resumed = api.prune(parents["resnet18"], cfg, out, resume=True, quiet=True)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(resumed["sparse_training"]["history"]) == strip(full["sparse_training"]["history"])
    assert resumed["macs"] == full["macs"] and not (out / "prune-phase").exists()


@pytest.mark.parametrize(
    "method,options,killed_at",
    [
        ("slim", {"sparse_epochs": 2}, "sparse epoch 2/"),
        ("l1rr", {"sparse_epochs": 2}, "sparse epoch 2/"),
        ("nas", {"search_epochs": 2}, "search epoch 2/"),
    ],
)
def test_a_phase_resumed_with_another_batch_size_is_refused_by_name(
    parents, tmp_path, monkeypatch, method, options, killed_at
):
    """Killed in sparse training or the NAS search, a run resumed with another --batch-size
    would continue the phase on other batches and give another model: one UserError names it."""
    cfg = _cfg(method, target_macs=0.5, **options)
    out = tmp_path / method
    with monkeypatch.context() as m:
        m.setattr(api, "_progress_printer", progress_printer_killed_at(killed_at))
        with pytest.raises(KeyboardInterrupt):
            api.prune(parents["resnet18"], cfg, out, quiet=True)
    committed = out / "prune-phase" / "checkpoint" / "latest.json"
    assert committed.is_file() and not (out / "prune.json").exists()
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"batch_size": 4})})
    with pytest.raises(UserError, match=r"other settings \(train\.batch_size: 8 there, 4 now\); use the same"):
        api.prune(parents["resnet18"], other, out, resume=True, quiet=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == kept  # nothing lost


def test_nas_searches_then_hits_target(parents, tmp_path):
    metrics = api.prune(
        parents["resnet18"], _cfg("nas", target_macs=0.35, search_epochs=2), tmp_path / "nas", quiet=True
    )
    assert abs(metrics["macs_kept"] / 0.35 - 1) <= 0.01
    assert len(metrics["nas_search"]["expected_ratio"]) == 2
    with pytest.raises(UserError, match="--target-macs or --target-params, not --ratio"):
        api.prune(parents["resnet18"], _cfg("nas", ratio=0.5), tmp_path / "nas2", quiet=True)
    assert metrics["nas_search"]["gated_without_bn"] is False


def test_nas_takes_a_params_budget(parents, tmp_path):
    metrics = api.prune(
        parents["resnet18"], _cfg("nas", target_params=0.3, search_epochs=1), tmp_path / "p", quiet=True
    )
    assert abs(metrics["params_kept"] / 0.3 - 1) <= 0.01
    assert metrics["nas_search"]["target_params"] == 0.3 and metrics["nas_search"]["target_macs"] is None


def test_cli_gate_without_bn_reaches_the_search(parents, tmp_path):
    # What the option does to BN-less layers is tested in test_nas.py; here: the flag gets there.
    out = tmp_path / "nas-fc"
    assert (
        main(
            [
                "prune",
                str(parents["resnet18"]),
                "--method",
                "nas",
                "--target-macs",
                "0.5",
                "--search-epochs",
                "1",
                "--gate-without-bn",
                "--finetune-epochs",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["nas_search"]["gated_without_bn"] is True


def test_pruned_from_fine_tunes_another_runs_pruned_model_without_pruning_again(parents, tmp_path, monkeypatch):
    ce, dkd = tmp_path / "nas-ce", tmp_path / "nas-dkd"
    args = [
        "prune",
        str(parents["resnet18"]),
        "--method",
        "nas",
        "--target-macs",
        "0.5",
        "--search-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--batch-size",
        "8",
        "--quiet",
    ]
    assert main([*args, "--out", str(ce)]) == 0
    from rscompress.pruning import select

    def must_not_run(*a, **k):
        raise AssertionError("pruned again")

    monkeypatch.setattr(select, "select_and_prune", must_not_run)
    # Its own loss and fine-tuning length: neither changes what was pruned.
    assert (
        main(
            [
                *args,
                "--loss",
                "dkd",
                "--beta",
                "2",
                "--finetune-epochs",
                "2",
                "--pruned-from",
                str(ce),
                "--out",
                str(dkd),
            ]
        )
        == 0
    )
    assert (dkd / "pruned.safetensors").read_bytes() == (ce / "pruned.safetensors").read_bytes()
    metrics = json.loads((dkd / "metrics.json").read_text())
    assert metrics["loss"] == "dkd" and metrics["pruned_from"] == str(ce.resolve())
    assert metrics["finetune_epochs"] == 2 and len(RunDir(dkd).history_path.read_text().splitlines()) == 2
    assert metrics["nas_search"] == json.loads((ce / "metrics.json").read_text())["nas_search"]
    assert RunDir(dkd).load_config().method_params["loss"] == "dkd"
    assert api.evaluate(dkd, quiet=True)["top1"] == pytest.approx(metrics["top1"])  # a complete run dir of its own


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"target_macs": 0.4}, r"method_params\.target_macs: 0\.5 there, 0\.4 now"),
        ({"search_epochs": 2}, r"method_params\.search_epochs: 1 there, 2 now"),
        ({"finetune": FitConfig(epochs=1, batch_size=4)}, r"train\.batch_size: 8 there, 4 now"),
    ],
)
def test_pruned_from_a_run_pruned_otherwise_is_refused_and_writes_nothing(parents, tmp_path, change, needle):
    source = tmp_path / "src"
    cfg = _cfg("nas", target_macs=0.5, search_epochs=1)
    api.prune(parents["resnet18"], cfg, source, quiet=True)
    with pytest.raises(UserError, match=needle):
        api.prune(parents["resnet18"], cfg.model_copy(update=change), tmp_path / "o", quiet=True, pruned_from=source)
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError, match=r"was pruned from .*se_resnet18"):
        api.prune(parents["se_resnet18"], cfg, tmp_path / "o", quiet=True, pruned_from=source)
    with pytest.raises(UserError, match="holds no pruned model"):
        api.prune(parents["resnet18"], cfg, tmp_path / "o", quiet=True, pruned_from=parents["resnet18"])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method", ["slim", "l1rr"])
def test_sparse_from_prunes_another_budget_from_the_sparse_training_it_would_repeat(
    parents, tmp_path, method, monkeypatch
):
    args = [
        "prune",
        str(parents["resnet18"]),
        "--method",
        method,
        "--sparse-epochs",
        "2",
        "--finetune-epochs",
        "1",
        "--batch-size",
        "8",
        "--quiet",
    ]
    source, fresh, out = tmp_path / "half", tmp_path / "fresh", tmp_path / "taken"
    assert main([*args, "--target-macs", "0.5", "--out", str(source)]) == 0
    assert main([*args, "--target-macs", "0.35", "--out", str(fresh)]) == 0
    from rscompress.pruning.methods import sparse_training

    def must_not_run(*a, **k):
        raise AssertionError("sparse-trained again")

    monkeypatch.setattr(sparse_training, "sparse_train", must_not_run)
    assert main([*args, "--target-macs", "0.35", "--sparse-from", str(source), "--out", str(out)]) == 0
    taken = json.loads((out / "metrics.json").read_text())
    # the run it would have trained: the same pruned model, the same fine-tuned result
    fresh = json.loads((fresh / "metrics.json").read_text())
    assert (out / "pruned.safetensors").read_bytes() == (tmp_path / "fresh" / "pruned.safetensors").read_bytes()
    assert (taken["macs"], taken["top1"]) == (fresh["macs"], fresh["top1"])
    assert taken["sparse_training"] == {
        **json.loads((source / "sparse.json").read_text()),
        "taken_from": str(source.resolve()),
    }
    assert (out / "sparse.safetensors").read_bytes() == (source / "sparse.safetensors").read_bytes()


def test_sparse_from_a_run_trained_otherwise_is_refused_by_name_and_writes_nothing(parents, tmp_path):
    cfg = _cfg("l1rr", target_macs=0.5, sparse_epochs=1)
    source = tmp_path / "src"
    api.prune(parents["resnet18"], cfg, source, quiet=True)
    out = tmp_path / "o"
    refusals = [
        (
            cfg.model_copy(update={"sparse_epochs": 2}),
            parents["resnet18"],
            source,
            r"method_params\.sparse_epochs: 1 there, 2 now",
        ),
        (
            cfg.model_copy(update={"method": "slim"}),
            parents["resnet18"],
            source,
            r"method: \"l1rr\" there, \"slim\" now",
        ),
        (cfg, parents["se_resnet18"], source, "was pruned from .*resnet18, not .*se_resnet18"),
        (cfg, parents["resnet18"], parents["resnet18"], "holds no finished sparse training"),
        (
            _cfg("nas", target_macs=0.5),
            parents["resnet18"],
            source,
            "--sparse-from takes the sparse training",
        ),
    ]
    for changed, parent, src, needle in refusals:
        with pytest.raises(UserError, match=needle):
            api.prune(parent, changed, out, quiet=True, sparse_from=src)
        assert not out.exists()
    # a sparsity between the two budgets' targets: λ would have moved otherwise
    record = json.loads((source / "sparse.json").read_text())
    record["history"][-1]["sparsity"] = 0.35  # 0.5 of the MACs aims at 0.29, 0.35 at 0.41
    (source / "sparse.json").write_text(json.dumps(record))
    with pytest.raises(
        UserError, match=r"target_sparsity: 0\.2929 there, 0\.4084 now, and its sparsity \(up to 0\.35\)"
    ):
        api.prune(
            parents["resnet18"], cfg.model_copy(update={"target_macs": 0.35}), out, quiet=True, sparse_from=source
        )
    assert not out.exists()


def test_run_killed_after_sparse_training_prunes_its_model_on_resume(parents, tmp_path, monkeypatch):
    cfg = _cfg("slim", target_macs=0.5, sparse_epochs=1)
    out = tmp_path / "r"
    from rscompress.pruning.methods import sparse_training

    with monkeypatch.context() as m:
        m.setattr(sparse_training, "prune_to_budget", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            api.prune(parents["resnet18"], cfg, out, quiet=True)
    assert RunDir(out).holds_sparse_model() and not (out / "prune.json").exists()
    with pytest.raises(UserError, match="--resume"):
        api.prune(parents["resnet18"], cfg, out, quiet=True)
    # config.json, written before the phase began, refuses other settings, by name
    with pytest.raises(UserError, match=r"other settings \(method_params\.sparse_lr: null there, 0\.5 now\)"):
        api.prune(parents["resnet18"], cfg.model_copy(update={"sparse_lr": 0.5}), out, resume=True, quiet=True)
    # and the kept model's own record refuses a sparse training other than its own
    (out / "config.json").unlink()
    with pytest.raises(UserError, match=r"sparse\.json is sparse training with other settings \(sparse_training\.lr"):
        api.prune(parents["resnet18"], cfg.model_copy(update={"sparse_lr": 0.5}), out, resume=True, quiet=True)
    trained = json.loads((out / "sparse.json").read_text())
    monkeypatch.setattr(
        sparse_training, "sparse_train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again"))
    )
    assert api.prune(parents["resnet18"], cfg, out, resume=True, quiet=True)["sparse_training"] == trained
