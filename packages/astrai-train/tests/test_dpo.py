import logging
import math

import pytest
import torch
import torch.nn.functional as F
from astrai_core import ModelConfig, Transformer, load_checkpoint
from astrai_data import PreferenceDataset
from astrai_train import DPOStrategy, StrategyFactory, TrainCallback, Trainer, sequence_log_probs


def tiny_model(vocab: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, dim_ffn=64, max_len=64))


def batch_of(dataset, count=4):
    examples = [dataset[i] for i in range(count)]
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


def test_sequence_log_probs_by_hand():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]]])
    labels = torch.tensor([[2, -100]])
    expected = 2.0 - math.log(1 + math.e + math.e**2)
    assert sequence_log_probs(logits, labels).item() == pytest.approx(expected)


def test_loss_is_ln2_when_policy_is_reference(workspace):
    dataset = PreferenceDataset(workspace / "preference.arrow")
    model = tiny_model(dataset.metadata["vocab_size"])
    strategy = StrategyFactory.create("dpo", model, beta=0.5)
    output = strategy.compute_loss(batch_of(dataset))
    assert output.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert output.num_tokens == 4
    assert output.metrics["reward_margin"] == pytest.approx(0.0, abs=1e-6)


def test_loss_matches_formula_after_policy_moves(workspace):
    dataset = PreferenceDataset(workspace / "preference.arrow")
    model = tiny_model(dataset.metadata["vocab_size"])
    strategy = DPOStrategy(model, beta=0.3)
    with torch.no_grad():
        model.norm.weight.mul_(1.7)  # the policy moves away from the frozen reference
    batch = batch_of(dataset)

    def log_likelihood(module, ids, labels):
        logits = module(ids)["logits"]
        token = -F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        return token.sum(-1)

    with torch.no_grad():
        pc = log_likelihood(model, batch["chosen_input_ids"], batch["chosen_labels"])
        pr = log_likelihood(model, batch["rejected_input_ids"], batch["rejected_labels"])
        rc = log_likelihood(strategy.ref_model, batch["chosen_input_ids"], batch["chosen_labels"])
        rr = log_likelihood(strategy.ref_model, batch["rejected_input_ids"], batch["rejected_labels"])
    expected = -F.logsigmoid(0.3 * ((pc - rc) - (pr - rr))).mean()
    assert strategy.compute_loss(batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_reference_is_frozen_copy(workspace):
    dataset = PreferenceDataset(workspace / "preference.arrow")
    model = tiny_model(dataset.metadata["vocab_size"])
    strategy = DPOStrategy(model)
    assert strategy.ref_model is not model
    assert not any(p.requires_grad for p in strategy.ref_model.parameters())


@pytest.mark.parametrize(("options", "match"), [({"beta": 0}, "beta"), ({"label_smoothing": 0.5}, "label_smoothing")])
def test_invalid_options_are_named(workspace, options, match):
    with pytest.raises(ValueError, match=match):
        DPOStrategy(tiny_model(400), **options)


def test_dpo_run_prefers_chosen(workspace, tmp_path, tiny_config, caplog):
    Trainer(tiny_config(workspace, tmp_path / "sft", max_steps=4, val_dataset=None)).train()
    metrics = []

    class Collect(TrainCallback):
        def on_step_end(self, trainer, step_metrics):
            metrics.append(step_metrics)

    config = tiny_config(
        workspace,
        tmp_path / "dpo",
        dataset=str(workspace / "preference.arrow"),
        val_dataset=str(workspace / "preference.arrow"),
        init_from=str(tmp_path / "sft" / "run" / "final"),
        tokenizer=None,
        strategy="dpo",
        strategy_options={"beta": 0.5},
        optimizer={"lr": 3e-3},
        max_steps=12,
    )
    trainer = Trainer(config)
    trainer.callbacks.append(Collect())
    with caplog.at_level(logging.INFO, logger="astrai_train"):
        trainer.train()
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    held_out = [record.getMessage() for record in caplog.records if "held-out loss" in record.getMessage()]
    assert held_out and all(message.endswith(" pairs)") for message in held_out)
    assert metrics[-1]["loss"] < 0.5
    assert metrics[-1]["reward_accuracy"] == 1.0
    assert load_checkpoint(tmp_path / "dpo" / "run" / "final").tokenizer is not None


def test_wrong_data_kind_is_reported(workspace, tmp_path, tiny_config):
    config = tiny_config(workspace, tmp_path, strategy="dpo")
    with pytest.raises(ValueError, match="preference"):
        Trainer(config).train()
