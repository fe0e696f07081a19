"""Turn a training run's logs into PNG plots: loss, accuracy, area utilisation heat map, diagnostics.

Reads `trainer_state.json` (Trainer's `log_history`, written by `trainer.save_state()`, `sal-hf train` and every
checkpoint) or, when there is none, TensorBoard event files (`--report-to tensorboard`) under the run directory.

    python scripts/plot_run.py outputs/digits                 # PNGs into outputs/digits/plots/
    python scripts/plot_run.py outputs/digits --out docs/img  # elsewhere

Writes `loss.png`, `accuracy.png` (when the run evaluated), `areas.png` (share of training samples per area
and router over time; needs `SALDiagnosticsCallback`'s `area/router_<i>/share_<k>` logs, otherwise min / max
share lines) and `diagnostics.png` (routing churn and alignment angle with backprop, when logged).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path


SHARE = re.compile(r"area/router_(\d+)/share_(\d+)$")


def read_log_history(run: Path) -> list[dict]:
    """The run's log entries, each a dict with `step` and the logged values (Trainer's `log_history` format)."""
    if run.is_file():
        return json.loads(run.read_text())["log_history"]
    state = run / "trainer_state.json"
    if not state.is_file():
        checkpoints = sorted(
            run.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1])
        )
        state = checkpoints[-1] if checkpoints else state
    if state.is_file():
        return json.loads(state.read_text())["log_history"]
    events = sorted(run.rglob("events.out.tfevents.*"))
    if not events:
        raise FileNotFoundError(f"{run} has neither trainer_state.json (in it or a checkpoint) nor TensorBoard events.")
    return read_tensorboard(events)


def read_tensorboard(event_files: list[Path]) -> list[dict]:
    """TensorBoard scalars -> log entries. Trainer writes `train/<name>` and `eval/<name>` tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_step: dict[tuple[str, int], dict] = {}
    for directory in sorted({path.parent for path in event_files}):
        events = EventAccumulator(str(directory), size_guidance={"scalars": 0}).Reload()
        for tag in events.Tags()["scalars"]:
            split, _, name = tag.partition("/")
            key = f"eval_{name}" if split == "eval" else name
            for event in events.Scalars(tag):
                # Train and eval values of one step are separate log entries, as in log_history.
                by_step.setdefault((split, event.step), {"step": event.step})[key] = event.value
    return [by_step[key] for key in sorted(by_step, key=lambda k: (k[1], k[0] != "train"))]


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(history: list[dict], out: Path, title: str = "") -> list[Path]:
    """Write the PNGs for one run's `history` into `out`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(figure, name: str) -> None:
        figure.tight_layout()
        figure.savefig(out / name, dpi=120)
        plt.close(figure)
        written.append(out / name)

    figure, axis = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        steps, values = series(history, key)
        if steps:
            axis.plot(steps, values, marker="." if len(steps) < 50 else None, label=label)
    axis.set(xlabel="optimizer step", ylabel="cross-entropy loss", title=f"{title} loss".strip())
    axis.legend()
    save(figure, "loss.png")

    accuracy_keys = [key for key in ("eval_accuracy", "eval_balanced_accuracy") if series(history, key)[0]]
    if accuracy_keys:
        figure, axis = plt.subplots(figsize=(6, 4))
        for key in accuracy_keys:
            steps, values = series(history, key)
            axis.plot(steps, values, marker=".", label=key.removeprefix("eval_").replace("_", " "))
        axis.set(xlabel="optimizer step", ylabel="test accuracy", title=f"{title} accuracy".strip(), ylim=(0, 1))
        axis.legend()
        save(figure, "accuracy.png")

    shares: dict[int, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))  # router -> k -> step
    for entry in history:
        for key, value in entry.items():
            match = SHARE.match(key)
            if match:
                shares[int(match[1])][int(match[2])][entry["step"]] = value
    routers = sorted(shares) or sorted(
        {int(k.split("/")[1][7:]) for e in history for k in e if k.endswith("/min_share")}
    )
    if routers:
        figure, axes = plt.subplots(len(routers), 1, figsize=(8, 2.2 + 1.6 * len(routers)), squeeze=False)
        for axis, router in zip(axes[:, 0], routers):
            if shares:
                steps = sorted({s for per_area in shares[router].values() for s in per_area})
                grid = np.array([[shares[router][k].get(s, np.nan) for s in steps] for k in sorted(shares[router])])
                image = axis.imshow(
                    grid,
                    aspect="auto",
                    interpolation="nearest",
                    cmap="viridis",
                    vmin=0,
                    extent=(steps[0] - 0.5, steps[-1] + 0.5, grid.shape[0] - 0.5, -0.5),
                )
                figure.colorbar(image, ax=axis, label="share of samples")
                axis.set(
                    ylabel="area", title=f"router {router}: area utilisation (ideal 1/K = {1 / grid.shape[0]:.3f})"
                )
                axis.set_yticks(range(0, grid.shape[0], max(1, grid.shape[0] // 8)))
            else:
                for key in ("min_share", "max_share"):
                    steps, values = series(history, f"area/router_{router}/{key}")
                    axis.plot(steps, values, label=key.replace("_", " "))
                axis.set(ylabel="share", title=f"router {router}: area utilisation")
                axis.legend()
        axes[-1, 0].set_xlabel("optimizer step")
        save(figure, "areas.png")

    churn = sorted({key for entry in history for key in entry if key.endswith("/churn")})
    alignment = sorted({key for entry in history for key in entry if key.startswith("alignment/")})
    if churn or alignment:
        figure, axes = plt.subplots(1, 2, figsize=(10, 4))
        for key in churn:
            axes[0].plot(*series(history, key), label=key.split("/")[1])
        axes[0].set(xlabel="optimizer step", ylabel="share of probe samples", title="routing churn since last log")
        for key in alignment:
            axes[1].plot(*series(history, key), label=key.removeprefix("alignment/"))
        axes[1].axhline(90, color="grey", linestyle=":", linewidth=1)
        axes[1].set(xlabel="optimizer step", ylabel="degrees", title="angle between local update and BP gradient")
        for axis in axes:
            if axis.lines:
                axis.legend()
        save(figure, "diagnostics.png")
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory (or a trainer_state.json)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the PNGs (default: RUN/plots)")
    parser.add_argument("--title", default=None, help="plot title prefix (default: the run directory's name)")
    options = parser.parse_args(argv)
    history = read_log_history(options.run)
    run_dir = options.run.parent if options.run.is_file() else options.run
    written = plot_run(history, options.out or run_dir / "plots", options.title or run_dir.name)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
