"""The machine time scale that the tests' timeouts are multiplied by (tests/timing.py)."""
from __future__ import annotations

import pytest

from . import timing


@pytest.fixture
def fresh_scale(monkeypatch):
    """Forget the session's scale for one test (monkeypatch puts it back)."""
    monkeypatch.setattr(timing, "_scale", None)


@pytest.mark.parametrize("value, scale", [("1", 1.0), ("2.5", 2.5), ("80", 80.0), ("0.5", 0.5)])
def test_the_environment_overrides_the_measurement(monkeypatch, fresh_scale, value, scale):
    monkeypatch.setenv(timing.ENV, value)
    monkeypatch.setattr(timing, "measure_workload", lambda: pytest.fail("measured despite the override"))
    assert timing.time_scale() == scale
    assert timing.scaled(4.0) == 4.0 * max(1.0, scale)  # never shorter than written


@pytest.mark.parametrize("value", ["fast", "0", "-3", "nan", "inf"])
def test_a_bad_override_is_an_error(monkeypatch, fresh_scale, value):
    monkeypatch.setenv(timing.ENV, value)
    with pytest.raises(ValueError, match=timing.ENV):
        timing.time_scale()


@pytest.mark.parametrize("seconds, scale", [(0.001, 1.0), (timing.REFERENCE_SECONDS * 7, 7.0), (1e6, 50.0)])
def test_the_measurement_is_relative_to_the_reference_and_clamped(monkeypatch, fresh_scale, seconds, scale):
    monkeypatch.delenv(timing.ENV, raising=False)
    monkeypatch.setattr(timing, "measure_workload", lambda: seconds)
    assert timing.time_scale() == pytest.approx(scale)


def test_the_workload_runs_and_is_measured_once(monkeypatch, fresh_scale):
    monkeypatch.delenv(timing.ENV, raising=False)
    assert timing.measure_workload() > 0
    first = timing.time_scale()
    monkeypatch.setattr(timing, "measure_workload", lambda: pytest.fail("measured twice"))
    assert timing.time_scale() == first and 1.0 <= first <= 50.0
