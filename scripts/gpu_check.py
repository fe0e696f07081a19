"""GPU check: the speed benchmark and the 1e9-parameter model's training steps in bf16, in one markdown report.

Runs ``scripts/bench_speed.py`` (bf16, SGD and AdamW, fused optimizers, the 16-area model with both area
implementations, ``sal-16`` split and ``sal-16-masked``, with SGD ``sal-16-in-place``, and today's ``SALConfig()`` settings,
``sal-1-defaults`` and ``sal-16-defaults``), the same benchmark
with ``--compile`` (MLP, masked areas) and ``scripts/scale.py`` (bf16 autocast, 24 steps of batch 128, save and
reload) as subprocesses with time limits, and writes ``<out>`` with the card's name (``torch.cuda.get_device_name``). Called by ``scripts/gpu_check.sh``; on a CPU
``--device cpu --tiny`` runs the same path with tiny models in seconds (the tests do that).

    python scripts/gpu_check.py --device cuda --out docs/PERFORMANCE_GPU.md
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/check.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


HERE = Path(__file__).resolve().parent


def run(command: list[str], timeout: int) -> tuple[int, str, float]:
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        output, code = output + f"\n[timed out after {timeout} s]", 124
    seconds = time.perf_counter() - start
    print(output[-3000:], flush=True)
    return code, output, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny models and few steps (a check of this script)")
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    # Limits add up to 460 s, inside gpu_check.sh's 470 (the last H100 run needed 31 s and 24 s without compiling).
    parser.add_argument("--bench-timeout", type=int, default=180)
    parser.add_argument("--compile-timeout", type=int, default=150)
    parser.add_argument("--scale-timeout", type=int, default=130)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device: torch.cuda.is_available() is False. Install a CUDA build of torch.")
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (check run, --device cpu)"
    work = Path(tempfile.mkdtemp(prefix="sal-gpu-check-"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    precision = ["--bf16"] if args.device == "cuda" else []
    small = ["--tiny"] if args.tiny else []
    if args.device == "cpu":  # one thread: two threads on a loaded 2-core machine were ~10x slower
        small += ["--threads", "1"]

    bench_md = work / "bench.md"
    steps = ["--steps", "3", "--warmup", "1", "--optimizers", "sgd", "--archs", "mlp"] if args.tiny else []
    bench = [sys.executable, str(HERE / "bench_speed.py"), "--device", args.device, *precision, *small, *steps]
    impl = ["--impl", "fused"] if args.device == "cuda" else []
    # and, with SGD, sal-16-in-place; and today's SALConfig() settings (sal-1-defaults, sal-16-defaults)
    both = ["--area-impl", "split", "masked", "--in-place", "--defaults"]
    code_bench, log_bench, s_bench = run([*bench, *impl, *both, "--out", str(bench_md)], args.bench_timeout)

    # The same step with the forward and the local rule compiled (inductor: fewer, fused kernels for a host-bound
    # GPU), masked areas only (the split kernel's per-area sizes would recompile), the MLP, SGD (the optimizer is not
    # compiled). On the CPU check run the `eager` backend only checks the wiring.
    compiled_md = work / "compiled.md"
    backend = ["--compile"] if args.device == "cuda" else ["--compile", "eager"]
    compiled = [*bench, *impl, "--area-impl", "masked", *backend, "--archs", "mlp", "--optimizers", "sgd"]
    code_compiled, log_compiled, s_compiled = run([*compiled, "--out", str(compiled_md)], args.compile_timeout)

    scale_json = work / "scale.json"
    scale = [sys.executable, str(HERE / "scale.py"), "--device", args.device, *precision, *small]
    scale += ["--steps", "3", "--batch-size", "8"] if args.tiny else ["--steps", "24", "--batch-size", "128"]
    code_scale, log_scale, s_scale = run([*scale, "--json", str(scale_json)], args.scale_timeout)

    lines = [
        f"# GPU check: {card}",
        "",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}; written by `scripts/gpu_check.py` "
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    ]
    if code_bench == 0 and bench_md.exists():
        lines += [bench_md.read_text(), ""]
    else:
        lines += [
            f"Speed benchmark FAILED (exit {code_bench}) after {s_bench:.0f} s:",
            "",
            "```",
            log_bench[-3000:],
            "```",
        ]
    lines += ["## The same step, compiled (`--compile`, masked areas)", ""]
    if code_compiled == 0 and compiled_md.exists():
        lines += [compiled_md.read_text().replace("## Step time", "### Step time", 1), ""]
    else:
        lines += [
            f"Compiled benchmark FAILED (exit {code_compiled}) after {s_compiled:.0f} s:",
            "",
            "```",
            log_compiled[-3000:],
            "```",
            "",
        ]
    lines += ["## 1e9-parameter SAL model, bf16 autocast, through SALTrainer", ""]
    if code_scale == 0 and scale_json.exists():
        report = json.loads(scale_json.read_text())
        keys = [
            "parameters",
            "active_parameters_per_sample",
            "area_implementation",
            "build_s",
            "steps",
            "step_s_median",
            "step_s_first",
            "cuda_peak_allocated_gib",
            "peak_rss_gib_end",
            "areas_total",
            "areas_with_optimizer_state",
            "optimizer_state_bytes",
            "full_adamw_state_bytes_if_dense",
            "save_s",
            "load_s",
            "reload_identical_logits",
            "reload_max_abs_logit_diff",
        ]
        lines += ["| quantity | value |", "|---|---|"]
        lines += [f"| {key} | {report.get(key)} |" for key in keys]
    else:
        lines += [f"Scale run FAILED (exit {code_scale}) after {s_scale:.0f} s:", "", "```", log_scale[-3000:], "```"]
    lines += [
        "",
        f"Wall time: speed benchmark {s_bench:.0f} s (limit {args.bench_timeout}), compiled benchmark "
        f"{s_compiled:.0f} s (limit {args.compile_timeout}), scale run {s_scale:.0f} s (limit {args.scale_timeout}).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    sys.exit(0 if code_bench == 0 and code_compiled == 0 and code_scale == 0 else 1)


if __name__ == "__main__":
    main()
