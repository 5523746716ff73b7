"""Toxicity classifiers behind the ground-truth reward R* and the independent evaluator.

Every classifier has one method, `p_toxic(texts, batch_size) -> np.ndarray` of probabilities in
[0, 1], batched. `load_classifier` turns a source into one.
"""

from __future__ import annotations

import numpy as np
import torch
from profanity_check import predict_prob
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from irlnb.compute import resolve_device
from irlnb.data.assets import asset_path
from irlnb.models.toxblock import HEADS, ToxBlock
from irlnb.sources import SourceError, hub_snapshot, parse_source


def load_classifier(spec: str, role: str = "toxicity_classifier", device: str = "cpu"):
    """The classifier of a source (`role`: toxicity_classifier or evaluator), with `.p_toxic(texts)`."""
    source = parse_source(spec, role)
    if source.scheme == "embedded":
        return {"tox-block": ToxBlockClassifier.embedded, "profanity-check": ProfanityCheckClassifier}[source.name]()
    path = hub_snapshot(source) if source.scheme == "hub" else source.name
    return HFSequenceClassifier.load(str(path), name=spec, device=resolve_device(device))


def _check_texts(texts) -> list[str]:
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, expected str")
    return texts


class ToxBlockClassifier:
    """The tox-block Jigsaw BiLSTM (PyTorch port), reading its 'toxic' head."""

    name = "tox-block"

    def __init__(self, model):
        self.model = model

    @classmethod
    def embedded(cls) -> ToxBlockClassifier:
        return cls(ToxBlock.from_dir(asset_path("tox-block") / "tox_block" / "trained_models"))

    def p_toxic(self, texts, batch_size: int = 128) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros(0)
        return self.model.predict_proba(texts, batch_size=batch_size)[:, HEADS.index("toxic")].astype(np.float64)


class ProfanityCheckClassifier:
    """alt-profanity-check: a calibrated linear SVM on TF-IDF; cheap and independent of tox-block."""

    name = "profanity-check"

    def p_toxic(self, texts, batch_size: int = 4096) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros(0)
        return np.concatenate(
            [predict_prob(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        ).astype(np.float64)


class HFSequenceClassifier:
    """A transformers sequence classifier (the paper's RoBERTa), batched and length-sorted."""

    def __init__(self, model, tokenizer, toxic_index: int, name: str, max_length: int = 512):
        self.model, self.tokenizer = model, tokenizer
        self.toxic_index, self.name, self.max_length = toxic_index, name, max_length

    @classmethod
    def load(cls, path: str, name: str, device: str = "cpu") -> HFSequenceClassifier:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path)
        labels = {i: str(label).lower() for i, label in model.config.id2label.items()}
        toxic = [i for i, label in labels.items() if "toxic" in label and "non" not in label]
        if not toxic and model.config.num_labels == 2:
            toxic = [1]
        if len(toxic) != 1:
            raise SourceError(f"{name}: cannot tell which label is 'toxic' among {labels}")
        return cls(model.to(device).eval(), tokenizer, toxic[0], name=name)

    def p_toxic(self, texts, batch_size: int = 64) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.zeros(len(texts))
        order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                index = order[start : start + batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in index],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(device)
                logits = self.model(**batch).logits.float()
                if logits.shape[-1] == 1:
                    probs = torch.sigmoid(logits[:, 0])
                else:
                    probs = torch.softmax(logits, dim=-1)[:, self.toxic_index]
                out[index] = probs.cpu().numpy()
        return out
