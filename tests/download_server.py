"""A loopback HTTP server that answers like the OSF API v2 and like the few Hugging Face Hub endpoints
huggingface_hub calls to download files, serving small files from memory and counting every byte it sends.

OSF: ``GET /v2/nodes/<node>/files/osfstorage/`` (and ``.../<folder>/`` for folders) returns JSON-API pages of
``data[]`` with ``attributes.{name, kind, size, materialized_path, extra.hashes.{md5, sha256}}``, ``links.download`` and
``relationships.files.links.related.href`` for folders, ``links.next`` for the next page (two entries a page, so
paging is exercised); ``GET /download/<node>/<path>`` serves the bytes, with ``Range``.

Hugging Face (repo_type dataset or model): ``GET /api/<datasets|models>/<repo>/revision/<rev>`` (repo info with
``sha``), ``GET /api/<...>/<repo>/tree/<rev>`` (recursive listing with sizes, git blob ids and LFS sha256),
``HEAD``/``GET /[datasets/]<repo>/resolve/<rev>/<path>`` (``X-Repo-Commit``, ``ETag``, ``Content-Length``; Range).

Faults, per served path: ``cut[path] = n`` sends n bytes of the body then drops the connection (once);
``corrupt[path] = k`` serves a damaged copy the next k times; ``served[path]`` counts body bytes sent.
"""
from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PAGE = 2


class FakeStore:
    def __init__(self) -> None:
        self.osf: dict[str, dict[str, bytes]] = {}  # node → {path: bytes}
        self.hf: dict[tuple[str, str], dict[str, bytes]] = {}  # (kind, repo) → {path: bytes}
        self.cut: dict[str, int] = {}
        self.corrupt: dict[str, int] = defaultdict(int)
        self.served: dict[str, int] = defaultdict(int)
        self.ranges: list[tuple[str, str | None]] = []  # (path, Range header) of every body request
        self.requests: list[str] = []  # "METHOD path" of every request
        self.lfs_threshold = 1000  # files above this size are "LFS" files (sha256 listed), others git blobs


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: FakeStore
    base: str

    def log_message(self, *args):  # quiet
        pass

    # --- routing -------------------------------------------------------------------------------------------------
    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    def _route(self, head: bool) -> None:
        self.store.requests.append(f"{'HEAD' if head else 'GET'} {self.path}")
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        query = urllib.parse.parse_qs(url.query)
        if parts[:2] == ["v2", "nodes"] and parts[3:5] == ["files", "osfstorage"]:
            return self._osf_listing(parts[2], "/".join(parts[5:]), int(query.get("page", ["1"])[0]))
        if parts[0] == "download":
            return self._serve(f"osf:{parts[1]}", self.store.osf.get(parts[1], {}), "/".join(parts[2:]), head)
        if parts[0] == "api" and parts[1] in ("datasets", "models"):
            return self._hf_api(parts[1], "/".join(parts[2:4]), parts[4:])
        kind = "datasets" if parts[0] == "datasets" else "models"
        parts = parts[1:] if kind == "datasets" else parts
        if len(parts) > 4 and parts[2] == "resolve":
            repo = "/".join(parts[:2])
            return self._serve(f"hf:{repo}", self.store.hf.get((kind, repo), {}), "/".join(parts[4:]), head,
                               hf=True)
        self._json({"error": "not found"}, 404)

    # --- OSF -----------------------------------------------------------------------------------------------------
    def _osf_listing(self, node: str, folder: str, page: int) -> None:
        if node not in self.store.osf:
            return self._json({"errors": [{"detail": "Not found."}]}, 404)
        prefix = f"{folder}/" if folder else ""
        entries = sorted({p[len(prefix):].split("/")[0] + ("/" if "/" in p[len(prefix):] else "")
                          for p in self.store.osf[node] if p.startswith(prefix)})
        chunk = entries[(page - 1) * PAGE: page * PAGE]
        listing = f"{self.base}/v2/nodes/{node}/files/osfstorage/{prefix}"
        data = [self._osf_entry(node, prefix, e) for e in chunk]
        nxt = f"{listing}?page={page + 1}" if page * PAGE < len(entries) else None
        self._json({"data": data, "links": {"next": nxt, "prev": None}, "meta": {"total": len(entries)}})

    def _osf_entry(self, node: str, prefix: str, name: str) -> dict:
        if name.endswith("/"):
            return {"type": "files", "attributes": {"kind": "folder", "name": name[:-1],
                                                    "materialized_path": f"/{prefix}{name}"},
                    "relationships": {"files": {"links": {"related": {
                        "href": f"{self.base}/v2/nodes/{node}/files/osfstorage/{prefix}{name}"}}}}}
        body = self.store.osf[node][prefix + name]
        return {"type": "files", "attributes": {
            "kind": "file", "name": name, "materialized_path": f"/{prefix}{name}", "size": len(body),
            "extra": {"hashes": {"md5": hashlib.md5(body).hexdigest(), "sha256": hashlib.sha256(body).hexdigest()}}},
            "links": {"download": f"{self.base}/download/{node}/{prefix}{name}"}}

    # --- Hugging Face --------------------------------------------------------------------------------------------
    def _hf_api(self, kind: str, repo: str, rest: list[str]) -> None:
        files = self.store.hf.get((kind, repo))
        if files is None:
            return self._json({"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
        if rest[:1] == ["revision"]:
            return self._json({"id": repo, "sha": COMMIT, "siblings": [{"rfilename": p} for p in files]})
        if rest[:1] == ["tree"]:
            return self._json([self._hf_entry(p, b) for p, b in sorted(files.items())])
        self._json({"error": "not found"}, 404)

    def _hf_entry(self, path: str, body: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(body), "oid": _git_blob(body)}
        if len(body) > self.store.lfs_threshold:
            entry["lfs"] = {"oid": hashlib.sha256(body).hexdigest(), "size": len(body), "pointerSize": 134}
        return entry

    # --- file bodies ---------------------------------------------------------------------------------------------
    def _serve(self, key: str, files: dict[str, bytes], path: str, head: bool, hf: bool = False) -> None:
        if path not in files:
            return self._json({"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"} if hf else {})
        body = files[path]
        extra = {}
        if hf:
            etag = hashlib.sha256(body).hexdigest() if len(body) > self.store.lfs_threshold else _git_blob(body)
            extra = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}
        if head:
            return self._send(200, b"", {**extra, "Content-Length": str(len(body))}, head=True)
        full = f"{key}/{path}"
        if self.store.corrupt[full] > 0:
            self.store.corrupt[full] -= 1
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        rng = self.headers.get("Range")
        self.store.ranges.append((full, rng))
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        status = 206 if rng else 200
        if rng:
            extra["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        chunk = body[start:]
        cut = self.store.cut.pop(full, None)
        self._send(status, chunk if cut is None else chunk[:cut], {**extra, "Content-Length": str(len(chunk))},
                   served=full, close=cut is not None)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send(self, status: int, body: bytes, headers: dict, head: bool = False, served: str | None = None,
              close: bool = False) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)
            self.wfile.flush()
            if served is not None:
                self.store.served[served] += len(body)
        if close:
            self.close_connection = True


def _git_blob(body: bytes) -> str:
    return hashlib.sha1(f"blob {len(body)}\0".encode() + body).hexdigest()


class FakeServer:
    """``with FakeServer() as srv``: ``srv.url`` is the base URL; ``srv.store`` holds the files and the counters."""

    def __init__(self) -> None:
        self.store = FakeStore()

    def __enter__(self) -> "FakeServer":
        handler = type("BoundHandler", (Handler,), {"store": self.store})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        handler.base = self.url
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
