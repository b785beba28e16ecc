"""``fairseq-train`` for the distributed-training tests: fairseq's own ``cli_main`` (argument
parsing, ``distributed_utils.call_main``, the Trainer, checkpoints), plus a record of what this
process held, so that a test can compare ranks.

Run it where ``fairseq-train`` would run: alone (one process), or as the script of a torchrun
launch::

    torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py --dump-dir DIR DATA ... \
        --cpu --distributed-backend gloo --ddp-backend legacy_ddp

Under torchrun (``RANK`` and ``WORLD_SIZE`` in the environment) it adds what fairseq 0.12 needs on
CPU and cannot infer there (its own inference divides by ``torch.cuda.device_count()``):
``--distributed-world-size $WORLD_SIZE --distributed-rank $RANK --distributed-init-method env://
--distributed-no-spawn``; on GPUs fairseq infers the same from the environment.

``--dump-dir DIR`` (taken off the command line before fairseq sees it) makes every process write
``DIR/rank{R}.pt`` when training ends: the Trainer's model and criterion state dicts, the
criterion's state when the Trainer was built, its negative teacher (ND) if it has one, and, for every train / valid step, the logging
outputs that the Trainer handed to ``task.reduce_metrics`` after gathering them from all ranks
(raw floats, before fairseq's rounding to 3 decimals).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence


def rank_flags(argv: Sequence[str], env: Dict[str, str]) -> List[str]:
    """The flags that tie one torchrun process to fairseq's distributed set-up (none outside
    torchrun, or where the command line already names a rank)."""
    if "RANK" not in env or "WORLD_SIZE" not in env or "--distributed-rank" in argv:
        return []
    return ["--distributed-world-size", env["WORLD_SIZE"], "--distributed-rank", env["RANK"],
            "--distributed-init-method", "env://", "--distributed-no-spawn"]


def split_dump_dir(argv: Sequence[str]) -> tuple[Optional[str], List[str]]:
    """``(--dump-dir value or None, the other arguments)``."""
    args = list(argv)
    if "--dump-dir" not in args:
        return None, args
    i = args.index("--dump-dir")
    if i + 1 >= len(args):
        raise ValueError("--dump-dir needs a folder")
    return args[i + 1], args[:i] + args[i + 2:]


def _cpu_state(module) -> Dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def find_teacher(criterion) -> Optional[Any]:
    """The negative teacher of ND (``criterion.teacher``) or of a criterion composing ND
    (``criterion.nd.teacher``), else None."""
    for owner in (criterion, getattr(criterion, "nd", None)):
        teacher = getattr(owner, "teacher", None) if owner is not None else None
        if teacher is not None:
            return teacher
    return None


def _as_float(v: Any) -> float:
    return float(v.item()) if hasattr(v, "item") else float(v)


class Recorder:
    """Keeps the Trainer fairseq builds and the logging outputs of its steps."""

    def __init__(self) -> None:
        self.trainer = None
        self.initial_criterion: Dict[str, Any] = {}
        self.logs: List[Dict[str, Any]] = []
        self._phase = "train"

    def install(self) -> None:
        from fairseq.trainer import Trainer

        recorder = self
        init, reduce_and_log = Trainer.__init__, Trainer._reduce_and_log_stats
        train_step, valid_step = Trainer.train_step, Trainer.valid_step

        def recorded_init(trainer, *args, **kwargs):
            init(trainer, *args, **kwargs)
            recorder.trainer = trainer
            recorder.initial_criterion = _cpu_state(trainer.get_criterion())

        def recorded_reduce(trainer, logging_outputs, sample_size, grad_norm=None):
            if logging_outputs is not None:
                recorder.logs.append({
                    "phase": recorder._phase,
                    "num_updates": trainer.get_num_updates(),
                    "logs": [{k: _as_float(v) for k, v in log.items()} for log in logging_outputs],
                })
            return reduce_and_log(trainer, logging_outputs, sample_size, grad_norm)

        def in_phase(phase, step):
            def stepped(trainer, *args, **kwargs):
                recorder._phase = phase
                return step(trainer, *args, **kwargs)
            return stepped

        Trainer.__init__ = recorded_init
        Trainer._reduce_and_log_stats = recorded_reduce
        Trainer.train_step = in_phase("train", train_step)
        Trainer.valid_step = in_phase("valid", valid_step)

    def dump(self, folder: str) -> str:
        import torch
        import torch.distributed as dist

        trainer = self.trainer
        if trainer is None:
            raise RuntimeError("fairseq built no Trainer")
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        criterion = trainer.get_criterion()
        teacher = find_teacher(criterion)
        state = {
            "rank": rank,
            "world_size": world,
            "num_updates": trainer.get_num_updates(),
            "model": _cpu_state(trainer.get_model()),
            "criterion": _cpu_state(criterion),
            "initial_criterion": self.initial_criterion,
            "criterion_parameters": sorted(n for n, _ in criterion.named_parameters()),
            "teacher": None if teacher is None else {
                "state": _cpu_state(teacher),
                "training": teacher.training,
                "requires_grad": any(p.requires_grad for p in teacher.parameters()),
                "pid": os.getpid(),
            },
            "logs": self.logs,
        }
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"rank{rank}.pt")
        torch.save(state, path)
        return path


def main(argv: Optional[Sequence[str]] = None) -> None:
    dump_dir, args = split_dump_dir(sys.argv[1:] if argv is None else argv)
    args += rank_flags(args, dict(os.environ))
    recorder = Recorder()
    recorder.install()
    from fairseq_cli import train

    sys.argv = ["fairseq-train", *args]
    train.cli_main()
    if dump_dir:
        recorder.dump(dump_dir)


if __name__ == "__main__":
    main()
