"""The pure-torch core (area layer, router, activations, feedback, learning rule, optimizer side) works in any
`nn.Module` without transformers: the modules are copied into a package of their own and used in a process where
importing transformers fails."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
CORE = ("areas.py", "routing.py", "activations.py", "feedback.py", "learning_rule.py", "optim.py")

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTransformers(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("transformers", "sal_hf", "accelerate"):
                raise ImportError(f"blocked: {name}")

    sys.meta_path.insert(0, NoTransformers())
    import torch
    from torch import nn
    from core.areas import SALAreaLinear
    from core.optim import clear_unselected_area_grads, in_place_area_sgd
    from core.routing import AreaRouter

    class Block(nn.Module):  # a researcher's own module with a routed area layer
        def __init__(self):
            super().__init__()
            self.router = AreaRouter(8, 4, 6)
            self.areas = SALAreaLinear(8, 5, 4, implementation="masked")

        def forward(self, x):
            area, _ = self.router(x)
            return self.areas(x, area), area

    torch.manual_seed(0)
    block = Block()
    x = torch.randn(3, 7, 8)  # (B, T, d): one area per token
    y, area = block(x)
    assert y.shape == (3, 7, 5) and area.shape == (3, 7)
    y.square().sum().backward()
    before = {k: w.detach().clone() for k, w in enumerate(block.areas.weights)}
    cleared = clear_unselected_area_grads(block)
    unused = set(range(4)) - set(area.flatten().tolist())
    assert cleared == 2 * len(unused), (cleared, unused)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    with in_place_area_sgd(block, optimizer):
        y, area = block.train()(x)
        y.sum().backward()
    moved = {k for k, w in enumerate(block.areas.weights) if not torch.equal(w, before[k])}
    assert moved == set(area.flatten().tolist()), (moved, area.unique())
    print("core ok", sorted(moved))
    """
)


def test_the_core_runs_in_any_module_without_transformers(tmp_path):
    package = tmp_path / "core"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in CORE:
        shutil.copy(ROOT / "sal_hf" / name, package / name)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=120, env={"PATH": ""}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "core ok" in done.stdout
