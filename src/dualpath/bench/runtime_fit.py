"""The CPU fits of `runtime_profile`: pure arithmetic on the measured runs' rows.

`fit_cpu` turns the runs `runtime_profile._run_row` recorded into the simulator's CPU
rates, each fitted (non-negative least squares, `_fit`) where its work was measured
directly; no I/O, no clocks, so the fits can be redone from a hardware file's
`_profile_runs` and tested on synthetic runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dualpath.sim.cost import attention_pairs


def _slope(values: list[float]) -> float:
    """Least-squares slope of sorted values against their rank."""
    ys = sorted(values)
    n = len(ys)
    mx = (n - 1) / 2
    my = sum(ys) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sxx


def _fit(rows: Sequence[Sequence[float]], ys: Sequence[float], relative: bool = False) -> list[float]:
    """Non-negative least squares y = Σ c_j x_j: a fit with a negative coefficient drops
    that column (its coefficient is 0) and is redone over the rest. `relative`: minimise
    the relative errors (each row divided by its y > 0), so a small run counts as much as a
    big one (its shape, e.g. batch 1, is as much a calibration point)."""
    import numpy as np

    a = np.array(rows, dtype=float)
    y = np.array(ys, dtype=float)
    if relative:
        if (y <= 0).any():
            raise ValueError("a relative fit needs every measured value > 0")
        a, y = a / y[:, None], np.ones_like(y)
    active = list(range(a.shape[1]))
    coef = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], y, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return [float(c) for c in coef]


def fit_cpu(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The CPU rates from the runs' rows, each where its work was measured directly:

    - prefill compute: the prefill engine's forward CPU (its loop thread) over the forwards'
      (count, Σ context, Σ new, Σ query-key pairs), one forward per turn (the prefill runs);
    - reading: the engines' reader threads' CPU over the bytes they read (a ratio);
    - sending: the prefill engine's remaining CPU (beyond idle, forwards and reads: its
      sender and I/O threads) over the bytes it sent;
    - a decode step: the decode engines' step CPU (their loop thread) over (steps, Σ batch,
      Σ context);
    - the decode engines' remaining CPU (beyond idle, steps, reads and sends at the rates
      above: taking KV in, persisting, streaming tokens) over (prompt tokens into decode KV,
      tokens persisted, Σ batch); the last joins the step's per-sequence cost;
    - the front end: its CPU over (turns, tokens streamed).
    Every fit is non-negative least squares, of relative errors where the measured values are
    all directly measured CPU (forwards, steps, front end; the remainders can be near 0: of
    absolute errors); `errors` holds each fit's relative errors."""
    pre_runs = [r for r in runs if r["kind"] == "prefill" and r["pe_forwards"] == len(r["turns"])
                and r["pe_forward_cpu"] > 0]
    pre_rows = [(float(len(r["turns"])), sum(c for c, _ in r["turns"]), sum(n for _, n in r["turns"]),
                 sum(attention_pairs(c, n) for c, n in r["turns"]), r["pe_forward_cpu"])
                for r in pre_runs]
    pre = _fit([x[:4] for x in pre_rows], [x[4] for x in pre_rows], relative=True)
    read_bytes = sum(r["pe_read"] + r["de_read"] for r in runs)
    read_cpu = sum(r["pe_read_cpu"] + r["de_read_cpu"] for r in runs) / read_bytes if read_bytes else 0.0
    send_rows = [(r["pe_sent"], r["pe_busy"] - r["pe_forward_cpu"] - r["pe_read_cpu"]) for r in runs]
    (send_cpu,) = _fit([x[:1] for x in send_rows], [x[1] for x in send_rows])
    dec_rows = [(r["de_steps"], r["de_batch"], r["de_ctx"], r["de_decode_cpu"]) for r in runs
                if r["de_steps"] > 0 and r["de_decode_cpu"] > 0]
    step, seq, ctx = _fit([x[:3] for x in dec_rows], [x[3] for x in dec_rows], relative=True)
    rest_rows = [(r["into"], r["persisted"], r["de_batch"],
                  r["de_busy"] - r["de_decode_cpu"] - r["de_read_cpu"] - r["de_sent"] * send_cpu)
                 for r in runs]
    kv_into, kv_persist, per_token = _fit([x[:3] for x in rest_rows], [x[3] for x in rest_rows])
    fe_rows = [(r["fe_turns"], r["fe_tokens"], r["fe_busy"]) for r in runs if r["fe_busy"] > 0]
    fe_turn, fe_token = _fit([x[:2] for x in fe_rows], [x[2] for x in fe_rows], relative=True)
    return {
        "prefill": pre, "read_cpu_s_per_byte": read_cpu, "send_cpu_s_per_byte": send_cpu,
        "decode": (step, seq + per_token, ctx), "decode_step_seq_s": seq,
        "decode_other_per_token_s": per_token, "kv_into_s_per_token": kv_into,
        "kv_persist_s_per_token": kv_persist, "frontend": (fe_turn, fe_token),
        "errors": {"prefill": _fit_error(pre_rows, tuple(pre)),
                   "send": _fit_error(send_rows, (send_cpu,)),
                   "decode": _fit_error(dec_rows, (step, seq, ctx)),
                   "decode_rest": _fit_error(rest_rows, (kv_into, kv_persist, per_token)),
                   "frontend": _fit_error(fe_rows, (fe_turn, fe_token))},
        "prefill_forwards_match": len(pre_runs) == sum(r["kind"] == "prefill" for r in runs),
    }


def _fit_error(rows: Sequence[Sequence[float]], coef: Sequence[float]) -> list[float]:
    """Each row's relative error of the fit (rows end with the measured value)."""
    return [sum(c * x for c, x in zip(coef, r[:-1], strict=True)) / r[-1] - 1 if r[-1] > 0
            else 0.0 for r in rows]


def _rounded(values: Any) -> Any:
    if isinstance(values, (list, tuple)):
        return [_rounded(v) for v in values]
    return float(f"{values:.3g}") if isinstance(values, float) else values
