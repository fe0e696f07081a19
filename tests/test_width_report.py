"""scripts/width.py's report: runs of different epoch budgets never share a cell, and the page names every machine."""

import importlib
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def record(method: str, width: int, epochs: int, seed: int, accuracy: float) -> dict:
    return {"method": method, "width": width, "epochs": epochs, "seed": seed, "accuracy": accuracy,
            "hidden_width": width, "parameters": 1, "wall_seconds": 1.0}  # fmt: skip


def test_each_budget_gets_its_own_cells():
    sys.path.insert(0, str(ROOT / "scripts"))
    width = importlib.import_module("width")
    records = [record("dfa", 16, 5, s, 80.0 + s) for s in range(3)] + [record("dfa", 16, 25, 0, 90.0)]
    records += [record("sal-kp-r", 32, 5, 0, 70.0)]
    cells, widths, methods = width.cell_table(records, 5)
    assert [r["accuracy"] for r in cells[("dfa", 16)]] == [80.0, 81.0, 82.0]
    assert widths == [16, 32] and methods == ["dfa", "sal-kp-r"]
    long_cells, long_widths, long_methods = width.cell_table(records, 25)
    assert long_widths == [16] and long_methods == ["dfa"]
    (row,) = [line for line in width.table_lines(long_cells, long_widths, long_methods) if line.startswith("| DFA")]
    assert "90.00 (n=1)" in row  # one seed, and none of the 5-epoch runs averaged in


def test_the_page_names_every_machine_its_runs_ran_on():
    sys.path.insert(0, str(ROOT / "scripts"))
    width = importlib.import_module("width")
    records = [
        record("dfa", 16, 5, 0, 80.0) | {"hardware": "AMD EPYC"},
        record("bp", 16, 5, 0, 84.0) | {"hardware": "AMD EPYC"},
    ]
    records += [record("sal-kp-r", 16, 25, 0, 85.0) | {"hardware": "Intel Xeon"}]
    assert width.machines(records) == "AMD EPYC; Intel Xeon"
