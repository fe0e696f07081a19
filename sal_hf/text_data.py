"""Text datasets and a tokenizer for the SAL transformer, offline first.

Offline source: Debian's `fortunes` packages (`apt-get install fortunes fortunes-min`), fortune-mod 1.99.1, about
2.6 MB of English quotations in 43 category files under `/usr/share/games/fortunes`, entries separated by lines
holding a single `%`. Debian distributes them under the BSD licence of fortune-mod (Copyright (c) 1991 The Regents
of the University of California; see `/usr/share/doc/fortunes/copyright`); quotations carry their authors inline.
Some entries are offensive to some readers (the package's own note: `/usr/share/doc/fortunes/Offensive`).

- `load_fortunes_lm`: a language-modelling corpus (column `text`, one entry per row), split train / validation /
  test by entry with a seeded permutation, after dropping exact duplicates so that no entry is in two splits. A
  quote that the fortune files hold twice with other line wrapping is not an exact duplicate: 4 of the 757 test
  entries and 1 validation entry repeat a training quote so (the classification splits: 2 in each held-out split).
  Collapsing whitespace before the check would remove them, and would change the splits the recorded text
  benchmarks ran on, so it is left as measured.
- `load_fortunes_classification`: "which category file does this quote come from" (columns `text`, `label`), over
  the categories with at least `min_entries` entries, split stratified; the label names are the file names.
- `load_text_dataset`: `datasets.load_dataset` for real users (a hub dataset such as `wikitext`, or local `.txt`
  files), in the shape of transformers' `run_clm.py`; needs the network for hub names.
- `train_tokenizer`: a byte-level BPE tokenizer trained offline with the `tokenizers` library and wrapped in
  transformers' fast tokenizer class, so `save_pretrained(dir)` then `AutoTokenizer.from_pretrained(dir)` works.
  Byte-level, because every text is covered (no unknown token) and every token stands for a known run of bytes,
  so bits per byte are exact (`token_byte_lengths`); BPE over raw bytes, because merges put about 2-3 bytes in a
  token at a vocabulary of 1,024, so a context of 128 tokens sees 2-3x more text for the same attention cost.
  `vocab_size=256 + len(SPECIAL_TOKENS)` leaves no room for merges: that is a pure byte tokenizer.

`datasets`, `tokenizers` and `transformers` are imported lazily, as in `data.py`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch


if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PreTrainedTokenizerBase

FORTUNES_DIR = "/usr/share/games/fortunes"
FORTUNES_INSTALL = "apt-get install -y fortunes fortunes-min"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]
# A special token stands for one byte of text: the end of an entry (the `%` separator line in the source files).
SPECIAL_TOKEN_BYTES = 1


def fortunes_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the fortune files: `data_dir`, else `$SAL_HF_FORTUNES_DIR`, else Debian's path."""
    return Path(data_dir or os.environ.get("SAL_HF_FORTUNES_DIR", FORTUNES_DIR))


def fortunes_available(data_dir: str | os.PathLike | None = None) -> bool:
    folder = fortunes_dir(data_dir)
    return folder.is_dir() and any(_category_files(folder))


def _category_files(folder: Path) -> list[Path]:
    # `name.dat` are strfile indexes and `name.u8` symlinks to `name`; the category files have no suffix.
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and not p.suffix)


