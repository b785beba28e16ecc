"""Read-only access to a stock fairseq encoder's output states, without forking its code or
running it twice (knowledge internalization reuses the states of the model's own forward pass).

- :class:`EncoderOutputCapture`: a context manager that registers a forward hook on
  ``model.encoder`` and keeps what that forward pass returned (the autograd graph included, so a
  loss on the states trains the encoder). The hook returns ``None``: the model's outputs are
  untouched.
- :func:`encoder_states`: the captured output as batch-first states ``(B, S, C)`` plus a mask
  of the real (non-pad) positions ``(B, S)``, for fairseq's two encoder output conventions:

  * ``TransformerEncoder``: a dict, ``encoder_out["encoder_out"][0]`` ``(S, B, C)`` and
    ``encoder_out["encoder_padding_mask"][0]`` ``(B, S)`` (True at padding; may be an empty list).
  * ``LSTMEncoder``: a tuple ``(x (S, B, C), final_hiddens, final_cells, encoder_padding_mask
    (S, B))``. It converts left padding to right padding internally, so its states are *not*
    position-aligned with ``src_tokens``; the mask returned here describes the states' own layout.

Callers pair states with per-token labels by order, not by position (see
``informative_dialogue.ki.loss.align_by_order``).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn


def encoder_states(encoder_out: Any) -> Tuple[Tensor, Tensor]:
    """Batch-first states and validity mask of a fairseq encoder's output.

    Returns ``(states (B, S, C), valid (B, S) bool)``; ``valid`` is True at real tokens.
    Raises TypeError for an output layout it does not know.
    """
    if isinstance(encoder_out, dict) and "encoder_out" in encoder_out:
        x = encoder_out["encoder_out"][0]  # (S, B, C)
        masks = encoder_out.get("encoder_padding_mask") or []
        pad: Optional[Tensor] = masks[0] if len(masks) > 0 else None  # (B, S)
        states = x.transpose(0, 1)
    elif isinstance(encoder_out, (tuple, list)) and len(encoder_out) == 4 and torch.is_tensor(encoder_out[0]):
        x, _, _, pad_sb = encoder_out  # x (S, B, C), mask (S, B)
        states = x.transpose(0, 1)
        pad = pad_sb.t() if pad_sb is not None else None
    else:
        raise TypeError(
            f"unknown encoder output {type(encoder_out).__name__}: expected fairseq's TransformerEncoder dict "
            "(encoder_out, encoder_padding_mask) or LSTMEncoder tuple (x, hiddens, cells, padding_mask)"
        )
    if pad is None:
        valid = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
    else:
        valid = ~pad.bool()
    if valid.shape != states.shape[:2]:
        raise ValueError(f"encoder padding mask {tuple(valid.shape)} does not match states {tuple(states.shape)}")
    return states, valid


class EncoderOutputCapture:
    """``with EncoderOutputCapture(model.encoder) as cap: out = model(**net_input)`` then
    ``cap.output`` is what the encoder returned in that pass and ``cap.states()`` its
    ``(states (B, S, C), valid (B, S))``. Exactly one encoder call is expected inside the block
    (``states()`` raises otherwise); the hook is removed on exit."""

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder
        self.output: Any = None
        self.calls = 0
        self._handle = None

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.output = output
        self.calls += 1
        return None

    def __enter__(self) -> "EncoderOutputCapture":
        self._handle = self.encoder.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def states(self) -> Tuple[Tensor, Tensor]:
        """``(states (B, S, C), valid (B, S))`` of the captured encoder call."""
        if self.calls != 1:
            raise RuntimeError(f"expected exactly one encoder forward inside the capture, saw {self.calls}")
        return encoder_states(self.output)
