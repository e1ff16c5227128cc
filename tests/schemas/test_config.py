"""The fleet file: the default loads; a broken one stops start-up naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas import (
    ConfigError,
    Settings,
    UnknownModelError,
    UnknownTierError,
    load_config,
    load_fleet_config,
    parse_fleet_config,
)


def _minimal() -> dict[str, Any]:
    return {
        "providers": {"p": {"kind": "openai", "base_url": "http://x"}},
        "models": {"m": {"provider": "p", "input_per_mtok": 1, "output_per_mtok": 2,
                         "context_window": 100}},
        "tiers": {"simple": {"models": ["m"]}},
    }


_VARIANTS = [{"name": "a", "tier": "simple"}, {"name": "b", "model": "m", "weight": 3}]


def test_an_experiment_declared_in_the_file_is_checked_and_normalised() -> None:
    data = _minimal()
    data["experiments"] = [{"name": "short_answers", "variants": _VARIANTS, "unit": "agent",
                            "evaluator": {"kind": "min_length", "chars": 40}}]
    declared = parse_fleet_config(data).experiments[0]
    assert declared.variants == [{"name": "a", "tier": "simple", "weight": 1},
                                 {"name": "b", "model": "m", "weight": 3}]
    assert declared.evaluator == {"kind": "min_length", "chars": 40}
    assert (declared.unit, declared.primary_metric, declared.status) == (
        "agent", "success_rate", "running")


def test_the_built_in_file_has_the_product_tiers() -> None:
    fleet = load_fleet_config()
    assert fleet.tiers["simple"].models[0] == "openai/gpt-4o-mini"
    assert fleet.tiers["medium"].models[0] == "openai/gpt-4o"
    assert fleet.tiers["complex"].models[0] == "anthropic/claude-3.5-sonnet"
    assert fleet.tiers["embeddings"].models == ["openai/text-embedding-3-small"]
    fallbacks = {m for t in fleet.chat_tiers for m in fleet.tiers[t].models[1:]}
    assert {"anthropic/claude-3-haiku", "google/gemini-pro-1.5"} <= fallbacks
    assert fleet.models["openai/gpt-4o-mini"].input_per_mtok == 0.15


@pytest.mark.parametrize(("mutate", "key"), [
    (lambda d: d.update(colour=1), "colour"),
    (lambda d: d["models"]["m"].pop("input_per_mtok"), "models.m.input_per_mtok"),
    (lambda d: d["models"]["m"].update(provider="q"), "models.m.provider"),
    (lambda d: d["tiers"]["simple"].update(models=[]), "tiers.simple.models"),
    (lambda d: d["tiers"]["simple"].update(models=["zz"]), "tiers.simple.models[0]"),
    (lambda d: d["providers"]["p"].update(kind="grpc"), "providers.p.kind"),
    (lambda d: d.update(experiments=[{"name": "x", "variants": [{"name": "a"}]}]),
     "experiments[0]"),
    (lambda d: d.update(experiments=[{"name": "x", "variants": _VARIANTS,
                                      "evaluator": {"kind": "vibes"}}]), "experiments[0]"),
    (lambda d: d.update(experiments=[{"name": "x", "variants": [
        {"name": "a"}, {"name": "b", "model": "zz"}]}]), "experiments[0].variants[1].model"),
    (lambda d: d.update(experiments=[{"name": "x"}]), "experiments[0].variants"),
])
def test_a_broken_file_names_the_key(mutate: Any, key: str) -> None:
    data = _minimal()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_fleet_config(data)
    assert info.value.key == key  # type: ignore[attr-defined]
    assert key in str(info.value)


def test_an_unreadable_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_fleet_config(tmp_path / "missing.toml")
    assert info.value.key == "LLMFLEET_CONFIG"  # type: ignore[attr-defined]


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text("[providers\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_fleet_config(path)


def test_routing_by_tier_model_and_default() -> None:
    fleet = load_fleet_config()
    assert fleet.route("medium", None) == "medium"
    assert fleet.route(None, "anthropic/claude-3-haiku") == "simple"
    assert fleet.route(None, None) == "simple"
    assert fleet.route(None, None, embedding=True) == "embeddings"
    assert fleet.chain("simple", "anthropic/claude-3-haiku")[0] == "anthropic/claude-3-haiku"
    with pytest.raises(UnknownTierError):
        fleet.route("huge", None)
    with pytest.raises(UnknownModelError):
        fleet.route(None, "gpt-9")


def test_environment_overrides() -> None:
    settings = Settings.from_env({"DEFAULT_LLM_MODEL": "anthropic/claude-3-haiku",
                                  "FALLBACK_MODEL": "google/gemini-pro-1.5",
                                  "LLMFLEET_SIMULATOR_URL": "http://127.0.0.1:9"})
    _, fleet = load_config(settings)
    assert fleet.tiers["simple"].models[0] == "anthropic/claude-3-haiku"
    assert fleet.tiers["simple"].models[-1] == "google/gemini-pro-1.5"
    assert fleet.providers["openrouter"].base_url == "http://127.0.0.1:9/v1"
    assert fleet.providers["anthropic"].base_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(("env", "key"), [
    ({"ENABLE_LLM_CACHE": "maybe"}, "ENABLE_LLM_CACHE"),
    ({"DAILY_BUDGET_LIMIT": "ten"}, "DAILY_BUDGET_LIMIT"),
    ({"BUDGET_ALERT_THRESHOLD": "1.5"}, "BUDGET_ALERT_THRESHOLD"),
    ({"DEFAULT_LLM_MODEL": "gpt-9"}, "DEFAULT_LLM_MODEL"),
])
def test_a_bad_variable_is_named(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Settings.from_env(env))
    assert info.value.key == key  # type: ignore[attr-defined]