def read_fortunes(data_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Every category file as `{category: [entry, ...]}` in file order, categories sorted by name.

    Entries are the text between lines holding a single `%`, with trailing whitespace stripped; empty entries are
    dropped. Raises `FileNotFoundError` naming the install command when the files are missing.
    """
    folder = fortunes_dir(data_dir)
    files = _category_files(folder) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"No fortune files in {folder}. Install Debian's fortunes with `{FORTUNES_INSTALL}`, or pass data_dir=... "
            "(or set SAL_HF_FORTUNES_DIR) to a folder of files whose entries are separated by `%` lines."
        )
    categories = {}
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        entries, current = [], []
        for line in text.split("\n"):
            if line.strip() == "%":
                entries.append("\n".join(current).rstrip())
                current = []
            else:
                current.append(line)
        entries.append("\n".join(current).rstrip())
        categories[path.name] = [entry for entry in entries if entry.strip()]
    return categories


def _check_sizes(**sizes: float) -> None:
    for name, value in sizes.items():
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1); got {name}={value!r}.")
    if sum(sizes.values()) >= 1.0:
        raise ValueError(f"The held-out shares must leave a training split; got {sizes} (sum >= 1).")


def load_fortunes_lm(
    seed: int = 0,
    validation_size: float = 0.05,
    test_size: float = 0.05,
    data_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """The fortunes as a language-modelling corpus: splits `train`, `validation`, `test` of column `text`.

    Exact duplicate entries are kept once (first by sorted category, then file order), then the entries are
    permuted with `seed` and cut into the three splits, so one entry lies in exactly one split.

    Args:
        seed: seed of the permutation (the same seed gives the same splits on every machine).
        validation_size, test_size: shares of the entries held out.
        data_dir: folder of the fortune files (see `fortunes_dir`).
    """
    from datasets import Dataset, DatasetDict

    _check_sizes(validation_size=validation_size, test_size=test_size)
    entries = list(dict.fromkeys(entry for texts in read_fortunes(data_dir).values() for entry in texts))
    order = np.random.default_rng(seed).permutation(len(entries))
    n_val, n_test = round(validation_size * len(entries)), round(test_size * len(entries))
    parts = {
        "validation": order[:n_val],
        "test": order[n_val : n_val + n_test],
        "train": order[n_val + n_test :],
    }
    description = f"Debian fortunes (BSD licence), {len(entries)} unique entries split by entry, seed {seed}"
    result = DatasetDict(
        {split: Dataset.from_dict({"text": [entries[i] for i in sorted(index)]}) for split, index in parts.items()}
    )
    for split in result.values():
        split.info.description = description
    return DatasetDict({name: result[name] for name in ("train", "validation", "test")})


def load_fortunes_classification(
    min_entries: int = 500,
    categories: list[str] | None = None,
    seed: int = 0,
    validation_size: float = 0.1,
    test_size: float = 0.1,
    data_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """Which category file a quote comes from: splits `train`, `validation`, `test` of columns `text` and
    `label` (a `ClassLabel` whose names are the category file names, sorted).

    An entry found in two categories is dropped (its label would be ambiguous); duplicates within a category are
    kept once. The splits are stratified by category with `seed`.

    Args:
        min_entries: keep the categories with at least this many unique entries (500 gives 12 of the 43 files).
        categories: the categories to keep, by file name (overrides `min_entries`).
        seed: seed of the stratified split.
        validation_size, test_size: shares of each category held out.
        data_dir: folder of the fortune files (see `fortunes_dir`).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from sklearn.model_selection import train_test_split

    _check_sizes(validation_size=validation_size, test_size=test_size)
    raw = read_fortunes(data_dir)
    owners: dict[str, set[str]] = {}
    for name, texts in raw.items():
        for entry in texts:
            owners.setdefault(entry, set()).add(name)
    unique = {name: [e for e in dict.fromkeys(texts) if len(owners[e]) == 1] for name, texts in raw.items()}
    if categories is None:
        names = sorted(name for name, texts in unique.items() if len(texts) >= min_entries)
    else:
        unknown = sorted(set(categories) - set(unique))
        if unknown:
            raise ValueError(f"Unknown fortune categories {unknown}; available: {sorted(unique)}.")
        names = sorted(categories)
    if len(names) < 2:
        raise ValueError(
            f"Classification needs at least 2 categories; min_entries={min_entries} keeps {names}. Lower min_entries "
            "or pass categories=[...]."
        )
    texts = [entry for name in names for entry in unique[name]]
    labels = np.asarray([i for i, name in enumerate(names) for _ in unique[name]])
    index = np.arange(len(texts))
    held_out = validation_size + test_size
    train_idx, rest_idx = train_test_split(index, test_size=held_out, stratify=labels, random_state=seed)
    val_idx, test_idx = train_test_split(
        rest_idx, test_size=test_size / held_out, stratify=labels[rest_idx], random_state=seed
    )
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    description = f"Debian fortunes (BSD licence), category of the quote, {len(names)} classes, seed {seed}"
    result = DatasetDict(
        {
            split: Dataset.from_dict(
                {"text": [texts[i] for i in sorted(idx)], "label": labels[sorted(idx)].tolist()}, features=features
            )
            for split, idx in (("train", train_idx), ("validation", val_idx), ("test", test_idx))
        }
    )
    for split in result.values():
        split.info.description = description
    return result


def load_text_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    validation_split_percentage: int = 5,
    keep_linebreaks: bool = True,
    seed: int = 0,
    **load_kwargs,
) -> DatasetDict:
    """Raw text for causal language modelling, as `run_clm.py` loads it, with `train` and `validation` splits.

    - no name and no files: the offline fortunes corpus (`load_fortunes_lm(seed)`, with its `test` split too);
    - `dataset_name="fortunes"`: the same;
    - another `dataset_name` (e.g. `wikitext` with `dataset_config_name="wikitext-2-raw-v1"`): `datasets.load_dataset`
      (the hub; needs the network unless cached);
    - `train_file` / `validation_file` (`.txt`, `.csv`, `.json`, `.jsonl`): `load_dataset("text" | "csv" | "json", ...)`.

    A dataset without a `validation` split gets one: the first `validation_split_percentage`% of `train`.
    """
    from datasets import load_dataset

    if validation_file is not None and train_file is None:
        raise ValueError(f"validation_file={validation_file!r} needs a train_file too (the text to train on).")
    percent = validation_split_percentage
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 < percent < 100:
        raise ValueError(
            f"validation_split_percentage={percent!r}: the share of the training text held out for validation, an int "
            "in 1..99 (5 by default)."
        )
    if dataset_name is not None and train_file is not None:
        raise ValueError(f"Give dataset_name ({dataset_name!r}) or train_file ({train_file!r}), not both.")
    if dataset_name in (None, "fortunes") and train_file is None:
        return load_fortunes_lm(seed=seed)
    if dataset_name is not None:
        raw = load_dataset(dataset_name, dataset_config_name, **load_kwargs)
        if "validation" not in raw:
            raw["validation"] = load_dataset(
                dataset_name, dataset_config_name, split=f"train[:{validation_split_percentage}%]", **load_kwargs
            )
            raw["train"] = load_dataset(
                dataset_name, dataset_config_name, split=f"train[{validation_split_percentage}%:]", **load_kwargs
            )
        return raw
    data_files = {"train": train_file}
    if validation_file is not None:
        data_files["validation"] = validation_file
    extension = Path(train_file).suffix.lstrip(".")
    builders = {"txt": "text", "csv": "csv", "json": "json", "jsonl": "json"}
    if extension not in builders:
        raise ValueError(f"train_file={train_file!r}: a .txt, .csv, .json or .jsonl file; got .{extension}.")
    builder = builders[extension]
    kwargs = {"keep_linebreaks": keep_linebreaks} if builder == "text" else {}
    for name in data_files.values():
        if not Path(name).is_file():
            raise ValueError(f"{name}: no such file.")
    try:
        raw = load_dataset(builder, data_files=data_files, **kwargs, **load_kwargs)
    except Exception as error:  # datasets wraps the cause (an empty file, bytes that are not UTF-8) in its own error
        cause = error.__cause__ or error.__context__ or error
        raise ValueError(
            f"Cannot read {', '.join(data_files.values())} as {builder} rows: {type(cause).__name__}: {cause}. The "
            "files must be non-empty UTF-8 text (.txt: a row a line; .csv / .json / .jsonl: a text column)."
        ) from error
    rows = len(raw["train"])
    if "validation" not in raw and not 1 <= round(rows * percent / 100) < rows:
        raise ValueError(
            f"train_file={train_file!r} has {rows} rows: its first {percent}% holds no row for validation, or all of "
            "them. Pass a validation_file, another validation_split_percentage, or more text."
        )
    if "validation" not in raw:
        raw["validation"] = load_dataset(
            builder, data_files=data_files, split=f"train[:{validation_split_percentage}%]", **kwargs, **load_kwargs
        )
        raw["train"] = load_dataset(
            builder, data_files=data_files, split=f"train[{validation_split_percentage}%:]", **kwargs, **load_kwargs
        )
    return raw


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2, model_max_length: int | None = None
) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer trained on `texts` with the `tokenizers` library, wrapped in transformers' fast
    tokenizer class (`PreTrainedTokenizerFast`, an alias of `TokenizersBackend` in transformers 5).

    Tokens: the 256 bytes, then merges up to `vocab_size`, and `SPECIAL_TOKENS` (end of text, which is also the
    beginning and unknown token, and padding). No token is added when encoding: append `tokenizer.eos_token_id`
    yourself where an entry ends. Decoding gives back the exact text (`add_prefix_space=False`, no normalizer).

    Args:
        texts: the training text (use only the training split).
        vocab_size: size of the vocabulary, special tokens included; `256 + len(SPECIAL_TOKENS)` gives pure bytes.
        min_frequency: a pair must occur this often to be merged.
        model_max_length: the model's context, recorded in the tokenizer (warns on longer inputs).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(
            f"A byte-level tokenizer needs vocab_size >= {len(alphabet) + len(SPECIAL_TOKENS)} (256 bytes and "
            f"{len(SPECIAL_TOKENS)} special tokens); got vocab_size={vocab_size}."
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )


