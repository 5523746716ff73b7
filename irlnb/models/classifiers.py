"""The classifiers behind the ground-truth reward R* and the independent evaluator.

Every classifier has one method, `p_toxic(texts, batch_size) -> np.ndarray` of probabilities in
[0, 1], batched: the probability of the side R* penalises, so R* = -logit p. `load_classifier` turns a
source into one. Beside the toxicity classifiers, two scorers of other properties (`SCORERS`: sentiment and
readability, from maintained PyPI packages) let the recovery suite align experts on rewards that are not
toxicity: each is a score s(text) on a log-odds-like scale, exposed as p = sigmoid(-s), so that R* = s (clamped).
"""

from __future__ import annotations

import re

import numpy as np
import readability
import torch
from profanity_check import predict_prob
from scipy.special import expit
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from irlnb.compute import resolve_device
from irlnb.data.assets import asset_path
from irlnb.models.toxblock import HEADS, ToxBlock
from irlnb.sources import SourceError, hub_snapshot, parse_source


def load_classifier(spec: str, role: str = "toxicity_classifier", device: str = "cpu"):
    """The classifier of a source (`role`: toxicity_classifier or evaluator), with `.p_toxic(texts)`."""
    source = parse_source(spec, role)
    if source.scheme == "embedded":
        return {"tox-block": ToxBlockClassifier.embedded, "profanity-check": ProfanityCheckClassifier, **SCORERS}[
            source.name
        ]()
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


class ScoreClassifier:
    """A scorer of a property other than toxicity, as a classifier: `score(texts)` is R* before clamping (higher is
    better), and `p_toxic` = sigmoid(-score) the probability of the side it penalises, so that -logit p = score."""

    name = ""

    def score(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def p_toxic(self, texts, batch_size: int = 0) -> np.ndarray:
        texts = _check_texts(texts)
        return expit(-self.score(texts)) if texts else np.zeros(0)


class SentimentScorer(ScoreClassifier):
    """vaderSentiment 3.3.2 (VADER, MIT): R* = 4 x the compound valence in [-1, 1], so positive sentiment is rewarded;
    a rule-based scorer with a human-rated lexicon, which barely sees insults without negative words."""

    name = "vader-sentiment"
    SCALE = 4.0

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: list[str]) -> np.ndarray:
        return np.array([self.SCALE * self.analyzer.polarity_scores(text)["compound"] for text in texts])


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
TOKEN = re.compile(r"\w+|[^\w\s]")
WORD_CHARACTER = re.compile(r"\w")


class ReadabilityScorer(ScoreClassifier):
    """readability 0.3.1 (Apache-2.0): R* = (Flesch reading ease - 60) / 20, so plain text (short words, short
    sentences) is rewarded; the package wants one sentence per line of space-separated tokens, which
    `tokenized` makes (sentences end at . ! ? or a line break). Saying a text twice over keeps its score."""

    name = "flesch-readability"
    CENTRE, SCALE = 60.0, 20.0

    @staticmethod
    def tokenized(text: str) -> str:
        sentences = [part for line in text.splitlines() for part in SENTENCE_END.split(line)]
        lines = [" ".join(TOKEN.findall(sentence)) for sentence in sentences]
        return "\n".join(line for line in lines if line) + "\n"

    def score(self, texts: list[str]) -> np.ndarray:
        values = []
        for text in texts:
            tokens = self.tokenized(text)
            if not WORD_CHARACTER.search(tokens):
                values.append(0.0)  # no word to read (the package refuses it): neither plain nor hard
                continue
            grades = readability.getmeasures(tokens, lang="en")["readability grades"]
            values.append((grades["FleschReadingEase"] - self.CENTRE) / self.SCALE)
        return np.array(values, dtype=np.float64)


# The embedded rewards that are not toxicity (source role toxicity_classifier, for the recovery suite)
SCORERS = {SentimentScorer.name: SentimentScorer, ReadabilityScorer.name: ReadabilityScorer}


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
