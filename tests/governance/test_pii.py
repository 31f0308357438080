"""The built-in PII rules on synthetic data: every valid value found, near misses rarely flagged."""

from __future__ import annotations

import random

from aifuncs.governance.pii import find_pii, luhn_ok, mask_pii

rng = random.Random(7)


def luhn_complete(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


def iban(country: str, length: int) -> str:
    body = "".join(rng.choice("0123456789") for _ in range(length - 4))
    number = "".join(str(int(c, 36)) for c in body + country + "00")
    return f"{country}{98 - int(number) % 97:02d}{body}"


def valid_values() -> list[tuple[str, str]]:
    values = []
    for i in range(40):
        card = luhn_complete(
            rng.choice(["4", "51", "37", "6011"]) + "".join(rng.choice("0123456789") for _ in range(11))
        )
        spaced = " ".join(card[j : j + 4] for j in range(0, len(card), 4)) if i % 2 else card
        country, length = rng.choice([("DE", 22), ("GB", 22), ("FR", 27), ("NL", 18), ("ES", 24)])
        code = iban_gb() if country == "GB" else iban(country, length)
        values += [
            ("card", spaced),
            ("iban", code),
            (
                "email",
                f"{rng.choice(['ana', 'li.wei', 'j_smith+news'])}{i}@{rng.choice(['example.com', 'mail.co.uk', 'corp.io'])}",
            ),
            (
                "phone",
                rng.choice(
                    [
                        f"+1 415 555 {1000 + i}",
                        f"(212) 555-{2000 + i}",
                        f"+44 20 7946 {3000 + i}",
                        f"415-555-{4000 + i}",
                    ]
                ),
            ),
            ("ip", rng.choice([f"10.0.{i}.{i + 1}", f"2001:db8::{i + 1:x}"])),
        ]
    return values


def iban_gb() -> str:
    body = "NWBK" + "".join(rng.choice("0123456789") for _ in range(14))
    number = "".join(str(int(c, 36)) for c in body + "GB00")
    return f"GB{98 - int(number) % 97:02d}{body}"


def near_misses() -> list[str]:
    misses = []
    for i in range(40):
        card = luhn_complete("4" + "".join(rng.choice("0123456789") for _ in range(14)))
        broken = card[:-1] + str((int(card[-1]) + 1) % 10)  # fails Luhn
        good = iban("DE", 22)
        bad_iban = good[:10] + str((int(good[10]) + 1) % 10) + good[11:]
        misses += [
            f"card {broken}",
            f"iban {bad_iban}",
            f"write to ana{i} at example dot com",
            f"order #{100000 + i} shipped on 2026-11-{(i % 28) + 1:02d}",
            f"version 1.{i}.3 of build 20261201{i:02d}",
        ]
    return misses


def test_every_valid_value_is_found_and_near_misses_rarely() -> None:
    values = valid_values()
    assert len(values) == 200
    for kind, value in values:
        text = f"Please note: {value}, thanks."
        kinds = {f.kind for f in find_pii(text)}
        assert kind in kinds, (kind, value, kinds)
        masked = mask_pii(text)
        assert value not in masked and f"[{kind.upper()}]" in masked
    misses = near_misses()
    assert len(misses) == 200
    flagged = [m for m in misses if find_pii(m)]
    assert len(flagged) <= 10, flagged  # at most 5% false positives


def test_ssns_by_their_rules() -> None:
    assert [f.kind for f in find_pii("SSN 123-45-6789 on file")] == ["ssn"]
    assert find_pii("ids 000-12-3456, 666-12-3456, 900-12-3456, 123-00-4567") == []
