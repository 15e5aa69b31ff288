"""Aggregator speed against ByzFL and other references: same data, same process, one run.

    python benchmarks/aggregators.py                  # n = 25, d = 1,000,000, f = 5, 2 threads
    python benchmarks/aggregators.py --repeats 9      # more calls per median
    python benchmarks/aggregators.py --d 200000       # a quick look
    python benchmarks/aggregators.py --memory         # and peak extra memory per rule
    python benchmarks/aggregators.py --only krum,mda  # some rows only
    python benchmarks/aggregators.py --d 11173962     # ResNet-18's size
    python benchmarks/aggregators.py --quick          # d = 200,000, 3 calls: a minute

For each rule or pre-aggregation that ByzFL also has, ours and ByzFL's are called in
turn (A B A B ...) on the same stack after one untimed warm-up call each; the table
gives the median wall time of each over the calls, the ratio ByzFL / ours, and whether
the outputs agree (max relative difference, or the same selected inputs). ByzFL's
in-place pre-aggregators (Clipping, ARC) get a fresh copy of the stack made outside the
timer. Where ByzFL enumerates subsets (SMEA) the row says at which (f, d) it was run.

References besides ByzFL (``pip install byzfl``; its rows are skipped when absent):
``torch.median(dim=0)`` and a straightforward sort-based NumPy Bulyan (below) with this
package's exact semantics, so that the outputs must be identical.

Targets: multi-krum >= 5x ByzFL's MultiKrum with the same selection; coord-median >= 3x
torch.median and ByzFL's Median; bulyan >= 5x the NumPy reference; SMEA's power path as
fast as its exact path at the full d (within 5 %: both are one Gram pass). Every rule is
meant to be >= 1x ByzFL's; the pre-aggregations clipping and ARC write a new stack where
ByzFL's overwrite their input (which the benchmark copies for them outside the timer).

``--quick``: d = 200,000 and 3 calls each (about a minute).

The machine is shared: quote medians and ratios, and rerun when the min-max spread in a
row is wide (``--spread`` prints it). Thread counts are printed in the header: numpy's
OpenBLAS and torch's OpenMP pool each default to one thread per core.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byzshield import aggregators as agg  # noqa: E402
from byzshield.aggregators import PRE_AGGREGATIONS, build_aggregator  # noqa: E402

try:
    from byzfl.aggregators import aggregators as byzfl
    from byzfl.aggregators import preaggregators as byzfl_pre
except ImportError:  # optional
    byzfl = byzfl_pre = None


# ----------------------------------------------------------------------------- data


def make_stack(n: int, d: int, f: int, seed: int = 0) -> torch.Tensor:
    """n gradient-like rows: a shared mean plus noise; the first f rows reversed x10."""
    gen = torch.Generator().manual_seed(seed)
    stack = torch.randn(n, d, generator=gen)
    stack += torch.randn(1, d, generator=gen) * 2.0
    stack[:f] *= -10.0
    return stack


# ----------------------------------------------------------------------- references


def bulyan_numpy_reference(x: np.ndarray, f: int) -> np.ndarray:
    """Straightforward Bulyan (El Mhamdi et al. 2018) with byzshield's exact semantics."""
    n = len(x)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            diff = x[i].astype(np.float64) - x[j]
            dist[i, j] = dist[j, i] = diff @ diff
    active, chosen = list(range(n)), []
    while len(chosen) < n - 2 * f:
        k = max(len(active) - f - 2, 1)

        def key(i: int, k: int = k, active: list = active) -> tuple:
            near = np.sort([dist[i, j] for j in active if j != i])
            return (*np.cumsum(near)[k - 1 :], i)

        best = min(active, key=key)
        chosen.append(best)
        active.remove(best)
    sel = np.sort(x[sorted(chosen)], axis=0)
    theta = len(sel)
    beta = theta - 2 * f
    half = np.float32(0.5)
    med = sel[theta // 2] if theta % 2 else sel[theta // 2 - 1] * half + sel[theta // 2] * half
    gap = np.abs(sel.astype(np.float64) - med.astype(np.float64))
    rows = np.sort(np.argsort(gap, axis=0, kind="stable")[:beta], axis=0)  # ties: lower value
    kept = np.take_along_axis(sel, rows, axis=0)
    acc = np.zeros(x.shape[1])
    for t in range(beta):
        acc += kept[t]
    return (acc / beta).astype(x.dtype)


# ------------------------------------------------------------------------ timing


def median_times(
    fns: list[Callable[[], object]],
    repeats: list[int],
    setup: list[Callable[[], object] | None],
) -> list[tuple[float, float, float, object]]:
    """Interleaved (median, min, max) wall seconds of each function and its last result.

    One untimed warm-up call each first (thread pools, caches, first-touch page faults).
    ``setup[i]``, when given, makes the argument of ``fns[i]`` outside the timer.
    """
    times: list[list[float]] = [[] for _ in fns]
    results: list[object] = [None] * len(fns)
    for i, fn in enumerate(fns):
        results[i] = fn(setup[i]()) if setup[i] else fn()
    for r in range(max(repeats)):
        for i, fn in enumerate(fns):
            if r >= repeats[i]:
                continue
            arg = setup[i]() if setup[i] else None
            gc.collect()
            start = time.perf_counter()
            results[i] = fn(arg) if setup[i] else fn()
            times[i].append(time.perf_counter() - start)
    return [
        (statistics.median(t), min(t), max(t), res) for t, res in zip(times, results, strict=True)
    ]


# ------------------------------------------------------------------------ memory


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _memory_child(name: str, n: int, d: int, f: int) -> None:
    torch.set_num_threads(2)
    stack = make_stack(n, d, f)
    rules = {rule: (lambda rule=rule: build_aggregator(rule)(stack, f=f)) for rule in agg.RULES}
    rules["smea"] = lambda: build_aggregator("smea")(stack, f=2)
    rules["torch.median"] = lambda: stack.median(dim=0)
    rules["numpy-bulyan"] = lambda: bulyan_numpy_reference(stack.numpy(), f)
    if byzfl is not None:
        rules["byzfl-MultiKrum"] = lambda: byzfl.MultiKrum(f=f)(stack)
    gc.collect()
    before = _rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
        reset = True
    except OSError:
        reset = False
    rules[name]()
    peak = _rss_kib("VmHWM")
    extra = max(peak - before, 0) * 1024 if reset else float("nan")
    print(json.dumps({"extra_bytes": extra, "stack_bytes": stack.numel() * 4}))


def peak_extra_copies(name: str, n: int, d: int, f: int) -> float:
    """Peak extra memory of one call, in stacks (fresh subprocess)."""
    cmd = [sys.executable, __file__, "--memory-child", name, "--n", str(n), "--d", str(d)]
    cmd += ["--f", str(f)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return report["extra_bytes"] / report["stack_bytes"]


# ------------------------------------------------------------------------- checks


def _array(a) -> np.ndarray:
    if isinstance(a, agg.AggregateResult):
        a = a.value
    if hasattr(a, "values") and not isinstance(a, torch.Tensor):
        a = a.values
    return np.asarray(a, dtype=np.float64)


def identical(a, b) -> str:
    return "identical" if np.array_equal(_array(a), _array(b)) else "DIFFERENT"


def relative(a, b) -> str:
    a, b = _array(a), _array(b)
    err = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
    return f"rel diff {err:.1e}" + ("" if err <= 1e-5 else " (>1e-5)")


def float32_norms(stack: torch.Tensor) -> Callable[[object, object], str]:
    """Clipping rules: the relative difference next to ByzFL's float32 norm error on
    these rows (its ``torch.linalg.norm`` sums d float32 squares in float32; ours are
    float64), which it should not exceed (tests/test_aggregators_byzfl.py)."""
    exact = stack.double().norm(dim=1)
    norm_err = float(((torch.linalg.norm(stack, dim=1).double() - exact) / exact).abs().max())

    def check(ours, theirs) -> str:
        return f"{relative(ours, theirs).split(' (')[0]} (ByzFL norms {norm_err:.1e} off)"

    return check


def near_ties(stack: torch.Tensor, f: int) -> Callable[[object, object], str]:
    """NNM: rows whose outputs differ, and whether each differs only by a neighbour that
    ByzFL's float32 distances rank past an exactly nearer one within their own error
    (near ties; tests/test_aggregators_byzfl.py explains)."""

    def check(ours, theirs) -> str:
        err = relative(ours, theirs)
        a, b = torch.as_tensor(_array(ours)), torch.as_tensor(_array(theirs))
        rows = [i for i in range(len(a)) if not torch.allclose(a[i], b[i], rtol=0, atol=1e-4)]
        if not rows:
            return err
        xd = stack.double()
        sq = (xd * xd).sum(dim=1)
        exact = (sq[:, None] + sq[None, :] - 2 * xd @ xd.T).clamp_min(0).sqrt()
        theirs_dist = torch.cdist(stack, stack).double()
        k = len(stack) - f
        tied = 0
        for i in rows:
            mine = set(torch.sort(exact[i], stable=True).indices[:k].tolist())
            picked = set(torch.topk(theirs_dist[i], k, largest=False).indices.tolist())
            swapped = sorted(mine ^ picked)
            gap = exact[i, swapped].max() - exact[i, swapped].min()
            tied += bool(gap < 2 * (theirs_dist[i] - exact[i]).abs().max())
        return f"{err}; {len(rows)} rows, {tied} near ties"

    return check


def same_inputs(stack: torch.Tensor) -> Callable[[object, object], str]:
    """ByzFL's output is the mean of our selected rows, far inside the margin any other
    choice would leave (one swapped row moves the mean by >= margin)."""

    def check(ours, theirs) -> str:
        sel = ours.selected
        n = stack.shape[0]
        mean_sel = stack[sel].double().mean(dim=0)
        err = float((mean_sel - torch.as_tensor(theirs).double()).abs().max())
        others = [i for i in range(n) if i not in sel]
        if not others:
            return f"same {len(sel)} inputs" if err < 1e-4 else "DIFFERENT"
        margin = min(
            float((stack[j].double() - stack[i].double()).abs().max()) / len(sel)
            for i in sel
            for j in others
        )
        return f"same {len(sel)} inputs" if err < margin / 100 else "DIFFERENT"

    return check


# ------------------------------------------------------------------------- table


def _pre(name: str, stack: torch.Tensor, f: int, generator=None, **params):
    cls = PRE_AGGREGATIONS[name]
    stage = cls(cls.Config(**params))
    x = stack.numpy()
    out, _, _ = stage.apply(x, range(len(x)), f, generator=generator, dist=None)
    return out


def cases(stack: torch.Tensor, f: int, args) -> list[tuple]:
    """(rule, ours, reference label, reference, check, target, reference setup)."""
    n, d = stack.shape
    x = stack.numpy()
    k = n - f - 1  # ByzFL's Krum neighbour count
    rows: list[tuple] = []

    def add(rule, ours, label, ref, check, target=None, setup=None):
        rows.append((rule, ours, label, ref, check, target, setup))

    def build(name, **params):
        aggregator = build_aggregator(name, **params)
        return lambda: aggregator(stack, f=f)

    add("coord-median", build("coord-median"), "torch.median(dim=0)",
        lambda: stack.median(dim=0).values, identical, 3.0)  # fmt: skip
    add("bulyan", build("bulyan"), "NumPy sort-based", lambda: bulyan_numpy_reference(x, f),
        identical, 5.0)  # fmt: skip
    if byzfl is None:
        return rows
    fresh = stack.clone  # ByzFL's Clipping and ARC overwrite their input
    add("coord-median", build("coord-median"), "ByzFL Median", lambda: byzfl.Median()(stack),
        identical, 3.0)  # fmt: skip
    add("mean", build("mean"), "ByzFL Average", lambda: byzfl.Average()(stack), relative)
    add("trimmed-mean", build("trimmed-mean"), "ByzFL TrMean",
        lambda: byzfl.TrMean(f=f)(stack), relative)  # fmt: skip
    add("meamed", build("meamed"), "ByzFL Meamed", lambda: byzfl.Meamed(f=f)(stack), relative)
    add(f"krum (k={k})", build("krum", num_neighbours=k), "ByzFL Krum",
        lambda: byzfl.Krum(f=f)(stack), same_inputs(stack))  # fmt: skip
    add(f"multi-krum (k={k})", build("multi-krum", num_neighbours=k), "ByzFL MultiKrum",
        lambda: byzfl.MultiKrum(f=f)(stack), same_inputs(stack), 5.0)  # fmt: skip
    add("mda", build("mda"), "ByzFL MDA", lambda: byzfl.MDA(f=f)(stack), same_inputs(stack))
    add("monna", build("monna"), "ByzFL MoNNA", lambda: byzfl.MoNNA(f=f)(stack),
        same_inputs(stack))  # fmt: skip
    add("geometric-median (T=3)",
        build("geometric-median", num_iterations=3, nu=0.1, tol=0.0, init=torch.zeros(d)),
        "ByzFL GeometricMedian", lambda: byzfl.GeometricMedian()(stack), relative)  # fmt: skip

    def clipping_once():  # both start from zeros: a fresh rule each call, as ByzFL's
        return build_aggregator("centered-clipping", center=torch.zeros(d))(stack, f=f)

    add("centered-clipping", clipping_once, "ByzFL CenteredClipping",
        lambda: byzfl.CenteredClipping()(stack), float32_norms(stack))  # fmt: skip

    def caf_power():
        aggregator = build_aggregator("caf", power_iterations=1)
        return aggregator(stack, f=f, generator=torch.Generator().manual_seed(1))

    def caf_byzfl():
        with torch.random.fork_rng():
            torch.manual_seed(1)
            return byzfl.CAF(f=f)(stack)

    add("caf (power_iterations=1)", caf_power, "ByzFL CAF", caf_byzfl, relative)
    add("caf (exact)", build("caf"), "ByzFL CAF", caf_byzfl, lambda a, b: "exact eigenpairs")
    f_smea, d_smea = 2, min(d, args.smea_d)
    small = stack[:, :d_smea].contiguous()

    def smea_ours():
        aggregator = build_aggregator("smea", power_iterations=1)
        return aggregator(small, f=f_smea, generator=torch.Generator().manual_seed(2))

    def smea_byzfl():
        with torch.random.fork_rng():
            torch.manual_seed(2)
            return byzfl.SMEA(f=f_smea)(small)

    add(f"smea (power, f={f_smea}, d={d_smea:,})", smea_ours, "ByzFL SMEA", smea_byzfl,
        lambda a, b: "starts in law, not ByzFL's")  # fmt: skip
    add(f"smea (exact, f={f_smea}, d={d_smea:,})",
        lambda: build_aggregator("smea")(small, f=f_smea), "ByzFL SMEA", smea_byzfl,
        lambda a, b: "exact eigenvalues")  # fmt: skip

    def smea_whole(power):
        aggregator = build_aggregator("smea", power_iterations=power)
        return lambda: aggregator(stack, f=f_smea, generator=torch.Generator().manual_seed(2))

    # both paths spend their time in the same median and Gram pass over d (~200 ms);
    # what differs, the subsets' eigenvalues against their power steps, is < 5 ms: the
    # target allows the noise of a shared machine (rerun when it is missed)
    add(f"smea (power, f={f_smea}, d={d:,})", smea_whole(1), "our smea (exact)",
        smea_whole(None), lambda a, b: "power path / exact path", 0.95)  # fmt: skip
    # pre-aggregations (their output stacks)
    add("nnm", lambda: _pre("nnm", stack, f), "ByzFL NNM", lambda: byzfl_pre.NNM(f=f)(stack),
        near_ties(stack, f))  # fmt: skip

    def bucketing_byzfl():
        with torch.random.fork_rng():
            torch.manual_seed(3)
            return byzfl_pre.Bucketing(s=2)(stack)

    add("bucketing (s=2)",
        lambda: _pre("bucketing", stack, f, torch.Generator().manual_seed(3), bucket_size=2),
        "ByzFL Bucketing", bucketing_byzfl, relative)  # fmt: skip
    add("clipping (c=2)", lambda: _pre("clipping", stack, f, c=2.0), "ByzFL Clipping",
        lambda s: byzfl_pre.Clipping(c=2.0)(s), float32_norms(stack), setup=fresh)  # fmt: skip
    add("arc", lambda: _pre("arc", stack, f), "ByzFL ARC", lambda s: byzfl_pre.ARC(f=f)(s),
        relative, setup=fresh)  # fmt: skip
    return rows


def _blas_threads() -> str:
    try:
        import threadpoolctl
    except ImportError:
        return "blas threads: (threadpoolctl absent)"
    info = threadpoolctl.threadpool_info()
    return ", ".join(f"{i['internal_api']} {i['num_threads']}" for i in info)


def run(n: int, d: int, f: int, args) -> list[str]:
    stack = make_stack(n, d, f)
    header = [
        f"n={n} d={d:,} f={f} torch threads={torch.get_num_threads()} ({_blas_threads()}) "
        f"torch {torch.__version__} numpy {np.__version__} "
        f"byzfl {'absent' if byzfl is None else 'present'} "
        f"({platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.1f})",
        f"median of {args.repeats} calls for ours, {args.ref_repeats} for the references "
        "(1 for the ByzFL rules that take seconds), interleaved",
        "",
        f"{'rule':30s} {'ours ms':>8s}  {'reference':22s} {'ref ms':>9s} {'ratio':>7s}"
        f"  {'target':>6s}  {'agreement':24s}",
    ]
    print("\n".join(header), flush=True)
    lines = list(header)
    slow = {"ByzFL MDA", "ByzFL CAF", "ByzFL SMEA", "ByzFL NNM"}
    for rule, ours, label, ref, check, target, setup in cases(stack, f, args):
        if args.only and not any(word in rule for word in args.only.split(",")):
            continue
        ref_repeats = 1 if label in slow else args.ref_repeats
        timed = median_times([ours, ref], [args.repeats, ref_repeats], [None, setup])
        (ours_t, ours_lo, ours_hi, ours_out), (ref_t, ref_lo, ref_hi, ref_out) = timed
        ratio = ref_t / ours_t
        verdict = "" if target is None else ("ok" if ratio >= target else "MISSED")
        line = (
            f"{rule:30s} {ours_t * 1e3:8.1f}  {label:22s} {ref_t * 1e3:9.1f} {ratio:6.1f}x"
            f"  {verdict:>6s}  {check(ours_out, ref_out):24s}"
        )
        if args.spread:
            line += (
                f" ours {ours_lo * 1e3:.0f}-{ours_hi * 1e3:.0f}, "
                f"ref {ref_lo * 1e3:.0f}-{ref_hi * 1e3:.0f}"
            )
        lines.append(line)
        print(line, flush=True)
    if args.memory:
        names = [*agg.RULES, "torch.median", "numpy-bulyan"]
        names += ["byzfl-MultiKrum"] if byzfl is not None else []
        lines.append(
            "\npeak extra memory of one call (stacks): "
            + ", ".join(f"{name} {peak_extra_copies(name, n, d, f):.2f}x" for name in names)
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=25)
    parser.add_argument("--d", type=int, default=1_000_000)
    parser.add_argument("--f", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ref-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smea-d", type=int, default=100_000, help="d for the SMEA rows")
    parser.add_argument("--memory", action="store_true", help="peak extra memory per rule")
    parser.add_argument("--spread", action="store_true", help="min-max of each row's calls")
    parser.add_argument("--only", help="comma-separated rule names (substrings) to run")
    parser.add_argument("--quick", action="store_true", help="d = 200,000, 3 calls each")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.n, args.d, args.f)
        return
    if args.quick:
        args.d, args.repeats, args.ref_repeats = 200_000, 3, 3
        args.smea_d = min(args.smea_d, 20_000)
    torch.set_num_threads(args.threads)
    run(args.n, args.d, args.f, args)


if __name__ == "__main__":
    main()
