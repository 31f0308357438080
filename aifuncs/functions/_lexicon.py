"""A sentiment lexicon beside the embeddings, for ai_analyze_sentiment answered by an embedding model.

An embedding model places "I have a question about my refund" near "I want my money back": it knows the
topic better than the tone. VADER (Hutto and Gilbert, 2014; the `vadersentiment` package) scores the tone
from a lexicon of rated words with rules for negation, intensifiers and punctuation. The two together: a
clear tone from the lexicon decides; a text with no clear tone that reads as a request, or sits nearest
the neutral examples, is neutral; otherwise the examples nearest the text decide.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import numpy as np

_CLEAR = 0.3  # |compound| at or above which the lexicon's tone decides
_MIXED = 0.2  # both the positive and the negative share of the words at least this: mixed
# Where a text turns ("great, but it broke"), each part is read on its own: clear tones both ways are mixed.
_TURNS = re.compile(r"\b(?:but|however|although|though|yet|except)\b|;", re.IGNORECASE)
_log = logging.getLogger("aifuncs")


@functools.cache
def _analyzer() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        _log.warning(
            "ai_analyze_sentiment: the vadersentiment package is missing (pip install 'aifuncs[local]');"
            " the embedding model answers alone, less accurately"
        )
        return None
    return SentimentIntensityAnalyzer()


def sentiment_with_lexicon(texts: list[str], scores: dict[str, np.ndarray]) -> list[str] | None:
    """Each text's sentiment from the lexicon and the embedding scores of the labels positive, negative,
    neutral and mixed; None when the lexicon is not installed."""
    analyzer = _analyzer()
    if analyzer is None:
        return None
    answers = []
    for i, text in enumerate(texts):
        tone = analyzer.polarity_scores(text)
        near = {label: float(values[i]) for label, values in scores.items()}
        if _mixed(analyzer, text, tone):
            answers.append("mixed")
        elif abs(tone["compound"]) < _CLEAR and (
            "?" in text or near["neutral"] >= max(near["positive"], near["negative"])
        ):
            answers.append("neutral")
        elif tone["compound"] >= _CLEAR:
            answers.append("positive")
        elif tone["compound"] <= -_CLEAR:
            answers.append("negative")
        else:
            answers.append(max(("positive", "negative", "neutral"), key=near.__getitem__))
    return answers


def _mixed(analyzer: Any, text: str, tone: dict[str, float]) -> bool:
    if tone["pos"] >= _MIXED and tone["neg"] >= _MIXED:
        return True
    parts = [p for p in _TURNS.split(text) if p.strip()]
    if len(parts) < 2:
        return False
    tones = [analyzer.polarity_scores(p)["compound"] for p in parts]
    return max(tones) >= _CLEAR and min(tones) <= -_CLEAR
