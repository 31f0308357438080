"""Guardrails in the AI gateway's shape: what may go into a model and what may come out.

    {"input": {"pii": {"behavior": "BLOCK"}, "invalid_keywords": ["project falcon"]},
     "output": {"pii": {"behavior": "MASK"}}}

`pii`: NONE (the default), BLOCK (the row is not sent, or its answer not given) or MASK (each email, phone,
card, IBAN, IP address or SSN becomes "[EMAIL]", "[PHONE]"... before the text goes on; see `pii.py`).
`invalid_keywords`: a row containing one (as a whole word or phrase, any case) is blocked. `valid_topics`
(input only): a row whose embedding is not within `topic_threshold` (cosine, 0.25 unless set) of some
topic's is blocked; the embeddings come from `topic_endpoint`, else the default embedding endpoint. A
blocked row is a per-row error (or the query's, under failOnError); its reason names the rule, the kind of
PII or the nearest topic, never the value. Databricks' `safety` needs a model this version does not ship:
it is refused.

Texts are read as people read them: a keyword matches whatever letters it is written with (full-width and
mathematical forms, Cyrillic and Greek look-alikes, accents), with zero-width and soft-hyphen characters
dropped and any run of spaces or line breaks between its words; PII is looked for with those invisible
characters dropped too. A model parameter's texts (stop sequences, extra_params) go to the model as well:
`screen_parameters` blocks the request when one holds a keyword or PII.

A row is whatever the model is sent or answers: a text, or a STRUCT, list or map holding texts (a chat's
messages, a record's fields, an HTTP request's body). `screen_values` applies the guard to every text in it,
nested too: one blocked text blocks the row, and each masked text is masked where it stands.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aifuncs.errors import ConfigError
from aifuncs.governance.pii import find_pii, mask_pii

__all__ = [
    "Guard",
    "Guardrails",
    "Screened",
    "off_topic",
    "parse_guardrails",
    "screen",
    "screen_parameters",
    "screen_values",
    "skeleton",
    "texts_in",
]

BEHAVIORS = ("NONE", "BLOCK", "MASK")


DEFAULT_TOPIC_THRESHOLD = 0.25  # MiniLM: on-topic support questions scored 0.37-0.56, small talk 0.09-0.14


@dataclass(frozen=True)
class Guard:
    pii: str = "NONE"
    invalid_keywords: tuple[str, ...] = ()
    valid_topics: tuple[str, ...] = ()
    topic_endpoint: str | None = None  # the embedding endpoint for valid_topics (None: the default one)
    topic_threshold: float = DEFAULT_TOPIC_THRESHOLD

    @property
    def active(self) -> bool:
        return self.pii != "NONE" or bool(self.invalid_keywords) or bool(self.valid_topics)

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.pii != "NONE":
            found["pii"] = {"behavior": self.pii}
        if self.invalid_keywords:
            found["invalid_keywords"] = list(self.invalid_keywords)
        if self.valid_topics:
            found["valid_topics"] = list(self.valid_topics)
            if self.topic_endpoint:
                found["topic_endpoint"] = self.topic_endpoint
            if self.topic_threshold != DEFAULT_TOPIC_THRESHOLD:
                found["topic_threshold"] = self.topic_threshold
        return found


@dataclass(frozen=True)
class Guardrails:
    input: Guard = field(default_factory=Guard)
    output: Guard = field(default_factory=Guard)

    @property
    def active(self) -> bool:
        return self.input.active or self.output.active

    def to_dict(self) -> dict[str, Any]:
        return {
            side: guard.to_dict()
            for side, guard in (("input", self.input), ("output", self.output))
            if guard.active
        }


def _guard(side: str, config: Any) -> Guard:
    if not isinstance(config, dict):
        raise ConfigError(f'guardrails.{side} is an object, e.g. {{"pii": {{"behavior": "MASK"}}}}.')
    if config.get("safety"):
        raise ConfigError(
            f"guardrails.{side}.safety needs a model this version does not ship; leave it out (pii,"
            " invalid_keywords and valid_topics are built in)."
        )
    fields = {"pii", "invalid_keywords", "safety"} | (
        {"valid_topics", "topic_endpoint", "topic_threshold"} if side == "input" else set()
    )
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ConfigError(
            f"guardrails.{side} has unknown fields {unknown}; fields: {', '.join(sorted(fields - {'safety'}))}."
        )
    topics = config.get("valid_topics") or []
    if not isinstance(topics, list) or not all(isinstance(t, str) and t.strip() for t in topics):
        raise ConfigError(
            f'guardrails.{side}.valid_topics is a list of topics, e.g. ["billing"], not {topics!r}.'
        )
    threshold = config.get("topic_threshold", DEFAULT_TOPIC_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not -1 <= threshold <= 1:
        raise ConfigError(
            f"guardrails.{side}.topic_threshold is a cosine similarity between -1 and 1, not {threshold!r}."
        )
    endpoint = config.get("topic_endpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or not endpoint):
        raise ConfigError(
            f"guardrails.{side}.topic_endpoint is an embedding endpoint's name, not {endpoint!r}."
        )
    pii = config.get("pii") or {}
    if not isinstance(pii, dict) or set(pii) - {"behavior"}:
        raise ConfigError(f'guardrails.{side}.pii is {{"behavior": "NONE" | "BLOCK" | "MASK"}}, not {pii!r}.')
    behavior = str(pii.get("behavior", "NONE")).upper()
    if behavior not in BEHAVIORS:
        raise ConfigError(
            f"guardrails.{side}.pii.behavior is one of {', '.join(BEHAVIORS)}, not {pii.get('behavior')!r}."
        )
    keywords = config.get("invalid_keywords") or []
    if not isinstance(keywords, list) or not all(isinstance(k, str) and k.strip() for k in keywords):
        raise ConfigError(
            f"guardrails.{side}.invalid_keywords is a list of words or phrases, not {keywords!r}."
        )
    return Guard(
        behavior,
        tuple(k.strip() for k in keywords),
        tuple(t.strip() for t in topics),
        endpoint,
        float(threshold),
    )


def parse_guardrails(config: Any) -> Guardrails:
    if not isinstance(config, dict):
        raise ConfigError('guardrails is an object with "input" and/or "output".')
    unknown = sorted(set(config) - {"input", "output"})
    if unknown:
        raise ConfigError(f"guardrails has unknown fields {unknown}; fields: input, output.")
    return Guardrails(_guard("input", config.get("input", {})), _guard("output", config.get("output", {})))


@dataclass
class Screened:
    """A batch of rows after a guard: the rows to use (masked where told) and each row's block reason."""

    texts: list[Any]  # each row as it goes on (its texts masked where told); None where blocked
    blocked: list[str | None]  # e.g. "pii (card)", "invalid keyword 'project falcon'"
    decisions: Counter[str]  # reason -> rows, masks included ("masked pii (email)")


