import pytest
import torch
from astrai_core import ModelConfig, Transformer
from astrai_data import PromptDataset
from astrai_train import (
    GRPOStrategy,
    TrainCallback,
    Trainer,
    get_reward,
    group_advantages,
    register_reward,
)


def test_advantages_normalised_within_groups():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    advantages = group_advantages(rewards, group_size=4)
    assert torch.allclose(advantages[:4], torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-3)
    assert torch.equal(advantages[4:], torch.zeros(4))
    assert torch.isfinite(advantages).all()


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [("4", "4", 1.0), ("The answer is 4.", "4", 1.0), ("It is 1,024", "1024", 1.0), ("5", "4", 0.0),
     ("maybe", "4", 0.0), ("anything", None, 0.0), ("Paris", "Paris", 1.0), ("paris!", "Paris", 0.0)],
)
def test_answer_match(completion, answer, expected):
    assert get_reward("answer_match")(completion, prompt="", answer=answer, finish_reason="stop") == expected


def test_format_and_language_rewards():
    assert get_reward("format")("done", prompt="", answer=None, finish_reason="stop") == 1.0
    assert get_reward("format")("cut of", prompt="", answer=None, finish_reason="length") == 0.0
    assert get_reward("format")("  ", prompt="", answer=None, finish_reason="stop") == 0.0
    assert get_reward("language")("答案是七", prompt="三加四等于几？", answer=None, finish_reason="stop") == 1.0
    assert get_reward("language")("seven", prompt="三加四等于几？", answer=None, finish_reason="stop") == 0.0


def test_user_reward_registration():
    @register_reward("test-length")
    def length(completion, **_):
        return float(len(completion))

    assert get_reward("test-length")("abc") == 3.0
    with pytest.raises(ValueError, match="unknown reward function"):
        get_reward("missing")


def make_strategy(workspace, **options):
    from astrai_core import Tokenizer

    tokenizer = Tokenizer(workspace / "tok.model")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, dim_ffn=64, max_len=64)
    return GRPOStrategy(Transformer(config), tokenizer=tokenizer, **options), tokenizer


def prompt_batch(workspace, count=2):
    dataset = PromptDataset(workspace / "prompts.arrow")
    return dataset.collate([dataset[i] for i in range(count)])


def test_equal_rewards_give_zero_surrogate(workspace):
    @register_reward("test-constant")
    def constant(completion, **_):
        return 1.0

    strategy, _ = make_strategy(workspace, rewards=["test-constant"], kl_coef=0.0, max_new_tokens=6)
    output = strategy.compute_loss(prompt_batch(workspace))
    assert output.loss.item() == 0.0
    assert output.metrics["reward_std"] == 0.0
    assert output.num_tokens == 2


def test_loss_gradient_follows_advantage(workspace):
    @register_reward("test-text-length")
    def text_length(completion, **_):
        return float(len(completion))

    strategy, _ = make_strategy(workspace, rewards=["test-text-length"], max_new_tokens=8, group_size=4)
    output = strategy.compute_loss(prompt_batch(workspace))
    output.loss.backward()
    assert output.metrics["reward_std"] > 0  # sampled completions of different lengths
    assert output.metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before any update
    assert output.metrics["rollout_seconds"] > 0
    assert strategy.model.lm_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("options", "match"),
    [({"group_size": 1}, "group_size"), ({"clip_eps": 0}, "clip_eps"), ({"temperature": 0}, "temperature"),
     ({"rewards": ["nope"]}, "unknown reward")],
)
def test_invalid_options_named(workspace, options, match):
    with pytest.raises(ValueError, match=match):
        make_strategy(workspace, **options)


def test_grpo_run_logs_rollouts(workspace, tmp_path, tiny_config):
    records = []

    class Collect(TrainCallback):
        def on_step_end(self, trainer, metrics):
            records.append(metrics)

    config = tiny_config(
        workspace,
        tmp_path,
        dataset=str(workspace / "prompts.arrow"),
        val_dataset=None,
        strategy="grpo",
        strategy_options={"group_size": 3, "max_new_tokens": 5, "rewards": {"format": 1.0, "language": 0.5}},
        batch_size=2,
        max_steps=3,
    )
    trainer = Trainer(config)
    trainer.callbacks.append(Collect())
    trainer.train()
    assert len(records) == 3
    assert all({"reward_mean", "reward_std", "kl", "rollout_seconds", "completion_length"} <= r.keys() for r in records)
    assert all(0.0 <= r["reward_mean"] <= 1.5 for r in records)


def test_grpo_rejects_val_dataset(workspace, tmp_path, tiny_config):
    config = tiny_config(
        workspace, tmp_path, dataset=str(workspace / "prompts.arrow"), val_dataset=str(workspace / "prompts.arrow"),
        strategy="grpo",
    )
    with pytest.raises(ValueError, match="remove val_dataset"):
        Trainer(config).train()
