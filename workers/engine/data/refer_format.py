"""The REFER format (github lichengunc/refer), written: one writer for the synthetic set and the annotators' export.

Layout under a data root, which ``workers.engine.data.refer`` reads::

    <dataset>/refs(<split_by>).p      pickle of a list of refs {ref_id, ann_id, image_id, split, sentences:
                                      [{sent_id, raw, sent, tokens}], sent_ids, category_id, file_name}
    <dataset>/instances.json          COCO images / annotations / categories
    images/train2014/<file_name>      the images

The published refs files were written by Python 2's ``cPickle``: :func:`dump_python2_pickle` writes that form
(``str`` values as latin-1 byte strings, protocol 0 or 2) so the reader is tested against it; the export writes
a Python 3 protocol-2 pickle (:func:`refs_pickle_bytes`), which keeps any Unicode text and which every reader
since Python 2.3 loads. Torch-free (the web process's export uses it).
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from collections.abc import Sequence
from io import BytesIO
from typing import Any

# Splits each published refs file holds (REFER's own tables). ``train`` is listed because it is in the
# files, though a zero-shot benchmark reports val and the test splits.
DATASET_SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    "refcoco": {"unc": ("train", "val", "testA", "testB"), "google": ("train", "val", "test")},
    "refcoco+": {"unc": ("train", "val", "testA", "testB")},
    "refcocog": {"umd": ("train", "val", "test"), "google": ("train", "val")},
}
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
IMAGE_FOLDER = "images/train2014"

_WORD = re.compile(r"[\w']+", re.UNICODE)


def refs_file(dataset: str, split_by: str) -> str:
    """The refs file's path under a data root, e.g. ``refcoco/refs(unc).p``."""
    return f"{dataset}/refs({split_by}).p"


def sentence_tokens(text: str) -> list[str]:
    """REFER-style tokens: lower-case words, punctuation dropped."""
    return _WORD.findall(text.lower())


def sentence_record(raw: str, sent_id: int) -> dict[str, Any]:
    """A REFER sentence: ``raw`` as typed, ``sent`` the lower-case tokens joined by spaces, ``tokens``."""
    tokens = sentence_tokens(raw)
    return {"sent_id": sent_id, "raw": raw, "sent": " ".join(tokens), "tokens": tokens}


def refs_pickle_bytes(refs: Sequence[dict[str, Any]], *, python2: bool = False, protocol: int = 2) -> bytes:
    """The refs list pickled: as Python 3 writes it (any text), or with ``python2`` as Python 2 did (latin-1)."""
    if python2:
        return dump_python2_pickle(list(refs), protocol=protocol)
    return pickle.dumps(list(refs), protocol=protocol)


def refer_files(
    dataset: str,
    split_by: str,
    refs: Sequence[dict[str, Any]],
    instances: dict[str, Any],
    *,
    python2_pickle: bool = False,
) -> dict[str, bytes]:
    """The refs file and ``instances.json`` of one dataset folder, as ``{relative path: bytes}``."""
    return {
        refs_file(dataset, split_by): refs_pickle_bytes(refs, python2=python2_pickle),
        f"{dataset}/instances.json": json.dumps(instances).encode("utf-8"),
    }


# --------------------------------------------------------------------------------------------------------
# Python 2 style pickles


def _py2_str(text: str) -> bytes:
    return text.encode("latin1")


def _dump_p2(obj: Any, out: BytesIO) -> None:
    if obj is None:
        out.write(b"N")
    elif isinstance(obj, bool):
        out.write(b"\x88" if obj else b"\x89")
    elif isinstance(obj, int):
        if not -(2**31) <= obj < 2**31:
            raise ValueError(f"integer {obj} does not fit a Python 2 int pickle")
        out.write(b"J" + struct.pack("<i", obj))
    elif isinstance(obj, float):
        out.write(b"G" + struct.pack(">d", obj))
    elif isinstance(obj, str):
        data = _py2_str(obj)
        out.write((b"U" + bytes([len(data)])) if len(data) < 256 else (b"T" + struct.pack("<i", len(data))))
        out.write(data)
    elif isinstance(obj, list | tuple):
        out.write(b"](")
        for item in obj:
            _dump_p2(item, out)
        out.write(b"e")
    elif isinstance(obj, dict):
        out.write(b"}(")
        for key, value in obj.items():
            _dump_p2(key, out)
            _dump_p2(value, out)
        out.write(b"u")
    else:
        raise TypeError(f"cannot write {type(obj).__name__} into a Python 2 refs pickle")


def _escape_p0(data: bytes) -> bytes:
    """Python 2 ``repr`` of a byte string body: printable ASCII kept, the rest as ``\\xNN``."""
    out = bytearray()
    for byte in data:
        if byte in (ord("'"), ord("\\")) or not 32 <= byte < 127:
            out += b"\\x%02x" % byte
        else:
            out.append(byte)
    return bytes(out)


def _dump_p0(obj: Any, out: BytesIO) -> None:
    if obj is None:
        out.write(b"N")
    elif isinstance(obj, bool):
        out.write(b"I01\n" if obj else b"I00\n")
    elif isinstance(obj, int):
        out.write(b"I%d\n" % obj)
    elif isinstance(obj, float):
        out.write(b"F" + repr(obj).encode("ascii") + b"\n")
    elif isinstance(obj, str):
        out.write(b"S'" + _escape_p0(_py2_str(obj)) + b"'\n")
    elif isinstance(obj, list | tuple):
        out.write(b"(l")
        for item in obj:
            _dump_p0(item, out)
            out.write(b"a")
    elif isinstance(obj, dict):
        out.write(b"(d")
        for key, value in obj.items():
            _dump_p0(key, out)
            _dump_p0(value, out)
            out.write(b"s")
    else:
        raise TypeError(f"cannot write {type(obj).__name__} into a Python 2 refs pickle")


def dump_python2_pickle(obj: Any, protocol: int = 2) -> bytes:
    """Bytes of ``obj`` (dicts, lists, str, int, float, bool, None) pickled as Python 2 would write them.

    Strings become Python 2 byte strings (latin-1), which Python 3 reads back with ``encoding="latin1"``.

    Raises:
        ValueError: a protocol other than 0 or 2, or an int beyond 32 bits.
        TypeError: a value of another type.
        UnicodeEncodeError: text that latin-1 cannot hold (Python 2 would have written UTF-8 bytes).
    """
    out = BytesIO()
    if protocol == 2:
        out.write(b"\x80\x02")
        _dump_p2(obj, out)
    elif protocol == 0:
        _dump_p0(obj, out)
    else:
        raise ValueError(f"protocol must be 0 or 2, got {protocol}")
    out.write(b".")
    return out.getvalue()
