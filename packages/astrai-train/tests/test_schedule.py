import math

import pytest
from astrai_train import ScheduleConfig, lr_multiplier


def test_warmup_is_linear():
    config = ScheduleConfig(name="cosine", warmup_steps=4)
    assert [lr_multiplier(s, 100, config) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_ends_at_floor():
    config = ScheduleConfig(name="cosine", warmup_steps=0, min_lr_ratio=0.1)
    assert lr_multiplier(0, 100, config) == pytest.approx(1.0)
    assert lr_multiplier(50, 100, config) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(100, 100, config) == pytest.approx(0.1)


def test_wsd_plateau_then_linear_decay():
    config = ScheduleConfig(name="wsd", warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_multiplier(50, 100, config) == 1.0
    assert lr_multiplier(79, 100, config) == 1.0
    assert lr_multiplier(90, 100, config) == pytest.approx(0.5)
    assert lr_multiplier(100, 100, config) == pytest.approx(0.0)


def test_constant_after_warmup():
    config = ScheduleConfig(name="constant", warmup_steps=2)
    assert lr_multiplier(1, 10, config) == 1.0
    assert all(math.isclose(lr_multiplier(s, 10, config), 1.0) for s in range(2, 10))
