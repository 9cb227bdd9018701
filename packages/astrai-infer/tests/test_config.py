import math

import pytest

from astrai_infer import GenerationConfig


def test_defaults_sample_from_the_full_distribution():
    config = GenerationConfig()
    assert (config.max_new_tokens, config.temperature, config.top_k, config.top_p, config.seed) == (
        256,
        1.0,
        0,
        1.0,
        None,
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_new_tokens", 0),
        ("max_new_tokens", -3),
        ("max_new_tokens", 2.0),
        ("max_new_tokens", True),
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", "0.7"),
        ("top_k", -1),
        ("top_k", 5.0),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("top_p", math.nan),
        ("seed", -1),
        ("seed", 2**64),
        ("seed", 1.5),
        ("min_p", 1.0),
        ("min_p", -0.1),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", math.inf),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("frequency_penalty", math.nan),
        ("stop", [""]),
        ("stop", [3]),
        ("stop", None),
        ("logprobs", "yes"),
        ("top_logprobs", 21),
        ("top_logprobs", -1),
        ("truncate_prompt", 1),
    ],
)
def test_invalid_value_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"GenerationConfig\.{field} ") as error:
        GenerationConfig(**{field: value})
    assert repr(value) in str(error.value)


@pytest.mark.parametrize(
    "changes",
    [dict(temperature=0), dict(top_k=1), dict(top_p=1e-9), dict(top_p=1), dict(seed=0), dict(seed=2**64 - 1)],
)
def test_boundary_values_are_accepted(changes):
    GenerationConfig(**changes)


def test_replace_validates_and_keeps_the_original():
    config = GenerationConfig(max_new_tokens=10)
    assert config.replace(temperature=0).temperature == 0
    assert config.temperature == 1.0
    with pytest.raises(ValueError, match="GenerationConfig.top_p"):
        config.replace(top_p=2.0)


def test_replace_rejects_unknown_settings():
    with pytest.raises(TypeError, match="'max_tokens'.*max_new_tokens"):
        GenerationConfig().replace(max_tokens=5)


def test_stop_becomes_a_tuple():
    assert GenerationConfig(stop=["a", "b"]).stop == ("a", "b")
    assert GenerationConfig(stop="</s>").stop == ("</s>",)
    assert GenerationConfig().stop == ()
