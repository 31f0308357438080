"""Built-in PII detection: rules and checksums, nothing downloaded, the same answer every time.

Found: email addresses, phone numbers (international or North American), payment card numbers (13-19
digits passing the Luhn check), IBANs (country, check digits and a body passing ISO 7064 mod 97-10), IPv4 and
IPv6 addresses, US social security numbers (not 000, 666 or 9xx areas). A number that only looks like one
(a card failing Luhn, an IBAN failing mod 97) is not PII: checksums keep false positives down.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["Finding", "find_pii", "mask_pii"]


@dataclass(frozen=True)
class Finding:
    kind: str  # email | phone | card | iban | ip | ssn
    start: int
    end: int


_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b"
)
# digits apart by up to three spaces, line breaks or dashes of any kind: "4111  1111 - 1111\n1111" is a card too
_CARD = re.compile(r"(?<![\d-])(?:\d[\s\-\u2010-\u2015\u2212]{0,3}){12,18}\d(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"  # +44 20 7946 0958
    r"|\(?\b[2-9]\d{2}\)?[ .-]?[2-9]\d{2}[ .-]\d{4}\b)"  # (415) 555-2671, 415-555-2671
)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")

# IBAN lengths by country (ISO 13616 registry)
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    iban = text.replace(" ", "")
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    moved = iban[4:] + iban[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return text.count(":") >= 2 or text.count(".") == 3


def find_pii(text: str) -> list[Finding]:
    """Every PII span of `text`, left to right, none overlapping (the first rule to claim a span keeps it)."""
    found: list[Finding] = []
    taken: list[tuple[int, int]] = []

    def claim(kind: str, start: int, end: int) -> None:
        if all(end <= a or start >= b for a, b in taken):
            taken.append((start, end))
            found.append(Finding(kind, start, end))

    for match in _EMAIL.finditer(text):
        claim("email", *match.span())
    for match in _IBAN.finditer(text):
        if iban_ok(match.group()):
            claim("iban", *match.span())
    for match in _SSN.finditer(text):
        claim("ssn", *match.span())
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            claim("card", *match.span())
    for pattern in (_IPV4, _IPV6):
        for match in pattern.finditer(text):
            if _ip_ok(match.group()):
                claim("ip", *match.span())
    for match in _PHONE.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 10 <= len(digits) <= 15:
            claim("phone", *match.span())
    return sorted(found, key=lambda f: f.start)


def mask_pii(text: str, findings: list[Finding] | None = None) -> str:
    """`text` with each PII span replaced by its kind in brackets: "[EMAIL]", "[CARD]"..."""
    findings = find_pii(text) if findings is None else findings
    parts, at = [], 0
    for finding in findings:
        parts += [text[at : finding.start], f"[{finding.kind.upper()}]"]
        at = finding.end
    parts.append(text[at:])
    return "".join(parts)
