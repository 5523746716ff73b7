"""PyTorch port of the tox-block 0.1.2 toxicity classifier, without TensorFlow.

tox-block (MIT, Pascal Bliem, 2020) is a Keras bidirectional LSTM trained on the Jigsaw 2018 toxic
comments: Embedding(20000, 50) -> Bidirectional(LSTM(50), concat) -> GlobalMaxPool1D -> Dense(50, relu)
-> Dropout -> Dense(6, sigmoid). This module reads its two files (the h5 weights with h5py, the joblib
pickle of the encoder with a whitelisting unpickler) and reproduces `make_predictions(rescale=False)`:
the same token ids, and probabilities within float32 rounding (checked against fixtures computed by
the original Keras model, tests/fixtures/toxblock_parity.json).

The encoder is tox-block's `TokenSequencer` alone: a Keras `Tokenizer` (texts_to_sequences) followed
by `pad_sequences(maxlen=100)`. tox-block's stopword/URL/IP remover is neither in the pickle nor used
by training (apply_remover=False) or prediction, so it is not applied here either.
"""

from __future__ import annotations

import collections
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

HEADS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
MODEL_FILE = "lstm_model_0.1.2.h5"
ENCODER_FILE = "encoder_0.1.2.pkl"


# --------------------------------------------------------------------------- encoder (the pickle)


class _PickledTokenSequencer:
    """Stand-in for tox_block's TokenSequencer: unpickling only fills its __dict__."""


class _PickledKerasTokenizer:
    """Stand-in for keras_preprocessing.text.Tokenizer: unpickling only fills its __dict__."""


# Every global the encoder pickle names (listed with pickletools.genops) and nothing else: it holds
# no numpy arrays, so joblib's NumpyArrayWrapper and numpy are refused too.
_ALLOWED_GLOBALS: dict[tuple[str, str], type] = {
    ("tox_block.data_processing.preprocessors", "TokenSequencer"): _PickledTokenSequencer,
    ("keras_preprocessing.text", "Tokenizer"): _PickledKerasTokenizer,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "int"): int,  # the defaultdict(int) factory
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only whitelisted globals, so a tampered pickle cannot run code while loading."""

    def find_class(self, module: str, name: str) -> type:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: not one of the classes a tox-block encoder holds"
            ) from None


@dataclass(frozen=True)
class KerasTokenizer:
    """Keras `Tokenizer.texts_to_sequences` + `pad_sequences` as tox-block's TokenSequencer calls them.

    `vocab` keeps only the words Keras can emit (index < num_words): rarer words, like unknown ones,
    are dropped, or become the OOV index when the tokenizer has an oov_token.
    """

    vocab: dict[str, int]
    filters: str
    lower: bool
    split: str
    oov_index: int | None
    maxlen: int

    @classmethod
    def from_pickle(cls, path: Path) -> KerasTokenizer:
        with open(path, "rb") as handle:
            sequencer = _RestrictedUnpickler(handle).load()
        if not isinstance(sequencer, _PickledTokenSequencer):
            raise ValueError(f"{path}: expected a pickled TokenSequencer, got {type(sequencer).__name__}")
        state = vars(sequencer.tokenizer)
        if state["char_level"]:
            raise ValueError(f"{path}: char-level Keras tokenizers are not supported")
        word_index: dict[str, int] = state["word_index"]
        limit = state["num_words"] or len(word_index) + 1  # num_words=None/0 means no cut in Keras
        oov = state["oov_token"]
        return cls(
            vocab={word: i for word, i in word_index.items() if i < limit},
            filters=state["filters"],
            lower=state["lower"],
            split=state["split"],
            oov_index=None if oov is None else word_index.get(oov),
            maxlen=sequencer.max_sequence_length,
        )

    def to_sequence(self, text: str) -> list[int]:
        """keras_preprocessing `text_to_word_sequence` then the vocabulary lookup."""
        if self.lower:
            text = text.lower()
        text = text.translate(str.maketrans({c: self.split for c in self.filters}))
        ids = []
        for word in text.split(self.split):
            if not word:
                continue
            index = self.vocab.get(word, self.oov_index)
            if index is not None:
                ids.append(index)
        return ids

    def encode(self, texts: list[str]) -> np.ndarray:
        """Keras `pad_sequences` defaults: zeros in front, and long texts keep their LAST maxlen tokens."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of str, not a single str")
        out = np.zeros((len(texts), self.maxlen), dtype=np.int64)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text at index {row} is {type(text).__name__}, not str")
            ids = self.to_sequence(text)[-self.maxlen :]
            if ids:
                out[row, self.maxlen - len(ids) :] = ids
        return out


# --------------------------------------------------------------------------- network (the h5)


def _hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras 2's hard_sigmoid, clip(0.2 x + 0.5, 0, 1); Keras 3 and torch use other slopes."""
    return torch.add(0.5, x, alpha=0.2).clamp_(0.0, 1.0)