def token_byte_lengths(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """(V,) int64: how many bytes of text each token id stands for.

    For a byte-level tokenizer a token's string is its bytes, one character each (GPT-2's byte-to-unicode map);
    special tokens count `SPECIAL_TOKEN_BYTES`. Other tokenizers: the UTF-8 length of the decoded token (exact for
    whole characters; a token holding part of a multi-byte character is counted as decoded).
    """
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = set(tokenizer.all_special_ids)
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    lengths = torch.zeros(size, dtype=torch.int64)
    for token, index in tokenizer.get_vocab().items():
        if index in special:
            lengths[index] = SPECIAL_TOKEN_BYTES
        elif set(token) <= alphabet:
            lengths[index] = len(token)
        else:
            lengths[index] = len(tokenizer.decode([index]).encode("utf-8"))
    return lengths


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Bits per byte of text: total negative log-likelihood in nats / ln 2 / bytes of the text it scored."""
    if total_bytes <= 0:
        raise ValueError(f"bits_per_byte needs a positive byte count; got total_bytes={total_bytes}.")
    return total_nats / math.log(2) / total_bytes


def predicted_bytes(labels: torch.Tensor, byte_lengths: torch.Tensor) -> int:
    """Bytes of text that a causal LM's loss scores for `labels` (B, T): the labels after the shift (positions
    1..T-1 of each row), ignoring -100."""
    targets = labels[..., 1:]  # (B, T-1): the model predicts token t+1 from tokens <= t
    keep = targets != -100
    return int(byte_lengths[targets[keep]].sum())


def group_texts(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """`run_clm.py`'s grouping: concatenate every tokenized column, cut into blocks of `block_size` (the remainder
    shorter than one block is dropped), and copy `input_ids` into `labels` (the model shifts them)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r}: tokens per block, a positive int (--block_size).")
    concatenated = {k: [token for row in examples[k] for token in row] for k in examples}
    total = (len(concatenated[next(iter(examples))]) // block_size) * block_size
    result = {k: [t[i : i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
    result["labels"] = [list(ids) for ids in result["input_ids"]]
    return result


__all__ = [
    "EOS_TOKEN",
    "FORTUNES_DIR",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "bits_per_byte",
    "fortunes_available",
    "fortunes_dir",
    "group_texts",
    "load_fortunes_classification",
    "load_fortunes_lm",
    "load_text_dataset",
    "predicted_bytes",
    "read_fortunes",
    "token_byte_lengths",
    "train_tokenizer",
]
