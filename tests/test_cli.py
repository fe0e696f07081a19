"""The `sal-hf` command line: train, info, bench; the console-script entry point."""

import json
import re
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from transformers import AutoModelForImageClassification

import sal_hf
from sal_hf import cli


ROOT = Path(__file__).resolve().parent.parent
TINY_TRAIN = [
    "--dataset", "digits", "--rule", "sal", "--num-areas", "4", "--hidden-sizes", "16",
    "--max-train-samples", "96", "--max-eval-samples", "64", "--max-steps", "4", "--logging-steps", "2",
    "--per-device-train-batch-size", "24", "--probe-size", "32", "--disable-tqdm", "true", "--report-to", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["train", *TINY_TRAIN, "--output-dir", str(out), "--learning_rate", "0.003"]) == 0
    return out


def test_train_writes_a_hub_ready_run(trained):
    files = {path.name for path in trained.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_sal.py", "README.md"} <= files
    assert {"trainer_state.json", "eval_results.json"} <= files
    config = json.loads((trained / "config.json").read_text())
    assert (config["num_areas"], config["hidden_sizes"], config["image_size"]) == (4, [16], [8, 8])
    assert len(config["id2label"]) == 10
    # Both spellings of a TrainingArguments flag reached Trainer.
    args = torch.load(trained / "training_args.bin", weights_only=False)
    assert (args.learning_rate, args.max_steps, args.per_device_train_batch_size) == (0.003, 4, 24)
    history = json.loads((trained / "trainer_state.json").read_text())["log_history"]
    assert any("alignment/layer_0" in entry for entry in history)
    # The reported accuracy is the saved model's own, on the first 64 digits of the test split.
    from sal_hf.data import load_image_dataset

    test = load_image_dataset("digits")["test"].select(range(64))[:]
    with torch.no_grad():
        predicted = AutoModelForImageClassification.from_pretrained(trained)(pixel_values=test["pixel_values"]).logits
    right = int((predicted.argmax(-1) == test["labels"]).sum())
    assert json.loads((trained / "eval_results.json").read_text())["eval_accuracy"] == right / 64
    assert "sal-hf train --dataset digits" in (trained / "README.md").read_text()


def test_info_prints_config_parameters_and_areas(trained, capsys):
    assert cli.main(["info", str(trained), "--dataset", "digits", "--max-samples", "50"]) == 0
    out = capsys.readouterr().out
    model = AutoModelForImageClassification.from_pretrained(trained)
    assert f"parameters: {model.num_parameters():,}" in out
    assert "num_areas              4" in out and "router_0: K=4" in out
    assert "digits test split (50 samples): accuracy" in out and "normalised entropy" in out


def test_bench_forwards_arguments_to_the_named_script(tmp_path, monkeypatch, capfd):
    (tmp_path / "echo_args.py").write_text("import sys\nprint('ARGS', sys.argv[1:])\nsys.exit(3)\n")
    monkeypatch.setattr(cli, "SCRIPTS_DIR", tmp_path)
    assert cli.main(["bench", "echo_args", "--x", "1", "two"]) == 3
    assert "ARGS ['--x', '1', 'two']" in capfd.readouterr().out
    assert cli.main(["bench", "missing"]) == 2
    err = capfd.readouterr().err
    assert "no script" in err and "echo_args" in err and "source checkout" in err


def refused(argv: list[str], capsys, match: str) -> None:
    """The command exits with 2 and prints the error's message, without a traceback (users get a message that names
    the bad value and the fix)."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(f"sal-hf {argv[0]}: error: .*{match}", err, re.S), err
    assert "Traceback" not in err


def test_unknown_dataset_and_command_are_rejected(tmp_path, capsys, monkeypatch):
    refused(
        ["train", "--dataset", "nope", "--output-dir", str(tmp_path)],
        capsys,
        "'nope' is not a built-in set .*digits.*not a local folder",
    )

    def fails_elsewhere(argv):  # a ValueError that no sal_hf check raised (torch's, transformers', a bug)
        raise ValueError("not ours")

    monkeypatch.setattr(cli, "train", fails_elsewhere)
    with pytest.raises(ValueError, match="not ours"):  # keeps its traceback
        cli.main(["train"])
    monkeypatch.undo()
    monkeypatch.setenv("SAL_HF_TRACEBACK", "1")  # the traceback, for a bug report
    with pytest.raises(ValueError, match="'nope' is not a built-in set"):
        cli.main(["train", "--dataset", "nope", "--output-dir", str(tmp_path)])
    assert cli.main(["frobnicate"]) == 2
    said = capsys.readouterr()
    assert "sal-hf train" in said.out and "unknown command 'frobnicate'" in said.err


def test_bad_flags_are_named_before_anything_trains(tmp_path, trained, capsys):
    """A typo in --config-overrides was saved into config.json; `--image-size 8` failed on tuple unpacking; a
    missing --model-name-or-path folder reached the Hub client; a model of other labels kept its label names."""
    out = str(tmp_path / "run")
    refused(
        ["train", *TINY_TRAIN, "--output-dir", out, "--config-overrides", "routing_balance_rte=0.5"],
        capsys,
        r"\['routing_balance_rte'\], which SALConfig does not have",
    )
    refused(
        ["train", "--dataset", "imagefolder", "--image-size", "8", "--output-dir", out],
        capsys,
        "--image-size takes two numbers",
    )
    refused(
        ["train", *TINY_TRAIN, "--output-dir", out, "--model-name-or-path", str(tmp_path / "absent")],
        capsys,
        "no such folder",
    )
    refused(
        ["train", *TINY_TRAIN, "--dataset", "wine", "--output-dir", out, "--model-name-or-path", str(trained)],
        capsys,
        "trained on the labels .* continuing would keep the old label names",
    )


def test_train_accepts_the_claim_router(tmp_path):
    out = tmp_path / "run"
    flags = ["--router", "claim", "--routing-scope", "shared", "--diagnostics", "false"]
    assert cli.main(["train", *TINY_TRAIN, "--output-dir", str(out), *flags]) == 0
    assert json.loads((out / "config.json").read_text())["router"] == "claim"


def test_console_script_points_at_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["sal-hf"].split(":")
    assert (module, function) == ("sal_hf.cli", "main")
    assert sys.modules[module].main is cli.main and sal_hf.cli is cli


def load_plot_run():
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_run", ROOT / "scripts" / "plot_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_pngs(paths, names):
    assert {path.name for path in paths} == names
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path


def test_plot_run_draws_a_trained_run(trained, tmp_path):
    written = load_plot_run().main([str(trained), "--out", str(tmp_path / "plots")])
    assert_pngs(written, {"loss.png", "accuracy.png", "areas.png", "diagnostics.png"})


def test_plot_run_reads_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "runs" / "x"))
    for step in (1, 2, 3):
        writer.add_scalar("train/loss", 2.0 / step, step)
        for k in range(3):
            writer.add_scalar(f"train/area/router_0/share_{k}", [0.2, 0.3, 0.5][k], step)
        writer.add_scalar("train/alignment/layer_0", 90.0 - step, step)
    writer.add_scalar("eval/accuracy", 0.5, 3)
    writer.close()
    plot_run = load_plot_run()
    history = plot_run.read_log_history(tmp_path)
    train = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in train] == [1, 2, 3]
    assert train[1]["area/router_0/share_2"] == pytest.approx(0.5) and train[2]["alignment/layer_0"] == 87.0
    assert [entry for entry in history if "eval_accuracy" in entry] == [{"step": 3, "eval_accuracy": 0.5}]
    written = plot_run.plot_run(history, tmp_path / "plots")
    assert_pngs(written, {"loss.png", "accuracy.png", "areas.png", "diagnostics.png"})


def test_unset_flags_take_the_config_defaults(trained):
    """The CLI has no defaults of its own for the architecture: SALConfig is the single source of truth."""
    saved = json.loads((trained / "config.json").read_text())
    defaults = sal_hf.SALConfig(num_areas=4, hidden_sizes=[16], num_labels=10, input_size=64)
    for name in ("area_init", "dual_path", "area_lr_scale", "routing_dim", "area_mode", "routing_scope"):
        assert saved[name] == getattr(defaults, name), name


def test_config_overrides_parse_literals_and_strings():
    assert cli.parse_overrides("routing_balance_rate=0.01, norm=layernorm,dual_path=False") == {
        "routing_balance_rate": 0.01,
        "norm": "layernorm",
        "dual_path": False,
    }
    assert cli.parse_overrides("hidden_sizes=[256, 128],num_areas=4,feedback_mode=direct") == {
        "hidden_sizes": [256, 128],
        "num_areas": 4,
        "feedback_mode": "direct",
    }
    assert cli.parse_overrides(None) == {}
    with pytest.raises(ValueError, match="key=value"):
        cli.parse_overrides("dual_path")


def test_train_in_place_area_update_flag(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--in-place-area-update", "true", "--optim", "sgd", "--max-grad-norm", "0", "--save-strategy", "no"]
    assert cli.main(["train", *TINY_TRAIN, "--output-dir", str(out), *flags]) == 0
    # Trainer's default clipping needs every gradient
    refused(
        ["train", *TINY_TRAIN, "--output-dir", str(tmp_path / "bad"), "--in-place-area-update", "true"],
        capsys,
        "max_grad_norm=1.0",
    )


def test_info_names_what_it_reads(tmp_path, capsys):
    """`sal-hf info` on a SAL transformer failed inside AutoModelForImageClassification's mapping."""
    from sal_hf import SALTransformerConfig, SALTransformerForCausalLM

    size = dict(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8)
    SALTransformerForCausalLM(SALTransformerConfig(**size)).save_pretrained(tmp_path)
    refused(["info", str(tmp_path)], capsys, "holds a SAL transformer; `sal-hf info` reads SAL image classifiers")
