"""Robust aggregation on an (n, d) stack of vote winners (docs/design.md, section 5).

One registry of rule classes (:data:`RULES`, also :data:`AGGREGATORS`) and one of
pre-aggregations (:data:`PRE_AGGREGATIONS`); :func:`build_aggregator` builds, once per
run, an :class:`Aggregator`: pre-aggregations applied in order, then the rule, optionally
DETOX's hierarchical form (the rule inside each bucket, then the mean across buckets)::

    agg = build_aggregator("coord-median", pre=[("bucketing", {"num_buckets": 7})])
    agg.check(n, f)                              # ValueError unless the guarantee holds
    res = agg(stack, f=f, generator=g)           # g seeded from (seed, step) every step
    res.value, res.nonfinite_rows, res.selected, res.f_used

``stack`` holds the n inputs as rows (after the vote: one row per file), ``f`` is how many
of them the rule must tolerate being arbitrary (ByzShield passes c_max(q) of its
placement, DETOX q // r', the baseline q). Rules know nothing of workers or ranks.

For one call (tests, notebooks, benchmarks), ``aggregate(name, stack, f=f, pre=...,
generator=g, **params)`` builds and runs in one go, and ``preaggregate(name, stack, f=f,
**params)`` returns the stack one pre-aggregation makes.

=================  ===========================================  ======================
config name        rule                                          requirement
=================  ===========================================  ======================
coord-median       coordinate-wise median (Yin et al. 2018)      n > 2f
multi-krum         Blanchard et al. 2017                         n > 2f + 2
krum               Blanchard et al. 2017 (m = 1)                 n > 2f + 2
bulyan             El Mhamdi et al. 2018                         n >= 4f + 3
mean               plain average (not robust; f is ignored)     n >= 1
trimmed-mean       Yin et al. 2018                               n > 2f
meamed             mean around the median (Xie et al. 2018)      n > 2f
geometric-median   smoothed Weiszfeld (Pillutla et al. 2022)     n > 2f
centered-clipping  Karimireddy, He & Jaggi 2021 (stateful)       n > 2f
sign-majority      signSGD with majority vote (Bernstein 2019)   n > 2f
mda                minimum-diameter averaging (El Mhamdi 2020)   n > 2f
monna              Farhadkhani et al. 2023                       n > 2f
caf                covariance-aware filtering (Allouah 2025)     n > 2f
smea               smallest max-eigenvalue avg (Allouah 2023)    n > 2f, C(n,f) <= 2e6
=================  ===========================================  ======================

Pre-aggregations: ``bucketing`` (Karimireddy et al. 2022; shuffled with the caller's
generator), ``nnm`` (nearest-neighbour mixing, Allouah et al. 2023; n > 2f), ``clipping``
(static), ``arc`` (adaptive robust clipping, Allouah et al. 2024; n > 2f). After
bucketing the rule's requirement applies to the number of buckets.

Conventions (docs/aggregators.md has the table of where libraries disagree):

- Non-finite input: a row holding NaN or +-Inf is treated as Byzantine. It is dropped,
  the rest runs on the k finite rows with f' = max(f - k_bad, 0), and the result reports
  the dropped rows. If so many rows are non-finite that the rule is undefined even with
  f' = 0 (fewer than 3 rows for Krum and Bulyan), the mean of the finite rows is returned
  (``fallback="mean"``); with no finite row at all, zeros (``fallback="zeros"``). So a
  non-finite input never produces a non-finite output; reductions accumulate in float64.
- Outside the guarantee (``outside_guarantee=True`` and f > ``max_f(n)``) each rule runs
  its formula as is where it is defined and clamps f to the largest value where it is
  (``Rule.defined_f``); ``f_used`` reports the f the rule ran with.
- Deterministic: no global random state. Bucketing and the power-iteration variants of
  CAF/SMEA draw from the caller's ``torch.Generator`` and refuse to run without one.
  Ties are broken by the lower row index.

Implementation: NumPy on a zero-copy view of the stack, column chunk by column chunk,
over ``torch.get_num_threads()`` threads (:mod:`~byzshield.aggregators.columns`); order
statistics from comparator networks (:mod:`~byzshield.aggregators.order`); pairwise
distances from a float64 Gram matrix with a certified error bound, any decision the
bound cannot certify recomputed exactly (:mod:`~byzshield.aggregators.pairwise`).

Example::

    >>> import torch
    >>> from byzshield.aggregators import aggregate, build_aggregator
    >>> stack = torch.tensor([[1.0, 10.0], [2.0, 20.0], [1e30, -1e30]])
    >>> aggregate("coord-median", stack, f=1).value.tolist()
    [2.0, 10.0]
    >>> aggregate("mean", torch.tensor([[1.0], [float("nan")], [3.0]]), f=1).value.tolist()
    [2.0]
    >>> build_aggregator("multi-krum", pre=[("nnm", {})]).describe()
    'nnm -> multi-krum(m=n-f)'

Benchmark: ``python benchmarks/aggregators.py``; tests:
``OMP_NUM_THREADS=1 python -m pytest tests/test_aggregators.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from byzshield.aggregators._checks import check_count, check_generator
from byzshield.aggregators.coordinate import (
    CoordinateMedian,
    Meamed,
    Mean,
    SignMajority,
    TrimmedMean,
)
from byzshield.aggregators.distance import MDA, Bulyan, Krum, MoNNA, MultiKrum
from byzshield.aggregators.iterative import CenteredClipping, GeometricMedian
from byzshield.aggregators.pairwise import PairwiseDistances
from byzshield.aggregators.pre import PRE_AGGREGATIONS, Bucketing, PreAggregation
from byzshield.aggregators.reductions import across_shards, dot
from byzshield.aggregators.rows import mean_rows, nonfinite_rows, sign_rows
from byzshield.aggregators.rule import Rule
from byzshield.aggregators.spectral import CAF, SMEA

__all__ = [
    "AGGREGATORS",
    "RULES",
    "AggregateResult",
    "Aggregator",
    "aggregate",
    "build_aggregator",
    "norm",
    "preaggregate",
]

RULES: dict[str, type[Rule]] = {
    cls.name: cls
    for cls in (
        CoordinateMedian,
        MultiKrum,
        Bulyan,
        Mean,
        TrimmedMean,
        GeometricMedian,
        CenteredClipping,
        SignMajority,
        Krum,
        MDA,
        MoNNA,
        Meamed,
        CAF,
        SMEA,
    )
}
"""Config name -> rule class. The one registry: build rules through ``build_aggregator``."""

AGGREGATORS = RULES
"""The rule registry under its historical name (config name -> rule class)."""


def norm(v: Tensor) -> float:
    """|v| in float64, summed per reduction block in column order, so that a sharded
    server (:func:`column_shard`) gets the very same float as one that holds v whole."""
    a = v.detach().to(torch.float64).contiguous().numpy()
    return float(np.sqrt(dot(a, a)))


@dataclass(frozen=True)
class AggregateResult:
    """Output of an :class:`Aggregator` call (and of :func:`aggregate`).

    Attributes:
        value: the aggregate, shape (d,), same dtype as the stack; always finite.
        nonfinite_rows: rows of the stack that held NaN or +-Inf and were treated as
            Byzantine (dropped), ascending.
        selected: for selecting rules (multi-krum, krum, bulyan, mda, monna, smea), the
            stack rows they selected, ascending; None for the other rules and after a
            pre-aggregation that mixes rows (bucketing, NNM).
        f_used: the f the rule ran with (after dropping non-finite rows and, outside the
            guarantee, clamping; the smallest over buckets for the hierarchical form).
        outside_guarantee: f was above ``max_f(n)`` (only with ``outside_guarantee=True``).
        fallback: None, or "mean"/"zeros" when too few finite rows were left for the rule.
    """

    value: Tensor
    nonfinite_rows: list[int]
    selected: list[int] | None = None
    f_used: int = 0
    outside_guarantee: bool = False
    fallback: str | None = None


def _check_stack(stack: object, name: str) -> Tensor:
    if not isinstance(stack, Tensor):
        raise ValueError(f"{name}: stack must be a torch.Tensor of shape (n, d), got {type(stack)}")
    if stack.dim() != 2 or stack.shape[0] < 1 or stack.shape[1] < 1:
        raise ValueError(
            f"{name}: stack must have shape (n, d) with n, d >= 1, got {tuple(stack.shape)}"
        )
    if stack.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name}: stack must be float32 or float64, got {stack.dtype}")
    if stack.device.type != "cpu":
        raise ValueError(f"{name}: stack must be on the CPU, got {stack.device}")
    return stack.detach().contiguous()


def _smallest_bucket(buckets: Bucketing, n: int) -> int:
    if buckets.num_buckets is not None:
        return n // min(buckets.num_buckets, n)
    s = buckets.bucket_size
    return min(s, n) if n % s == 0 or n < s else min(s, n % s)


def _min_f(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


class Aggregator:
    """Pre-aggregations, then a rule (optionally per bucket, then the mean).

    Built by :func:`build_aggregator`; call it every step. Holds the rule's state
    (centered clipping's centre), nothing else between calls.
    """

    def __init__(
        self,
        rule: Rule,
        pre: Sequence[PreAggregation] = (),
        hierarchical: Bucketing | None = None,
    ):
        self.rule, self.pre, self.hierarchical = rule, tuple(pre), hierarchical

    # -- what it is ---------------------------------------------------------------------
    @property
    def needs_generator(self) -> bool:
        """True when a pre-aggregation, the bucket split or the rule draws random numbers."""
        stages = [*self.pre, self.rule, *([self.hierarchical] if self.hierarchical else [])]
        return any(stage.needs_generator for stage in stages)

    def describe(self) -> str:
        """One line for logs, e.g. ``"bucketing(s=2) -> multi-krum(m=n-f)"``."""
        rule = self.rule.describe()
        if self.hierarchical is not None:
            split = self.hierarchical.describe().removeprefix("bucketing")
            rule = f"hierarchical{split[:-1]}: {rule} per bucket, then mean)"
        return " -> ".join([*(p.describe() for p in self.pre), rule])

    def _rule_inputs(self, n: int) -> int:
        for stage in self.pre:
            n = stage.n_out(n)
        if self.hierarchical is not None:
            n = _smallest_bucket(self.hierarchical, n)
        return n

    def max_f(self, n: int) -> int:
        """Largest f for which every stage's guarantee holds with n inputs."""
        n = check_count(n, f"{self.rule.name}: n (number of inputs)", 1)
        bounds, m = [], n
        for stage in self.pre:
            bounds.append(stage.max_f(m))
            m = stage.n_out(m)
        bounds.append(self.rule.max_f(self._rule_inputs(n)))
        return _min_f(*bounds)

    def check(self, n: int, f: int) -> None:
        """Raise a one-line ValueError unless the guarantee holds for f of n inputs."""
        name = self.rule.name
        n = check_count(n, f"{name}: n (number of inputs)", 1)
        f = check_count(f, f"{name}: f (number of Byzantine inputs)", 0)
        m = n
        for stage in self.pre:
            try:
                stage.check(m, f)
            except ValueError as exc:
                raise ValueError(f"{self.describe()}: {exc}") from None
            m = stage.n_out(m)
        if self.hierarchical is not None:
            try:
                self.hierarchical.check(m, f)
            except ValueError as exc:
                raise ValueError(f"{self.describe()}: hierarchical {exc}") from None
        m = self._rule_inputs(n)
        try:
            self.rule.check(m, f)
        except ValueError as exc:
            if not self.pre and self.hierarchical is None:
                raise
            what = "smallest bucket" if self.hierarchical else "inputs after pre-aggregation"
            raise ValueError(f"{self.describe()}: the rule sees {m} ({what}); {exc}") from None

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """The rule's state as tensors (``{"rule.center": (d,)}`` for centered clipping)."""
        return {f"rule.{k}": v for k, v in self.rule.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        unknown = sorted(k for k in state if not k.startswith("rule."))
        if unknown:
            raise ValueError(f"{self.describe()}: unknown state keys {unknown}")
        self.rule.load_state_dict({k.removeprefix("rule."): v for k, v in state.items()})

    # -- one step ----------------------------------------------------------------------
    def _run_rule(self, x, rows, f, dist, generator):
        top = self.rule.defined_f(len(rows))
        if top is not None and top < 0:  # too few rows for the rule even with f = 0
            return mean_rows(x, rows), None, 0, "mean"
        f_used = f if top is None else min(f, top)
        value, selected = self.rule.core(x, rows, f_used, dist=dist, generator=generator)
        return value, selected, f_used, None

    def __call__(
        self,
        stack: Tensor,
        *,
        f: int,
        generator: torch.Generator | None = None,
        outside_guarantee: bool = False,
    ) -> AggregateResult:
        """Aggregate the rows of ``stack`` (n, d), tolerating f arbitrary rows.

        Raises:
            ValueError: bad stack, f, or generator; the guarantee fails for the stack's n
                (unless ``outside_guarantee``); a random stage got no generator.
        """
        name = self.rule.name
        stack = _check_stack(stack, name)
        n, d = stack.shape
        f = check_count(f, f"{name}: f (number of Byzantine inputs)", 0)
        check_generator(generator, name)
        if not outside_guarantee:
            self.check(n, f)
        if self.needs_generator and generator is None:
            raise ValueError(
                f"{self.describe()} draws random numbers every step: pass generator= (a "
                "torch.Generator seeded from (seed, step))"
            )
        beyond = f > self.max_f(n)
        x = stack.numpy()
        signs = self.rule.takes_signs and (self.pre or self.hierarchical is not None)
        first = self.pre[0] if self.pre else (self.rule if self.hierarchical is None else None)
        dist = None
        if self.rule.propagates_nonfinite and first is self.rule:  # no pre, no buckets
            value, selected, f_used, fallback = self._run_rule(
                x, list(range(n)), f, None, generator
            )
            finite = across_shards(np.array(np.isfinite(value).all()), np.logical_and)
            if finite:  # every row finite (on every shard's columns): the scan drops none
                out = torch.from_numpy(value)
                self.rule.observe(out)
                return AggregateResult(out, [], selected, f_used, beyond, fallback)
        if first is not None and first.uses_distances and f > 0 and not signs:
            dist = PairwiseDistances(x, range(n))  # its Gram diagonal finds NaN/Inf rows
            bad = dist.nonfinite
        else:
            bad = nonfinite_rows(x)
        rows = sorted(set(range(n)) - set(bad))
        f_eff = max(f - len(bad), 0)
        if not rows:
            value = torch.zeros(d, dtype=stack.dtype)
            return AggregateResult(value, bad, None, 0, beyond, "zeros")
        origin: dict[int, int] | None = {i: i for i in rows}  # row of x -> row of stack
        if signs:
            x, origin = sign_rows(x, rows), dict(enumerate(rows))
            rows = list(range(len(rows)))
        for stage in self.pre:
            top = stage.defined_f(len(rows))
            f_stage = f_eff if top is None else min(f_eff, top)
            x, new_rows, came_from = stage.apply(x, rows, f_stage, generator=generator, dist=dist)
            if came_from is None or origin is None:
                origin = None
            else:
                origin = {r: origin[c] for r, c in zip(new_rows, came_from, strict=True)}
            rows, dist = new_rows, None
        if self.hierarchical is None:
            value, selected, f_used, fallback = self._run_rule(x, rows, f_eff, dist, generator)
        else:
            value, selected, f_used, fallback = self._per_bucket(x, rows, f_eff, generator)
        if selected is not None:
            selected = None if origin is None else sorted(origin[i] for i in selected)
        out = torch.from_numpy(value)
        self.rule.observe(out)
        return AggregateResult(out, bad, selected, f_used, beyond, fallback)

    def _per_bucket(self, x, rows, f, generator):
        buckets = self.hierarchical.split(rows, generator)
        total = np.zeros(x.shape[1])
        selected: list[int] | None = []
        used, fallbacks = [], set()
        for bucket in buckets:
            value, sel, f_used, fallback = self._run_rule(x, list(bucket), f, None, generator)
            total += value
            selected = None if sel is None or selected is None else selected + sel
            used.append(f_used)
            fallbacks.add(fallback)
        total /= len(buckets)
        fallbacks.discard(None)
        return total.astype(x.dtype), selected, min(used), (min(fallbacks) if fallbacks else None)


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


def _construct(registry: Mapping[str, type], kind: str, name: object, params: Mapping) -> object:
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(sorted(registry))}")
    cls = registry[name]
    allowed = [fl.name for fl in dataclasses.fields(cls.Config)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"{name} has no parameter {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed) if allowed else 'none'}"
        )
    return cls(cls.Config(**params))


def _pre_item(item: object) -> PreAggregation:
    if isinstance(item, PreAggregation):
        return item
    if isinstance(item, str):
        return _construct(PRE_AGGREGATIONS, "pre-aggregation", item, {})
    if isinstance(item, Mapping) and "name" in item:
        params = {k: v for k, v in item.items() if k != "name"}
        return _construct(PRE_AGGREGATIONS, "pre-aggregation", item["name"], params)
    if isinstance(item, Sequence) and len(item) == 2 and isinstance(item[1], Mapping):
        return _construct(PRE_AGGREGATIONS, "pre-aggregation", item[0], dict(item[1]))
    raise ValueError(
        f"a pre-aggregation must be a name, (name, params) or {{'name': ..., **params}}, "
        f"got {item!r}"
    )


def build_aggregator(
    name: str,
    *,
    pre: Sequence[object] = (),
    hierarchical: Mapping[str, object] | None = None,
    **params: object,
) -> Aggregator:
    """Build the rule ``name`` with its parameters, after the pre-aggregations ``pre``.

    Args:
        name: a key of :data:`RULES`.
        pre: pre-aggregations applied in order, each a name (``"nnm"``), a pair
            ``(name, params)`` or a mapping ``{"name": ..., **params}`` (Hydra-friendly).
        hierarchical: DETOX's form, bucketing parameters (``{"num_buckets": 2}``): shuffle
            the (pre-aggregated) inputs into buckets, run the rule in each with the same
            f, average the bucket results. The original's multi-krum on DETOX is
            ``build_aggregator("multi-krum", m="n-f-2", hierarchical={"num_buckets": b})``.
        **params: the fields of the rule's nested ``Config`` (its class docstring).

    Raises:
        ValueError: unknown rule, pre-aggregation or parameter; a parameter out of range.
    """
    rule = _construct(RULES, "aggregator", name, params)
    stages = [_pre_item(item) for item in pre]
    split = None
    if hierarchical is not None:
        if not isinstance(hierarchical, Mapping):
            raise ValueError(
                f"hierarchical must be a mapping of bucketing parameters, got {hierarchical!r}"
            )
        split = _construct(PRE_AGGREGATIONS, "pre-aggregation", "bucketing", dict(hierarchical))
    return Aggregator(rule, stages, split)


# --------------------------------------------------------------------------------------
# One call
# --------------------------------------------------------------------------------------


def aggregate(
    name: str,
    stack: Tensor,
    *,
    f: int,
    pre: Sequence[object] = (),
    generator: torch.Generator | None = None,
    **params: object,
) -> AggregateResult:
    """Build the rule ``name`` for this one call and run it on ``stack``.

    ``build_aggregator(name, pre=pre, **params)(stack, f=f, generator=generator)``: for
    tests, notebooks and benchmarks; a run builds its :class:`Aggregator` once.

    Args:
        name: a key of :data:`RULES` (config name, e.g. ``"coord-median"``).
        stack: (n, d) float32 (or float64) CPU tensor of inputs, one per row.
        f: number of Byzantine inputs to tolerate.
        pre: pre-aggregations, as for :func:`build_aggregator` (median of means is
            ``"coord-median"`` with ``pre=[("bucketing", {"num_buckets": b})]``).
        generator: a torch.Generator; needed by bucketing and by CAF/SMEA with
            ``power_iterations``.
        **params: the fields of the rule's nested ``Config`` (its class docstring).

    Example::

        >>> aggregate("multi-krum", torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]]),
        ...           f=1).selected  # drops 100, averages 0..3
        [0, 1, 2, 3]

    Raises:
        ValueError: unknown rule, pre-aggregation or parameter; bad shape/dtype; the
            guarantee fails for the stack's n (``build_aggregator(...).check(n, f)``); a
            random stage without a generator.
    """
    return build_aggregator(name, pre=pre, **params)(stack, f=f, generator=generator)


def preaggregate(
    name: str,
    stack: Tensor,
    *,
    f: int,
    generator: torch.Generator | None = None,
    **params: object,
) -> Tensor:
    """The (n', d) stack the pre-aggregation ``name`` makes of ``stack`` (n, d), as a
    rule after it would read it: non-finite rows dropped first (f reduced by their count,
    as :class:`Aggregator` does), then the pre-aggregation with its parameters.

    ``bucketing``: n' = the number of buckets, each the mean of its shuffled rows (needs
    ``generator`` unless every bucket holds one row); ``nnm``: each row replaced by the
    mean of its n - f nearest rows; ``clipping``: each row scaled to norm at most ``c``;
    ``arc``: the largest rows clipped to the norm of the (n - f)-th smallest.

    Example::

        >>> rows = torch.tensor([[0.0], [1.0], [10.0]])
        >>> preaggregate("nnm", rows, f=1).tolist()
        [[0.5], [0.5], [5.5]]

    Raises:
        ValueError: unknown name or parameter, bad stack or f, the pre-aggregation's own
            requirement fails (n > 2f for nnm and arc), a random stage without generator.
    """
    stage = _construct(PRE_AGGREGATIONS, "pre-aggregation", name, params)
    stack = _check_stack(stack, name)
    n = stack.shape[0]
    f = check_count(f, f"{name}: f (number of Byzantine inputs)", 0)
    check_generator(generator, name)
    stage.check(n, f)
    x = stack.numpy()
    bad = nonfinite_rows(x)
    rows = sorted(set(range(n)) - set(bad))
    if not rows:
        return stack[:0].clone()
    f_eff = max(f - len(bad), 0)
    top = stage.defined_f(len(rows))
    f_stage = f_eff if top is None else min(f_eff, top)
    if stage.needs_generator and generator is None and stage.n_out(len(rows)) < len(rows):
        raise ValueError(
            f"{stage.describe()} draws random numbers: pass generator= (a torch.Generator "
            "seeded from (seed, step))"
        )
    dist = PairwiseDistances(x, rows) if stage.uses_distances and f_stage > 0 else None
    out, new_rows, _ = stage.apply(x, rows, f_stage, generator=generator, dist=dist)
    return torch.from_numpy(np.ascontiguousarray(out[new_rows]))
