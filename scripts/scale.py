"""A SAL model with more than 1e9 parameters: build it, train it through SALTrainer, save and reload it.

Areas make the size cheap: area k of a layer owns a full weight matrix, so parameters grow with K while each
sample runs through one area per layer (compute and activations per sample do not grow). The configuration,
``SCALE_CONFIG``: input 784 (Fashion-MNIST size), hidden [1024, 1024], 10 labels, K = 540 areas in both hidden
layers, learned routing; 1.0009e9 parameters of which 1.92e6 are active per sample (0.19 %).

Reports: parameter count (built model and closed-form), active parameters per sample, peak resident memory after
each phase, median step time, optimizer-state size and how many areas own state (AdamW state exists only for areas
that were ever selected: an unselected area gets no gradient, so the optimizer never creates state for it), a
check that every area without state is bit-identical to its initial value, and a save -> reload round trip with
identical logits.

    python scripts/scale.py                                 # the 1e9 model, 24 steps, batch 16, CPU, ~10 min
    python scripts/scale.py --tiny                          # K=4, seconds (what the tests run)
    python scripts/scale.py --device cuda --bf16            # on a GPU (scripts/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


# The documented >= 1e9-parameter configuration (kwargs of SALConfig).
SCALE_CONFIG = {
    "input_size": 784,
    "hidden_sizes": [1024, 1024],
    "num_labels": 10,
    "num_areas": 540,
    "area_mode": "expert",
    "learning_rule": "sal",
    # The area design this run was measured with (SALConfig's defaults before docs/ABLATIONS.md changed them).
    "dual_path": False,
    "area_init": "independent",
    "area_lr_scale": 1.0,
    "feedback_alignment": "fixed",  # fixed feedback, as before Kolen-Pollack became SAL's default
}
TINY_CONFIG = {**SCALE_CONFIG, "hidden_sizes": [64, 64], "num_areas": 4}


def expected_parameters(config) -> tuple[int, int]:
    """Closed-form ``(total, active per sample)`` parameter counts of a `SALForImageClassification`.

    Per layer with input ``d_in`` and output ``d_out``: K areas of ``d_in * b + b`` (``b = d_out`` in expert mode,
    ``d_out / K`` in partition mode), an optional shared path ``d_in * d_out + d_out``, a learned router
    ``routing_dim * d_in`` and an input norm (``2 d_in`` for LayerNorm, ``d_in`` for RMSNorm). A sample uses one
    area per layer plus everything that is not an area. Learned (Kolen-Pollack) feedback matrices are parameters
    too, one per hidden layer shaped like the matrix it carries the error through; the forward never reads them,
    so they count in the total, not in the active parameters.
    """
    sizes = [config.input_size, *config.hidden_sizes, config.num_labels]
    norm = {"none": 0, "layernorm": 2, "rmsnorm": 1}[config.norm]
    total = active = 0
    for index, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        output = index == len(sizes) - 2
        areas = config.num_areas if (not output or config.output_areas) else 1
        block = d_out // areas if config.area_mode == "partition" else d_out
        routes = config.routing_scope == "layer" or (index == 0 and not output)
        common = norm * d_in
        common += config.routing_dim * d_in if routes and areas > 1 and config.router == "learned" else 0
        common += d_in * d_out + d_out if config.effective_dual_path and not output else 0
        total += areas * (d_in * block + block) + common
        active += d_in * block + block + common
    if config.learning_rule != "bp" and config.effective_feedback_alignment == "kolen_pollack":
        from sal_hf.feedback import feedback_shapes

        total += sum(
            rows * cols for rows, cols in feedback_shapes(config.hidden_sizes, config.num_labels, config.feedback_mode)
        )
    return total, active


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def area_checksums(model) -> dict[str, float]:
    """A cheap fingerprint of every area parameter (float64 sum of values and of squares)."""
    with torch.no_grad():
        return {
            name: (float(p.double().sum()), float(p.double().square().sum()))
            for name, p in model.named_parameters()
            if ".areas." in name
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="K=4, hidden 64: a seconds-long check of the script")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="train under bf16 autocast (Trainer's bf16=True)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--optim", default="adamw_torch", help="TrainingArguments.optim")
    parser.add_argument("--save-dir", type=Path, default=None, help="where to save (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False (CPU-only torch or no GPU).")

    from transformers import AutoModelForImageClassification, TrainerCallback, TrainingArguments

    from sal_hf import SALConfig, SALForImageClassification, SALTrainer
    from sal_hf.areas import SALAreaLinear

    config = SALConfig(**(TINY_CONFIG if args.tiny else SCALE_CONFIG))
    total_expected, active = expected_parameters(config)
    report: dict[str, object] = {
        "config": TINY_CONFIG if args.tiny else SCALE_CONFIG,
        "device": args.device,
        "bf16": args.bf16,
    }
    print(f"config: {SCALE_CONFIG if not args.tiny else TINY_CONFIG}", flush=True)

    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(args.device):  # initialise where it lives: no 4 GB host copy on a GPU
        model = SALForImageClassification(config)
    report["build_s"] = round(time.perf_counter() - start, 1)
    report["parameters"] = model.num_parameters()
    report["parameters_expected"] = total_expected
    report["active_parameters_per_sample"] = active
    report["parameter_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    report["peak_rss_gib_after_build"] = round(peak_rss_gib(), 2)
    # SALConfig's "auto" keeps K=540 on the split implementation (masked would compute all 540 areas per sample).
    area_layers = [m for m in model.modules() if isinstance(m, SALAreaLinear) and m.num_areas > 1]
    masked = any(layer.uses_masked(torch.device(args.device)) for layer in area_layers)
    report["area_implementation"] = "masked" if masked else "split"
    print(f"built {report['parameters']:,} parameters in {report['build_s']} s", flush=True)
    if report["parameters"] != total_expected:
        raise SystemExit(f"parameter count {report['parameters']} != closed form {total_expected}")
    before = area_checksums(model)

    generator = torch.Generator().manual_seed(0)
    n = args.batch_size * args.steps
    x = torch.rand(n, config.input_size, generator=generator)
    y = torch.randint(0, config.num_labels, (n,), generator=generator)
    dataset = [{"pixel_values": xi, "labels": int(yi)} for xi, yi in zip(x, y)]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu_times: list[float] = []  # process CPU time: robust to a shared machine's load

        def on_step_begin(self, *_, **__) -> None:
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.begin, self.cpu_begin = time.perf_counter(), time.process_time()

        def on_step_end(self, *_, **__) -> None:
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.begin)
            self.cpu_times.append(time.process_time() - self.cpu_begin)

    timer = StepTimer()
    work = Path(tempfile.mkdtemp(prefix="sal-scale-"))
    save_dir = args.save_dir or work / "model"
    try:
        training = TrainingArguments(
            output_dir=str(work / "trainer"),
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=1e-3,
            weight_decay=0.01,
            optim=args.optim,
            bf16=args.bf16,
            use_cpu=args.device == "cpu",
            save_strategy="no",
            logging_steps=max(1, args.steps // 4),
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = SALTrainer(model=model, args=training, train_dataset=dataset, callbacks=[timer])
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = trainer.train()
        report["steps"] = result.global_step
        report["train_loss"] = round(result.training_loss, 4)
        report["step_s_median"] = round(statistics.median(timer.times), 4)
        report["step_s_first"] = round(timer.times[0], 4)
        report["step_cpu_s_median"] = round(statistics.median(timer.cpu_times), 4)
        report["peak_rss_gib_after_train"] = round(peak_rss_gib(), 2)
        if args.device == "cuda":
            report["cuda_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

        # Optimizer state: which parameters own any, and how big it is.
        state = trainer.optimizer.state
        with_state = {id(p) for p in state}
        report["optimizer_state_bytes"] = sum(
            t.numel() * t.element_size() for s in state.values() for t in s.values() if torch.is_tensor(t)
        )
        after = area_checksums(model)
        names = dict(model.named_parameters())
        area_weights = [name for name in names if ".areas.weight_" in name]
        stateful = [name for name in area_weights if id(names[name]) in with_state]
        report["areas_total"] = len(area_weights)
        report["areas_with_optimizer_state"] = len(stateful)
        report["area_optimizer_state_bytes"] = sum(
            t.numel() * t.element_size()
            for name in names
            if ".areas." in name and id(names[name]) in with_state
            for t in state[names[name]].values()
            if torch.is_tensor(t)
        )
        report["full_adamw_state_bytes_if_dense"] = 2 * report["parameter_bytes"]
        stateless_unchanged = all(before[name] == after[name] for name in before if id(names[name]) not in with_state)
        stateful_changed = all(before[name] != after[name] for name in before if id(names[name]) in with_state)
        report["areas_without_state_unchanged"] = stateless_unchanged
        report["areas_with_state_changed"] = stateful_changed
        print(json.dumps(report), flush=True)

        model.eval()
        # Compare in full fp32: TF32 matmuls (if a library turned them on) round inputs to 10 mantissa bits.
        report["tf32_during_training"] = torch.backends.cuda.matmul.allow_tf32
        report["float32_matmul_precision_during_training"] = torch.get_float32_matmul_precision()
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        probe = x[: args.batch_size].to(args.device)
        with torch.no_grad():
            # Accelerate wrapped `forward` in autocast for bf16 training; compare the plain fp32 model to the reload.
            model = trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
            out = model(pixel_values=probe, return_areas=True)
            logits, areas = out.logits.float().cpu(), [a.cpu() for a in out.areas if a is not None]
            checksums = {name: float(t.double().sum()) for name, t in model.state_dict().items()}
        start = time.perf_counter()
        trainer.save_model(str(save_dir))
        report["save_s"] = round(time.perf_counter() - start, 1)
        report["checkpoint_bytes"] = sum(f.stat().st_size for f in save_dir.glob("*.safetensors"))
        del trainer, model, state
        gc.collect()
        start = time.perf_counter()
        again = AutoModelForImageClassification.from_pretrained(str(save_dir)).to(args.device).eval()
        report["load_s"] = round(time.perf_counter() - start, 1)
        with torch.no_grad():
            out = again(pixel_values=probe, return_areas=True)
            logits_again, areas_again = out.logits.float().cpu(), [a.cpu() for a in out.areas if a is not None]
        report["reload_state_identical"] = all(
            float(t.double().sum()) == checksums[name] for name, t in again.state_dict().items()
        )
        report["reload_samples_routed_elsewhere"] = int(sum((a != b).sum() for a, b in zip(areas, areas_again)))
        report["reload_identical_logits"] = bool(torch.equal(logits, logits_again))
        report["reload_max_abs_logit_diff"] = float((logits - logits_again).abs().max())
        # cuBLAS may pick other kernels for the reloaded (differently aligned) tensors: on CUDA a reload must
        # match to float tolerance, on the CPU bit for bit.
        report["reload_matches"] = report["reload_identical_logits"] or (
            args.device == "cuda"
            and report["reload_state_identical"]
            and report["reload_samples_routed_elsewhere"] == 0
            and torch.allclose(logits, logits_again, rtol=1e-4, atol=1e-4)
        )
        report["peak_rss_gib_end"] = round(peak_rss_gib(), 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    ok = report["reload_matches"] and stateless_unchanged and stateful_changed
    if not args.tiny:  # the tiny model's 4 areas are all selected within a step
        ok = ok and report["areas_with_optimizer_state"] < report["areas_total"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
