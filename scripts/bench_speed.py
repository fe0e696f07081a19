"""Step time of bp, dfa and sal on the same architecture, in one process, rules alternating.

One step is what SALTrainer runs per batch: ``SALTrainer.compute_loss`` (forward; for a local rule also the
output error and the local deltas), one ``backward`` (BP's full backward, or the local update), then
``optimizer.step()``, ``zero_grad(set_to_none=True)`` and the routing statistics update. The steps are driven by
a plain loop (Trainer's data loading and logging would only add noise). Variants, per architecture:

- ``bp``: K=1, backpropagation;  ``dfa``: K=1;  ``sal-1``: SAL with K=1 (= DFA plus nothing);
- ``sal-16``: K=16 areas in every hidden layer (16x the parameters, the same compute per sample), with the split
  area implementation (one matmul per non-empty area); ``sal-16-masked``: the same model with the masked one
  (every area for every sample in one matmul, no host sync; ``--area-impl split masked`` times both,
  ``SALConfig.area_implementation``). The optimizer carries SALTrainer's pre-step hook
  (``clear_unselected_area_grads``), as in training;
- ``bp-dense``: BP on a dense K=1 model widened to the parameter count of ``sal-16`` (first architecture only).
- with ``--defaults``: ``sal-1-defaults`` and ``sal-16-defaults``, today's ``SALConfig()`` learning settings
  (Kolen-Pollack feedback, dual path, identical area init, area lr / K, router lr x0.01) on the same
  architecture. The variants above pin the foundation design (fixed feedback, no shared path, independent areas,
  area lr x1) that the step-time tables of docs/PERFORMANCE.md were first measured with.

Each step runs every variant once, in turn (so slow drifts of a shared machine hit all alike); after warm-up the
median of ``--steps`` steps is reported with its inter-quartile range, the ratio to ``bp`` of the same
architecture and optimizer, a breakdown (forward / update / optimizer) and memory: on CUDA the peak allocated
during a step, on CPU the bytes of parameters + gradients + optimizer state after a step (CPU has no per-step
peak counter). The optimizer-traffic floor of ``sal-16``: bytes the optimizer must read and write for the areas a
step touches (SGD: param read + grad read + param write; AdamW: + two moments read and written), divided by the
copy bandwidth measured here.

    python scripts/bench_speed.py                               # CPU, fp32, SGD and AdamW, writes docs/PERFORMANCE.md
    python scripts/bench_speed.py --device cuda --bf16 --impl fused --area-impl split masked --out $OUT/gpu_speed.md
    python scripts/bench_speed.py --tiny --steps 3 --warmup 1   # seconds: checks the script runs
    python scripts/bench_speed.py --device cuda --bf16 --impl fused --area-impl masked --compile   # compiled step
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_name  # scripts/machine.py, beside this file
from torch.nn import functional as F


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def sync(device: str) -> float:
    """Wait for the device's queued work, then read the clock."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def optimizer_options(impl: str) -> dict:
    """`--impl` as torch.optim keyword arguments."""
    return {"foreach": True} if impl == "foreach" else {"fused": True} if impl == "fused" else {}


def area_variant(areas: int, implementation: str) -> str:
    """Variant name of the K-area SAL model: ``sal-16`` (split), ``sal-16-masked``, ``sal-16-auto``,
    ``sal-16-in-place`` (split, ``SALTrainer(in_place_area_update=True)``)."""
    return f"sal-{areas}" if implementation == "split" else f"sal-{areas}-{implementation}"


def area_variants(args, optimizer: str) -> list[str]:
    """Names of the K-area variants timed with ``optimizer``: one per ``--area-impl``, and with ``--in-place`` (plain
    SGD only) the in-place one."""
    names = [area_variant(args.areas, implementation) for implementation in args.area_impl]
    return names + ([area_variant(args.areas, "in-place")] if args.in_place and optimizer == "sgd" else [])


def dense_width(input_size: int, depth: int, num_labels: int, target: int) -> int:
    """Width h of a K=1 model input-h^depth-labels with about ``target`` parameters (no routers, no norms)."""
    # (input + 1) h + (depth - 1)(h + 1) h + (h + 1) labels = target, solved for h.
    a, b, c = depth - 1, input_size + 1 + (depth - 1) + num_labels, num_labels - target
    if a == 0:
        return round(-c / b)
    return round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))


