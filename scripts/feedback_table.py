"""Print the markdown table of the refined-feedback suite (`benchmark.py run --suite feedback`) from its run records.

    python scripts/feedback_table.py docs/results/feedback

One row per variant, one column per dataset (and budget): test accuracy % (mean ± sample std over seeds, or
`n=1`), training accuracy, seconds per epoch and the run's wall time. Accuracies come from the records only.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from benchmark import FEEDBACK_VARIANTS, ROOT, dataset_label


def main(folder: str) -> None:
    records = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("feedback__*.json"))]
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        job = r["job"]
        column = (job["dataset"], job["epochs"], job["max_train"], job["max_test"])
        cells.setdefault(column, {}).setdefault(job["method"], []).append(r)
    columns = sorted(cells, key=lambda c: (c[0], c[1], c[2] or 10**9, c[3] or 10**9))
    heads = []
    for column in columns:
        any_record = next(iter(cells[column].values()))[0]
        reduced = column[2] is not None or column[1] < 25
        heads.append(dataset_label(column[0], any_record["sizes"], column[1], reduced))
    print("| variant | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(columns))
    for method in FEEDBACK_VARIANTS:
        row = []
        for column in columns:
            runs = cells[column].get(method, [])
            if not runs:
                row.append("-")
                continue
            accs = [100 * r["accuracy"] for r in runs]
            mean = sum(accs) / len(accs)
            spread = (
                f" ± {math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)):.2f}"
                if len(accs) > 1
                else " (n=1)"
            )
            train = sum(100 * r["train_accuracy"] for r in runs) / len(runs)
            epoch = sum(r["seconds_per_epoch"] for r in runs) / len(runs)
            wall = sum(r["wall_seconds"] for r in runs) / len(runs)
            row.append(f"{mean:.2f}{spread} (train {train:.1f}; {epoch:.1f} s/epoch; run {wall:.0f} s)")
        print(f"| {method} | " + " | ".join(row) + " |")
    print()
    print("Hardware: " + "; ".join(sorted({r["hardware"] for r in records})))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "results" / "feedback"))
