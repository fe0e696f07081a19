"""examples/train_continual.py end to end on the bundled digits, short settings: the claims keep the old classes
(class-incremental accuracy far above backprop's), and a sequence the claims cannot follow is refused up front."""

import numpy as np
import pytest
from test_text_examples import load_example


# The example's model (SAL-16, width 256) and claim defaults but for a shorter window, so that 3 epochs a task (27-30
# batches) suffice, at a larger lr.
FAST = ["--epochs_per_task", "3", "--claim_window", "20", "--learning_rate", "3e-3", "--logging_steps", "1000"]


def test_claimed_areas_keep_the_old_classes_where_backprop_forgets_them(tmp_path):
    results = load_example("train_continual").main([*FAST, "--output_dir", str(tmp_path)])
    claim, bp = results["sal-claim"], results["bp"]
    assert claim["claimed_areas"] == 15  # five tasks x claim_areas=3, each claimed at its first batch
    (task_il, _), (class_il, class_forgetting) = (
        claim["summary"][k] for k in ("task-incremental", "class-incremental")
    )
    assert task_il > 90 and class_il > 70 and class_forgetting < 20, claim["summary"]
    assert bp["summary"]["class-incremental"][0] < 30  # backprop keeps only the last task's two classes
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(tmp_path / "sal-claim"))  # the saved folder is pipeline-ready
    assert len(classify(np.zeros((8, 8), dtype=np.uint8), top_k=3)) == 3


def test_a_task_too_short_for_the_claim_window_is_refused(tmp_path):
    with pytest.raises(ValueError, match="claim_window=50.*--epochs_per_task"):
        load_example("train_continual").main(["--epochs_per_task", "1", "--output_dir", str(tmp_path)])


def test_methods_and_tasks_are_checked_before_training(tmp_path):
    """`--methods sal` trained a backprop MLP under the name `sal`; a class id past the last trained a task first."""
    with pytest.raises(ValueError, match=r"--methods \['sal'\]: choose from sal-claim, bp"):
        load_example("train_continual").main(["--methods", "sal", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"--tasks names classes \[12\]; digits has classes 0 to 9"):
        load_example("train_continual").main(["--tasks", "0,1", "2,12", "--output_dir", str(tmp_path)])


def test_the_digits_demo_resumes_each_rule_from_its_own_folder(tmp_path):
    """Both rules wrote output_dir/checkpoint-N (BP's overwrote SAL's) and --resume_from_checkpoint was ignored."""
    demo = load_example("train_digits")
    flags = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--output_dir", str(tmp_path)]
    demo.main([*flags, "--disable_tqdm", "true"])
    for rule in ("sal", "bp"):
        assert (tmp_path / rule / "checkpoint-2" / "config.json").is_file()
        assert f'"learning_rule": "{rule}"' in (tmp_path / rule / "checkpoint-2" / "config.json").read_text()
    with pytest.raises(ValueError, match="pass --resume_from_checkpoint true"):
        demo.main([*flags, "--resume_from_checkpoint", str(tmp_path / "sal" / "checkpoint-2")])
