"""Plain-text documents (product docs, manuals) for domain adaptation.

A document longer than one training row is cut into windows of at most `max_length`
tokens. Consecutive windows share `overlap` tokens: the shared tokens are context only
(no loss), so every token is learned once and none is learned without the text before
it. Windows are cut at token boundaries but stored as text ({"context", "text"}), so
the prepared files stay readable.
"""

from __future__ import annotations

from tunekit.data.template import IGNORE, Tokenized, missing_bos


def special_ids(tokenizer) -> tuple[int | None, int | None]:
    """(BOS to put before a document if the tokenizer normally adds one, EOS after it)."""
    return missing_bos(tokenizer, []), tokenizer.eos_token_id


def chunk_document(tokenizer, text: str, max_length: int, overlap: int) -> list[dict]:
    """Rows {"text", "context", "doc_start", "doc_end"} of at most max_length tokens each."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    n = len(offsets)
    room = max_length - 2  # BOS and EOS may be added around the window
    if n <= room:
        return [{"text": text, "context": "", "doc_start": True, "doc_end": True}]
    rows, new_from = [], 0
    while new_from < n:
        ctx_from = max(0, new_from - overlap) if new_from else 0
        end = min(n, ctx_from + room)
        c0, s0, e0 = offsets[ctx_from][0], offsets[new_from][0], offsets[end - 1][1]
        rows.append({"text": text[s0:e0], "context": text[c0:s0], "doc_start": new_from == 0, "doc_end": end == n})
        new_from = end
    return rows


def tokenize_text(tokenizer, text: str, context: str = "", doc_start: bool = True, doc_end: bool = True) -> Tokenized:
    """Ids and labels of one window: loss on `text` (and the closing EOS), none on `context`."""
    bos, eos = special_ids(tokenizer)
    full = context + text
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [t if s >= len(context) else IGNORE for t, (s, _) in zip(ids, enc["offset_mapping"])]
    if doc_start and bos is not None:
        ids, labels = [bos] + ids, [IGNORE] + labels
    if doc_end and eos is not None:
        ids, labels = ids + [eos], labels + [eos]
    return Tokenized(ids, labels)
