"""Direct Preference Optimization (DPO): learning from pairs of preferred and rejected responses.

The loss of one preference pair, with the policy π, a frozen reference π_ref and
``log π(y|x)`` the sum of the response tokens' log-probabilities, is

    -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

where ``y_w`` is the chosen and ``y_l`` the rejected response. When the policy equals the reference
the bracket is 0 and the loss is ln 2.

Design choices:
- The reference is a frozen copy of the policy taken when the strategy is created, which is the
  starting checkpoint (``init_from``) of the run, so no second checkpoint needs to be named.
- Chosen and rejected responses run through the model as one batch of 2B rows.
- Log-probabilities are sums over response tokens only (labels other than -100), as the formula above defines.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .strategy import IGNORE_INDEX, BaseStrategy, LossOutput, StrategyFactory, unwrap_model


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of ``log p(label)`` over the positions whose label is not -100, per row: (B,)."""
    mask = labels != IGNORE_INDEX
    safe_labels = labels.masked_fill(~mask, 0)
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    token_log_probs = log_probs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (token_log_probs * mask).sum(-1)


@StrategyFactory.register("dpo")
class DPOStrategy(BaseStrategy):
    """Preference alignment on packed ``preference`` records (chosen and rejected responses).

    Options (``strategy_options``): ``beta`` (strength of the pull towards the reference, default
    0.1) and ``label_smoothing`` (assumed share of flipped preference labels, default 0; the
    conservative DPO variant).
    """

    data_kinds = ("preference",)
    # The frozen reference model is a deep copy of the policy, and FSDP-sharded modules cannot be copied.
    supports_fsdp = False
    loss_unit = "pairs"

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str = "cpu",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        **options,
    ):
        super().__init__(model, device, **options)
        if not beta > 0:
            raise ValueError(f"strategy_options.beta must be > 0, got {beta!r}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"strategy_options.label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.ref_model = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["chosen_input_ids"].shape[0])

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        input_ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]]).to(self.device)
        labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]]).to(self.device)
        pairs = batch["chosen_input_ids"].shape[0]

        policy = sequence_log_probs(self.model(input_ids)["logits"], labels)  # (2B,)
        with torch.no_grad():
            reference = sequence_log_probs(self.ref_model(input_ids)["logits"], labels)
        chosen_reward = self.beta * (policy[:pairs] - reference[:pairs])
        rejected_reward = self.beta * (policy[pairs:] - reference[pairs:])
        margin = chosen_reward - rejected_reward
        losses = -F.logsigmoid(margin) * (1 - self.label_smoothing) - F.logsigmoid(-margin) * self.label_smoothing
        metrics = {
            "reward_accuracy": (margin > 0).float().mean().item(),
            "reward_margin": margin.mean().item(),
            "chosen_reward": chosen_reward.mean().item(),
            "rejected_reward": rejected_reward.mean().item(),
        }
        return LossOutput(losses.mean(), pairs, metrics)