_RECURRENT_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hard_sigmoid": _hard_sigmoid,
    "sigmoid": torch.sigmoid,
}
_LAYERS = ("InputLayer", "Embedding", "Bidirectional", "GlobalMaxPooling1D", "Dense", "Dropout", "Dense")


def _read_h5(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """The weights by Keras name (e.g. 'bidirectional/forward_lstm/kernel:0') and the LSTM's
    recurrent activation, after checking the saved architecture is the one ported here."""
    with h5py.File(path, "r") as h5:
        config = json.loads(h5.attrs["model_config"])["config"]
        layers = config["layers"]
        if tuple(layer["class_name"] for layer in layers) != _LAYERS:
            raise ValueError(f"{path}: unexpected layers {[layer['class_name'] for layer in layers]}")
        bidir = layers[2]["config"]
        lstm = bidir["layer"]["config"]
        expected = {
            "merge_mode": bidir["merge_mode"],
            "return_sequences": lstm["return_sequences"],
            "go_backwards": lstm["go_backwards"],
            "activation": lstm["activation"],
            "use_bias": lstm["use_bias"],
            "mask_zero": layers[1]["config"]["mask_zero"],
            "dense": layers[4]["config"]["activation"],
            "output": layers[6]["config"]["activation"],
        }
        if expected != {
            "merge_mode": "concat",
            "return_sequences": True,
            "go_backwards": False,
            "activation": "tanh",
            "use_bias": True,
            "mask_zero": False,
            "dense": "relu",
            "output": "sigmoid",
        }:
            raise ValueError(f"{path}: unexpected layer settings {expected}")
        if lstm["recurrent_activation"] not in _RECURRENT_ACTIVATIONS:
            raise ValueError(f"{path}: unsupported recurrent_activation {lstm['recurrent_activation']!r}")
        group = h5["model_weights"]
        weights = {}
        for layer in group.attrs["layer_names"]:
            for name in group[layer].attrs["weight_names"]:
                weights[name.decode()] = np.asarray(group[layer][name], dtype=np.float32)
    return weights, lstm["recurrent_activation"]


class ToxBlock(torch.nn.Module):
    """tox-block 0.1.2 as a frozen torch module (weights are buffers), for inference.

    Dropout (LSTM input/recurrent and the Dropout layer) only acts in Keras training, so the port has
    none. The LSTM is written out rather than using torch.nn.LSTM because tox-block's recurrent
    activation is Keras 2's hard sigmoid.
    """

    def __init__(
        self, tokenizer: KerasTokenizer, weights: dict[str, np.ndarray], recurrent_activation: str = "hard_sigmoid"
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self._gate = _RECURRENT_ACTIVATIONS[recurrent_activation]

        def w(name: str) -> torch.Tensor:
            return torch.from_numpy(weights[name])

        lstm = [f"bidirectional/{d}_lstm/" for d in ("forward", "backward")]
        self.register_buffer("embedding", w("embedding/embeddings:0"))
        # Both directions stacked on a leading axis of 2, so each step is one batched matmul.
        self.register_buffer("kernel", torch.stack([w(p + "kernel:0") for p in lstm]))  # [2, 50, 4u]
        self.register_buffer("bias", torch.stack([w(p + "bias:0") for p in lstm]).unsqueeze(1))  # [2, 1, 4u]
        self.register_buffer("recurrent_kernel", torch.stack([w(p + "recurrent_kernel:0") for p in lstm]))
        self.register_buffer("dense_kernel", w("dense/kernel:0"))
        self.register_buffer("dense_bias", w("dense/bias:0"))
        self.register_buffer("out_kernel", w("dense_1/kernel:0"))
        self.register_buffer("out_bias", w("dense_1/bias:0"))
        self.units = self.recurrent_kernel.shape[1]
        if self.embedding.shape[0] <= max(tokenizer.vocab.values(), default=0):
            raise ValueError("the tokenizer emits ids beyond the embedding table")

    @classmethod
    def from_dir(cls, trained_models_dir: str | Path) -> ToxBlock:
        """Load tox_block/trained_models/ (lstm_model_0.1.2.h5 and encoder_0.1.2.pkl)."""
        directory = Path(trained_models_dir)
        model_path, encoder_path = directory / MODEL_FILE, directory / ENCODER_FILE
        for path in (model_path, encoder_path):
            if not path.is_file():
                raise FileNotFoundError(f"tox-block file not found: {path}")
        tokenizer = KerasTokenizer.from_pickle(encoder_path)
        weights, recurrent_activation = _read_h5(model_path)
        return cls(tokenizer, weights, recurrent_activation).eval()

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Token ids [n, 100] exactly as tox-block's encoder makes them."""
        return torch.from_numpy(self.tokenizer.encode(texts))

    def _input_table(self) -> torch.Tensor:
        """Input projection of every vocabulary entry, [2, V, 4u]: a step's input is then a lookup.

        The embedding is frozen, so E @ W + b is the same for every call; it is computed once.
        """
        if getattr(self, "_table", None) is None or self._table.device != self.embedding.device:
            self._table = torch.baddbmm(self.bias, self.embedding.expand(2, -1, -1), self.kernel)
        return self._table

    def _step(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM step from the pre-activations z (gates i, f, c, o) and the cell state c."""
        u = self.units
        gates = self._gate(z)  # i, f and o read from this; the c slice is replaced by tanh below
        c = torch.addcmul(gates[..., u : 2 * u] * c, gates[..., :u], torch.tanh(z[..., 2 * u : 3 * u]))
        return gates[..., 3 * u :] * torch.tanh(c), c

    def _padding_trajectory(self, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward-LSTM states over a run of padding tokens: h, c and running max after k pads.

        Inputs are padded at the front (Keras 'pre'), so before its first real token every
        sequence's forward LSTM has seen only pads: its state there is this shared trajectory.
        """
        cached = getattr(self, "_pad_cache", None)
        if cached is not None and cached[0].shape[0] == steps + 1 and cached[0].device == self.embedding.device:
            return cached
        u = self.units
        z_pad = self._input_table()[0, 0]
        h, c = z_pad.new_zeros(1, u), z_pad.new_zeros(1, u)
        hs, cs, maxima = [h], [c], [z_pad.new_full((1, u), -torch.inf)]
        for _ in range(steps):
            h, c = self._step(z_pad + h @ self.recurrent_kernel[0], c)
            hs.append(h)
            cs.append(c)
            maxima.append(torch.maximum(maxima[-1], h))
        self._pad_cache = (torch.cat(hs), torch.cat(cs), torch.cat(maxima))
        return self._pad_cache

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities [n, 6] (float32) for padded token ids [n, 100].

        Exact, but cheaper than running both directions over all 100 steps: the forward direction
        starts at the batch's first real token from the shared padding trajectory (see
        `_padding_trajectory`); the backward direction, which meets the pads last, runs every step.
        """
        if token_ids.dim() != 2:
            raise ValueError(f"token_ids must be [n, length], got shape {tuple(token_ids.shape)}")
        n, steps = token_ids.shape
        u = self.units
        # Time-major ids, the backward direction's reversed: Keras runs that LSTM on the reversed sequence.
        ids = token_ids.t()
        z_in = self._input_table()[torch.arange(2).view(2, 1, 1), torch.stack([ids, ids.flip(0)])]  # [2, T, n, 4u]
        first_real = steps - (token_ids != 0).sum(dim=1)  # index of each sequence's first token
        start = int(first_real.min()) if n else steps
        pad_h, pad_c, pad_max = self._padding_trajectory(steps)
        # Backward direction alone while the whole batch is still in its padding (forward time).
        h_b, c_b = z_in.new_zeros(n, u), z_in.new_zeros(n, u)
        pooled_b = z_in.new_full((n, u), -torch.inf)
        for t in range(start):
            h_b, c_b = self._step(torch.addmm(z_in[1, t], h_b, self.recurrent_kernel[1]), c_b)
            pooled_b = torch.maximum(pooled_b, h_b)
        # Then both directions in one batched matmul per step.
        h = torch.stack([pad_h[start].expand(n, u), h_b])
        c = torch.stack([pad_c[start].expand(n, u), c_b])
        pooled = torch.stack([pad_max[start].expand(n, u), pooled_b])
        for t in range(start, steps):
            h, c = self._step(torch.baddbmm(z_in[:, t], h, self.recurrent_kernel), c)
            still_padding = first_real > t
            if still_padding.any():  # sequences shorter than the batch's longest keep the pad states
                keep = still_padding.view(n, 1)
                h[0] = torch.where(keep, pad_h[t + 1], h[0])
                c[0] = torch.where(keep, pad_c[t + 1], c[0])
            # GlobalMaxPool1D over time is order-free, so Keras re-reversing the backward outputs
            # (return_sequences=True) does not matter: a running max of each direction suffices.
            pooled = torch.maximum(pooled, h)
        features = torch.cat([pooled[0], pooled[1]], dim=1)  # concat merge
        hidden = torch.relu(features @ self.dense_kernel + self.dense_bias)
        return torch.sigmoid(hidden @ self.out_kernel + self.out_bias)

    def predict_proba(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Probabilities [n, 6] for raw texts (tox-block's rescale=False), in length-sorted batches."""
        ids = self.encode(texts)
        out = torch.zeros(len(ids), len(HEADS))
        # Similar lengths together: each batch's forward pass starts at its longest text's first token.
        order = torch.argsort((ids != 0).sum(dim=1), stable=True)
        self.eval()
        device = self.embedding.device
        with torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                index = order[start : start + batch_size]
                out[index] = self(ids[index].to(device)).cpu()
        return out.numpy()
