"""``--sampling-seed-scope example``: fairseq sampling whose draws belong to each example.

With fairseq's ``Sampling`` search every step draws for all live rows of the batch from one
random stream, so a decoder that changes one example's output (KID, say) changes the draws of
every later row of the batch: two runs "with the same seed" are not paired example by example.
Under ``--sampling-seed-scope example`` the task swaps in :class:`ExampleSeededSampling`, which
draws the token of example ``i`` at step ``t`` from uniforms seeded by ``(seed, i, t)``
(:mod:`informative_dialogue.paired_sampling`), where ``i`` is the dataset index fairseq passes
the search (``sample["id"]``) and ``seed`` is fairseq's ``--seed`` (``torch.initial_seed()``
when the generator is built; fairseq-generate seeds torch before that). An example's output
then depends on its own distributions only: plain sampling and KID with the same seed differ
exactly on the examples KID changed, whatever the batch size, and ``--kid-steps 0`` still gives
plain sampling's tokens.

Top-k / top-p truncation and the score bookkeeping are fairseq's; only the draw differs: a
Gumbel-max draw over the kept tokens with per-token noise of the example's stream, instead of
``torch.multinomial`` (see :mod:`informative_dialogue.paired_sampling` for why not an
inverse-CDF draw).
"""
# no ``from __future__ import annotations``: fairseq reads the field types at run time
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from fairseq import search
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from informative_dialogue.paired_sampling import example_uniforms, gumbel_max_sample

logger = logging.getLogger(__name__)

__all__ = ["PairedSamplingConfig", "ExampleSeededSampling", "apply_sampling_seed_scope"]

SEED_SCOPES = ("run", "example")


@dataclass
class PairedSamplingConfig(FairseqDataclass):
    """The ``--sampling-seed-scope`` flag of the plugin's tasks."""

    sampling_seed_scope: ChoiceEnum(list(SEED_SCOPES)) = field(  # type: ignore[valid-type]
        default="run",
        metadata={
            "help": "run: fairseq's sampling (one random stream for the whole run, shared by the rows of "
            "a batch); example: the draws of each example come from its own stream, seeded by --seed, "
            "the example's index and the step, so two decoders with the same seed are paired example by "
            "example (needs --sampling)"
        },
    )


class ExampleSeededSampling(search.Sampling):
    """fairseq ``Sampling`` whose draw for example ``i`` at step ``t`` depends on ``(seed, i, t)`` only.

    Args:
        tgt_dict: target dictionary.
        sampling_topk: as fairseq's (-1: off).
        sampling_topp: as fairseq's (-1: off).
        seed: the run's seed.
    """

    def __init__(self, tgt_dict: Any, sampling_topk: int = -1, sampling_topp: float = -1.0, seed: int = 0) -> None:
        super().__init__(tgt_dict, sampling_topk, sampling_topp)
        self.seed = int(seed)

    @torch.jit.ignore
    def step(
        self,
        step: int,
        lprobs: Tensor,
        scores: Tensor,
        prev_output_tokens: Optional[Tensor] = None,
        original_batch_idxs: Optional[Tensor] = None,
    ):
        """``lprobs``: (bsz, beam, V); ``scores``: (bsz, beam, step); ``original_batch_idxs``: (bsz,)
        dataset indices. Returns fairseq's (scores, indices, beams), each (bsz, beam)."""
        if original_batch_idxs is None:
            raise RuntimeError("--sampling-seed-scope example needs the examples' indices (fairseq passes sample['id'])")
        bsz, beam_size, _ = lprobs.size()
        if step == 0:
            # at the first step all hypotheses are equally likely: use the first beam only
            lprobs = lprobs[:, ::beam_size, :].contiguous()
        full_shape = lprobs.shape                                      # (bsz, beam or 1, V)
        if self.sampling_topp > 0:
            kept, kept_indices = self._sample_topp(lprobs)          # sorted by probability, tail zeroed
        elif self.sampling_topk > 0:
            lprobs, kept_indices = lprobs.topk(self.sampling_topk)
            kept = lprobs.exp_()
        else:
            kept, kept_indices = lprobs.exp_(), None
        if kept_indices is not None:  # back to vocabulary order: token v meets its own noise
            kept = kept.new_zeros(full_shape).scatter_(2, kept_indices, kept)
        rows, vocab = kept.size(0) * kept.size(1), kept.size(2)
        # (bsz, beam, V): per example, step and beam slot one uniform per token; step 0 draws the
        # beam's tokens from each example's one row, later steps one token per hypothesis
        uniforms = example_uniforms(self.seed, original_batch_idxs.tolist(), step, (beam_size, vocab))
        indices_buf = gumbel_max_sample(kept.view(rows, vocab), uniforms.view(rows, -1, vocab)).view(bsz, beam_size)
        if step == 0:
            kept = kept.expand(bsz, beam_size, -1)
        scores_buf = torch.gather(kept, dim=2, index=indices_buf.unsqueeze(-1)).log_().view(bsz, -1)
        if step == 0:
            beams_buf = indices_buf.new_zeros(bsz, beam_size)
        else:
            beams_buf = torch.arange(0, beam_size).to(indices_buf).repeat(bsz, 1)
            scores_buf.add_(torch.gather(scores[:, :, step - 1], dim=1, index=beams_buf))
        return scores_buf, indices_buf, beams_buf


def apply_sampling_seed_scope(generator: Any, cfg: Any, args: Any, tgt_dict: Any) -> Any:
    """Give ``generator`` an :class:`ExampleSeededSampling` search under ``--sampling-seed-scope example``.

    Args:
        generator: a fairseq ``SequenceGenerator`` built by the task.
        cfg: the task config (``sampling_seed_scope``).
        args: the generation config (``sampling``, ``sampling_topk``, ``sampling_topp``).
        tgt_dict: the target dictionary.

    Returns:
        ``generator`` (its ``search`` replaced, or untouched under scope ``run``).

    Raises:
        ValueError: scope ``example`` without ``--sampling``.
    """
    scope = str(getattr(cfg, "sampling_seed_scope", "run"))
    if scope == "run":
        return generator
    if not getattr(args, "sampling", False):
        raise ValueError("--sampling-seed-scope example needs --sampling")
    if not hasattr(generator, "search"):
        raise ValueError(f"--sampling-seed-scope example: {type(generator).__name__} has no search to replace")
    seed = torch.initial_seed()
    generator.search = ExampleSeededSampling(
        tgt_dict, getattr(args, "sampling_topk", -1), getattr(args, "sampling_topp", -1.0), seed=seed
    )
    logger.info("sampling: each example draws from its own stream (seed %d, example index, step)", seed)
    return generator
