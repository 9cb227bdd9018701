import math

import pytest
import torch
from astrai_core import ModelConfig, Transformer
from astrai_train import BaseStrategy, LossOutput, StrategyFactory


class ConstantModel(torch.nn.Module):
    """Returns uniform logits over V classes, so the cross-entropy is exactly ln V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.bias = torch.nn.Parameter(torch.zeros(vocab))

    def forward(self, input_ids):
        B, T = input_ids.shape
        return {"logits": self.bias.expand(B, T, self.vocab)}


def test_seq_loss_on_uniform_logits():
    strategy = StrategyFactory.create("seq", ConstantModel(8))
    batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "labels": torch.randint(0, 8, (2, 5))}
    output = strategy.compute_loss(batch)
    assert output.loss.item() == pytest.approx(math.log(8))
    assert output.num_tokens == 10


def test_sft_ignores_masked_labels():
    model = ConstantModel(4)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0]))
    labels = torch.tensor([[0, -100, -100, 1]])
    output = StrategyFactory.create("sft", model).compute_loss({"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": labels})
    log_z = math.log(math.exp(2) + 3)
    expected = ((log_z - 2) + log_z) / 2
    assert output.loss.item() == pytest.approx(expected)
    assert output.num_tokens == 2


def test_all_masked_batch_gives_zero_loss_with_gradient():
    model = ConstantModel(4)
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": torch.full((1, 3), -100)}
    output = StrategyFactory.create("sft", model).compute_loss(batch)
    output.loss.backward()
    assert output.loss.item() == 0.0
    assert output.num_tokens == 0


def test_label_smoothing_option_checked():
    with pytest.raises(ValueError, match="label_smoothing"):
        StrategyFactory.create("seq", ConstantModel(4), label_smoothing=1.5)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="beta"):
        StrategyFactory.create("seq", ConstantModel(4), beta=0.1)


def test_unknown_strategy_lists_available():
    with pytest.raises(ValueError, match="seq"):
        StrategyFactory.create("ppo", ConstantModel(4))


def test_user_strategy_registration():
    @StrategyFactory.register("test-zero")
    class ZeroStrategy(BaseStrategy):
        def compute_loss(self, batch):
            return LossOutput(torch.zeros((), requires_grad=True), 0)

    assert "test-zero" in StrategyFactory.available_strategies()
    model = Transformer(ModelConfig(vocab_size=10, dim=8, n_layers=1, n_heads=2, n_kv_heads=1, dim_ffn=8))
    assert isinstance(StrategyFactory.create("test-zero", model), ZeroStrategy)


def test_register_rejects_non_strategy():
    with pytest.raises(TypeError):
        StrategyFactory.register("bad")(object)


def test_packed_document_ids_reach_the_model():
    class RecordingModel(ConstantModel):
        def forward(self, input_ids, **document_inputs):
            self.document_inputs = document_inputs
            return super().forward(input_ids)

    model = RecordingModel(4)
    batch = {
        "input_ids": torch.zeros(1, 4, dtype=torch.long),
        "labels": torch.zeros(1, 4, dtype=torch.long),
        "position_ids": torch.tensor([[0, 1, 0, 1]]),
        "document_ids": torch.tensor([[0, 0, 1, 1]]),
    }
    for name in ("seq", "sft"):
        StrategyFactory.create(name, model).compute_loss(batch)
        assert model.document_inputs["position_ids"].tolist() == [[0, 1, 0, 1]]
        assert model.document_inputs["document_ids"].tolist() == [[0, 0, 1, 1]]

    StrategyFactory.create("seq", model).compute_loss({k: batch[k] for k in ("input_ids", "labels")})
    assert model.document_inputs == {}
