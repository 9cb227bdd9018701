"""Group Relative Policy Optimization (GRPO): reinforcement learning with rewards compared within groups.

Each training step:
1. expands every prompt into ``group_size`` rollouts sampled from the current policy with
   ``astrai_infer.Generator``;
2. scores every rollout with the configured reward functions (see ``rewards.py``);
3. turns rewards into advantages normalised within each prompt's group,
   ``(r - mean) / (std + 1e-4)``; a group whose rewards are all equal gets advantage 0;
4. minimises, per completion token, the clipped surrogate ``-min(ρ A, clip(ρ, 1-ε, 1+ε) A)`` plus
   ``kl_coef`` times the k3 estimate of KL(π || π_ref), averaged over each completion's tokens
   and then over the completions.

Design choices:
- One policy update per rollout batch. So the ratio ρ against the sampling policy is 1 in value
  and only its gradient matters. The clipped form stays so that a reader sees the full objective.
- The reference π_ref is a frozen copy of the starting policy, as in DPO.
- Rollouts use the model itself (``fast=False``), so they always see the current weights.
- Rollout seeds come from torch's global generator, whose state every checkpoint stores, so a
  resumed run samples the same rollouts as an uninterrupted one.
- A completion that ended on a stop token is trained with ``<|im_end|>`` appended, so the policy
  also learns where to stop (prompts are chat prompts ending with the assistant header).
"""

from __future__ import annotations

import copy
import time

import torch
from astrai_infer import Generator
from torch import nn

from .rewards import get_reward
from .strategy import BaseStrategy, LossOutput, StrategyFactory, unwrap_model


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Normalise rewards (N,) within consecutive groups of ``group_size``; equal rewards give 0."""
    groups = rewards.view(-1, group_size)  # (B, G)
    centred = groups - groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, unbiased=False, keepdim=True)
    return (centred / (std + 1e-4)).view(-1)


@StrategyFactory.register("grpo")
class GRPOStrategy(BaseStrategy):
    """Reinforcement learning from reward functions on packed ``prompt`` records.

    Options (``strategy_options``): ``group_size`` (rollouts per prompt, default 4), ``clip_eps``
    (0.2), ``kl_coef`` (0.04), ``max_new_tokens`` (64), ``temperature`` (1.0), ``top_p`` (1.0) and
    ``rewards``: a list of registered reward names, or a mapping of names to weights (default
    ``{"answer_match": 1.0}``).
    """

    data_kinds = ("prompt",)
    # The reference model is a deep copy of the policy, and FSDP-sharded modules cannot be copied.
    # Rollouts would also run a different number of forward passes on each rank.
    supports_fsdp = False
    loss_unit = "prompts"

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str = "cpu",
        group_size: int = 4,
        clip_eps: float = 0.2,
        kl_coef: float = 0.04,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        rewards: list[str] | dict[str, float] | None = None,
        **options,
    ):
        super().__init__(model, device, **options)
        if self.tokenizer is None:
            raise ValueError("the grpo strategy needs the run's tokenizer to generate rollouts")
        checks = [
            (isinstance(group_size, int) and group_size >= 2, "group_size", group_size, "an integer >= 2"),
            (0 < clip_eps < 1, "clip_eps", clip_eps, "a value in (0, 1)"),
            (kl_coef >= 0, "kl_coef", kl_coef, "a value >= 0"),
            (isinstance(max_new_tokens, int) and max_new_tokens >= 1, "max_new_tokens", max_new_tokens, "an integer >= 1"),
            (temperature > 0, "temperature", temperature, "a value > 0 (rollouts must differ)"),
            (0 < top_p <= 1, "top_p", top_p, "a value in (0, 1]"),
        ]
        for ok, name, value, expected in checks:
            if not ok:
                raise ValueError(f"strategy_options.{name} must be {expected}, got {value!r}")
        rewards = rewards if rewards is not None else {"answer_match": 1.0}
        weights = dict.fromkeys(rewards, 1.0) if isinstance(rewards, (list, tuple)) else dict(rewards)
        self.rewards = {name: (get_reward(name), float(weight)) for name, weight in weights.items()}
        self.group_size, self.clip_eps, self.kl_coef = group_size, clip_eps, kl_coef
        self.sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.ref_model = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)

    def loss_weight(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0])

    def compute_loss(self, batch: dict) -> LossOutput:
        prompts = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
        start = time.perf_counter()
        completions = self._rollouts(prompts)
        rollout_seconds = time.perf_counter() - start

        rewards = torch.tensor(
            [
                self._score(completion, prompts[index // self.group_size], batch["answers"][index // self.group_size])
                for index, completion in enumerate(completions)
            ]
        )
        advantages = group_advantages(rewards, self.group_size).to(self.device)
        input_ids, completion_mask = self._sequences(prompts, completions)

        policy = _token_log_probs(self.model, input_ids)  # (N, S-1)
        with torch.no_grad():
            reference = _token_log_probs(self.ref_model, input_ids)
        ratio = torch.exp(policy - policy.detach())
        surrogate = torch.minimum(
            ratio * advantages[:, None],
            torch.clamp(ratio, 1 - self.clip_eps, 1 + self.clip_eps) * advantages[:, None],
        )
        log_ratio = reference - policy
        kl = torch.exp(log_ratio) - log_ratio - 1  # k3 estimator, >= 0
        per_token = -(surrogate - self.kl_coef * kl)
        lengths = completion_mask.sum(-1).clamp(min=1)
        loss = ((per_token * completion_mask).sum(-1) / lengths).mean()

        metrics = {
            "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std(unbiased=False).item(),
            "kl": ((kl * completion_mask).sum() / completion_mask.sum().clamp(min=1)).item(),
            "completion_length": completion_mask.sum(-1).float().mean().item(),
            "rollout_seconds": rollout_seconds,
        }
        return LossOutput(loss, len(prompts), metrics)

    @torch.no_grad()
    def _rollouts(self, prompts: list[list[int]]) -> list:
        model = unwrap_model(self.model)
        was_training = model.training
        try:
            generator = Generator(model, self.tokenizer, fast=False)
            expanded = [prompt for prompt in prompts for _ in range(self.group_size)]
            seed = int(torch.randint(0, 2**62, (1,)).item())
            return generator.complete_batch(expanded, seed=seed, **self.sampling)
        finally:
            model.train(was_training)

    def _score(self, completion, prompt_ids: list[int], answer: str | None) -> float:
        prompt = self.tokenizer.decode(prompt_ids)
        return sum(
            weight * fn(completion.text, prompt=prompt, answer=answer, finish_reason=completion.finish_reason)
            for fn, weight in self.rewards.values()
        )

    def _sequences(self, prompts: list[list[int]], completions: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded prompt+completion ids (N, S) and a mask (N, S-1) over completion targets."""
        rows, spans = [], []
        for index, completion in enumerate(completions):
            prompt = prompts[index // self.group_size]
            generated = list(completion.token_ids)
            if completion.finish_reason == "stop":
                generated.append(self.tokenizer.im_end_id)
            rows.append(prompt + generated)
            spans.append((len(prompt), len(prompt) + len(generated)))
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width - 1))
        for index, (row, (start, end)) in enumerate(zip(rows, spans)):
            input_ids[index, : len(row)] = torch.tensor(row)
            mask[index, start - 1 : end - 1] = 1.0  # target t+1 is predicted at position t
        return input_ids.to(self.device), mask.to(self.device)


def _token_log_probs(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) for every t: (N, S-1)."""
    logits = model(input_ids[:, :-1])["logits"].float()  # (N, S-1, V)
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
