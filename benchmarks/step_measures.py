"""Measurement helpers of the benchmarks: wall time, tensor memory and quartiles.

- :func:`timed`: wall milliseconds of a call, device-synchronised on CUDA.
- :func:`transient_peak_bytes`: peak tensor memory allocated during a call above the level at
  its start (CUDA allocator statistics; on CPU the allocation/free events of
  ``torch.profiler(profile_memory=True)``, summed in time order).
- :func:`held_bytes`: bytes of the distinct tensor storages an object graph keeps alive.
- :func:`quartiles`: median, quartiles and IQR of a sample.
- :func:`save_random_checkpoint`: a model saved as fairseq's trainer saves it (the step-cost
  benchmark's random ND teacher).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Sequence

import numpy as np
import torch


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall milliseconds of ``fn()`` (device-synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000.0 * (time.perf_counter() - t0)


def transient_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes of tensor memory allocated during ``fn()`` above the level at its start."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return int(peak)


def held_bytes(*objs: Any) -> int:
    """Bytes of the distinct tensor storages reachable from ``objs``: tensors, numpy arrays,
    modules (parameters + buffers), optimizers (state), and, for other objects, their attributes
    one level deep (lists/tuples/dicts of those included)."""
    seen: set = set()
    total = 0

    def add_tensor(t: torch.Tensor) -> None:
        nonlocal total
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()

    def visit(o: Any, depth: int) -> None:
        nonlocal total
        if isinstance(o, torch.Tensor):
            add_tensor(o)
        elif isinstance(o, np.ndarray):
            key = ("np", o.__array_interface__["data"][0])
            if key not in seen:
                seen.add(key)
                total += o.nbytes
        elif isinstance(o, torch.nn.Module):
            for t in list(o.parameters()) + list(o.buffers()):
                add_tensor(t)
            if depth > 0:
                for v in vars(o).values():
                    if not isinstance(v, (torch.nn.Module, torch.Tensor)):
                        visit(v, depth - 1)
        elif isinstance(o, torch.optim.Optimizer):
            for st in o.state.values():
                for v in st.values():
                    if isinstance(v, torch.Tensor):
                        add_tensor(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                visit(v, depth)
        elif isinstance(o, dict):
            for v in o.values():
                visit(v, depth)
        elif depth > 0 and hasattr(o, "__dict__"):
            for v in vars(o).values():
                visit(v, depth - 1)

    for o in objs:
        visit(o, 2)
    return total


def quartiles(values: Sequence[float]) -> Dict[str, float]:
    """median, q1, q3, IQR of ``values`` (numpy's linear interpolation)."""
    q1, med, q3 = (float(x) for x in np.percentile(np.asarray(values, dtype=float), [25, 50, 75]))
    return {"median": med, "q1": q1, "q3": q3, "iqr": q3 - q1, "n": len(values)}


def save_random_checkpoint(model: torch.nn.Module, cfg: Any, path: Any, task: Any = None) -> Any:
    """Save ``model`` in the layout fairseq's trainer writes (enough for ``load_checkpoint_to_cpu``),
    with ``task.state_dict()`` as its task state (``knowledge_dialog``: the dictionaries' symbols)."""
    state = {
        "args": None, "cfg": cfg, "model": model.state_dict(), "criterion": None,
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "Adam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "task_state": task.state_dict() if task is not None else {},
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }
    torch.save(state, path)
    return path
