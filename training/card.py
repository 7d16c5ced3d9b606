"""The files a person reads after training: curves and a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    epochs = range(1, len(history["loss"]) + 1)
    for ax, key, title in ((ax_loss, "loss", "Loss"), (ax_acc, "accuracy", "Accuracy")):
        ax.plot(epochs, history[key], label="train", color="#2b6cb0")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label="validation", color="#dd6b20")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_card(manifest: dict[str, Any], metrics: dict[str, Any]) -> str:
    data, model = manifest["data"], manifest["model"]
    split = data["split"]
    base = metrics["baselines"]
    lines = [
        f"# Model card: {model['name']} on {data['dataset']}",
        "",
        f"Run `{manifest['run_id']}`, edgeship {manifest['environment']['edgeship_version']}, "
        f"seed {manifest['seed']}.",
        "",
        "## Data",
        f"- Source: `{data['source']}` (sha256 `{data['sha256'][:16]}…`), {data['rows']} rows"
        + (f", dropped: {data['dropped_rows']}" if data["dropped_rows"] else ""),
        f"- Classes: {', '.join(data['labels'])}",
        f"- Split: {split['method']}, sizes {split['sizes']}"
        + (f", time ranges {split['ranges']}" if "ranges" in split else ""),
        f"- Input: shape {data['input']['shape']} {data['input']['dtype']}; preprocessing fitted "
        "on the train split only.",
        "",
        "## Intended use",
        "A small classifier meant for on-device inference (Raspberry Pi, browser) on data drawn "
        "from the same distribution as the training data. Not validated for any other use.",
        "",
        "## Metrics (test split)",
        "| model | accuracy | macro F1 |",
        "|---|---|---|",
        f"| {model['name']} | {metrics['test']['accuracy']:.4f} | {metrics['test']['macro_f1']:.4f} |",
    ]
    for name, m in base.items():
        lines.append(f"| {name} (baseline) | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |")
    lines += [f"\n**Warning:** {w}" for w in metrics.get("warnings", [])]
    lines += [
        "",
        f"Expected calibration error: {metrics['test']['ece']:.4f}. "
        f"Parameters: {metrics['params']:,}. Training wall time: {metrics['wall_time_s']:.1f} s.",
        "",
        "## Limits",
        f"- Test split of {split['sizes']['test']} rows: accuracy has a standard error of about "
        f"{_stderr(metrics['test']['accuracy'], split['sizes']['test']):.3f}.",
        "- Per-class recall below shows where it fails; classes with few test rows are noisy.",
        "",
        "| class | precision | recall | support |",
        "|---|---|---|---|",
    ]
    for label, m in metrics["test"]["per_class"].items():
        lines.append(f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['support']} |")
    return "\n".join(lines) + "\n"


def _stderr(p: float, n: int) -> float:
    return (p * (1 - p) / max(n, 1)) ** 0.5
