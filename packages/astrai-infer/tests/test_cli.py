import json

import pytest
import torch
from click.testing import CliRunner

from astrai_core import load_checkpoint, save_checkpoint
from astrai_infer import GenerationConfig
from astrai_infer.cli import main

SETTINGS = [
    *("--max-new-tokens", "12"),
    *("--temperature", "0.9"),
    *("--top-k", "40"),
    *("--top-p", "0.95"),
    *("--seed", "3"),
    *("--min-p", "0.01"),
    *("--repetition-penalty", "1.1"),
    *("--presence-penalty", "0.2"),
    *("--frequency-penalty", "0.1"),
    *("--stop", "zzz", "--stop", "。"),
]
CONFIG = GenerationConfig(
    max_new_tokens=12,
    temperature=0.9,
    top_k=40,
    top_p=0.95,
    seed=3,
    min_p=0.01,
    repetition_penalty=1.1,
    presence_penalty=0.2,
    frequency_penalty=0.1,
    stop=("zzz", "。"),
)


@pytest.fixture
def checkpoint(tmp_path, model, tokenizer):
    return str(save_checkpoint(tmp_path / "ckpt", model, tokenizer))


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def test_generate_streams_the_completion_to_stdout(checkpoint, generator):
    result = run("generate", "--model", checkpoint, *SETTINGS, "今天天气")
    assert result.exit_code == 0, result.output
    assert result.stdout == generator.generate("今天天气", CONFIG) + "\n"
    assert "loaded" in result.stderr
    assert "tok/s" in result.stderr


def test_generate_chat_sends_a_user_message(checkpoint, generator):
    result = run("generate", "--model", checkpoint, *SETTINGS, "--chat", "hello")
    assert result.exit_code == 0, result.output
    assert result.stdout == generator.generate([{"role": "user", "content": "hello"}], CONFIG) + "\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-p", "1.5"], "Error: GenerationConfig.top_p must be in (0, 1], got 1.5"),
        (["--max-new-tokens", "0"], "Error: GenerationConfig.max_new_tokens"),
        (["--device", "no-such-device"], "Error: device 'no-such-device' is not usable"),
    ],
)
def test_bad_settings_fail_with_one_line(checkpoint, args, message):
    result = run("generate", "--model", checkpoint, *args, "hi")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1


def test_missing_checkpoint_fails_with_one_line(tmp_path):
    result = run("generate", "--model", str(tmp_path / "absent"), "hi")
    assert result.exit_code == 1
    assert result.stdout == ""
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1
    assert "is not a checkpoint" in error_lines[0]
    assert result.stderr.endswith(error_lines[0] + "\n")


def test_chat_keeps_the_conversation_until_reset(checkpoint, generator):
    result = run("chat", "--model", checkpoint, *SETTINGS, input="hi\nmore\n/reset\n\nhi\n/exit\nignored\n")
    assert result.exit_code == 0, result.output

    first = generator.generate([{"role": "user", "content": "hi"}], CONFIG)
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "more"},
    ]
    second = generator.generate(history, CONFIG)
    assert result.stdout == f"{first}\n{second}\n{first}\n"
    assert "conversation cleared" in result.stderr


def test_chat_system_message_and_end_of_input(checkpoint, generator):
    result = run("chat", "--model", checkpoint, *SETTINGS, "--system", "Be brief.", input="hi\n")
    assert result.exit_code == 0, result.output
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert result.stdout == generator.generate(messages, CONFIG) + "\n"


def test_chat_reports_an_overlong_turn_and_carries_on(checkpoint, generator):
    long_message = "The quick brown fox jumps over the lazy dog. " * 20
    result = run("chat", "--model", checkpoint, *SETTINGS, input=f"{long_message}\n/what\nhi\n")
    assert result.exit_code == 0, result.output
    assert "Error: prompt is" in result.stderr
    assert "/reset" in result.stderr
    assert "unknown command '/what'" in result.stderr
    assert result.stdout == generator.generate([{"role": "user", "content": "hi"}], CONFIG) + "\n"


def test_every_option_has_help():
    for name, command in main.commands.items():
        for parameter in command.params:
            if parameter.param_type_name == "option":
                assert parameter.help, f"{name} {parameter.name}"


def test_convert_to_hf_and_back_is_bit_exact(tmp_path, checkpoint, model):
    result = run("convert", "to-hf", checkpoint, str(tmp_path / "hf"), "--shard-size", "1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hf" / "config.json").is_file()
    assert "wrote" in result.stderr

    result = run("convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "back"))
    assert result.exit_code == 0, result.output
    back = load_checkpoint(tmp_path / "back")
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.model.state_dict()[name], tensor), name
    assert (tmp_path / "back" / "tokenizer.model").is_file()


def test_convert_from_hf_names_unsupported_fields(tmp_path, checkpoint):
    run("convert", "to-hf", checkpoint, str(tmp_path / "hf"))
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    config["attention_bias"] = True
    config_path.write_text(json.dumps(config))
    result = run("convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "back"))
    assert result.exit_code == 1
    assert "attention_bias=True" in result.stderr
    assert not (tmp_path / "back").exists()
