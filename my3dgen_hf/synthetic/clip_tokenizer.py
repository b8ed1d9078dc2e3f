"""CLIP BPE tokenizers built offline: from CLIP's own ``bpe_simple_vocab_16e6.txt.gz``, or learned on a corpus.

The real CLIP vocabulary (49,408 tokens) ships as ``bpe_simple_vocab_16e6.txt.gz`` inside the ``open_clip_torch``
(and OpenAI ``clip``) packages: a header line, then one merge ``"a b"`` per line. :func:`read_clip_bpe` turns it
into the ``vocab`` (token -> id) and ``merges`` that ``transformers.CLIPTokenizer`` needs (256 byte symbols, the
same 256 with ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>``: the ids of OpenAI's
CLIP), :func:`write_clip_tokenizer_files` writes them as ``vocab.json`` + ``merges.txt`` (the files
``CLIPTokenizer.from_pretrained`` reads). :func:`find_clip_bpe` locates the file without importing ``open_clip``
(its model code imports torchvision).

Without that file, :func:`learn_bpe` learns a vocabulary of the same format on a corpus (e.g. every SynthObjects
caption): the byte-level base keeps every text encodable, and each corpus word becomes one token.
:func:`build_clip_tokenizer` picks between the two (``source="auto"``: the real vocabulary when it is found).
"""

from __future__ import annotations

import collections
import gzip
import importlib.util
import itertools
import json
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "BOS",
    "CLIP_BPE_FILENAME",
    "EOS",
    "build_clip_tokenizer",
    "clip_tokenizer_from_files",
    "find_clip_bpe",
    "learn_bpe",
    "read_clip_bpe",
    "save_clip_tokenizer",
    "tokenizer_bpe",
    "write_clip_tokenizer_files",
]

CLIP_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
CLIP_NUM_MERGES = 49152 - 256 - 2  # what CLIP's SimpleTokenizer keeps of the file: 48,894 merges -> 49,408 tokens
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenization (the pattern of transformers.CLIPTokenizer and of CLIP's simple_tokenizer.py).
_WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

PathLike = str | os.PathLike


def _byte_symbols() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def _base_vocab() -> list[str]:
    chars = _byte_symbols()
    return chars + [c + "</w>" for c in chars]


def find_clip_bpe(path: PathLike | None = None) -> Path | None:
    """``path`` if given (must exist), else ``$MY3DGEN_CLIP_BPE``, else the file inside an installed ``open_clip``
    or ``clip`` package (found without importing it); None when there is none."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"CLIP BPE file not found: {p}")
        return p
    env = os.environ.get("MY3DGEN_CLIP_BPE")
    if env and Path(env).is_file():
        return Path(env)
    for package in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            candidate = Path(folder) / CLIP_BPE_FILENAME
            if candidate.is_file():
                return candidate
    return None


def read_clip_bpe(path: PathLike, num_merges: int | None = CLIP_NUM_MERGES) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's ``bpe_simple_vocab_16e6.txt(.gz)`` -> (vocab token -> id, merges [(a, b), ...] in rank order).

    The first line is a header; CLIP keeps the next ``num_merges`` merges (None: all of them). Ids: the 256 byte
    symbols, the same with ``</w>``, the merged tokens in rank order, then ``<|startoftext|>`` and
    ``<|endoftext|>`` (49,406 and 49,407 for the real file)."""
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path) as f:
            raw = f.read()
    else:
        raw = path.read_bytes()
    lines = raw.decode("utf-8").split("\n")[1:]
    lines = [line for line in lines if line.strip()]
    if num_merges is not None:
        lines = lines[:num_merges]
    merges = []
    for line in lines:
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: not a merge line: {line!r}")
        merges.append((parts[0], parts[1]))
    return _vocab_from_merges(merges), merges


