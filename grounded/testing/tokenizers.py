"""Tokenizers built offline: the usual test tokenizers are hub downloads, and a test whose prompt
words become [UNK] proves nothing, so these hold every word of a corpus of the test's words."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterable, List, Sequence, Union

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_vocabulary(corpus: Iterable[str], extra_tokens: Sequence[str] = (), lowercase: bool = True) -> List[str]:
    """A BERT WordPiece vocabulary holding every word of `corpus` whole: the special tokens,
    `extra_tokens`, every character alone and as a "##" continuation (so any other word still
    tokenizes, letter by letter, never to [UNK]), then the words, each group sorted. Built, not
    trained: the same corpus gives the same ids on every run and every `tokenizers` version (its
    trainer orders tokens of equal frequency differently from run to run)."""
    lines: List[str] = list(corpus)
    # Punctuation that prompts use ("dog . cat .", "?") must be in the vocabulary as itself.
    words = {w for line in lines for w in _basic_words(line, lowercase)} | {".", "?", ","}
    chars = {c for w in words for c in w}
    specials = BERT_SPECIAL_TOKENS + [t for t in extra_tokens if t not in BERT_SPECIAL_TOKENS]
    pieces = sorted(chars) + sorted(f"##{c}" for c in chars) + sorted(words - chars)
    return specials + [p for p in pieces if p not in specials]


def wordpiece_tokenizer(out_dir: Union[str, Path], corpus: Iterable[str], extra_tokens: Sequence[str] = (),
                        lowercase: bool = True):
    """A `BertTokenizerFast` on `wordpiece_vocabulary(corpus)` saved (vocab.txt + tokenizer.json) to
    `out_dir`. `extra_tokens` are special tokens kept whole (e.g. "[DEC]" for BLIP). Returns the tokenizer."""
    from transformers import BertTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = wordpiece_vocabulary(corpus, extra_tokens, lowercase)
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # Read back as a saved folder: transformers 5's constructor takes no vocab_file (it ignores it).
    tokenizer = BertTokenizerFast.from_pretrained(out_dir, do_lower_case=lowercase)
    if extra_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_tokens)})
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def assert_no_unknown_tokens(tokenizer, texts: Iterable[str]) -> None:
    """Raise if any word of `texts` tokenizes to the unknown token."""
    unk = tokenizer.unk_token_id
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if unk in ids:
            raise AssertionError(f"{text!r} has unknown tokens: {tokenizer.convert_ids_to_tokens(ids)}")


def clip_bpe_path() -> Path:
    """CLIP's real BPE merges, as open_clip ships them (bpe_simple_vocab_16e6.txt.gz)."""
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def clip_tokenizer(out_dir: Union[str, Path], max_merges: int = 48894):
    """A transformers `CLIPTokenizerFast` with CLIP's real vocabulary and merges, rebuilt from
    open_clip's BPE file (the same construction open_clip's SimpleTokenizer uses), saved to `out_dir`."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merges = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")[1:max_merges + 1]
    merges = [tuple(m.split()) for m in merges]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    # CLIP's text encoders take 77 positions; without the limit, padding to max_length overflows.
    slow = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=77)
    slow.save_pretrained(out_dir)
    fast = CLIPTokenizerFast.from_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return fast


def _basic_words(text: str, lowercase: bool) -> List[str]:
    import re

    text = text.lower() if lowercase else text
    return re.findall(r"\w+|[^\w\s]", text)


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))
