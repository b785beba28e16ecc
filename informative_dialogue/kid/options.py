"""The options of knowledge-infused decoding (KID): names, defaults, help texts and validation,
in one place.

Every front end takes them from here, so a default is written once:

* fairseq (``fairseq_plugins/generation/kid_config.py``): flag ``--kid-NAME`` is field ``NAME``
  of :class:`KIDOptions` (``_`` written ``-``), with :data:`HELP` as its help text and the
  field's default;
* the Hugging Face processor (:class:`~informative_dialogue.kid.hf_processor.KIDLogitsProcessor`):
  keyword ``NAME`` or ``options=KIDOptions(...)``;
* argparse scripts (the ROCStories example, the decoding benchmark): :func:`add_kid_arguments`
  and :func:`options_from_args`;
* the keyword defaults of :func:`~informative_dialogue.kid.policy_update.kid_policy_update` and
  :class:`~informative_dialogue.kid.token_mapping.TokenMapper`;
* the shell recipes pass a ``--kid-*`` flag only when its variable is set, and read a default
  they need for a file name with :func:`default` (``python3 -m informative_dialogue.kid.options
  hops`` prints 4).

This module imports nothing but the standard library.
"""
from __future__ import annotations

import argparse
import math
import numbers
import sys
from dataclasses import MISSING, dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["KIDOptions", "HELP", "CHOICES", "MODES", "ENTITY_RULES", "SUBWORD_RULES", "SOLVERS", "SOLVER_USES", "flag",
           "default", "add_kid_arguments", "options_from_args", "unused_options"]

MODES: Tuple[str, ...] = ("kid", "little")
ENTITY_RULES: Tuple[str, ...] = ("key", "content")
SUBWORD_RULES: Tuple[str, ...] = ("first", "all")
SOLVERS: Tuple[str, ...] = ("adam", "sigma", "kv")
CHOICES: Dict[str, Tuple[str, ...]] = {"mode": MODES, "entity": ENTITY_RULES, "subwords": SUBWORD_RULES,
                                       "solver": SOLVERS}

HELP: Dict[str, str] = {
    "hops": "h_max, hops of the trie query",
    "memory": "w_max, length of the FIFO entity memory (unset: the value of --kid-hops)",
    "steps": "K, steps of the update per decoding step (0: plain decoding, for every --kid-solver): Adam "
             "steps (adam), gradient steps on the cached keys/values (kv); under --kid-solver sigma any K > 0 "
             "means one closed-form update",
    "lr": "Adam step size of the policy update (a finite number > 0; unused by --kid-solver sigma and kv)",
    "sigma": "target KL(pi || pi*) of the adaptive KL weight beta (adam), or the per-step KL budget "
             "the update spends in full (sigma) (a finite number > 0; unused by --kid-solver kv)",
    "beta": "initial KL weight beta (a finite number > 0; unused by --kid-solver sigma and kv)",
    "mode": "kid: local memory + multi-hop trie query at every step; little: Little KID, every end "
            "node of the example's trie as a fixed demonstration list",
    "entity": "generated words that enter the memory: key (content words whose stem is a key of the "
              "example's trie) or content (every non-stop-word)",
    "subwords": "reward the first subword of each knowledge word, or all its subwords",
    "allow_empty_tries": "decode anyway (plain decoding, labelled KID) when no example has any "
                         "knowledge; without it a trie file whose tries are all empty is an error",
    "solver": "policy update: adam (Algorithm 1 as written: --kid-steps Adam steps of size --kid-lr, "
              "adaptive beta aiming at --kid-sigma) or sigma (closed form: per row with demonstrations, "
              "the largest demonstration mass at KL(pi || pi*) = --kid-sigma; beta, --kid-lr, --kid-beta "
              "unused) or kv (the authors' release, PPLM-style: --kid-steps gradient steps on the decoder's cached "
              "keys/values, then a geometric mixture with the plain distribution; --kid-kv-* options; --kid-lr, "
              "--kid-sigma, --kid-beta unused)",
    "kv_step": "--kid-solver kv: step size of each gradient step on the cached keys/values (a finite number >= 0; "
               "0: no perturbation)",
    "kv_kl": "--kid-solver kv: scale of the KL(p_perturbed || p_plain) term of the loss (a finite number >= 0)",
    "kv_gamma": "--kid-solver kv: exponent of the gradient normalisation, grad / norm**gamma, norm per row and layer, "
                "running max over the steps (a finite number >= 0; 0: no normalisation)",
    "kv_mix": "--kid-solver kv: weight of the perturbed distribution in the geometric mixture "
              "p_perturbed**w * p_plain**(1 - w), renormalised (a finite number in [0, 1])",
}