def _vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    tokens = _base_vocab() + ["".join(m) for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        if token in vocab:
            raise ValueError(f"token {token!r} appears twice in the vocabulary")
        vocab[token] = len(vocab)
    return vocab


def write_clip_tokenizer_files(folder: PathLike, vocab: dict[str, int], merges: list[tuple[str, str]]) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (``#version: 0.2`` header, one ``"a b"`` per line) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return folder


def clip_tokenizer_from_files(vocab: dict[str, int], merges: list[tuple[str, str]], model_max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` over ``vocab`` and ``merges`` (pad = ``<|endoftext|>``, as OpenAI's)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m) for m in merges], model_max_length=model_max_length)


def tokenizer_bpe(tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a ``transformers.CLIPTokenizer`` backed by ``tokenizers`` (read from its BPE model)."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def save_clip_tokenizer(tokenizer, folder: PathLike) -> Path:
    """``tokenizer.save_pretrained(folder)`` plus ``vocab.json`` and ``merges.txt``: transformers 5 writes only
    ``tokenizer.json``; older versions (and the slow tokenizer) need the two files."""
    folder = Path(folder)
    vocab, merges = tokenizer_bpe(tokenizer)
    write_clip_tokenizer_files(folder, vocab, merges)
    tokenizer.save_pretrained(folder)
    return folder


def _words(text: str) -> list[str]:
    """CLIP's normalization and pre-tokenization of ``text`` (lower case, collapsed whitespace) into words."""
    import regex

    text = " ".join(text.split()).lower()
    return regex.findall(_WORD_PATTERN, text)


def learn_bpe(texts: Iterable[str], num_merges: int | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-pair encoding learned on ``texts`` in CLIP's format -> (vocab, merges).

    Words are CLIP's (see ``_words``) in its byte-to-unicode alphabet, the last symbol with ``</w>``. The most
    frequent adjacent pair is merged until every word is one token (or ``num_merges`` merges); ties go to the
    lexicographically smallest pair, so the result is a pure function of the word counts."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    sym = bytes_to_unicode()  # byte value -> symbol
    counts = collections.Counter(w for t in texts for w in _words(t) if w not in (BOS, EOS))
    words = {}
    for w, n in counts.items():
        s = [sym[b] for b in w.encode("utf-8")]
        s[-1] += "</w>"
        words[tuple(s)] = words.get(tuple(s), 0) + n
    merges: list[tuple[str, str]] = []
    while num_merges is None or len(merges) < num_merges:
        pairs: collections.Counter = collections.Counter()
        for w, n in words.items():
            for pair in itertools.pairwise(w):
                pairs[pair] += n
        if not pairs:
            break
        best_count = max(pairs.values())
        best = min(p for p, c in pairs.items() if c == best_count)
        merges.append(best)
        merged = best[0] + best[1]
        new_words = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words
    return _vocab_from_merges(merges), merges


def build_clip_tokenizer(
    folder: PathLike | None = None,
    source: str = "auto",
    bpe_path: PathLike | None = None,
    corpus: Iterable[str] | None = None,
    model_max_length: int = 77,
):
    """A ``transformers.CLIPTokenizer``: ``source="clip"`` from CLIP's BPE file (``bpe_path`` or
    :func:`find_clip_bpe`), ``"corpus"`` learned on ``corpus`` with :func:`learn_bpe`, ``"auto"`` the first when
    the file is found, else the second. With ``folder`` it is saved there (``vocab.json``, ``merges.txt`` and
    the tokenizer files of :func:`save_clip_tokenizer`), so ``CLIPTokenizer.from_pretrained(folder)`` loads it. The
    returned tokenizer has ``.vocab_source`` ("clip" or "corpus"; not saved)."""
    if source not in ("auto", "clip", "corpus"):
        raise ValueError(f"source must be 'auto', 'clip' or 'corpus', got {source!r}")
    bpe = find_clip_bpe(bpe_path) if source in ("auto", "clip") else None
    if source == "clip" and bpe is None:
        raise FileNotFoundError(
            f"CLIP's {CLIP_BPE_FILENAME} was not found: install open_clip_torch (`pip install open_clip_torch "
            "--no-deps` is enough, the file ships in the package), set MY3DGEN_CLIP_BPE, or pass its path"
        )
    if bpe is not None:
        vocab, merges = read_clip_bpe(bpe)
        used = "clip"
    else:
        if corpus is None:
            raise ValueError("a corpus is needed to learn a vocabulary when CLIP's BPE file is not used")
        vocab, merges = learn_bpe(corpus)
        used = "corpus"
    tokenizer = clip_tokenizer_from_files(vocab, merges, model_max_length)
    if folder is not None:
        save_clip_tokenizer(tokenizer, folder)
    tokenizer.vocab_source = used
    return tokenizer
