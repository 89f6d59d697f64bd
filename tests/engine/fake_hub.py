"""A model hub on 127.0.0.1 that ``huggingface_hub`` downloads from (point ``HF_ENDPOINT`` at ``hub.url``).

It implements the routes the client uses to fetch a model, with the hub's headers:

- ``GET /api/models/{repo}[/revision/{rev}][?blobs=true]``: the repository's commit (``sha``) and files
  (``siblings``: ``rfilename``, ``size``, ``blobId``, and ``lfs.sha256`` for large files).
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` (the git blob id; large files also
  ``X-Linked-Etag``, their sha256, and ``X-Linked-Size``), ``Content-Length``, ``Accept-Ranges``; a GET with
  ``Range: bytes=START-`` gets ``206`` and ``Content-Range``.
- Errors as the hub sends them: ``X-Error-Code: RepoNotFound`` / ``EntryNotFound`` (404), ``GatedRepo`` (401
  without the repository's token).

Faults a test sets on :class:`FakeHub`: ``cuts[path] = [offset, ...]`` (each GET of ``path`` takes the next
offset, sends the body up to it and closes the connection), ``corrupt`` (paths whose bytes are served wrong
at the advertised size). ``requests`` logs ``(method, url path, Range header, Authorization header)``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_MIN_BYTES = 1024


def git_blob_id(data: bytes) -> str:
    """The git blob id of ``data`` (what the hub lists as ``blobId``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """A repository: ``files`` by path, its commit ``sha``, and ``token`` when it is gated."""

    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    token: str | None = None


@dataclass
class FakeHub:
    """The hub's state; start it with :func:`serve_hub`."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    cuts: dict[str, list[int]] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    url: str = ""

    def sibling(self, path: str, data: bytes) -> dict:
        entry: dict = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
        if len(data) >= LFS_MIN_BYTES:
            entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            return

        def _error(self, status: int, code: str) -> None:
            body = json.dumps({"error": code}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound")
                return None
            if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
                self._error(401, "GatedRepo")
                return None
            return repo

        def do_HEAD(self) -> None:
            self._serve()

        def do_GET(self) -> None:
            self._serve()

        def _serve(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(
                (self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
            )
            if path.startswith("/api/models/"):
                self._model_info(path[len("/api/models/") :])
            elif "/resolve/" in path:
                repo_id, rest = path.lstrip("/").split("/resolve/", 1)
                self._resolve(repo_id, rest.split("/", 1)[1] if "/" in rest else "")
            else:
                self._error(404, "RepoNotFound")

        def _model_info(self, rest: str) -> None:
            repo_id = rest.split("/revision/", 1)[0]
            repo = self._repo(repo_id)
            if repo is None:
                return
            body = json.dumps(
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": repo.sha,
                    "private": False,
                    "gated": "manual" if repo.token else False,
                    "siblings": [hub.sibling(p, d) for p, d in sorted(repo.files.items())],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _resolve(self, repo_id: str, file_path: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            data = repo.files.get(file_path)
            if data is None:
                self._error(404, "EntryNotFound")
                return
            start = 0
            requested = self.headers.get("Range")
            if requested and requested.startswith("bytes="):
                start = int(requested[len("bytes=") :].split("-", 1)[0] or 0)
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{git_blob_id(data)}"')
            if len(data) >= LFS_MIN_BYTES:
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if self.command == "HEAD":
                return
            served = bytes(b ^ 0xFF for b in data[:64]) + data[64:] if file_path in hub.corrupt else data
            cuts = hub.cuts.get(file_path)
            if cuts:
                cut = max(cuts.pop(0), start)
                self.wfile.write(served[start:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(served[start:])

    return Handler


class HubServer:
    """:class:`FakeHub` served by a thread; use as a context manager (``with HubServer(hub) as hub: ...``)."""

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self.server.daemon_threads = True
        hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self.hub

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
