"""`dualpath bench compare A.json B.json`: the numeric fields of two results side by side,
with the ratio B / A (e.g. A = basic, B = dualpath: a JCT ratio below 1 means B is faster)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from dualpath.bench.report import format_table
from dualpath.core.errors import UserInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A.json", help="baseline result")
    parser.add_argument("b", metavar="B.json", help="result to compare with the baseline")
    parser.add_argument("--all", action="store_true",
                        help="every shared numeric field (default: the headline metrics)")


HEADLINE = (
    "jct_s", "agent_jct_s_mean", "throughput_tok_s", "gen_throughput_tok_s", "ttft_s_p50",
    "ttft_s_p90", "ttft_s_p99", "ttst_s_p50", "ttst_s_p99", "tpot_s_p50", "tpot_s_p90",
    "tpot_s_p99", "slo_attainment", "capacity_aps", "cached_tokens_fraction",
    "bytes_read_pe_path", "bytes_read_de_path", "snic_max_over_avg",
)


def _load(path: str) -> dict[str, Any]:
    try:
        obj = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserInputError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path} is not JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(obj, dict):
        raise UserInputError(f"{path} does not hold a JSON object")
    return obj


def _numeric(obj: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested objects, keys joined with '.'."""
    out: dict[str, float] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[name] = float(value)
        elif isinstance(value, dict) and key != "machine":
            out.update(_numeric(value, name + "."))
    return out


def compare(a: dict[str, Any], b: dict[str, Any], all_fields: bool = False) -> list[tuple[str, float, float, float]]:
    na, nb = _numeric(a), _numeric(b)
    names = [k for k in na if k in nb] if all_fields else [k for k in HEADLINE if k in na and k in nb]
    rows = []
    for k in names:
        va, vb = na[k], nb[k]
        ratio = vb / va if va != 0 and not math.isnan(va) else math.nan
        rows.append((k, va, vb, ratio))
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    a, b = _load(args.a), _load(args.b)
    rows = compare(a, b, args.all)
    if not rows:
        raise UserInputError(f"{args.a} and {args.b} share no numeric metric")
    print(format_table(["metric", "A", "B", "B / A"], rows))
    return {"a": args.a, "b": args.b,
            "fields": {k: {"a": va, "b": vb, "ratio_b_over_a": r} for k, va, vb, r in rows}}
