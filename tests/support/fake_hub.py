"""A local HTTP server that plays the Hugging Face hub endpoints huggingface_hub uses.

- `GET /api/models/{repo}/tree/{revision}[/{path}]`: the file listing (`list_repo_tree`);
- `GET /api/models/{repo}[/revision/{revision}]`: model info with `siblings` (`model_info`);
- `HEAD`/`GET /{repo}/resolve/{revision}/{path}`: downloads, with `X-Repo-Commit`, `ETag`,
  `X-Linked-Etag`, `X-Linked-Size`, `Accept-Ranges` and `Range` requests answered with 206;
- 404s carry the hub's `X-Error-Code` (`RepoNotFound`, `EntryNotFound`), which is what the
  client turns into `RepositoryNotFoundError` / `RemoteEntryNotFoundError`.

Faults a test can inject: `cut_after[path] = n` sends n bytes of the next GET of `path`, then
drops the connection; `hold_at[path] = offset` makes every GET of `path` stop sending at that
byte of the file and keep the connection open until the hub stops (a line gone quiet, so a test
can kill the client mid-file); `hidden` paths are listed but 404 on download; a file's
`declared_size` makes the listing claim more bytes than are served (for disk-space checks).
Every request is recorded in `requests`, and the body bytes each GET of a file actually sent
in `served[path]`.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import unquote, urlsplit

_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class FakeFile:
    content: bytes
    declared_size: int | None = None

    @property
    def size(self) -> int:
        return self.declared_size if self.declared_size is not None else len(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeRepo:
    files: dict[str, FakeFile] = field(default_factory=dict)
    commit: str = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[RecordedRequest] = []
        self.cut_after: dict[str, int] = {}
        self.hold_at: dict[str, int] = {}
        self.served: dict[str, list[int]] = {}
        self._released = threading.Event()
        self.hidden: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_file(
        self, repo: str, path: str, content: bytes, declared_size: int | None = None
    ) -> None:
        self.repos.setdefault(repo, FakeRepo()).files[path] = FakeFile(content, declared_size)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def resolve_requests(self, path: str, method: str = "GET") -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if r.method == method and "/resolve/" in r.path and unquote(r.path).endswith("/" + path)
        ]

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def replace_file(self, repo: str, path: str, content: bytes, commit: str) -> None:
        """A new revision of one file, as a push to the repository makes it."""
        self.repos[repo].files[path] = FakeFile(content)
        self.repos[repo].commit = commit

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean

    def _record(self) -> str:
        path = urlsplit(self.path).path
        with self.fake._lock:
            self.fake.requests.append(
                RecordedRequest(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}
                )
            )
        return path

    def do_GET(self) -> None:
        self._route(self._record(), head=False)

    def do_HEAD(self) -> None:
        self._route(self._record(), head=True)

    # --- responses -------------------------------------------------------------------

    def _json(self, payload: object, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: str, message: str, head: bool) -> None:
        body = b"" if head else json.dumps({"error": message}).encode()
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self, path: str, head: bool) -> None:
        for pattern, handler in (
            (_TREE, self._tree),
            (_INFO, self._info),
            (_RESOLVE, self._resolve),
        ):
            match = pattern.match(path)
            if match:
                repo = self.fake.repos.get(unquote(match.group(1)))
                if repo is None:
                    self._error("RepoNotFound", "Repository not found", head)
                    return
                handler(repo, match, head)
                return
        self._error("EntryNotFound", "Not found", head)

    def _tree(self, repo: FakeRepo, match: re.Match[str], head: bool) -> None:
        recursive = "recursive=true" in self.path.lower() or "recursive=1" in self.path
        prefix = unquote(match.group(3) or "").strip("/")
        entries: list[dict[str, object]] = []
        folders: set[str] = set()
        for path, item in sorted(repo.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            if "/" in rest and not recursive:
                folders.add(((prefix + "/") if prefix else "") + rest.split("/")[0])
                continue
            entries.append(
                {
                    "type": "file",
                    "oid": hashlib.sha1(item.content).hexdigest(),
                    "size": item.size,
                    "path": path,
                    "lfs": {"oid": item.sha256, "size": item.size, "pointerSize": 134},
                }
            )
        entries += [{"type": "directory", "oid": "0" * 40, "path": f} for f in sorted(folders)]
        self._json(entries)

    def _info(self, repo: FakeRepo, match: re.Match[str], head: bool) -> None:
        siblings = [
            {"rfilename": path, "size": item.size, "blobId": item.sha256}
            for path, item in sorted(repo.files.items())
        ]
        self._json({"id": match.group(1), "sha": repo.commit, "siblings": siblings})

    def _resolve(self, repo: FakeRepo, match: re.Match[str], head: bool) -> None:
        path = unquote(match.group(3))
        item = repo.files.get(path)
        if item is None or path in self.fake.hidden:
            self._error("EntryNotFound", f"{path} does not exist on main", head)
            return
        data = item.content
        total = len(data)
        start, end, status = 0, total - 1, 200
        wanted = self.headers.get("Range")
        if wanted and not head:
            found = _RANGE.match(wanted.strip())
            if found is None or int(found.group(1)) >= total:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(found.group(1))
            end = min(int(found.group(2)), total - 1) if found.group(2) else total - 1
            status = 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{item.sha256}"')
        self.send_header("X-Linked-Etag", f'"{item.sha256}"')
        self.send_header("X-Linked-Size", str(item.size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(item.size if head else end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        if head:
            return
        with self.fake._lock:
            cut = self.fake.cut_after.pop(path, None)
            hold = self.fake.hold_at.get(path)
        if hold is not None and start <= hold <= end:
            self._send(path, data[start:hold])
            # Send nothing more and keep the connection open, until the hub stops.
            self.wfile.flush()
            self.fake._released.wait()
            self.close_connection = True
            return
        if cut is not None and cut < end - start + 1:
            self._send(path, data[start : start + cut])
            self.wfile.flush()
            # Drop the connection mid-body, as a flaky line would.
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self._send(path, data[start : end + 1])

    def _send(self, path: str, body: bytes) -> None:
        with self.fake._lock:
            self.fake.served.setdefault(path, []).append(len(body))
        self.wfile.write(body)
