"""The peers benchmark's figures: ratios to raw onnxruntime and to the best peer, the
issue's targets met or missed, the markdown table and the plot."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from app.config import Device
from bench.common import Stats

PEERS = ("bentoml", "litserve")
NAMES = {
    "segserve-fp32": "segserve FP32",
    "segserve": "segserve default",
    "bentoml": "BentoML",
    "litserve": "LitServe",
}


def mean_stats(rounds: list[Stats]) -> Stats:
    """One Stats for per-round measurements of the same thing: the mean of each figure."""
    return Stats(
        float(np.mean([s.p50_ms for s in rounds])),
        float(np.mean([s.p95_ms for s in rounds])),
        float(np.mean([s.mean_ms for s in rounds])),
        sum(s.n for s in rounds),
    )


def summarise(
    models: dict[str, Any],
    skipped: dict[str, str],
    device: Device,
    threads: int,
    rounds: int,
    concurrency: tuple[int, ...],
) -> dict[str, Any]:
    """Pooled figures and ratios per model and server, and the targets."""
    report: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "device": device.value,
        "threads": threads,
        "rounds": rounds,
        "concurrency": list(concurrency),
        "skipped": skipped,
        "models": {},
    }
    for name, entry in models.items():
        raws = {p: mean_stats(rounds_) for p, rounds_ in entry["raw"].items()}
        rows: dict[str, Any] = {}
        for label, run in entry["runs"].items():
            latency = Stats.of(run.latencies)
            raw_p50 = raws[run.precision].p50_ms
            rps = {c: run.requests[c] / run.seconds[c] for c in concurrency}
            rows[label] = {
                "precision": run.precision,
                "latency": latency,
                "rps": rps,
                "p50_vs_raw": latency.p50_ms / raw_p50,
                "p50_vs_raw_fp32": latency.p50_ms / raws["fp32"].p50_ms,
                "overhead_ms": latency.p50_ms - raw_p50,
                "rps_vs_raw": {c: rps[c] * raw_p50 / 1000 for c in concurrency},
                "rounds": run.rounds,
            }
        peers = [rows[p] for p in PEERS if p in rows]
        if peers:
            best_p50 = min(p["latency"].p50_ms for p in peers)
            best_rps = {c: max(p["rps"][c] for p in peers) for c in concurrency}
            for row in rows.values():
                row["p50_vs_best_peer"] = row["latency"].p50_ms / best_p50
                row["rps_vs_best_peer"] = {c: row["rps"][c] / best_rps[c] for c in concurrency}
        result: dict[str, Any] = {
            "image": entry["image"],
            "file": entry["file"],
            "default_precision": entry["default_precision"],
            "raw": raws,
            "raw_rounds": entry["raw"],
            "servers": rows,
            "skipped": entry["skipped"],
        }
        if "raw_batch8" in entry:
            result["raw_batch8"] = {p: mean_stats(r) for p, r in entry["raw_batch8"].items()}
        report["models"][name] = result
    report["targets"] = targets(report)
    return report


def _target(
    model: str,
    what: str,
    row: dict[str, Any] | None,
    key: str,
    c: int | None,
    limit: float,
    at_most: bool,
    why_no_row: str,
) -> dict[str, Any]:
    """`row[key]` (`[c]` when given) against `limit`; not measured when the row or key is
    missing (ratios to the best peer exist only when a peer ran)."""
    value = None if row is None or key not in row else row[key]
    if value is not None and c is not None:
        value = value[c]
    why = why_no_row if row is None else "no peer was measured" if value is None else ""
    met = None if value is None else (value <= limit if at_most else value >= limit)
    return {
        "model": model,
        "target": what,
        "value": value,
        "limit": f"{'<=' if at_most else '>='} {limit:g}",
        "met": met,
        "why_not_measured": why,
    }


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for this run's device, each met, missed or not measured (why)."""
    rows = []
    for name, m in report["models"].items():
        servers = m["servers"]
        fp32, default = servers.get("segserve-fp32"), servers.get("segserve")
        why = {**report["skipped"], **m["skipped"]}.get("segserve", "not run")
        if report["device"] != "cuda":
            rows += [
                _target(
                    name,
                    "FP32 overhead: e2e p50 - raw p50 (ms)",
                    fp32,
                    "overhead_ms",
                    None,
                    3,
                    True,
                    "not run",
                ),
                _target(
                    name,
                    "FP32 throughput at c=4 / (1/raw)",
                    fp32,
                    "rps_vs_raw",
                    4,
                    0.95,
                    False,
                    "not run",
                ),
                _target(
                    name,
                    "default p50 / best peer's p50",
                    default,
                    "p50_vs_best_peer",
                    None,
                    0.75,
                    True,
                    why,
                ),
                _target(
                    name,
                    "default throughput at c=4 / best peer's",
                    default,
                    "rps_vs_best_peer",
                    4,
                    1.3,
                    False,
                    why,
                ),
            ]
            continue
        row = default or fp32
        if row is not None:  # raw images/s on batches of 8, as a ratio for the row
            batch8 = m["raw_batch8"][row["precision"]]
            row = {**row, "rps_vs_batch8": {32: row["rps"][32] * batch8.p50_ms / 8000}}
        rows += [
            _target(name, "HTTP p50 / raw p50 at c=1", row, "p50_vs_raw", None, 2, True, "not run"),
            _target(
                name,
                "throughput at c=32 / raw images/s on batches of 8",
                row,
                "rps_vs_batch8",
                32,
                0.7,
                False,
                "not run",
            ),
            _target(
                name,
                "segserve c=32 throughput / best peer's",
                row,
                "rps_vs_best_peer",
                32,
                1.0,
                False,
                "not run",
            ),
        ]
    return rows


