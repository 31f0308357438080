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
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aifuncs.errors import ConfigError
from aifuncs.governance.pii import find_pii, mask_pii

__all__ = ["Guard", "Guardrails", "Screened", "off_topic", "parse_guardrails", "screen"]

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
    """A batch of texts after a guard: the texts to use (masked where told) and each row's block reason."""

    texts: list[str | None]
    blocked: list[str | None]  # e.g. "pii (card)", "invalid keyword 'project falcon'"
    decisions: Counter[str]  # reason -> rows, masks included ("masked pii (email)")


def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    if not keywords:
        return None
    return re.compile("|".join(rf"(?<!\w){re.escape(k)}(?!\w)" for k in keywords), re.IGNORECASE)


def screen(guard: Guard, texts: list[str | None]) -> Screened:
    pattern = _keyword_pattern(guard.invalid_keywords)
    kept: list[str | None] = []
    blocked: list[str | None] = []
    decisions: Counter[str] = Counter()
    for text in texts:
        reason = None
        if text is not None and pattern is not None and (hit := pattern.search(text)):
            reason = f"invalid keyword {hit.group().lower()!r}"
        if text is not None and reason is None and guard.pii != "NONE":
            findings = find_pii(text)
            if findings:
                kinds = ", ".join(sorted({f.kind for f in findings}))
                if guard.pii == "BLOCK":
                    reason = f"pii ({kinds})"
                else:
                    text = mask_pii(text, findings)
                    decisions[f"masked pii ({kinds})"] += 1
        if reason is not None:
            decisions[reason] += 1
            text = None
        kept.append(text)
        blocked.append(reason)
    return Screened(kept, blocked, decisions)


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
