"""GRPO held to TRL: the loss and its gradients on a fixed batch match `GRPOTrainer._compute_loss` within 1e-5
(both loss types, with and without the KL term, with clipping at work); the group advantages match TRL's; the
answer mask stops after the first end-of-sequence token; sampling from a tiny model gives G answers per prompt."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from trl import GRPOTrainer

from worker.grpo import answer_logps, answer_mask, group_advantages, grpo_loss, left_pad, sample_answers


def _trl_loss(logps_of, inputs, *, loss_type, beta, epsilon):
    """TRL's own `_compute_loss`, on a trainer holding only what that method reads; the per-token log-probs
    come from `logps_of()` (the same graph as ours)."""
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.__dict__.update(
        loss_type=loss_type, beta=beta, epsilon_low=epsilon, epsilon_high=epsilon, top_entropy_quantile=1.0,
        importance_sampling_level="token", off_policy_mask_threshold=None, use_vllm=False, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1, model=SimpleNamespace(training=True),
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        accelerator=SimpleNamespace(
            num_processes=1, gather=lambda x: x.reshape(-1), gather_for_metrics=lambda x: x,
            reduce=lambda x, reduction="sum": x,
        ),
        _metrics={"train": __import__("collections").defaultdict(list)},
    )  # fmt: skip
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps_of(), torch.zeros_like(inputs["mask"]), None)
    trl_inputs = {
        "prompt_ids": torch.zeros((4, 1), dtype=torch.long),
        "prompt_mask": torch.ones((4, 1), dtype=torch.long),
        "completion_ids": torch.zeros_like(inputs["mask"], dtype=torch.long),
        "completion_mask": inputs["mask"],
        "advantages": inputs["advantages"],
        "old_per_token_logps": inputs["old"],
        "ref_per_token_logps": inputs["ref"],
        "num_items_in_batch": inputs["mask"].sum(),
    }
    return trainer._compute_loss(None, trl_inputs)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_gradients_match_trl(loss_type, beta):
    torch.manual_seed(0)
    weights = torch.randn(4, 6, requires_grad=True)
    logps_of = lambda: torch.log_softmax(weights, dim=-1) * 3  # noqa: E731 - a stand-in for a model's log-probs
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
    inputs = {
        "mask": mask,
        "advantages": group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.25]), group_size=2),
        "old": (logps_of() + 0.3 * torch.randn(4, 6)).detach(),  # sampled a little off-policy: clipping at work
        "ref": (logps_of() + 0.2 * torch.randn(4, 6)).detach(),
    }
    ours = grpo_loss(
        logps_of(), inputs["old"], inputs["ref"], inputs["advantages"], mask, beta=beta, loss_type=loss_type
    )
    ours.loss.backward()
    our_grad, weights.grad = weights.grad.clone(), None
    theirs = _trl_loss(logps_of, inputs, loss_type=loss_type, beta=beta, epsilon=0.2)
    theirs.backward()
    assert ours.loss.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert torch.allclose(our_grad, weights.grad, atol=1e-5)
    assert 0 < ours.clipped < 1, "the batch must exercise the clip"
    assert (ours.kl > 0) == (beta > 0)


def test_group_advantages_as_trl_scales_them():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    advantages = group_advantages(rewards, group_size=4)
    grouped = rewards.view(-1, 4)
    expected = (rewards - grouped.mean(1).repeat_interleave(4)) / (grouped.std(1).repeat_interleave(4) + 1e-4)
    assert torch.allclose(advantages, expected)
    assert advantages[4:].abs().sum() == 0, "a group that all scored the same teaches nothing"
    assert advantages[0] > 0 > advantages[1]


def test_answer_mask_ends_after_the_first_eos():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    assert answer_mask(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_sampling_gives_a_group_per_prompt_and_logps_for_them(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    torch.manual_seed(1)
    prompts = [[1, 10, 11, 12], [1, 20]]
    samples = sample_answers(model, tokenizer, prompts, group_size=3, max_new_tokens=6, temperature=1.0)
    assert len(samples.texts) == 6 and samples.completion_ids.shape[0] == 6
    assert samples.prompt_ids[3:, -2:].tolist() == [[1, 20]] * 3 and samples.prompt_mask[3:, :2].sum() == 0
    logps = answer_logps(
        model, samples.prompt_ids, samples.prompt_mask, samples.completion_ids, samples.completion_mask, 1.0
    )
    assert logps.shape == samples.completion_ids.shape and bool((logps <= 0).all())
    # Left padding does not change what a prompt's answer is worth: the padded row scores as the unpadded one.
    alone_ids, alone_mask = left_pad([prompts[1]], 0)
    alone = answer_logps(model, alone_ids, alone_mask, samples.completion_ids[3:4], samples.completion_mask[3:4], 1.0)
    real = samples.completion_mask[3].bool()
    assert torch.allclose(alone[0][real], logps[3][real], atol=1e-4)
