"""A small in-memory Hugging Face Hub-compatible HTTP server for tests (stdlib only).

Why this exists
---------------
No well-kept installable package provides a Hub server that accepts *uploads*: ``olah`` is a read-only mirror,
``hf-local-hub`` needs a binary it does not ship, and ``huggingface_hub`` 2.x talks through ``httpx2`` so
``requests``/``respx`` mocks do not apply.  This module speaks just enough of the Hub's HTTP API for
``huggingface_hub`` 2.4.0 to create repos, upload, list and download files against a local server.

It binds to ``127.0.0.1`` only (and refuses non-loopback peers), keeps everything in memory, and runs a
``ThreadingHTTPServer`` in a daemon thread that stops on ``stop()`` / context exit.

Subset of the Hub API that is implemented
-----------------------------------------
=============================================  ==================================================================
``GET  /api/whoami-v2``                        whoami for a valid token (401 otherwise)
``POST /api/repos/create``                     ``{name, organization, type, private|visibility, sdk}``; 409 with
                                               ``{"url"}`` if it exists (``exist_ok=True`` relies on that)
``DELETE /api/repos/delete``                   ``{name, organization, type}``
``POST /api/validate-yaml``                    README front matter check (``{"errors": [], "warnings": []}``)
``GET  /api/{models|datasets|spaces}``         list visible repos (``author=``, ``search=``; no pagination)
``GET  /api/{t}s/{repo}[/revision/{rev}]``     repo info: ``id, sha, private, siblings, cardData, ...``
                                               (``?blobs=True`` adds sizes / blob ids / lfs info)
``GET  /api/{t}s/{repo}/tree/{rev}[/{path}]``  tree listing (``recursive``, ``expand`` -> ``lastCommit``)
``POST /api/{t}s/{repo}/paths-info/{rev}``     form body ``paths=...&expand=...``
``GET  /api/{t}s/{repo}/refs``                 branches, tags, (PR refs with ``include_prs=1``)
``GET  /api/{t}s/{repo}/commits/{rev}``        first-parent history
``POST /api/{t}s/{repo}/preupload/{rev}``      ``uploadMode`` is ``"regular"`` unless ``lfs_threshold`` is set
``POST /api/{t}s/{repo}/commit/{rev}``         NDJSON: ``header``, ``file`` (base64), ``lfsFile``, ``deletedFile``,
                                               ``deletedFolder``; ``?create_pr=1`` commits to ``refs/pr/N``
``POST|DELETE /api/{t}s/{repo}/branch/{b}``    create (``startingPoint``) / delete a branch
``POST /api/{t}s/{repo}/tag/{rev}``,           create (``{"tag"}``) / delete a tag
``DELETE /api/{t}s/{repo}/tag/{tag}``
``POST /{repo}.git/info/lfs/objects/batch``    LFS batch (basic transfer), upload ``href`` points to
``PUT  /_hub_server/lfs-upload/{nonce}``       ... this single-use URL (sha256 + size are verified)
``HEAD|GET /{repo}/resolve/{rev}/{path}``      ``X-Repo-Commit``, ``ETag``, ``Content-Length`` (+ ``X-Linked-*``
                                               for LFS files); ``Range`` requests; HEAD errors carry no body
=============================================  ==================================================================

``{repo}`` is ``ns/name`` for models, ``datasets/ns/name`` / ``spaces/ns/name`` in non-API URLs.
Revisions are branch names (``main``), tags, ``refs/pr/N`` or full 40-hex commit shas.  Every commit gets a
40-hex sha and the whole history is kept, so ``revision=<old sha>`` serves old bytes.  A new repo starts with an
"initial commit" holding ``.gitattributes``, as on the real Hub.

Not implemented: Xet storage (the client never needs it as long as preupload answers ``"regular"``; with
``lfs_threshold`` set, LFS uploads only work when the *client* has Xet disabled, i.e.
``huggingface_hub.constants.HF_HUB_DISABLE_XET = True`` -- with ``hf_xet`` installed an ``"lfs"`` answer makes
the client upload through Xet, which this server cannot serve), discussions, gated repos, multipart LFS,
pagination, squash, space runtime endpoints.

Errors and auth (mirroring what ``huggingface_hub.utils.hf_raise_for_status`` maps):

* token set: ``{token: "write" | "read"}``; an unknown ``Authorization: Bearer`` token -> 401 with
  ``X-Error-Message: Invalid credentials in Authorization header`` (-> ``HfHubHTTPError``, status 401).
* write endpoints without a token -> 401 (``HfHubHTTPError``); with a read token -> 403 (``HfHubHTTPError``).
* missing repos, and private repos requested without a valid token -> ``X-Error-Code: RepoNotFound``
  (401 when unauthenticated, 404 otherwise, as the Hub does) -> ``RepositoryNotFoundError``.  Any valid token
  (read or write) sees private repos.  Note: the client only maps a *bare* 401 to ``RepositoryNotFoundError``
  for ``https://`` endpoints, so the header is what matters here.
* unknown revision -> 404 ``RevisionNotFound``; missing file -> 404 ``EntryNotFound`` (with ``X-Repo-Commit``).
* unexpected server-side exceptions are answered with **400** (not 500: the client retries 5xx with backoff
  for ~23 s) and recorded in ``HubServer.errors`` so tests can assert that list stays empty.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import ipaddress
import json
import secrets
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

try:  # optional: only used to fill `cardData` from README front matter and to validate it
    import yaml as _yaml
except ImportError:  # pragma: no cover - PyYAML is a huggingface_hub dependency
    _yaml = None

__all__ = ["DEFAULT_TOKENS", "READ_TOKEN", "WRITE_TOKEN", "HubServer", "git_blob_sha1"]

WRITE_TOKEN = "hf_test_write"
READ_TOKEN = "hf_test_read"
DEFAULT_TOKENS: dict[str, str] = {WRITE_TOKEN: "write", READ_TOKEN: "read"}

_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_NON_MODEL_PREFIX = {"datasets": "dataset", "spaces": "space"}
_DEFAULT_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.ckpt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.h5 filter=lfs diff=lfs merge=lfs -text\n"
    b"*.npy filter=lfs diff=lfs merge=lfs -text\n"
    b"*.onnx filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pth filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    b"*.zip filter=lfs diff=lfs merge=lfs -text\n"
)
_MAX_BODY_BYTES = 1 << 30  # refuse request bodies above 1 GiB (413)


def git_blob_sha1(data: bytes) -> str:
    """Git blob id of `data` (what the Hub reports as `oid`/ETag for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class _Blob:
    data: bytes
    sha256: str
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def git_oid(self) -> str:  # git blob id (of the pointer file for LFS files, as in git)
        if self.lfs:
            return git_blob_sha1(_lfs_pointer(self.sha256, self.size))
        return git_blob_sha1(self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_sha1(self.data)


def _make_blob(data: bytes, lfs: bool) -> _Blob:
    return _Blob(data=data, sha256=hashlib.sha256(data).hexdigest(), lfs=lfs)


@dataclass
class _Commit:
    oid: str
    parents: tuple[str, ...]
    files: dict[str, _Blob]
    title: str
    message: str
    date: str
    author: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    sdk: str | None = None
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name (incl. "refs/pr/N") -> commit oid
    tags: dict[str, str] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content
    nb_prs: int = 0


class _HTTPError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.body = body


def _repo_not_found(perm: str | None, repo_desc: str) -> _HTTPError:
    # The Hub answers 401 to unauthenticated requests for missing *and* private repos (indistinguishable).
    status = 401 if perm is None else 404
    return _HTTPError(status, f"Repository not found: {repo_desc}", code="RepoNotFound")


def _validate_path(path: str) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or path.endswith("/"):
        raise _HTTPError(400, f"Invalid path in repo: {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise _HTTPError(400, f"Invalid path in repo: {path!r}")
    return path


def _split_front_matter(text: str) -> str | None:
    if not text.startswith("---"):
        return None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return "\n".join(lines[1:i])
    return None


def _card_data(files: dict[str, _Blob]) -> dict | None:
    blob = files.get("README.md")
    if blob is None or _yaml is None:
        return None
    try:
        front = _split_front_matter(blob.data.decode("utf-8"))
        data = _yaml.safe_load(front) if front is not None else None
    except (UnicodeDecodeError, _yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


class HubServer:
    """In-memory Hub-compatible HTTP server on 127.0.0.1 (see module docstring). Context manager.

    Args:
        tokens: ``{token: "write" | "read"}``; default ``{"hf_test_write": "write", "hf_test_read": "read"}``.
        username: namespace reported by ``/api/whoami-v2`` and used by ``create_repo("name")`` without a namespace.
        lfs_threshold: if set, preupload answers ``"lfs"`` for files of at least that many bytes (client must have
            Xet disabled, see module docstring); default ``None`` = every file is ``"regular"``.
    """

    def __init__(
        self,
        tokens: dict[str, str] | None = None,
        *,
        username: str = "hub-test-user",
        lfs_threshold: int | None = None,
    ) -> None:
        tokens = dict(DEFAULT_TOKENS if tokens is None else tokens)
        bad = {t: p for t, p in tokens.items() if p not in ("read", "write")}
        if bad:
            raise ValueError(f"token permissions must be 'read' or 'write', got {bad}")
        self.tokens = tokens
        self.username = username
        self.lfs_threshold = lfs_threshold
        self.endpoint: str = ""
        self.errors: list[str] = []  # unexpected server-side exceptions (tracebacks)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for debugging/asserts
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lfs_uploads: dict[str, tuple[tuple[str, str], str, int]] = {}  # nonce -> (repo key, oid, size)
        self._commit_counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        if self._httpd is not None:
            return self
        handler = type("_BoundHubHandler", (_HubHandler,), {"hub": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    # ------------------------------------------------------------------ helpers for tests
    def reset(self) -> None:
        """Forget every repo (and pending LFS uploads, recorded errors and requests)."""
        with self._lock:
            self._repos.clear()
            self._lfs_uploads.clear()
            self.errors.clear()
            self.requests.clear()

    def repo_url(self, repo_id: str, repo_type: str = "model") -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"

    def list_repos(self) -> list[tuple[str, str]]:
        """(repo_type, repo_id) of every stored repo."""
        with self._lock:
            return sorted(self._repos)

    def get_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """Direct access to stored bytes (bypasses HTTP and auth)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return self._resolve(repo, revision).files[path].data

    # ------------------------------------------------------------------ state (call with self._lock held)
    def _new_commit(
        self, repo: _Repo, parent: str | None, files: dict[str, _Blob], title: str, message: str
    ) -> _Commit:
        self._commit_counter += 1
        date = _now()
        material = json.dumps(
            [parent, sorted((p, b.git_oid) for p, b in files.items()), title, message, date, self._commit_counter,
             secrets.token_hex(8)]
        ).encode()
        oid = hashlib.sha1(b"commit %d\0" % len(material) + material).hexdigest()
        commit = _Commit(
            oid=oid,
            parents=(parent,) if parent else (),
            files=files,
            title=title,
            message=message,
            date=date,
            author=self.username,
        )
        repo.commits[oid] = commit
        return commit

    def _resolve(self, repo: _Repo, revision: str) -> _Commit:
        rev = revision
        if rev.startswith("refs/heads/"):
            rev = rev[len("refs/heads/") :]
        elif rev.startswith("refs/tags/"):
            rev = rev[len("refs/tags/") :]
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        if rev in repo.tags:
            return repo.commits[repo.tags[rev]]
        if rev in repo.commits:
            return repo.commits[rev]
        raise _HTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def _lfs_content(self, repo: _Repo, sha256: str) -> bytes | None:
        if sha256 in repo.lfs_objects:
            return repo.lfs_objects[sha256]
        for commit in repo.commits.values():
            for blob in commit.files.values():
                if blob.sha256 == sha256:
                    return blob.data
        return None

    def _last_commit(self, repo: _Repo, commit: _Commit, path: str, is_dir: bool) -> dict:
        def snapshot(c: _Commit) -> Any:
            if is_dir:
                prefix = path + "/"
                return sorted((p, b.git_oid) for p, b in c.files.items() if p.startswith(prefix))
            blob = c.files.get(path)
            return blob.git_oid if blob is not None else None

        current = commit
        value = snapshot(current)
        while current.parents:
            parent = repo.commits[current.parents[0]]
            if snapshot(parent) != value:
                break
            current = parent
        return {"id": current.oid, "title": current.title, "date": current.date}


# ---------------------------------------------------------------------- request handling
class _HubHandler(BaseHTTPRequestHandler):
    hub: HubServer  # set on the bound subclass
    protocol_version = "HTTP/1.1"  # keep-alive: every response has a Content-Length, every body is fully read
    server_version = "hub-server/1.0"
    timeout = 60  # seconds a kept-alive connection may stay idle

    # quiet by default
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -------------------------------------------------------------- plumbing
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                total += size
                if total > _MAX_BODY_BYTES:
                    raise _HTTPError(413, "Request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY_BYTES:
            self.close_connection = True
            raise _HTTPError(413, "Request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        headers = dict(headers or {})
        if body is None:
            data = b""
        elif isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
            headers.setdefault("Content-Type", "application/octet-stream")
        else:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        headers.setdefault("Content-Length", str(len(data)))
        self.hub.requests.append((self.command, self.path, status))  # before replying: no race with the client
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    def _send_error(self, err: _HTTPError) -> None:
        headers = dict(err.headers)
        safe_msg = err.message.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace").decode("latin-1")
        headers["X-Error-Message"] = safe_msg
        if err.code:
            headers["X-Error-Code"] = err.code
        if self.command == "HEAD":  # a HEAD error has no body
            headers["Content-Length"] = "0"
            self._send(err.status, None, headers)
        else:
            self._send(err.status, err.body if err.body is not None else {"error": err.message}, headers)

    def _handle(self, method: str) -> None:
        try:
            if not ipaddress.ip_address(self.client_address[0]).is_loopback:
                self.close_connection = True
                raise _HTTPError(403, "hub_server only serves loopback clients")
            body = self._read_body()
            url = urllib.parse.urlsplit(self.path)
            raw_segments = url.path.split("/")[1:]
            segments = [urllib.parse.unquote(s) for s in raw_segments]
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            perm = self._auth()
            with self.hub._lock:
                status, payload, headers = self._route(method, segments, query, body, perm)
            self._send(status, payload, headers)
        except _HTTPError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - report as 400: a 5xx would make the client retry ~23 s
            import traceback

            self.hub.errors.append(f"{method} {self.path}: {traceback.format_exc()}")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_error(_HTTPError(400, f"hub_server internal error: {exc!r}"))

    def _auth(self) -> str | None:
        header = self.headers.get("Authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or token not in self.hub.tokens:
            raise _HTTPError(401, "Invalid credentials in Authorization header")
        return self.hub.tokens[token]

    @staticmethod
    def _require_auth(perm: str | None) -> None:
        if perm is None:
            raise _HTTPError(401, "You must be authenticated to access this resource (no token provided)")

    @staticmethod
    def _require_write(perm: str | None, what: str) -> None:
        _HubHandler._require_auth(perm)
        if perm != "write":
            raise _HTTPError(403, f"You don't have the rights to {what}: this token is read-only")

    def _repo_for_read(self, repo_type: str, repo_id: str, perm: str | None) -> _Repo:
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and perm is None):
            raise _repo_not_found(perm, f"{repo_type} {repo_id}")
        return repo

    def _repo_for_write(self, repo_type: str, repo_id: str, perm: str | None, what: str) -> _Repo:
        self._require_auth(perm)
        repo = self._repo_for_read(repo_type, repo_id, perm)
        self._require_write(perm, what)
        return repo

    # -------------------------------------------------------------- routing
    def _route(
        self, method: str, seg: list[str], query: dict[str, list[str]], body: bytes, perm: str | None
    ) -> tuple[int, Any, dict[str, str] | None]:
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami(perm)
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo(_json(body), perm)
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(_json(body), perm)
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(_json(body))
            if len(rest) == 1 and rest[0] in _API_TYPES and method == "GET":
                return self._list_repos(_API_TYPES[rest[0]], query, perm)
            if len(rest) >= 3 and rest[0] in _API_TYPES:
                repo_type = _API_TYPES[rest[0]]
                repo_id = f"{rest[1]}/{rest[2]}"
                return self._repo_api(method, repo_type, repo_id, rest[3:], query, body, perm)
            raise _HTTPError(404, f"hub_server: unsupported API route {method} /{'/'.join(seg)}")

        if seg[:2] == ["_hub_server", "lfs-upload"] and len(seg) == 3 and method == "PUT":
            return self._lfs_put(seg[2], body)

        # Non-API routes: [datasets|spaces/]ns/name(.git)/...
        repo_type = "model"
        rest = seg
        if rest and rest[0] in _NON_MODEL_PREFIX:
            repo_type, rest = _NON_MODEL_PREFIX[rest[0]], rest[1:]
        if len(rest) >= 3 and rest[1].endswith(".git") and rest[2:] == ["info", "lfs", "objects", "batch"]:
            if method != "POST":
                raise _HTTPError(405, "LFS batch expects POST")
            return self._lfs_batch(repo_type, f"{rest[0]}/{rest[1][:-4]}", _json(body), perm)
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            path = "/".join(rest[4:])
            return self._resolve_file(repo_type, f"{rest[0]}/{rest[1]}", rest[3], path, perm)
        raise _HTTPError(404, f"hub_server: unsupported route {method} /{'/'.join(seg)}")

    # -------------------------------------------------------------- account / repos
    def _whoami(self, perm: str | None) -> tuple[int, Any, None]:
        if perm is None:
            raise _HTTPError(401, "Invalid credentials in Authorization header")
        hub = self.hub
        return 200, {
            "type": "user",
            "id": hashlib.sha1(hub.username.encode()).hexdigest()[:24],
            "name": hub.username,
            "fullname": "Hub Test User",
            "email": f"{hub.username}@example.invalid",
            "emailVerified": True,
            "isPro": False,
            "canPay": False,
            "orgs": [],
            "auth": {
                "type": "access_token",
                "accessToken": {"displayName": f"test-{perm}", "role": perm, "createdAt": _now()},
            },
        }, None

    def _create_repo(self, payload: dict, perm: str | None) -> tuple[int, Any, None]:
        hub = self.hub
        self._require_auth(perm)
        name = payload.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise _HTTPError(400, f"Invalid repo name: {name!r}")
        namespace = payload.get("organization") or hub.username
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HTTPError(400, f"Invalid repo type: {repo_type!r}")
        repo_id = f"{namespace}/{name}"
        url = hub.repo_url(repo_id, repo_type)
        existing = hub._repos.get((repo_type, repo_id))
        if existing is not None:
            # exist_ok=True relies on the 409 (it also reads `url` from the body on some versions)
            if existing.private and perm is None:
                raise _repo_not_found(perm, repo_id)
            raise _HTTPError(409, f"You already created this {repo_type} repo", body={
                "error": f"You already created this {repo_type} repo", "url": url})
        self._require_write(perm, "create a repo")
        if repo_type == "space" and not payload.get("sdk"):
            raise _HTTPError(400, "Missing 'sdk' for a Space")
        visibility = payload.get("visibility")
        private = bool(payload.get("private")) or visibility == "private"
        repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now(), sdk=payload.get("sdk"))
        initial = hub._new_commit(
            repo, None, {".gitattributes": _make_blob(_DEFAULT_GITATTRIBUTES, lfs=False)}, "initial commit", ""
        )
        repo.branches["main"] = initial.oid
        hub._repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]}, None

    def _delete_repo(self, payload: dict, perm: str | None) -> tuple[int, Any, None]:
        self._require_auth(perm)
        namespace = payload.get("organization") or self.hub.username
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload.get('name')}"
        self._repo_for_write(repo_type, repo_id, perm, "delete this repo")
        del self.hub._repos[(repo_type, repo_id)]
        return 200, {}, None

    def _validate_yaml(self, payload: dict) -> tuple[int, Any, None]:
        content = payload.get("content") or ""
        front = _split_front_matter(content)
        if front is not None and _yaml is not None:
            try:
                data = _yaml.safe_load(front)
            except Exception as exc:  # noqa: BLE001
                raise _HTTPError(400, f"Invalid YAML metadata: {exc}", body={
                    "errors": [{"message": f"Invalid YAML metadata: {exc}"}], "warnings": []})
            if data is not None and not isinstance(data, dict):
                msg = "YAML metadata must be a mapping"
                raise _HTTPError(400, msg, body={"errors": [{"message": msg}], "warnings": []})
        return 200, {"errors": [], "warnings": []}, None

    def _list_repos(self, repo_type: str, query: dict, perm: str | None) -> tuple[int, Any, None]:
        author = (query.get("author") or [None])[0]
        search = (query.get("search") or [None])[0]
        out = []
        for (rtype, rid), repo in sorted(self.hub._repos.items()):
            if rtype != repo_type or (repo.private and perm is None):
                continue
            if author and rid.split("/")[0] != author:
                continue
            if search and search.lower() not in rid.lower():
                continue
            out.append(self._repo_info_payload(repo, repo.commits[repo.branches["main"]], blobs=False))
        return 200, out, None

    # -------------------------------------------------------------- /api/{type}s/{repo}/...
    def _repo_api(
        self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict, body: bytes, perm: str | None
    ) -> tuple[int, Any, dict[str, str] | None]:
        hub = self.hub
        flag = lambda name: (query.get(name) or ["false"])[0].lower() in ("1", "true", "yes")

        if method == "GET" and (rest == [] or (len(rest) == 2 and rest[0] == "revision")):
            repo = self._repo_for_read(repo_type, repo_id, perm)
            commit = hub._resolve(repo, rest[1] if rest else "main")
            return 200, self._repo_info_payload(repo, commit, blobs=flag("blobs")), None

        if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            repo = self._repo_for_read(repo_type, repo_id, perm)
            commit = hub._resolve(repo, rest[1])
            path = "/".join(rest[2:]).strip("/")
            return 200, self._tree(repo, commit, path, recursive=flag("recursive"), expand=flag("expand")), None

        if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
            repo = self._repo_for_read(repo_type, repo_id, perm)
            commit = hub._resolve(repo, rest[1])
            form = _form_or_json(body, self.headers.get("Content-Type", ""))
            paths = form.get("paths", [])
            if isinstance(paths, str):
                paths = [paths]
            expand = str((form.get("expand") or ["false"])[0] if isinstance(form.get("expand"), list)
                         else form.get("expand")).lower() in ("1", "true")
            return 200, self._paths_info(repo, commit, [p.strip("/") for p in paths], expand), None

        if method == "GET" and rest == ["refs"]:
            repo = self._repo_for_read(repo_type, repo_id, perm)
            branches = {k: v for k, v in repo.branches.items() if not k.startswith("refs/pr/")}
            out = {
                "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in branches.items()],
                "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": o} for t, o in repo.tags.items()],
                "converts": [],
            }
            if flag("include_prs"):
                out["pullRequests"] = [
                    {"name": b, "ref": b, "targetCommit": o} for b, o in repo.branches.items() if b.startswith("refs/pr/")
                ]
            return 200, out, None

        if method == "GET" and len(rest) == 2 and rest[0] == "commits":
            repo = self._repo_for_read(repo_type, repo_id, perm)
            commit = hub._resolve(repo, rest[1])
            history = []
            while True:
                history.append({
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.message,
                    "date": commit.date,
                    "authors": [{"user": commit.author}],
                })
                if not commit.parents:
                    break
                commit = repo.commits[commit.parents[0]]
            return 200, history, None

        if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            repo = self._repo_for_write(repo_type, repo_id, perm, "upload to this repo")
            commit = hub._resolve(repo, rest[1])
            return 200, self._preupload(commit, _json(body)), None

        if method == "POST" and len(rest) == 2 and rest[0] == "commit":
            repo = self._repo_for_write(repo_type, repo_id, perm, "commit to this repo")
            return 200, self._commit(repo, rest[1], body, create_pr=flag("create_pr")), None

        if len(rest) == 2 and rest[0] == "branch" and method in ("POST", "DELETE"):
            repo = self._repo_for_write(repo_type, repo_id, perm, "manage branches")
            branch = rest[1]
            if method == "DELETE":
                if branch not in repo.branches:
                    raise _HTTPError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
                if branch == "main":
                    raise _HTTPError(403, "Cannot delete the default branch")
                del repo.branches[branch]
                return 200, {}, None
            if branch in repo.branches or branch in repo.tags:
                raise _HTTPError(409, f"Reference {branch} already exists")
            starting = (_json(body) or {}).get("startingPoint") or "main"
            repo.branches[branch] = hub._resolve(repo, starting).oid
            return 200, {}, None

        if len(rest) == 2 and rest[0] == "tag" and method in ("POST", "DELETE"):
            repo = self._repo_for_write(repo_type, repo_id, perm, "manage tags")
            if method == "DELETE":
                if rest[1] not in repo.tags:
                    raise _HTTPError(404, f"Invalid rev id: {rest[1]}", code="RevisionNotFound")
                del repo.tags[rest[1]]
                return 200, {}, None
            tag = (_json(body) or {}).get("tag")
            if not isinstance(tag, str) or not tag:
                raise _HTTPError(400, "Missing 'tag'")
            if tag in repo.tags or tag in repo.branches:
                raise _HTTPError(409, f"Tag {tag} already exists")
            repo.tags[tag] = hub._resolve(repo, rest[1]).oid
            return 200, {}, None

        raise _HTTPError(404, f"hub_server: unsupported route {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    def _repo_info_payload(self, repo: _Repo, commit: _Commit, blobs: bool) -> dict:
        siblings = []
        for path in sorted(commit.files):
            blob = commit.files[path]
            entry: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry["size"] = blob.size
                entry["blobId"] = blob.git_oid
                if blob.lfs:
                    entry["lfs"] = {
                        "sha256": blob.sha256,
                        "size": blob.size,
                        "pointerSize": len(_lfs_pointer(blob.sha256, blob.size)),
                    }
            siblings.append(entry)
        card = _card_data(commit.files)
        namespace = repo.repo_id.split("/")[0]
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": namespace,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags", [])) if card and isinstance(card.get("tags"), list) else [],
            "siblings": siblings,
            "usedStorage": sum(b.size for b in commit.files.values()),
        }
        if card is not None:
            info["cardData"] = card
            for key in ("pipeline_tag", "library_name"):
                if isinstance(card.get(key), str):
                    info[key] = card[key]
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
        return info

    def _entry(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict | None:
        blob = commit.files.get(path)
        if blob is not None:
            entry: dict[str, Any] = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
            if blob.lfs:
                entry["lfs"] = {
                    "oid": blob.sha256,
                    "size": blob.size,
                    "pointerSize": len(_lfs_pointer(blob.sha256, blob.size)),
                }
            if expand:
                entry["lastCommit"] = self.hub._last_commit(repo, commit, path, is_dir=False)
            return entry
        prefix = path + "/" if path else ""
        children = sorted((p, b.git_oid) for p, b in commit.files.items() if p.startswith(prefix))
        if not children:
            return None
        tree_oid = hashlib.sha1(json.dumps(children).encode()).hexdigest()
        entry = {"type": "directory", "oid": tree_oid, "size": 0, "path": path}
        if expand:
            entry["lastCommit"] = self.hub._last_commit(repo, commit, path, is_dir=True)
        return entry

    def _tree(self, repo: _Repo, commit: _Commit, path: str, recursive: bool, expand: bool) -> list[dict]:
        if path and path in commit.files:
            raise _HTTPError(404, f"{path} is a file, not a directory", code="EntryNotFound",
                             headers={"X-Repo-Commit": commit.oid})
        prefix = path + "/" if path else ""
        names: set[str] = set()
        for file_path in commit.files:
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            if recursive:
                for i in range(1, len(parts) + 1):
                    names.add(prefix + "/".join(parts[:i]))
            else:
                names.add(prefix + parts[0])
        if path and not names:
            raise _HTTPError(404, f"Entry not found: {path}", code="EntryNotFound",
                             headers={"X-Repo-Commit": commit.oid})
        entries = [self._entry(repo, commit, name, expand) for name in sorted(names)]
        # the Hub lists directories before files
        return sorted((e for e in entries if e), key=lambda e: (e["type"] != "directory", e["path"]))

    def _paths_info(self, repo: _Repo, commit: _Commit, paths: list[str], expand: bool) -> list[dict]:
        out = []
        for path in paths:
            entry = self._entry(repo, commit, path, expand) if path else None
            if entry is not None:
                out.append(entry)
        return out

    # -------------------------------------------------------------- uploads
    def _preupload(self, commit: _Commit, payload: dict) -> dict:
        threshold = self.hub.lfs_threshold
        files_out = []
        for item in payload.get("files", []):
            path = item.get("path")
            size = int(item.get("size") or 0)
            mode = "lfs" if threshold is not None and size >= threshold and size > 0 else "regular"
            entry: dict[str, Any] = {"path": path, "uploadMode": mode, "shouldIgnore": False}
            existing = commit.files.get(path)
            if existing is not None:
                # what the client compares against its local oid to skip unchanged files
                entry["oid"] = existing.sha256 if mode == "lfs" else git_blob_sha1(existing.data)
            files_out.append(entry)
        return {"files": files_out, "commitOid": commit.oid}

    def _commit(self, repo: _Repo, revision: str, body: bytes, create_pr: bool) -> dict:
        hub = self.hub
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HTTPError(400, "Commit payload must start with a 'header' line")
        header = lines[0].get("value") or {}
        revision = revision.removeprefix("refs/heads/")
        if revision not in repo.branches:
            if revision in repo.commits or revision in repo.tags:
                raise _HTTPError(400, f"Can only commit to a branch, not to {revision!r}")
            raise _HTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        parent_commit = header.get("parentCommit")
        if parent_commit and parent_commit != head.oid and not create_pr:
            raise _HTTPError(412, "A commit has happened since. Please refresh and try again.")
        base = repo.commits[parent_commit] if (create_pr and parent_commit in repo.commits) else head

        files = dict(base.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            if key == "file":
                path = _validate_path(value.get("path"))
                content = value.get("content", "")
                if value.get("encoding") == "base64":
                    data = base64.b64decode(content)
                else:
                    data = content.encode("utf-8")
                files[path] = _make_blob(data, lfs=False)
            elif key == "lfsFile":
                path = _validate_path(value.get("path"))
                oid = value.get("oid")
                data = hub._lfs_content(repo, oid)
                if data is None:
                    raise _HTTPError(422, f"LFS object {oid} for {path} was not uploaded")
                if value.get("size") is not None and int(value["size"]) != len(data):
                    raise _HTTPError(422, f"LFS object {oid}: size mismatch")
                files[path] = _make_blob(data, lfs=True)
            elif key == "deletedFile":
                path = value.get("path", "")
                if path not in files:
                    raise _HTTPError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = value.get("path", "").rstrip("/") + "/"
                matching = [p for p in files if p.startswith(prefix) or prefix == "/"]
                if not matching:
                    raise _HTTPError(404, f"A folder with this name doesn't exist: {prefix}", code="EntryNotFound")
                for p in matching:
                    del files[p]
            else:
                raise _HTTPError(400, f"Unsupported commit operation key: {key!r}")

        title = header.get("summary") or "Commit"
        new = hub._new_commit(repo, base.oid, files, title, header.get("description") or "")
        pr_url = None
        if create_pr:
            repo.nb_prs += 1
            branch = f"refs/pr/{repo.nb_prs}"
            pr_url = f"{hub.repo_url(repo.repo_id, repo.repo_type)}/discussions/{repo.nb_prs}"
        else:
            branch = revision
        repo.branches[branch] = new.oid
        return {
            "success": True,
            "commitOid": new.oid,
            "commitUrl": f"{hub.repo_url(repo.repo_id, repo.repo_type)}/commit/{new.oid}",
            "pullRequestUrl": pr_url,
            "hookOutput": "",
        }

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict, perm: str | None) -> tuple[int, Any, dict]:
        hub = self.hub
        operation = payload.get("operation", "upload")
        if operation == "upload":
            repo = self._repo_for_write(repo_type, repo_id, perm, "upload LFS files")
        else:
            repo = self._repo_for_read(repo_type, repo_id, perm)
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            out: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            present = hub._lfs_content(repo, oid) is not None
            if operation == "upload" and not present:
                nonce = secrets.token_urlsafe(24)
                hub._lfs_uploads[nonce] = ((repo_type, repo_id), oid, int(size))
                out["actions"] = {"upload": {"href": f"{hub.endpoint}/_hub_server/lfs-upload/{nonce}",
                                             "expires_in": 3600}}
            elif operation == "download":
                if not present:
                    out["error"] = {"code": 404, "message": "Object does not exist"}
                else:
                    raise _HTTPError(501, "hub_server: LFS download through the batch API is not supported; "
                                          "use /resolve/")
            objects.append(out)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _lfs_put(self, nonce: str, body: bytes) -> tuple[int, Any, None]:
        hub = self.hub
        pending = hub._lfs_uploads.pop(nonce, None)
        if pending is None:
            raise _HTTPError(403, "Unknown or already used LFS upload URL")
        key, oid, size = pending
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            raise _HTTPError(400, f"LFS upload does not match oid {oid} / size {size}")
        repo = hub._repos.get(key)
        if repo is None:
            raise _HTTPError(404, "Repository was deleted", code="RepoNotFound")
        repo.lfs_objects[oid] = body
        return 200, None, None

    # -------------------------------------------------------------- downloads
    def _resolve_file(
        self, repo_type: str, repo_id: str, revision: str, path: str, perm: str | None
    ) -> tuple[int, Any, dict[str, str]]:
        repo = self._repo_for_read(repo_type, repo_id, perm)
        commit = self.hub._resolve(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise _HTTPError(404, f"Entry not found: {path}", code="EntryNotFound",
                             headers={"X-Repo-Commit": commit.oid})
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{urllib.parse.quote(path.rsplit('/', 1)[-1])}",
        }
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(blob.size)
        data = blob.data
        range_header = self.headers.get("Range")
        if range_header:
            span = _parse_range(range_header, len(data))
            if span is None:
                raise _HTTPError(416, "Requested range not satisfiable",
                                 headers={"Content-Range": f"bytes */{len(data)}"})
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            headers["Content-Length"] = str(end - start + 1)
            return 206, data[start : end + 1], headers
        headers["Content-Length"] = str(len(data))
        return 200, data, headers


def _parse_range(value: str, total: int) -> tuple[int, int] | None:
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return None
            return max(total - n, 0), total - 1
        start = int(first)
        end = int(last) if last else total - 1
    except ValueError:
        return None
    end = min(end, total - 1)
    if start > end or start >= total:
        return None
    return start, end


def _json(body: bytes) -> Any:
    if not body:
        return {}
    try:
        return json.loads(body)
    except ValueError as exc:
        raise _HTTPError(400, f"Invalid JSON body: {exc}") from None


def _form_or_json(body: bytes, content_type: str) -> dict[str, Any]:
    if "json" in content_type:
        return _json(body)
    return urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True)
