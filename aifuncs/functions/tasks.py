"""Task functions (ai_classify, ai_summarize...): a spec from `udfs/` bound at one call site.

The planner binds the constant arguments (labels, max_words, to_lang) into a `Task`: the prompt each row
becomes, the JSON schema the reply must follow (a grammar for local models, structured output for hosted
ones), and the parser that turns the reply into the function's value. The runtime applies both.
Answers are checked: a label outside the given labels is a per-row error, never a silent value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aifuncs._types import parse_replies, quote_ident
from aifuncs.errors import ArgumentError
from aifuncs.functions._lexicon import sentiment_with_lexicon
from aifuncs.functions.spec import FunctionSpec

MAX_LABELS = 100
MAX_LABEL_CHARS = 200
MASK = "[MASKED]"

# Languages ai_translate accepts, by name and by ISO 639-1 code.
LANGUAGES = {
    "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech", "cy": "Welsh",
    "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian",
    "eu": "Basque", "fa": "Persian", "fi": "Finnish", "fr": "French", "ga": "Irish", "gl": "Galician",
    "gu": "Gujarati", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "hy": "Armenian",
    "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ja": "Japanese", "ka": "Georgian", "kk": "Kazakh",
    "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "mk": "Macedonian", "ml": "Malayalam", "mr": "Marathi",
    "ms": "Malay", "mt": "Maltese", "nl": "Dutch", "no": "Norwegian", "pa": "Punjabi", "pl": "Polish",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian", "sq": "Albanian",
    "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "th": "Thai",
    "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese",
    "zh": "Chinese",
}  # fmt: skip


@dataclass(frozen=True)
class Task:
    function: str
    prompt: str  # the row's text replaces {text_param}
    text_param: str
    answer: str  # text | label | labels | struct | mask
    schema: str | None  # JSON schema (text) of the reply; None: free text
    result_type: str  # DuckDB DDL of the value
    labels: tuple[str, ...] = ()
    max_tokens: int = 512
    label_text: tuple[str, ...] = ("{label}",)
    label_examples: tuple[tuple[str, tuple[str, ...]], ...] = ()
    lexicon: str | None = None

    def label_texts(self) -> list[str]:
        """What an embedding model embeds for each label, label after label: its own example texts, or the
        phrasings filled with it (a phrase embeds closer to texts than a bare word)."""
        return [text for group in self._label_groups() for text in group]

    def _label_groups(self) -> list[tuple[str, ...]]:
        examples = dict(self.label_examples)
        return [
            examples.get(label) or tuple(t.replace("{label}", label) for t in self.label_text)
            for label in self.labels
        ]

    def identity(self) -> str:
        return json.dumps(
            [self.function, self.prompt, self.answer, self.schema, self.result_type, self.labels,
             self._label_groups(), self.lexicon]
        )  # fmt: skip

    def prompts(self, texts: list[str], max_chars: int | None) -> tuple[list[str], int]:
        """Each row's prompt, and how many texts were cut to fit the model's context."""
        placeholder = "{" + self.text_param + "}"
        cut = 0
        out = []
        for text in texts:
            if max_chars is not None and len(text) > max_chars:
                text, cut = text[:max_chars], cut + 1
            out.append(self.prompt.replace(placeholder, text))
        return out, cut

    def parse(
        self, replies: list[str | None], texts: list[str], target: pa.DataType
    ) -> tuple[pa.Array, list[str | None]]:
        """Replies -> values of the result type, with a message for each reply that does not fit."""
        if self.answer == "text":
            return pa.array([None if r is None else r.strip() for r in replies], target), [None] * len(
                replies
            )
        if self.answer == "struct":
            return parse_replies(pa.array(replies, pa.string()), target)
        values: list[Any] = []
        errors: list[str | None] = []
        for reply, text in zip(replies, texts, strict=True):
            try:
                values.append(self._parse_one(reply or "", text))
                errors.append(None)
            except ValueError as error:
                values.append(None)
                errors.append(f"{self.function}: {error}")
        return pa.array(values, target), errors

    def items_prompt(self, items: list[str]) -> str:
        """An aggregate's prompt over some of its group's values (or over partial answers, when reducing)."""
        return self.prompt.replace("{items}", "\n".join(f"- {item}" for item in items))

    def nearest_labels(
        self, embeddings: pa.Array, target: pa.DataType, texts: list[str] | None = None
    ) -> tuple[pa.Array, list[str | None]]:
        """Zero-shot classification by embeddings: the label texts' embeddings come first (`label_texts`),
        then the rows'. A label scores its texts' mean cosine similarity; where the task has a lexicon, it
        weighs in (`texts`: the rows)."""
        vectors = _matrix(embeddings)
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        groups = self._label_groups()
        count = sum(len(g) for g in groups)
        similarity = unit[count:] @ unit[:count].T
        bounds = np.cumsum([0, *map(len, groups)])
        scores = np.stack(
            [similarity[:, a:b].mean(axis=1) for a, b in zip(bounds, bounds[1:], strict=False)], 1
        )
        if self.lexicon == "sentiment" and texts is not None:
            chosen = sentiment_with_lexicon(texts, dict(zip(self.labels, scores.T, strict=True)))
            if chosen is not None:
                return pa.array(chosen, target), [None] * len(chosen)
        best = scores.argmax(axis=1)
        return pa.array([self.labels[i] for i in best], target), [None] * len(best)

    def _parse_one(self, reply: str, text: str) -> Any:
        data = _json(reply)
        if self.answer == "label":
            found = data.get("label") if isinstance(data, dict) else None
            return self._label(found if isinstance(found, str) else reply)
        if self.answer == "labels":
            found = data.get("labels") if isinstance(data, dict) else None
            if not isinstance(found, list):
                raise ValueError(f"the reply is not a list of labels: {_short(reply)}")
            return sorted({self._label(str(f)) for f in found}, key=self.labels.index)
        if self.answer == "boolean":
            found = data.get("answer") if isinstance(data, dict) else None
            if isinstance(found, bool):
                return found
            word = reply.strip().strip("\"'.").lower()
            if word in ("true", "yes", "false", "no"):
                return word in ("true", "yes")
            raise ValueError(f"the answer {_short(reply)} is not true or false")
        if self.answer == "mask":
            spans = data.get("spans") if isinstance(data, dict) else None
            if not isinstance(spans, list):
                raise ValueError(f"the reply lists no spans: {_short(reply)}")
            for span in sorted((s for s in spans if isinstance(s, str) and s.strip()), key=len, reverse=True):
                text = text.replace(span, MASK)
            return text
        raise ValueError(f"unknown answer kind {self.answer!r}")

    def _label(self, answer: str) -> str:
        wanted = answer.strip().strip("\"'.").lower()
        for label in self.labels:
            if label.lower() == wanted:
                return label
        raise ValueError(f"the answer {_short(answer)} is not one of the labels ({', '.join(self.labels)})")


def bind_task(spec: FunctionSpec, constants: dict[str, Any]) -> Task:
    """The task of one call site, its constant arguments checked; an `ArgumentError` names what is wrong."""
    text_param = next(p.name for p in spec.params if p.kind == "column")
    fill: dict[str, str] = {}
    labels: tuple[str, ...] = spec.labels
    answer, result_type, schema = spec.answer, spec.returns, None
    if "labels" in constants:
        labels, descriptions, typed = _labels(
            spec.name, constants["labels"], allow_schema=spec.answer == "struct"
        )
        fill["labels"] = "\n".join(
            f"- {label}" + (f": {descriptions[label]}" if descriptions.get(label) else "") for label in labels
        )
        if spec.answer == "struct":
            result_type = (
                "STRUCT(" + ", ".join(f"{quote_ident(n)} {typed.get(n, 'VARCHAR')}" for n in labels) + ")"
            )
    if spec.answer == "label":
        if constants.get("multiLabel"):
            answer, result_type = "labels", "VARCHAR[]"
            schema = {
                "type": "object",
                "properties": {
                    "labels": {
                        "type": "array",
                        "items": {"enum": list(labels)},
                        "minItems": 1,
                        "maxItems": len(labels),
                    }
                },
                "required": ["labels"],
            }
            fill["choice"] = "one or more"
        else:
            schema = {
                "type": "object",
                "properties": {"label": {"enum": list(labels)}},
                "required": ["label"],
            }
            fill["choice"] = "exactly one"
    elif spec.answer == "boolean":
        schema = {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"]}
    elif spec.answer == "mask":
        schema = {
            "type": "object",
            "properties": {
                "spans": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 16}
            },
            "required": ["spans"],
        }
    if "max_words" in constants:
        words = constants["max_words"]
        if not isinstance(words, int) or isinstance(words, bool) or words < 0:
            raise ArgumentError(
                f"{spec.name}: max_words must be a whole number of words (0: no limit), not {words!r}."
            )
        fill["max_words"] = str(words) if words else "as few"
    if "instruction" in constants:
        instruction = constants["instruction"]
        if not isinstance(instruction, str) or not instruction.strip():
            raise ArgumentError(f"{spec.name}: the instruction must say what to do with the group's values.")
        fill["instruction"] = instruction.strip()
    if "predicate" in constants:
        predicate = constants["predicate"]
        if not isinstance(predicate, str) or not predicate.strip():
            raise ArgumentError(
                f"{spec.name}: the predicate must be a statement in words, such as 'mentions a refund'."
            )
        fill["predicate"] = predicate.strip()
    if "to_lang" in constants:
        fill["to_lang"] = _language(spec.name, constants["to_lang"])
    prompt = spec.prompt
    for name, value in fill.items():
        prompt = prompt.replace("{" + name + "}", value)
    max_tokens = spec.max_tokens
    if spec.name == "ai_summarize" and constants.get("max_words"):
        max_tokens = min(2048, int(constants["max_words"]) * 3 + 16)
    return Task(
        spec.name,
        prompt,
        text_param,
        answer,
        None if schema is None else json.dumps(schema),
        result_type,
        labels,
        max_tokens,
        spec.label_text,
        spec.label_examples if labels == spec.labels else (),
        spec.lexicon if labels == spec.labels else None,
    )


def _labels(
    function: str, given: Any, *, allow_schema: bool
) -> tuple[tuple[str, ...], dict[str, str], dict[str, str]]:
    """Labels from a list, or from JSON text: {"label": "description"} or (ai_extract) a JSON schema."""
    descriptions: dict[str, str] = {}
    typed: dict[str, str] = {}
    if isinstance(given, str):
        try:
            parsed = json.loads(given)
        except json.JSONDecodeError:
            raise ArgumentError(
                f"{function}: labels must be a list of strings, or JSON text; {_short(given)} is neither."
            ) from None
        if (
            isinstance(parsed, dict)
            and allow_schema
            and ("properties" in parsed or parsed.get("type") == "object")
        ):
            given, typed = _schema_fields(function, parsed)
        elif isinstance(parsed, dict):
            descriptions = {str(k): str(v) for k, v in parsed.items()}
            given = list(descriptions)
        else:
            given = parsed
    if not isinstance(given, list) or not all(isinstance(g, str) for g in given):
        raise ArgumentError(f"{function}: labels must be a list of strings, such as ['bug', 'billing'].")
    labels: tuple[str, ...] = tuple(dict.fromkeys(g.strip() for g in given if g.strip()))
    if not labels:
        raise ArgumentError(f"{function}: the label list is empty; give at least one label.")
    if len(labels) > MAX_LABELS:
        raise ArgumentError(
            f"{function}: {len(labels)} labels is over the limit of {MAX_LABELS}; group them."
        )
    long = next((label for label in labels if len(label) > MAX_LABEL_CHARS), None)
    if long is not None:
        raise ArgumentError(f"{function}: the label {_short(long)} is over {MAX_LABEL_CHARS} characters.")
    return labels, descriptions, typed


_SCHEMA_TYPES = {"string": "VARCHAR", "integer": "BIGINT", "number": "DOUBLE", "boolean": "BOOLEAN"}


def _schema_fields(function: str, schema: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        raise ArgumentError(
            f"{function}: the JSON schema has no properties to extract: {_short(json.dumps(schema))}."
        )
    typed = {}
    for name, field in properties.items():
        kind = field.get("type") if isinstance(field, dict) else None
        if kind not in _SCHEMA_TYPES:
            raise ArgumentError(
                f"{function}: property {name!r} of the JSON schema has type {kind!r}; use string, integer,"
                " number or boolean."
            )
        typed[name] = _SCHEMA_TYPES[kind]
    return list(properties), typed


def _language(function: str, given: Any) -> str:
    if not isinstance(given, str) or not given.strip():
        raise ArgumentError(f"{function}: to_lang must name a language, such as 'French' or 'fr'.")
    wanted = given.strip().lower()
    for code, name in LANGUAGES.items():
        if wanted in (code, name.lower()):
            return name
    raise ArgumentError(
        f"{function}: unknown language {given!r}. Use a language name or ISO 639-1 code, e.g."
        f" {', '.join(sorted(LANGUAGES.values())[:8])}..."
    )


def _json(reply: str) -> Any:
    text = reply.strip()
    fenced = re.match(r"^```[a-zA-Z]*\s*(.*?)\s*```$", text, re.DOTALL)
    try:
        return json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        return None


def _short(text: str, length: int = 60) -> str:
    return repr(text if len(text) <= length else text[: length - 3] + "...")


def pack_items(pieces: list[str], room: int) -> list[list[str]]:
    """Consecutive pieces in groups of at most `room` characters; a longer piece is cut to fit alone."""
    groups: list[list[str]] = [[]]
    used = 0
    for piece in pieces:
        piece = piece[:room]
        if groups[-1] and used + len(piece) + 3 > room:
            groups.append([])
            used = 0
        groups[-1].append(piece)
        used += len(piece) + 3
    return groups


def _matrix(vectors: pa.Array) -> np.ndarray:
    """Equal-length embeddings as one 2-D float array."""
    flat = np.asarray(pc.list_flatten(vectors).to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(len(vectors), -1)