# The options each solver reads (besides the ones every solver shares: hops, memory, mode, entity,
# subwords, allow_empty_tries, solver); see :func:`unused_options`.
SOLVER_USES: Dict[str, Tuple[str, ...]] = {
    "adam": ("steps", "lr", "sigma", "beta"),
    "sigma": ("steps", "sigma"),
    "kv": ("steps", "kv_step", "kv_kl", "kv_gamma", "kv_mix"),
}


def flag(name: str) -> str:
    """The command-line flag of option ``name``: ``beta`` -> ``--kid-beta``."""
    return "--kid-" + name.replace("_", "-")


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{flag(name)} / {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{flag(name)} / {name} must be a finite number > 0, got {value!r}")
    return float(value)


def _nonnegative_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{flag(name)} / {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _unit_interval(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"{flag(name)} / {name} must be a finite number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class KIDOptions:
    """Hyper-parameters of one KID decoder, validated on construction (ValueError naming the flag).

    Attributes:
        hops: h_max, query hops (>= 1).
        memory: w_max, length of the FIFO entity memory (>= 1); ``None`` on construction means
            ``hops`` (the paper's setting) and is replaced by it, so after construction it is
            always an int (``dataclasses.replace(o, hops=2)`` keeps the old ``memory``).
        steps: K, Adam steps per decoding step (0: plain decoding).
        lr: Adam step size (finite, > 0).
        sigma: target KL of the adaptive beta (finite, > 0).
        beta: initial KL weight of every hypothesis (finite, > 0).
        mode: ``kid`` (memory + multi-hop query, Algorithm 2) or ``little`` (Little KID,
            appendix A.3: every end node of the example's trie, no dynamic query).
        entity: which completed words enter the memory: ``key`` (content words whose stem
            is a key of the example's trie) or ``content`` (every content word).
        subwords: ``first`` or ``all`` sub-tokens of each knowledge word are demonstrations
            (the :class:`~informative_dialogue.kid.token_mapping.TokenMapper` must agree).
        allow_empty_tries: when every trie is empty, decode plainly (with a warning) instead
            of raising.
        solver: the policy update: ``adam`` (Algorithm 1 as written,
            :func:`~informative_dialogue.kid.policy_update.kid_policy_update`) or ``sigma``
            (:func:`~informative_dialogue.kid.sigma_solver.sigma_solve`: KL(pi || pi*) =
            ``sigma`` on every row with demonstrations; ``beta`` is left unchanged and ``lr``
            and ``beta`` are unused; ``steps`` only says off (0) or on) or ``kv`` (the authors'
            release: :func:`~informative_dialogue.kid.kv_update.kv_perturbation` on the decoder's
            cached keys/values, ``steps`` gradient steps, then
            :func:`~informative_dialogue.kid.kv_update.geometric_mix`; ``lr``, ``sigma`` and ``beta``
            unused).
        kv_step: ``kv``: step size of each gradient step (finite, >= 0; 0: zero perturbation).
        kv_kl: ``kv``: scale of KL(p_perturbed || p_plain) in the loss (finite, >= 0).
        kv_gamma: ``kv``: the gradient is divided by its norm (per row and layer, running max over
            the steps) to this power (finite, >= 0).
        kv_mix: ``kv``: weight of the perturbed distribution in the geometric mixture (finite,
            in [0, 1]; 0: plain decoding, 1: the perturbed distribution alone).
    """

    hops: int = 4
    memory: Optional[int] = None
    steps: int = 3
    lr: float = 0.1
    sigma: float = 0.02
    beta: float = 1.0
    mode: str = "kid"
    entity: str = "key"
    subwords: str = "first"
    allow_empty_tries: bool = False
    solver: str = "adam"
    kv_step: float = 0.01
    kv_kl: float = 0.01
    kv_gamma: float = 1.5
    kv_mix: float = 0.99

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise in place once
        put(self, "hops", _integer("hops", self.hops, 1))
        put(self, "memory", self.hops if self.memory is None else _integer("memory", self.memory, 1))
        put(self, "steps", _integer("steps", self.steps, 0))
        for name in ("lr", "sigma", "beta"):
            put(self, name, _positive_finite(name, getattr(self, name)))
        for name in ("kv_step", "kv_kl", "kv_gamma"):
            put(self, name, _nonnegative_finite(name, getattr(self, name)))
        put(self, "kv_mix", _unit_interval("kv_mix", self.kv_mix))
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{flag(name)} / {name} must be one of {', '.join(allowed)}, got {value!r}")
        if not isinstance(self.allow_empty_tries, bool):
            raise ValueError(f"{flag('allow_empty_tries')} / allow_empty_tries must be a bool, "
                             f"got {self.allow_empty_tries!r}")


def default(name: str) -> Any:
    """The default of option ``name`` (``None`` for ``memory``: it follows ``hops``)."""
    for f in fields(KIDOptions):
        if f.name == name:
            return f.default
    raise KeyError(f"KIDOptions has no option {name!r}")


def unused_options(options: KIDOptions) -> List[str]:
    """The flags of ``options`` set away from their default that ``options.solver`` ignores (in
    field order), e.g. ``["--kid-lr", "--kid-beta"]`` for ``KIDOptions(solver="sigma", lr=0.5,
    beta=2)``; a front end warns with them (:data:`SOLVER_USES` says which solver reads what)."""
    tunable = {name for uses in SOLVER_USES.values() for name in uses}
    used = SOLVER_USES[options.solver]
    return [flag(f.name) for f in fields(KIDOptions)
            if f.name in tunable and f.name not in used and getattr(options, f.name) != f.default]


def add_kid_arguments(parser: argparse.ArgumentParser, names: Optional[Sequence[str]] = None) -> None:
    """Add ``--kid-NAME`` for every option (or those in ``names``) to an argparse parser, with
    the defaults, types, choices and help texts of :class:`KIDOptions`."""
    for f in fields(KIDOptions):
        if names is not None and f.name not in names:
            continue
        value = f.default
        assert value is not MISSING
        if f.name == "allow_empty_tries":
            parser.add_argument(flag(f.name), action="store_true", help=HELP[f.name])
        elif f.name in CHOICES:
            parser.add_argument(flag(f.name), choices=CHOICES[f.name], default=value, help=HELP[f.name])
        else:
            kind = int if f.name in ("hops", "memory", "steps") else float
            parser.add_argument(flag(f.name), type=kind, default=value, help=HELP[f.name])


def options_from_args(args: argparse.Namespace, **overrides: Any) -> KIDOptions:
    """:class:`KIDOptions` from the ``kid_NAME`` attributes of parsed arguments (options the
    parser does not have keep their defaults), then ``overrides``."""
    values = {f.name: getattr(args, "kid_" + f.name) for f in fields(KIDOptions) if hasattr(args, "kid_" + f.name)}
    values.update(overrides)
    return KIDOptions(**values)


if __name__ == "__main__":  # the shell recipes' way to read a default: python3 -m ... hops
    for _name in sys.argv[1:]:
        print(default(_name))
