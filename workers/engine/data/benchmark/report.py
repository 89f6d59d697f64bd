"""Summaries of a benchmark run: metrics per pipeline, then ``summary.md``, ``summary.json`` and ``figure.png``.

Columns (also explained in docs/BENCHMARK.md):

- ``sentences``: sentences scored (every sentence of the split, or the first ``--limit``); ``images``: their images.
- ``oIoU``, ``mIoU``, ``P@0.5`` ... ``P@0.9``: :mod:`workers.engine.data.metrics`, in percent.
- ``no proposal``: sentences whose pipeline returned no candidate (scored IoU 0, counted).
- ``missing image``: sentences whose image was not in the folder (``--skip-missing``; scored IoU 0).
- ``s/sentence``, ``s/image``: seconds inside ``Engine.predict`` per sentence and per image (the first image
  also pays for loading the models).
- ``calls/sentence``: model calls per sentence, by model, from the engine's meter.
- ranking table: ``Hit@k`` (share of sentences whose best IoU among the top k candidates is > 0.5),
  ``oracle IoU@k`` (mean best IoU among the top k) for k = 1, 3, 5, 10, and the proposal ceiling
  (``ceiling IoU``: mean best IoU over every candidate; ``ceiling hit``: share where it is > 0.5);
  :func:`workers.engine.data.metrics.ranking_summary`. Keys in ``summary.json``: ``hit@k``,
  ``oracle_iou@k``, ``ceiling_iou``, ``ceiling_hit``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workers.engine.data.benchmark.results import SentenceResult
from workers.engine.data.metrics import HIT_KS, PREC_THRESHOLDS, iou_histogram, ranking_summary, summarize

__all__ = ["parse_config_overrides", "summarize_results", "write_report"]

HISTOGRAM_BINS = 10


def parse_config_overrides(items: Sequence[str], pipelines: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["global_local.v=0.85", "global_local.proposals.points_per_side=8"]`` as nested per-pipeline dicts.

    Values are read as JSON where they parse (numbers, booleans, null, lists, quoted strings), otherwise as
    plain strings. Raises ``ValueError`` naming an item without ``pipeline.key=value`` or for a pipeline
    that is not being run.
    """
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        pipeline, dot, path = key.strip().partition(".")
        if not sep or not dot or not path:
            raise ValueError(f"--config {item!r} is not of the form pipeline.key=value")
        if pipeline not in pipelines:
            raise ValueError(
                f"--config {item!r} names pipeline {pipeline!r}, which is not among --pipeline {list(pipelines)}"
            )
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = overrides.setdefault(pipeline, {})
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--config {item!r} sets a key inside {part!r}, which is already a value")
            node = child
        node[leaf] = value
    return overrides