# Letters of other scripts that read as Latin ones (Unicode's confusables, the common lower and upper cases)
_LOOK_ALIKES = str.maketrans(
    "аеорсухіјѕԁԛԝһӏАВЕКМНОРСТХІЈЅ"  # Cyrillic
    "αβεικνορτυχΑΒΕΗΙΚΜΝΟΡΤΥΧΖ",  # Greek
    "aeopcyxijsdqwhlABEKMHOPCTXIJSabeikvoptuxABEHIKMNOPTYXZ",
)


def _visible(text: str) -> str:
    """`text` without format characters (zero-width spaces and joiners, soft hyphens, direction marks)."""
    if text.isascii():
        return text
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def skeleton(text: str) -> str:
    """What a text reads as, for matching keywords: compatibility forms folded (full-width, mathematical
    letters), format characters and accents dropped, look-alike letters of other scripts as Latin ones."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if unicodedata.category(c) not in ("Cf", "Mn"))
    return unicodedata.normalize("NFC", kept).translate(_LOOK_ALIKES)


def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    if not keywords:
        return None
    # any run of white space between a phrase's words, each word as its skeleton
    phrases = (r"\s+".join(re.escape(word) for word in skeleton(k).split()) for k in keywords)
    return re.compile("|".join(rf"(?<!\w){phrase}(?!\w)" for phrase in phrases), re.IGNORECASE)


def _screen_text(
    guard: Guard, pattern: re.Pattern[str] | None, text: str
) -> tuple[str, str | None, str | None]:
    """One text: (the text to use, why it is blocked or None, the mask applied or None)."""
    if pattern is not None and (hit := pattern.search(skeleton(text))):
        return text, f"invalid keyword {' '.join(hit.group().split()).lower()!r}", None
    if guard.pii != "NONE":
        visible = _visible(text)  # a zero-width character inside a number hides it from no one
        findings = find_pii(visible)
        if findings:
            kinds = ", ".join(sorted({f.kind for f in findings}))
            if guard.pii == "BLOCK":
                return text, f"pii ({kinds})", None
            return mask_pii(visible, findings), None, f"masked pii ({kinds})"
    return text, None, None


def screen(guard: Guard, texts: list[str | None]) -> Screened:
    """Plain texts, one a row."""
    pattern = _keyword_pattern(guard.invalid_keywords)
    kept: list[Any] = []
    blocked: list[str | None] = []
    decisions: Counter[str] = Counter()
    for text in texts:
        reason = None
        if text is not None:
            text, reason, masked = _screen_text(guard, pattern, text)
            if masked is not None:
                decisions[masked] += 1
        if reason is not None:
            decisions[reason] += 1
            text = None
        kept.append(text)
        blocked.append(reason)
    return Screened(kept, blocked, decisions)


def texts_in(value: Any) -> Iterator[str]:
    """Every text in a row's value, nested ones too, in order (a STRUCT's field names are not texts)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from texts_in(item)
    elif isinstance(value, list | tuple):  # lists; a MAP's entries come as (key, value) tuples
        for item in value:
            yield from texts_in(item)


