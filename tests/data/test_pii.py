"""PII masking: e-mails, phones and Luhn-valid cards are replaced and counted; dates,
times, prices, versions and order numbers are left alone; masking is idempotent."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tunekit.data.pii import KINDS, luhn_valid, mask_pii

EMAILS = ["jo.doe@example.com", "a+b@mail.co.uk", "Jo_Doe@sub.example.org", "first.last-x@my-company.io"]
PHONES = [
    "+44 20 7946 0958", "+1-202-555-0143", "+1 (202) 555-0143", "+44 (0)20 7946 0958", "+14155552671",
    "+33 1 23 45 67 89", "+49 30 123456", "+31 6 12345678", "+49 (0)30 1234 5678",
    "(202) 555-0143", "202-555-0143", "202.555.0143", "202 555 0143", "1-800-555-0199",
    "020 7946 0958", "(020) 7946 0958", "01 23 45 67 89", "01.23.45.67.89", "030/1234567", "06-12345678", "0171 1234567",
]
CARDS = ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5555 5555 5555 4444",
         "3782 822463 10005", "378282246310005", "6011000990139424", "4222222222222"]
NOT_PII = [
    "2024-03-15", "15/03/2024", "15.03.2024", "05/03/2024", "2024/03/15", "03-15-2024", "05.03.2024 10:30",
    "05 03 2024 10:30", "2024-03-15 14:30:00", "14:30", "12:30-13:45", "$1,299.99", "1 299,00 €", "€0.99",
    "v1.2.3", "1.2.3", "10.0.19041.1", "0.10.2", "version 2.0.1-rc1", "order 48213", "ticket #0012345678",
    "ticket 1234567", "192.168.100.200", "1 000 000 000", "3.14159", "+5 days", "+1.5%", "2+2=4",
    "room 101-102", "1990-2000", "pp. 123-456", "20240315", "SKU 000-123-4567", "ISBN 978-3-16-148410-0",
    "4111 1111 1111 1112", "1234 5678 9012 3456", "user@localhost", "@handle", "id 4111111111111111a",
]


@pytest.mark.parametrize("kind,items", [("email", EMAILS), ("phone", PHONES), ("card", CARDS)])
def test_each_kind_is_masked_in_context(kind, items):
    token = f"[{kind.upper()}]"
    for item in items:
        for template in ("{}", "Call {} today.", "({})", "x: {}, thanks", "tel:{}\nbye"):
            text = template.format(item)
            out, counts = mask_pii(text, KINDS)
            assert out == template.format(token), (item, template, out)
            assert counts == Counter({kind: 1}), (item, counts)


@pytest.mark.parametrize("text", NOT_PII)
def test_dates_times_prices_versions_and_order_numbers_are_kept(text):
    for template in ("{}", "On {} we shipped.", "({})"):
        assert mask_pii(template.format(text), KINDS) == (template.format(text), Counter())


def test_counts_per_kind_and_only_the_requested_kinds():
    text = ("Mail jo@x.io or ann@y.org, call +44 20 7946 0958 or 202-555-0143 / 202.555.0199, "
            "card 4111 1111 1111 1111 exp 12/25, order 48213 on 2024-03-15.")
    out, counts = mask_pii(text, KINDS)
    assert counts == Counter({"email": 2, "phone": 3, "card": 1})
    assert out == ("Mail [EMAIL] or [EMAIL], call [PHONE] or [PHONE] / [PHONE], "
                   "card [CARD] exp 12/25, order 48213 on 2024-03-15.")
    only_cards, counts = mask_pii(text, ["card"])
    assert counts == Counter({"card": 1}) and "jo@x.io" in only_cards and "202-555-0143" in only_cards
    assert mask_pii(text, []) == (text, Counter())


def test_card_numbers_are_never_phones():
    for card in ("0000 0000 0000 0000", "5555-5555-5555-4444", "4222222222222", "3782 822463 10005"):
        assert mask_pii(f"use {card} now", ["phone", "card"]) == ("use [CARD] now", Counter({"card": 1})), card
        assert mask_pii(f"use {card} now", ["phone"]) == (f"use {card} now", Counter()), card


def test_groups_around_a_card_stay():
    assert mask_pii("4111 1111 1111 1111 123", KINDS)[0] == "[CARD] 123"
    assert mask_pii("ref 1234 4111 1111 1111 1111", KINDS)[0] == "ref 1234 [CARD]"
    assert mask_pii("4111 1111 1111 1111 5555 5555 5555 4444", KINDS) == ("[CARD] [CARD]", Counter({"card": 2}))
    assert mask_pii("card 4111 1111 1111 1111, phone 020 7946 0958", KINDS)[0] == "card [CARD], phone [PHONE]"


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005") and luhn_valid("0")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234567890123456")


def test_masking_is_idempotent():
    rng = random.Random(0)
    pool = EMAILS + PHONES + CARDS + NOT_PII + ["hello", "the", ",", ".", "(", ")", "-", "+", "/", "\n"]
    for _ in range(300):
        text = " ".join(rng.choice(pool) for _ in range(rng.randint(1, 12)))
        once, _ = mask_pii(text, KINDS)
        assert mask_pii(once, KINDS) == (once, Counter()), text


def test_unknown_kind_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="ssn.*email, phone, card"):
        mask_pii("x", ["email", "ssn"])


def test_long_text_with_many_numbers_is_handled():
    text = " ".join(f"step {i}: 2024-03-{i % 28 + 1:02d} order {10000 + i} ({i}.{i % 7}.{i % 3})" for i in range(2000))
    assert mask_pii(text, KINDS) == (text, Counter())
    text += " call 020 7946 0958"
    assert mask_pii(text, KINDS)[1] == Counter({"phone": 1})
