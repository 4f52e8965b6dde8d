"""The method table: one row per method, each method's options refused for the others."""

from __future__ import annotations

import pytest

from rscompress.config import FitConfig, PruneConfig
from rscompress.errors import UserError
from rscompress.pruning.methods import METHODS, check_config, get_method
from rscompress.pruning.methods.base import Budget


def test_every_row_is_named_as_its_key_and_says_what_it_does() -> None:
    assert {"l1", "remotetrimmer", "hrank", "slim", "l1rr", "nas"} <= set(METHODS)
    for name, method in METHODS.items():
        assert method.name == name and method.summary


def test_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(UserError, match="unknown method 'l9'; known: l1, l2"):
        get_method("l9")


@pytest.mark.parametrize(
    ("method", "option", "value", "owners"),
    [
        ("l1", "sparse_epochs", 3, "slim / l1rr"),
        ("slim", "attention_weight", 0.5, "l1rr"),
        ("slim", "sparse_loss_tolerance", 0.3, "l1rr"),
        ("hrank", "search_epochs", 5, "nas"),
        ("bn", "gate_without_bn", True, "nas"),
    ],
)
def test_an_option_of_another_method_is_refused_by_name(method, option, value, owners) -> None:
    cfg = PruneConfig(method=method, target_macs=0.5, finetune=FitConfig(), **{option: value})
    flag = "--" + option.replace("_", "-")
    with pytest.raises(UserError, match=f"^{flag} is an option of --method {owners}; --method {method} has none$"):
        check_config(cfg)


def test_a_method_takes_its_own_options_and_the_defaults_of_the_others() -> None:
    cfg = PruneConfig(method="l1rr", target_macs=0.5, attention_weight=0.5, sparse_epochs=3, finetune=FitConfig())
    assert check_config(cfg) is METHODS["l1rr"]
    assert check_config(PruneConfig(method="l1", ratio=0.3, finetune=FitConfig())) is METHODS["l1"]


def test_nas_refuses_a_ratio() -> None:
    with pytest.raises(UserError, match="--method nas searches towards a budget"):
        check_config(PruneConfig(method="nas", ratio=0.3, finetune=FitConfig()))


def test_budget_is_made_once_from_the_options_and_rebased_on_the_prepared_model() -> None:
    budget = Budget.of(PruneConfig(method="l1", target_macs=0.1, round_to=8, finetune=FitConfig()))
    assert budget == Budget("macs", 0.1, 8)
    assert budget.search_args() == {"target_macs": 0.1, "target_params": None, "ratio": None, "round_to": 8}
    # Folding removed a fifth of the MACs: 10 % of the parent is 12.5 % of the prepared model.
    assert budget.on_prepared((1000, 50), (800, 50)).value == pytest.approx(0.125)
    assert budget.on_prepared((1000, 50), (1000, 40)) is budget  # params changed, MACs did not
    ratio = Budget.of(PruneConfig(method="l1", ratio=0.3, finetune=FitConfig()))
    assert ratio.on_prepared((1000, 50), (800, 40)) is ratio and ratio.search_args()["ratio"] == 0.3