class Variant:
    """One model with its trainer, optimizer and timings."""

    def __init__(self, name: str, config, optimizer: str, args, dtype: torch.dtype, in_place: bool = False) -> None:
        from transformers import TrainingArguments

        from sal_hf import SALForImageClassification, SALTrainer
        from sal_hf.optim import lr_scaled_parameters, scale_learning_rates

        self.name = name
        self.device = args.device
        torch.manual_seed(0)
        self.model = SALForImageClassification(config).to(device=args.device, dtype=dtype).train()
        with tempfile.TemporaryDirectory() as tmp:
            training = TrainingArguments(
                output_dir=tmp, report_to="none", use_cpu=args.device == "cpu", disable_tqdm=True, max_grad_norm=0.0
            )
            self.trainer = SALTrainer(model=self.model, args=training, in_place_area_update=in_place)
        params = list(self.model.parameters())
        extra = optimizer_options(args.impl)
        if optimizer == "sgd":
            self.trainer.optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.0, **extra)
        else:
            self.trainer.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **extra)
        # The `-defaults` variants: the lr multipliers today's config asks for (area lr / K, router lr x0.01), in param
        # groups of their own as in the optimizer SALTrainer creates. The others keep one group, as first measured.
        if name.endswith("-defaults"):
            for scale, group in lr_scaled_parameters(self.model, config).values():
                scale_learning_rates(self.trainer.optimizer, group, scale)
        # SALTrainer keeps an optimizer it is given and registers its pre-step hook on it (clear_unselected_area_grads:
        # areas no sample selected, or whose rows carried no error, get no gradient), as in training.
        self.optimizer = self.trainer.create_optimizer()
        # The forward and the local rule (what SALTrainer.compute_loss runs), compiled with --compile.
        self.compute_loss = self.trainer.compute_loss
        if args.compile:
            self.compute_loss = torch.compile(self.trainer.compute_loss, backend=args.compile)
        self.times: dict[str, list[float]] = {"step": [], "forward": [], "update": [], "optimizer": []}
        self.memory: list[int] = []
        self.touched: list[int] = []

    def step(self, batch: dict[str, torch.Tensor], record: bool) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = sync(self.device)
        with self.trainer.in_place_area_updates(self.model):  # a no-op but for the in-place variant
            loss = self.compute_loss(self.model, batch)
            t1 = sync(self.device)
            loss.backward()
            t2 = sync(self.device)
        self.optimizer.step()
        # After the pre-step hook: the areas whose gradient reached the optimizer.
        touched = sum(p.numel() * p.element_size() for p in self.model.parameters() if p.grad is not None)
        grads = touched
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_routing_statistics()
        t3 = sync(self.device)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"{self.name}: loss {loss.item()}")
        if not record:
            return
        for key, value in zip(("step", "forward", "update", "optimizer"), (t3 - t0, t1 - t0, t2 - t1, t3 - t2)):
            self.times[key].append(value)
        self.touched.append(touched)
        if self.device == "cuda":
            self.memory.append(torch.cuda.max_memory_allocated())
        else:
            state = sum(
                t.numel() * t.element_size()
                for s in self.optimizer.state.values()
                for t in s.values()
                if torch.is_tensor(t)
            )
            self.memory.append(sum(p.numel() * p.element_size() for p in self.model.parameters()) + grads + state)

    def median(self, key: str = "step") -> float:
        return statistics.median(self.times[key])

    def iqr(self) -> tuple[float, float]:
        q = statistics.quantiles(self.times["step"], n=4)
        return q[0], q[2]


