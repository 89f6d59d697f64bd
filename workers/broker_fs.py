"""The embedded broker: kombu's filesystem transport, made to deliver each queue's messages in order.

Why a subclass rather than another broker: it keeps the default install free of any server and of new
dependencies (kombu's SQLAlchemy transport would add SQLAlchemy, and SQLite's one writer lock is shared
by every sending web thread and polling worker). What kombu 5.7's filesystem transport gets wrong, and
what this one does instead:

- Order. kombu names a message ``<milliseconds of time.monotonic()>_<uuid4>.<queue>.msg`` and takes the
  first name in sorted order. Names sort as text, so ``10000_...`` comes before ``9999_...``; messages sent
  in one millisecond come out in uuid (random) order; and the monotonic clock restarts at boot. Here a
  message is named ``<wall-clock ns, 20 digits>-<per-process counter, 12 digits>-<uuid>.<queue>.msg``: a
  fixed width, so text order is send order (the counter orders messages of one process within one
  nanosecond tick; across processes, one tick is the resolution).
- Half-written messages. kombu opens the final name and then writes, so a consumer listing the folder
  can move away a file still being written and fail on its truncated JSON. Here the payload is written
  under a hidden temporary name and renamed into place (``os.replace``: atomic on one filesystem).
- Two consumers, one message. kombu moves a taken file to ``tempfile.gettempdir()``; across filesystems
  that is a copy then a delete, so two workers of one lane can both copy it. Here the file is renamed
  into the processed folder, which ``settings`` puts beside the queue folder (same filesystem): of two
  consumers one rename wins and the other gets ``FileNotFoundError`` and looks at the next name.

Lanes (``workers.lanes``) are separate queues; messages of a queue are taken oldest first. Priorities
are not used by any lane (a lane is its own queue), so none is honoured. ``settings`` selects this class
with ``CELERY_BROKER_TRANSPORT`` when ``CELERY_BROKER_URL`` is ``filesystem://``.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

_counter = itertools.count()
_counter_lock = threading.Lock()


def message_name(queue: str) -> str:
    """A fresh message file name for ``queue`` whose text order is its send order (see the module doc)."""
    with _counter_lock:
        sequence = next(_counter)
    return f"{time.time_ns():020d}-{os.getpid() % 10**7:07d}{sequence:012d}-{uuid.uuid4().hex}.{queue}.msg"


class Channel(filesystem.Channel):
    """kombu's filesystem channel with ordered names, atomic writes and atomic takes."""

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Write ``payload`` under a hidden name, then rename it to its ordered message name."""
        name = message_name(queue)
        final = os.path.join(self.data_folder_out, name)
        temporary = os.path.join(self.data_folder_out, f".{name}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(temporary, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: str) -> Any:
        """Take the oldest message of ``queue``: rename it out of the queue folder, read it, delete it."""
        suffix = f".{queue}.msg"
        taken_folder = str(self.processed_folder)
        os.makedirs(taken_folder, exist_ok=True)
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.startswith(".") or name.partition(".")[2] != suffix[1:]:
                continue
            taken = os.path.join(taken_folder, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), taken)
            except FileNotFoundError:  # another consumer took it first
                continue
            try:
                with open(taken, "rb") as handle:
                    payload = handle.read()
                if not self.store_processed:
                    os.remove(taken)
            except OSError as exc:
                raise ChannelError(f"Cannot read file {taken!r} from queue.") from exc
            return loads(bytes_to_str(payload))
        raise Empty()


class Transport(filesystem.Transport):
    """The embedded broker's transport (``CELERY_BROKER_TRANSPORT = "workers.broker_fs:Transport"``)."""

    Channel = Channel
