"""The server's numeric settings: one reader, bounds, one sentence per bad value."""

import pytest

from explorer import settings
from explorer.errors import ConfigError
from explorer.estimate import budget_seconds
from explorer.footprint import available_memory
from explorer.pool import default_slots
from explorer.ray_runner import Settings


def test_defaults_when_unset_or_blank():
    assert settings.read("EXPLORER_RUN_BUDGET_S", {}) == 600.0
    assert settings.read("EXPLORER_RUN_BUDGET_S", {"EXPLORER_RUN_BUDGET_S": "  "}) == 600.0
    assert settings.read("EXPLORER_RUNS_PER_VISITOR", {}) == 1
    assert settings.read("EXPLORER_GPU_SLOTS", {}) is None  # sized from the device


def test_numbers_in_range_are_read_whole_numbers_as_int():
    env = {"EXPLORER_RUNS_PER_VISITOR": "3", "EXPLORER_RAY_CPUS": "0.5",
           "EXPLORER_RUN_MEMORY_BYTES": "2e9", "EXPLORER_SLOTS": "2.0"}
    assert settings.read("EXPLORER_RUNS_PER_VISITOR", env) == 3
    assert isinstance(settings.read("EXPLORER_RUNS_PER_VISITOR", env), int)
    assert settings.read("EXPLORER_RAY_CPUS", env) == 0.5
    assert settings.read("EXPLORER_RUN_MEMORY_BYTES", env) == 2e9
    assert settings.read("EXPLORER_SLOTS", env) == 2


@pytest.mark.parametrize("raw", ["0", "-1", "1.5", "three", "nan", "inf", "1e9", "٣"])
def test_a_bad_runs_per_visitor_is_one_sentence_naming_the_variable_and_range(raw):
    with pytest.raises(ConfigError) as info:
        settings.read("EXPLORER_RUNS_PER_VISITOR", {"EXPLORER_RUNS_PER_VISITOR": raw})
    text = str(info.value)
    assert text.startswith("$EXPLORER_RUNS_PER_VISITOR must be a whole number from 1 to 10000")
    assert text.count(". ") == 0 and text.endswith(".")  # one sentence
    assert "runs one browser may have at once" in text


def test_every_declared_setting_has_a_default_inside_its_bounds():
    for s in settings.SETTINGS.values():
        assert s.low <= s.high
        if s.default is not None:
            assert s.low <= s.default <= s.high, s.name
            assert settings.read(s.name, {}) == s.default


def test_check_all_lists_each_bad_setting():
    env = {"EXPLORER_RUN_BUDGET_S": "soon", "EXPLORER_GPU_SLOTS": "0", "EXPLORER_RAY_CPUS": "2"}
    problems = settings.check_all(env)
    assert len(problems) == 2
    assert any(p.startswith("$EXPLORER_RUN_BUDGET_S") for p in problems)
    assert any(p.startswith("$EXPLORER_GPU_SLOTS") for p in problems)


def test_the_explorer_readers_go_through_it(monkeypatch):
    monkeypatch.setenv("EXPLORER_RUN_BUDGET_S", "0")
    with pytest.raises(ConfigError, match="EXPLORER_RUN_BUDGET_S must be a number from 1"):
        budget_seconds()
    monkeypatch.setenv("EXPLORER_RUN_MEMORY_BYTES", "lots")
    with pytest.raises(ConfigError, match="EXPLORER_RUN_MEMORY_BYTES must be a number"):
        available_memory("cpu")
    monkeypatch.setenv("EXPLORER_SLOTS", "65")
    with pytest.raises(ConfigError, match="EXPLORER_SLOTS must be a whole number from 1 to 64"):
        default_slots(gpu_memory=[])
    monkeypatch.setenv("EXPLORER_RAY_CPUS", "0")
    with pytest.raises(ConfigError, match="EXPLORER_RAY_CPUS must be a number from 0.01"):
        Settings.from_env()


def test_cpu_slots_are_unchanged_one_worker_with_every_core(monkeypatch):
    monkeypatch.delenv("EXPLORER_SLOTS", raising=False)
    slots = default_slots(gpu_memory=[], cores=8)
    assert [(s.device, s.threads, s.budget) for s in slots] == [("cpu", 8, None)]
    monkeypatch.setenv("EXPLORER_SLOTS", "2")
    assert [(s.device, s.threads) for s in default_slots(gpu_memory=[], cores=8)] == [
        ("cpu", 4), ("cpu", 4)]