def markdown(report: dict[str, Any]) -> list[str]:
    cs = report["concurrency"]
    lines = [
        f"Peers benchmark: {report['cpu_count']} CPU cores, {report['device']}, "
        f"{report['threads']} onnxruntime intra-op threads everywhere, {report['rounds']} "
        f"round(s){' (quick: a smoke test, not a measurement)' if report.get('quick') else ''}"
        ". Multipart PNG upload, palette PNG answer.",
        "",
        f"| model, image | server | precision | p50 / p95 at c=1 | p50 / raw | p50 - raw | "
        f"req/s at c={' / '.join(map(str, cs))} | c=4 / (1/raw) | p50 / best peer | "
        f"c=4 / best peer |",
        "|" + " --- |" * 10,
    ]
    for name, m in report["models"].items():
        where = f"{name} {m['image']}"
        for precision, stats in m["raw"].items():
            lines.append(
                f"| {where} | raw onnxruntime | {precision} | {stats.p50_ms:.1f} / "
                f"{stats.p95_ms:.1f} ms | 1 | 0 | {1000 / stats.p50_ms:.1f} (serial) | "
                f"1 | | |"
            )
        for label, row in m["servers"].items():
            lat, rps = row["latency"], row["rps"]
            peer = (
                f"{row['p50_vs_best_peer']:.2f} | {row['rps_vs_best_peer'][4]:.2f}"
                if "p50_vs_best_peer" in row
                else " | "
            )
            lines.append(
                f"| {where} | {NAMES[label]} | {row['precision']} | {lat.p50_ms:.1f} / "
                f"{lat.p95_ms:.1f} ms | {row['p50_vs_raw']:.2f} | "
                f"{row['overhead_ms']:.1f} ms | "
                f"{' / '.join(f'{rps[c]:.1f}' for c in cs)} | "
                f"{row['rps_vs_raw'][4]:.2f} | {peer} |"
            )
    lines += ["", "Targets:"]
    for t in report["targets"]:
        if t["met"] is None:
            verdict = f"not measured ({t['why_not_measured']})"
        else:
            verdict = f"{t['value']:.2f}, {'met' if t['met'] else 'MISSED'}"
        lines.append(f"- {t['model']}: {t['target']} {t['limit']}: {verdict}")
    for label, why in report["skipped"].items():
        lines.append(f"- {NAMES[label]} not run: {why}")
    for m in report["models"].values():
        for label, why in m["skipped"].items():
            lines.append(f"- {NAMES[label]} not run: {why}")
    return lines


def plain(value: Any) -> Any:
    """JSON-ready: dataclasses as dicts, floats rounded, keys as strings."""
    if hasattr(value, "__dataclass_fields__"):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return round(value, 4) if isinstance(value, float) else value


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.6 * len(models)), dpi=80, squeeze=False)
    cs = report["concurrency"]
    for (left, right), (name, m) in zip(axes, models.items(), strict=True):
        bars = [(f"raw {p}", s.p50_ms) for p, s in m["raw"].items()]
        bars += [(NAMES[label], row["latency"].p50_ms) for label, row in m["servers"].items()]
        left.bar(range(len(bars)), [v for _, v in bars], color="grey")
        left.set_xticks(range(len(bars)), [k for k, _ in bars], rotation=20, fontsize=8)
        left.set_ylabel("p50 latency at c=1, ms")
        left.set_title(f"{name} {m['image']}")
        for label, row in m["servers"].items():
            right.plot(cs, [row["rps"][c] for c in cs], "o-", label=NAMES[label])
        right.axhline(
            1000 / m["raw"]["fp32"].p50_ms, ls="--", lw=0.8, color="grey", label="1 / raw FP32"
        )
        right.set_xlabel("concurrent requests")
        right.set_ylabel("requests / s")
        right.set_xticks(cs)
        right.legend(fontsize=8)
    fig.suptitle(
        f"segserve and its peers, {report['cpu_count']} CPU cores, {report['device']}, "
        f"{report['threads']} intra-op threads"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