def summarize_results(
    results: Sequence[SentenceResult], pipelines: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per-pipeline metrics, costs and IoU histogram (``HISTOGRAM_BINS`` bins over [0, 1])."""
    summary: dict[str, dict[str, Any]] = {}
    for pipeline in pipelines:
        rows = [r for r in results if r.pipeline == pipeline]
        metrics = summarize([(r.intersection, r.union) for r in rows])
        n = len(rows)
        images = {r.image_id for r in rows}
        seconds = sum(r.seconds for r in rows)
        calls: dict[str, float] = {}
        for r in rows:
            for model, value in r.model_calls.items():
                calls[model] = calls.get(model, 0.0) + value
        ranking = ranking_summary([r.ranked_ious for r in rows], [r.ceiling_iou for r in rows])
        summary[pipeline] = {
            **metrics,
            **ranking,
            "images": len(images),
            "no_proposal": sum(1 for r in rows if r.no_proposal),
            "missing_image": sum(1 for r in rows if r.missing_image),
            "seconds_total": seconds,
            "seconds_per_sentence": seconds / n if n else 0.0,
            "seconds_per_image": seconds / len(images) if images else 0.0,
            "model_calls_per_sentence": {m: v / n for m, v in sorted(calls.items())} if n else {},
            "iou_histogram": iou_histogram((r.iou for r in rows), HISTOGRAM_BINS),
        }
    return summary


def _markdown(
    run: Mapping[str, Any], summary: Mapping[str, Mapping[str, Any]], missing: Sequence[Mapping]
) -> str:
    precs = [f"P@0.{t}" for t in PREC_THRESHOLDS]
    head = [
        "pipeline",
        "sentences",
        "images",
        "oIoU",
        "mIoU",
        *precs,
        "no proposal",
        "missing image",
        "s/sentence",
        "s/image",
        "calls/sentence",
    ]
    lines = [
        f"# Benchmark: {run.get('dataset')} ({run.get('split_by')}) {run.get('split')}",
        "",
        f"Ground truth: {'union of polygon parts' if run.get('gt_union') else 'parts summed, foreground = 1 (docs/METHODS.md#ground-truth)'}."
        + (f" Limited to the first {run['limit']} sentences." if run.get("limit") is not None else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, s in summary.items():
        calls = ", ".join(f"{m} {v:.3g}" for m, v in s["model_calls_per_sentence"].items()) or "-"
        cells = [
            name,
            str(s["n"]),
            str(s["images"]),
            f"{s['oiou']:.2f}",
            f"{s['miou']:.2f}",
            *[f"{s[f'prec@0.{t}']:.2f}" for t in PREC_THRESHOLDS],
            str(s["no_proposal"]),
            str(s["missing_image"]),
            f"{s['seconds_per_sentence']:.3f}",
            f"{s['seconds_per_image']:.3f}",
            calls,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _ranking_markdown(summary)
    if missing:
        lines += [
            "",
            f"## Images missing from the image folder ({len(missing)}; their sentences scored IoU 0)",
            "",
        ]
        lines += [f"- image {m['image_id']}: `{m['path']}` ({len(m['sent_ids'])} sentences)" for m in missing]
    configs = run.get("configs") or {}
    if configs:
        lines += [
            "",
            "## Config overrides",
            "",
            "```json",
            json.dumps(configs, indent=2, sort_keys=True),
            "```",
        ]
    return "\n".join(lines) + "\n"


def _ranking_markdown(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The ranking table: Hit@k, oracle IoU@k, and the proposal ceiling per pipeline."""
    head = [
        "pipeline",
        *[f"Hit@{k}" for k in HIT_KS],
        *[f"oracle IoU@{k}" for k in HIT_KS],
        "ceiling IoU",
        "ceiling hit",
    ]
    lines = [
        "",
        "## Ranking: is the right mask among the first k shown?",
        "",
        "Hit@k: % of sentences whose best IoU among the top k candidates is > 0.5. Oracle IoU@k: mean best "
        "IoU among the top k. Ceiling: the best IoU over every candidate (what perfect ranking would reach); "
        "a ceiling far above oracle IoU@10 means ranking limits the pipeline, a low ceiling means proposals do.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, s in summary.items():
        cells = [
            name,
            *[f"{s.get(f'hit@{k}', 0.0):.2f}" for k in HIT_KS],
            *[f"{s.get(f'oracle_iou@{k}', 0.0):.2f}" for k in HIT_KS],
            f"{s.get('ceiling_iou', 0.0):.2f}",
            f"{s.get('ceiling_hit', 0.0):.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_figure(summary: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """PNG: IoU histogram per pipeline (left), bars of oIoU and mIoU per pipeline (middle), and Hit@k per
    pipeline against k with its ceiling hit as a dashed line (right)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    names = list(summary)
    fig = Figure(figsize=(16, 4.2), dpi=110)
    hist_ax, bar_ax, hit_ax = fig.subplots(1, 3)
    width = 1.0 / (len(names) + 1)
    for k, name in enumerate(names):
        counts = summary[name]["iou_histogram"]
        n = max(1, summary[name]["n"])
        xs = [i / HISTOGRAM_BINS + (k + 0.5) * width / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS)]
        hist_ax.bar(
            xs, [100.0 * c / n for c in counts], width=width / HISTOGRAM_BINS, align="edge", label=name
        )
    hist_ax.set_xlim(0, 1)
    hist_ax.set_xlabel("IoU")
    hist_ax.set_ylabel("% of sentences")
    hist_ax.set_title("IoU per sentence")
    hist_ax.legend(fontsize="small")
    positions = range(len(names))
    bar_ax.bar([p - 0.2 for p in positions], [summary[n]["oiou"] for n in names], width=0.4, label="oIoU")
    bar_ax.bar([p + 0.2 for p in positions], [summary[n]["miou"] for n in names], width=0.4, label="mIoU")
    bar_ax.set_xticks(list(positions), names)
    bar_ax.set_ylim(0, 100)
    bar_ax.set_ylabel("%")
    bar_ax.set_title("oIoU and mIoU")
    bar_ax.legend(fontsize="small")
    for name in names:
        s = summary[name]
        line = hit_ax.plot(
            list(HIT_KS), [s.get(f"hit@{k}", 0.0) for k in HIT_KS], marker="o", label=f"{name} Hit@k"
        )[0]
        hit_ax.axhline(s.get("ceiling_hit", 0.0), color=line.get_color(), linestyle="--", linewidth=1)
    hit_ax.set_xticks(list(HIT_KS))
    hit_ax.set_xlabel("k (candidates shown)")
    hit_ax.set_ylim(0, 100)
    hit_ax.set_ylabel("% of sentences with IoU > 0.5 in the top k")
    hit_ax.set_title("Hit@k (dashed: proposal ceiling)")
    hit_ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_report(
    out_dir: Path,
    run: Mapping[str, Any],
    summary: Mapping[str, Mapping[str, Any]],
    missing_images: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.json`` and ``figure.png`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "summary.md",
        "json": out_dir / "summary.json",
        "figure": out_dir / "figure.png",
    }
    paths["markdown"].write_text(_markdown(run, summary, missing_images), encoding="utf-8")
    document = {"run": dict(run), "pipelines": summary, "missing_images": list(missing_images)}
    paths["json"].write_text(json.dumps(document, indent=2, sort_keys=False), encoding="utf-8")
    write_figure(summary, paths["figure"])
    return paths