def _replace_texts(value: Any, texts: Iterator[str]) -> Any:
    """`value` with its texts replaced by the next of `texts`, in the order `texts_in` yields them."""
    if isinstance(value, str):
        return next(texts)
    if isinstance(value, dict):
        return {key: _replace_texts(item, texts) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_replace_texts(item, texts) for item in value)
    if isinstance(value, list):
        return [_replace_texts(item, texts) for item in value]
    return value


def screen_values(guard: Guard, rows: list[Any]) -> Screened:
    """Rows of any shape: every text in a row is screened; the first blocked text blocks the row (its reason
    the row's), masked texts are masked in place, and each decision counts once per row."""
    pattern = _keyword_pattern(guard.invalid_keywords)
    kept: list[Any] = []
    blocked: list[str | None] = []
    decisions: Counter[str] = Counter()
    for row in rows:
        reason: str | None = None
        masks: set[str] = set()
        screened: list[str] = []
        for text in texts_in(row):
            text, reason, masked = _screen_text(guard, pattern, text)
            if reason is not None:
                break
            if masked is not None:
                masks.add(masked)
            screened.append(text)
        if reason is not None:
            decisions[reason] += 1
            kept.append(None)
        elif masks:
            decisions.update(masks)
            kept.append(_replace_texts(row, iter(screened)))
        else:
            kept.append(row)
        blocked.append(reason)
    return Screened(kept, blocked, decisions)


def screen_parameters(guard: Guard, parameters: dict[str, Any] | None) -> str | None:
    """Why a request's model parameters (stop sequences, extra_params...) are refused, or None: they reach
    the model with every row, so a keyword or PII in any of their texts blocks the request (PII is blocked
    even where rows are masked: a parameter is not a text to rewrite)."""
    if not parameters or not (guard.pii != "NONE" or guard.invalid_keywords):
        return None
    found = screen_values(guard, [parameters])
    reason = found.blocked[0] or next(iter(found.decisions), None)
    return None if reason is None else f"{reason.removeprefix('masked ')} in a model parameter"


def off_topic(
    rows: list[list[float]], topics: list[list[float]], names: tuple[str, ...], threshold: float
) -> list[str | None]:
    """For each row's embedding, None when it is within `threshold` (cosine) of some topic's, else the reason."""
    import numpy as np

    texts = np.asarray(rows, dtype=np.float64)
    anchors = np.asarray(topics, dtype=np.float64)
    texts /= np.maximum(np.linalg.norm(texts, axis=1, keepdims=True), 1e-12)
    anchors /= np.maximum(np.linalg.norm(anchors, axis=1, keepdims=True), 1e-12)
    scores = texts @ anchors.T
    reasons: list[str | None] = []
    for row in scores:
        best = int(row.argmax())
        reasons.append(
            None
            if row[best] >= threshold
            else f"off topic (nearest {names[best]!r} at {row[best]:.2f}, needs {threshold:g})"
        )
    return reasons