class CopyProbe:
    """Memory bandwidth, measured in the same rotation as the variants (a shared machine's bandwidth drifts):
    bytes per second moved by ``dst.copy_(src)`` (one read + one write)."""

    def __init__(self, device: str, dtype: torch.dtype, megabytes: int) -> None:
        self.device = device
        self.src = torch.ones(megabytes * 2**20 // (torch.finfo(dtype).bits // 8), device=device, dtype=dtype)
        self.dst = torch.empty_like(self.src)
        self.rates: list[float] = []

    def step(self, _batch=None, record: bool = True) -> None:
        t = sync(self.device)
        self.dst.copy_(self.src)
        if record:
            self.rates.append(2 * self.src.numel() * self.src.element_size() / (sync(self.device) - t))

    def bandwidth(self) -> float:
        return statistics.median(self.rates)


class KernelFloor:
    """The bare kernels a K-area SAL step cannot avoid, timed in the same rotation: for every hidden layer's K areas
    with B/K rows each (what batch B spreads over them), the forward GEMM of every area (``F.linear``, as the split
    kernel runs it), then the update two ways:

    - ``optimizer API``: each area's gradient ``delta_k^T x_k`` written to a fresh tensor (as autograd does) and
      applied by ``torch.optim.SGD`` (fused where ``--impl fused``), as SALTrainer's path must;
    - ``in place``: ``W_k.addmm_(delta_k^T, x_k, alpha=-lr)``, the update fused into the weights: no gradient
      tensor, outside the optimizer API (no clipping, accumulation, DDP or AdamW), the least a step can move.

    No routing, no output layer, no local rule, no Python around them: a floor for sal-16's SGD step."""

    def __init__(self, sizes: list[int], areas: int, args, dtype: torch.dtype) -> None:
        rows = args.batch_size // areas
        options = {"device": args.device, "dtype": dtype}
        self.layers = [
            (
                [torch.randn(fan_out, fan_in, **options) * fan_in**-0.5 for _ in range(areas)],
                [torch.randn(rows, fan_in, **options) for _ in range(areas)],
                [torch.randn(rows, fan_out, **options) * 1e-3 for _ in range(areas)],
            )
            for fan_in, fan_out in zip(sizes[:-1], sizes[1:])
        ]
        weights = [w for layer in self.layers for w in layer[0]]
        self.optimizer = torch.optim.SGD(weights, lr=1e-4, **optimizer_options(args.impl))
        self.device = args.device
        self.times: dict[str, list[float]] = {"forward": [], "optimizer API": [], "in place": []}

    def step(self, _batch=None, record: bool = True) -> None:
        t0 = sync(self.device)
        for weights, inputs, _ in self.layers:
            for w, x in zip(weights, inputs):
                F.linear(x, w)
        t1 = sync(self.device)
        for weights, inputs, deltas in self.layers:
            for w, x, d in zip(weights, inputs, deltas):
                w.grad = d.t().mm(x)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t2 = sync(self.device)
        for weights, inputs, deltas in self.layers:
            for w, x, d in zip(weights, inputs, deltas):
                w.addmm_(d.t(), x, alpha=-1e-4)
        t3 = sync(self.device)
        if record:
            for key, value in zip(self.times, (t1 - t0, t2 - t1, t3 - t2)):
                self.times[key].append(value)

    def medians(self) -> dict[str, float]:
        return {key: statistics.median(values) for key, values in self.times.items()}


def bench(arch: str, hidden: list[int], optimizer: str, args, dtype: torch.dtype, dense: bool) -> dict:
    from sal_hf import SALConfig

    # The area design these timings were measured with (SALConfig's defaults before docs/ABLATIONS.md).
    # Fixed feedback, as before Kolen-Pollack became SAL's default (the step timings of docs/PERFORMANCE.md).
    common = {"input_size": args.input_size, "num_labels": 10, "dual_path": False, "area_init": "independent"}
    common.update(area_lr_scale=1.0, feedback_alignment="fixed")
    configs = {
        "bp": SALConfig(**common, hidden_sizes=hidden, num_areas=1, learning_rule="bp"),
        "dfa": SALConfig(**common, hidden_sizes=hidden, num_areas=1, learning_rule="dfa"),
        "sal-1": SALConfig(**common, hidden_sizes=hidden, num_areas=1, learning_rule="sal"),
    }
    for name, implementation in zip(area_variants(args, optimizer), [*args.area_impl, "split"]):
        configs[name] = SALConfig(
            **common, hidden_sizes=hidden, num_areas=args.areas, learning_rule="sal", area_implementation=implementation
        )
    if args.defaults:  # today's SALConfig() learning settings: only the shapes are given
        shapes = {"input_size": args.input_size, "num_labels": 10, "hidden_sizes": hidden}
        configs["sal-1-defaults"] = SALConfig(**shapes, num_areas=1)
        configs[f"sal-{args.areas}-defaults"] = SALConfig(**shapes, num_areas=args.areas)
    if dense:
        target = configs[area_variant(args.areas, args.area_impl[0])]
        from scale import expected_parameters

        width = dense_width(args.input_size, len(hidden), 10, expected_parameters(target)[0])
        configs["bp-dense"] = SALConfig(**common, hidden_sizes=[width] * len(hidden), num_areas=1, learning_rule="bp")
    variants = [
        Variant(name, config, optimizer, args, dtype, in_place=name.endswith("-in-place"))
        for name, config in configs.items()
    ]
    probe = CopyProbe(args.device, dtype, 16 if args.tiny else 128)
    kernels = KernelFloor([args.input_size, *hidden], args.areas, args, dtype)
    generator = torch.Generator().manual_seed(0)
    batches = [
        {
            "pixel_values": torch.rand(args.batch_size, args.input_size, generator=generator).to(args.device, dtype),
            "labels": torch.randint(0, 10, (args.batch_size,), generator=generator).to(args.device),
        }
        for _ in range(8)
    ]
    for step in range(args.warmup + args.steps):
        for variant in [*variants, probe, kernels]:
            variant.step(batches[step % len(batches)], record=step >= args.warmup)
    base = variants[0].median()
    rows = []
    for variant in variants:
        lo, hi = variant.iqr()
        rows.append(
            {
                "arch": arch,
                "optimizer": optimizer,
                "variant": variant.name,
                "parameters": variant.model.num_parameters(),
                "hidden": [layer.areas.out_features for layer in variant.model.sal.layers],
                "step_ms": 1e3 * variant.median(),
                "iqr_ms": [1e3 * lo, 1e3 * hi],
                "ratio_to_bp": variant.median() / base,
                "forward_ms": 1e3 * variant.median("forward"),
                "update_ms": 1e3 * variant.median("update"),
                "optimizer_ms": 1e3 * variant.median("optimizer"),
                "memory_bytes": max(variant.memory),
                "touched_bytes": statistics.median(variant.touched),
            }
        )
    del variants
    return {"rows": rows, "bandwidth": probe.bandwidth(), "kernels": kernels.medians()}


def write_markdown(results: list[dict], floors: list[dict], args, path: Path, command: str) -> None:
    memory_label = "peak allocated in a step" if args.device == "cuda" else "params + grads + optimizer state"
    lines = [
        f"## Step time: {device_name(args.device)}, {'bf16' if args.bf16 else 'fp32'}",
        "",
        f"torch {torch.__version__}; batch {args.batch_size}; median of {args.steps} steps after {args.warmup} "
        f"warm-up steps, all variants alternating in one process; optimizer implementation `{args.impl}`; "
        f"{f'compute_loss compiled (`torch.compile`, backend `{args.compile}`); ' if args.compile else ''}"
        f"copy bandwidth (median, measured in the rotation) "
        f"{statistics.median(r['bandwidth'] for r in results) / 1e9:.1f} GB/s. Reproduce: `{command}`",
        "",
        f"| arch | optimizer | variant | params | step ms (IQR) | x bp | forward ms | update ms | optimizer ms | "
        f"memory MB ({memory_label}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (row for result in results for row in result["rows"]):
        lines.append(
            f"| {r['arch']} {'-'.join(map(str, [args.input_size, *r['hidden'], 10]))} | {r['optimizer']} | "
            f"{r['variant']} | {r['parameters'] / 1e6:.1f}M | {r['step_ms']:.1f} ({r['iqr_ms'][0]:.1f}-"
            f"{r['iqr_ms'][1]:.1f}) | {r['ratio_to_bp']:.2f} | {r['forward_ms']:.1f} | {r['update_ms']:.1f} | "
            f"{r['optimizer_ms']:.1f} | {r['memory_bytes'] / 2**20:.0f} |"
        )
    lines += ["", "Targets (ratio to the K=1 BP step of the same architecture and optimizer):", ""]
    for result in results:
        rows = {r["variant"]: r for r in result["rows"]}
        arch, opt = result["rows"][0]["arch"], result["rows"][0]["optimizer"]
        limit = 1.5 if opt == "sgd" else 3.0
        checks = [
            (f"dfa <= 0.75x bp: {rows['dfa']['ratio_to_bp']:.2f}x", rows["dfa"]["ratio_to_bp"] <= 0.75),
            (f"sal-1 <= 0.75x bp: {rows['sal-1']['ratio_to_bp']:.2f}x", rows["sal-1"]["ratio_to_bp"] <= 0.75),
        ]
        for name in area_variants(args, opt):
            big = rows[name]
            checks.append((f"{name} <= {limit}x bp: {big['ratio_to_bp']:.2f}x", big["ratio_to_bp"] <= limit))
            if "bp-dense" in rows:
                speedup = rows["bp-dense"]["step_ms"] / big["step_ms"]
                checks.append((f"bp-dense / {name} >= 3: {speedup:.2f}x", speedup >= 3.0))
        text = "; ".join(f"{label} ({'met' if ok else 'NOT met'})" for label, ok in checks)
        lines.append(f"- {arch}, {opt}: {text}")
    lines += [
        "",
        f"Optimizer-traffic floor of the {args.areas}-area SAL model: the bytes the optimizer must move for the areas a step "
        "touches (SGD 3 passes: read param and grad, write param; AdamW 7: also read and write both moments) over "
        "the copy bandwidth, next to the optimizer step actually measured:",
        "",
    ]
    for floor in floors:
        lines.append(
            f"- {floor['arch']}, {floor['optimizer']}, {floor['variant']}: {floor['touched_mb']:.0f} MB of touched "
            f"parameters per step, {floor['passes']} passes -> floor {floor['floor_ms']:.1f} ms = "
            f"{floor['floor_ratio']:.2f}x the bp step; measured optimizer step {floor['measured_ms']:.1f} ms; whole "
            f"step {floor['step_ms']:.1f} ms"
        )
    sgd = [result for result in results if result["rows"][0]["optimizer"] == "sgd"]
    if sgd:
        lines += [
            "",
            f"Kernel floor of the {args.areas}-area model's SGD step (`KernelFloor`: the forward GEMM of every area of "
            f"every hidden layer, {args.batch_size // args.areas} rows each, then the area updates, with nothing "
            "around them), measured in the rotation, next to the K=1 BP step:",
            "",
        ]
    for result in sgd:
        k, bp = result["kernels"], result["rows"][0]["step_ms"]
        api, in_place = k["forward"] + k["optimizer API"], k["forward"] + k["in place"]
        lines.append(
            f"- {result['rows'][0]['arch']}: forward {1e3 * k['forward']:.1f} ms; + gradient tensors and "
            f"`torch.optim.SGD` {1e3 * k['optimizer API']:.1f} ms = {1e3 * api:.1f} ms = {1e3 * api / bp:.2f}x bp; "
            f"+ in-place `addmm_` instead {1e3 * k['in place']:.1f} ms = {1e3 * in_place:.1f} ms = "
            f"{1e3 * in_place / bp:.2f}x bp"
        )
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="models, inputs and optimizer in bf16")
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adamw"], choices=["sgd", "adamw"])
    parser.add_argument("--impl", default="default", choices=["default", "foreach", "fused"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--areas", type=int, default=16)
    parser.add_argument(
        "--area-impl",
        nargs="+",
        default=["split"],
        choices=["split", "masked", "auto"],
        help="area implementations of the K-area model, one variant each (sal-16, sal-16-masked, sal-16-auto)",
    )
    parser.add_argument(
        "--in-place",
        action="store_true",
        help="with SGD, also time the K-area model with SALTrainer(in_place_area_update=True) (sal-16-in-place)",
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="torch.compile each variant's forward + local rule (SALTrainer.compute_loss); default backend inductor. "
        "Use with --area-impl masked: the split kernel's per-area sizes recompile.",
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="also time today's SALConfig() settings with K=1 and K areas (sal-1-defaults, sal-16-defaults)",
    )
    parser.add_argument("--input-size", type=int, default=784)
    parser.add_argument("--archs", nargs="+", default=["mlp", "deep"], choices=["mlp", "deep"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--tiny", action="store_true", help="hidden 64: a seconds-long check of the script")
    parser.add_argument("--out", type=Path, default=None, help="markdown file for the table (default: print only)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False (CPU-only torch or no GPU).")
    if args.in_place and args.compile:
        raise SystemExit("--in-place and --compile: the in-place update mutates weights inside the backward; pick one.")
    if args.steps < 2:
        raise SystemExit(f"--steps must be >= 2 for a median and quartiles; got {args.steps}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # for scale.expected_parameters
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    width = 64 if args.tiny else 1024
    archs = {"mlp": [width] * 2, "deep": [width] * 6}
    command = "python " + " ".join(sys.argv)
    results, floors = [], []
    for optimizer in args.optimizers:
        for index, arch in enumerate(args.archs):
            result = bench(arch, archs[arch], optimizer, args, dtype, dense=index == 0)
            results.append(result)
            bp = result["rows"][0]
            passes = 3 if optimizer == "sgd" else 7
            # (The in-place variant hands the optimizer no area gradient: this floor is not its.)
            for name in [n for n in area_variants(args, optimizer) if not n.endswith("-in-place")]:
                big = next(r for r in result["rows"] if r["variant"] == name)
                floor_ms = 1e3 * passes * big["touched_bytes"] / result["bandwidth"]
                floors.append(
                    {
                        "arch": arch,
                        "optimizer": optimizer,
                        "variant": name,
                        "touched_mb": big["touched_bytes"] / 2**20,
                        "passes": passes,
                        "floor_ms": floor_ms,
                        "floor_ratio": floor_ms / bp["step_ms"],
                        "measured_ms": big["optimizer_ms"],
                        "step_ms": big["step_ms"],
                    }
                )
            for row in result["rows"]:
                print(json.dumps(row), flush=True)
    out = args.out or Path(tempfile.gettempdir()) / "sal_bench_speed.md"
    write_markdown(results, floors, args, out, command)
    print(out.read_text())
    if args.json:
        args.json.write_text(json.dumps({"results": results, "floors": floors}, indent=1))


if __name__ == "__main__":
    main()
