"""Rollouts in the model table: the weighted chooser's exact split, sticky keys, the shadow sampler, and the
configuration checks (in YAML, as operators write them) that stop a broken rollout before the gateway starts."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from rerankd.gateway.model_table import Task
from rerankd.gateway.rollout import Rollout, RolloutSettings, ShadowSampler, WeightedChooser
from rerankd.gateway.settings import GatewayConfigError, GatewaySettings, load_yaml_config


@dataclass(eq=False)
class Pool:
    name: str
    task: Task = "rerank"


def test_weighted_round_robin_is_exact_over_each_cycle() -> None:
    chooser = WeightedChooser([95, 5])
    picks = [chooser.next() for _ in range(100)]
    assert picks.count(1) == 5
    for start in range(0, 100, 20):  # one canary request in every 20, never two in a row
        assert picks[start:start + 20].count(1) == 1
    three = WeightedChooser([5, 1, 1])
    assert Counter(three.next() for _ in range(70)) == {0: 50, 1: 10, 2: 10}


def test_a_zero_weight_is_never_chosen_and_bad_weights_are_refused() -> None:
    chooser = WeightedChooser([0, 1])
    assert {chooser.next() for _ in range(10)} == {1}
    assert {chooser.for_key(f"k{i}") for i in range(50)} == {1}
    for weights in ([], [0, 0], [1, -1]):
        with pytest.raises(ValueError, match="weights"):
            WeightedChooser(weights)


def test_sticky_keys_keep_their_pool_and_split_by_weight() -> None:
    chooser = WeightedChooser([80, 20])
    assert all(chooser.for_key("key-a", "m") == chooser.for_key("key-a", "m") for _ in range(5))
    counts = Counter(chooser.for_key(f"key-{i}", "m") for i in range(2000))
    assert 0.17 < counts[1] / 2000 < 0.23  # a hash: close to the weight, not exact


def test_shadow_sampler_takes_exactly_its_fraction_evenly() -> None:
    tenth = ShadowSampler(0.1)
    takes = [tenth.take() for _ in range(100)]
    assert takes.count(True) == 10 and all(takes[i * 10 + 9] for i in range(10))
    every = ShadowSampler(1.0)
    assert all(every.take() for _ in range(10))
    third = ShadowSampler(1 / 3)
    assert [third.take() for _ in range(30)].count(True) == 10


def test_rollout_choose_and_shadow_for() -> None:
    stable, rc = Pool("stable"), Pool("rc")
    settings = RolloutSettings(model="stable", weights={"stable": 3, "rc": 1}, shadow="rc", shadow_fraction=0.5)
    rollout = Rollout.build(settings, {"stable": stable, "rc": rc})
    assert [rollout.choose("k").name for _ in range(8)].count("rc") == 2
    assert rollout.shadow_for(rc) is None  # the canary's own requests are not shadowed on it
    assert [rollout.shadow_for(stable) for _ in range(4)] == [None, rc, None, rc]
    sticky = Rollout.build(settings.model_copy(update={"sticky": "key"}), {"stable": stable, "rc": rc})
    assert len({sticky.choose("one-key").name for _ in range(20)}) == 1
    plain = Rollout.build(RolloutSettings(model="stable"), {"stable": stable})
    assert plain.choose("k") is stable and plain.shadow_for(stable) is None


def _yaml(tmp_path: Path, text: str) -> GatewaySettings:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return GatewaySettings(**load_yaml_config(path))


POOLS = """
pools:
  - stable=http://a:1
  - rc=http://b:1
  - other=http://c:1
  - embed:emb=http://d:1
"""


def test_the_documented_yaml_loads(tmp_path: Path) -> None:
    settings = _yaml(tmp_path, POOLS + """
rollouts:
  - model: stable
    weights: {stable: 95, rc: 5}
    sticky: key
    shadow: other
    shadow-fraction: 0.1
    shadow-concurrency: 2
    shadow-top-k: 5
""")
    settings.check_runnable()
    (rollout,) = settings.rollouts
    assert rollout.weights == {"stable": 95, "rc": 5} and rollout.sticky == "key"
    assert (rollout.shadow, rollout.shadow_fraction, rollout.shadow_concurrency, rollout.shadow_top_k) == \
        ("other", 0.1, 2, 5)


@pytest.mark.parametrize(("rollout", "message"), [
    ("{model: nope, shadow: rc}", "rollouts[nope]: model 'nope' is not a pool's name; pools: stable, rc, other, emb"),
    ("{model: stable, weights: {stable: 1, gone: 1}}", "rollouts[stable].weights: no pool named 'gone'"),
    ("{model: stable, weights: {emb: 1}}", "pool 'emb' serves embed, the model rerank"),
    ("{model: stable, weights: {stable: 1, rc: -1}}", "'rc' has a negative weight (-1)"),
    ("{model: stable, weights: {stable: 0, rc: 0}}", "give at least one pool a weight above 0"),
    ("{model: stable, shadow: stable}", "a pool cannot shadow itself"),
    ("{model: stable, shadow: emb}", "must both be rerank pools"),
    ("{model: stable, shadow: missing}", "rollouts[stable].shadow: no pool named 'missing'"),
])
def test_broken_rollouts_are_refused_with_the_reason(tmp_path: Path, rollout: str, message: str) -> None:
    settings = _yaml(tmp_path, POOLS + f"rollouts:\n  - {rollout}\n")
    with pytest.raises(GatewayConfigError, match=re.escape(message)):
        settings.check_runnable()


def test_rollouts_do_not_chain_and_a_model_has_one(tmp_path: Path) -> None:
    chained = _yaml(tmp_path, POOLS + "rollouts:\n  - {model: stable, weights: {rc: 1}}\n"
                                      "  - {model: rc, shadow: other}\n")
    with pytest.raises(GatewayConfigError, match="has a rollout of its own; rollouts do not chain"):
        chained.check_runnable()
    twice = _yaml(tmp_path, POOLS + "rollouts:\n  - {model: stable, shadow: rc}\n  - {model: stable, shadow: other}\n")
    with pytest.raises(GatewayConfigError, match="the model has two rollouts"):
        twice.check_runnable()


@pytest.mark.parametrize("field", ["shadow-fraction: 0", "shadow-fraction: 1.5", "shadow-concurrency: 0",
                                   "sticky: cookie", "colour: blue"])
def test_out_of_range_fields_are_refused_when_loading(tmp_path: Path, field: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(POOLS + f"rollouts:\n  - model: stable\n    shadow: rc\n    {field}\n")
    with pytest.raises(GatewayConfigError, match=r"rollouts\.0\."):
        load_yaml_config(path)
