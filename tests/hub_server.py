"""A local stand-in for the Hugging Face Hub's HTTP API: enough of it for `txkit push` and for
`from_pretrained("USER/NAME")`, so that both run against real `huggingface_hub` client code offline.

What it serves (the calls huggingface_hub 2.x makes for these operations):

    POST /api/repos/create                           create a model repository (409 when it exists)
    GET  /api/models/USER/NAME[/revision/REV]        repository info (sha, files)
    POST /api/models/USER/NAME/branch/BRANCH         create a branch from main
    POST /api/validate-yaml                          README.md metadata check (always fine)
    POST /api/models/USER/NAME/preupload/REV         upload mode per file: "lfs" for *.safetensors and
                                                     files over 10 MB (as the Hub does), else "regular"
    POST /USER/NAME.git/info/lfs/objects/batch       git-LFS batch API, "basic" transfer
    PUT  /lfs/OID, POST /lfs/OID/verify              LFS object upload (sha256 checked) and verify
    POST /api/models/USER/NAME/commit/REV            NDJSON commit: base64 "file" and "lfsFile" entries
    HEAD/GET /USER/NAME/resolve/REV/PATH             file download with X-Repo-Commit / ETag headers

Uploads through Xet storage are not served: run the client with HF_HUB_DISABLE_XET=1, which makes
huggingface_hub use the classic git-LFS protocol above for LFS files.

Writes need `Authorization: Bearer TOKEN` with the server's token; every request (method, path,
headers, body) is recorded in `HubServer.requests` so tests can check where the token travelled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_THRESHOLD = 10 * 1024 * 1024


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict  # names in lower case
    body: bytes


@dataclass
class Repo:
    private: bool
    branches: dict = field(default_factory=dict)  # branch -> commit id
    commits: dict = field(default_factory=dict)  # commit id -> {"files": {path: bytes}, "lfs": set, "message": str}

    def files(self, rev: str) -> dict | None:
        commit = self.branches.get(rev, rev)
        return self.commits[commit]["files"] if commit in self.commits else None


class HubServer:
    """`with HubServer(token) as hub:` serves on http://127.0.0.1:PORT (hub.url) in a thread."""

    def __init__(self, token: str, user: str = "user"):
        self.token = token
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    # -- state changes (called with the lock held) -------------------------------------------------

    def _new_commit(self, repo: Repo, parent: str | None, files: dict, lfs: set, message: str) -> str:
        digest = hashlib.sha1(json.dumps([parent, message, sorted(files)]).encode())
        for path in sorted(files):
            digest.update(files[path])
        oid = digest.hexdigest()
        repo.commits[oid] = {"files": files, "lfs": lfs, "message": message, "parent": parent}
        return oid


def _make_handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        # -- plumbing ---------------------------------------------------------------------------

        def _record(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with hub.lock:
                headers = {name.lower(): value for name, value in self.headers.items()}
                hub.requests.append(Recorded(self.command, self.path, headers, body))
            return body

        def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None):
            data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int, message: str, code: str | None = None):
            self._send(status, {"error": message}, {"X-Error-Code": code} if code else None)

        def _authorized(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _repo(self, repo_id: str, write: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private or write) and not self._authorized():
                self._error(
                    404 if repo is None or not self._authorized() else 403, "Repository not found", "RepoNotFound"
                )
                return None
            return repo

        # -- routes -------------------------------------------------------------------------------

        def do_HEAD(self):
            self._record()
            self._route_get()

        def do_GET(self):
            self._record()
            self._route_get()

        def _route_get(self):
            path = unquote(urlsplit(self.path).path)
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+?)(?:/revision/(.+))?", path):
                return self._repo_info(m.group(1), m.group(2) or "main")
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                return self._resolve(m.group(1), m.group(2), m.group(3))
            self._error(404, f"no route for GET {path}")

        def do_PUT(self):
            body = self._record()
            path = urlsplit(self.path).path
            if m := re.fullmatch(r"/lfs/([0-9a-f]{64})", path):
                if hashlib.sha256(body).hexdigest() != m.group(1):
                    return self._error(400, "content does not match the sha256")
                with hub.lock:
                    hub.lfs_objects[m.group(1)] = body
                return self._send(200, {})
            self._error(404, f"no route for PUT {path}")

        def do_POST(self):
            body = self._record()
            path = unquote(urlsplit(self.path).path)
            if path == "/api/validate-yaml":
                return self._send(200, {"errors": [], "warnings": []})
            if m := re.fullmatch(r"/lfs/([0-9a-f]{64})/verify", path):
                ok = m.group(1) in hub.lfs_objects
                return self._send(200, {}) if ok else self._error(404, "object not uploaded")
            if not self._authorized():
                return self._error(401, "Invalid credentials in Authorization header")
            if path == "/api/repos/create":
                return self._create_repo(json.loads(body))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/(.+)", path):
                return self._create_branch(m.group(1), m.group(2))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path):
                return self._preupload(m.group(1), json.loads(body))
            if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
                return self._lfs_batch(m.group(1), json.loads(body))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path):
                return self._commit(m.group(1), m.group(2), body)
            self._error(404, f"no route for POST {path}")

        # -- the API ------------------------------------------------------------------------------

        def _create_repo(self, payload: dict):
            repo_id = f"{payload.get('organization') or hub.user}/{payload['name']}"
            url = f"{hub.url}/{repo_id}"
            with hub.lock:
                if repo_id in hub.repos:
                    return self._error(409, "You already created this model repo")
                repo = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
                repo.branches["main"] = hub._new_commit(repo, None, {}, set(), "initial commit")
                hub.repos[repo_id] = repo
            self._send(200, {"url": url, "name": repo_id})

        def _create_branch(self, repo_id: str, branch: str):
            if (repo := self._repo(repo_id, write=True)) is None:
                return
            with hub.lock:
                if branch in repo.branches:
                    return self._error(409, f"Branch {branch} already exists")
                repo.branches[branch] = repo.branches["main"]
            self._send(200, {})

        def _preupload(self, repo_id: str, payload: dict):
            if self._repo(repo_id, write=True) is None:
                return
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs"
                    if f["path"].endswith(".safetensors") or f["size"] > LFS_THRESHOLD
                    else "regular",
                    "shouldIgnore": False,
                    "oid": None,
                }
                for f in payload["files"]
            ]
            self._send(200, {"files": files})

        def _lfs_batch(self, repo_id: str, payload: dict):
            if self._repo(repo_id, write=True) is None:
                return
            objects = []
            for obj in payload["objects"]:
                oid = obj["oid"]
                entry = {"oid": oid, "size": obj["size"], "authenticated": True}
                if oid not in hub.lfs_objects:
                    entry["actions"] = {
                        "upload": {"href": f"{hub.url}/lfs/{oid}"},
                        "verify": {"href": f"{hub.url}/lfs/{oid}/verify"},
                    }
                objects.append(entry)
            self._send(200, {"transfer": "basic", "objects": objects})

        def _commit(self, repo_id: str, revision: str, body: bytes):
            if (repo := self._repo(repo_id, write=True)) is None:
                return
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            with hub.lock:
                if revision not in repo.branches:
                    return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                parent = repo.branches[revision]
                files = dict(repo.commits[parent]["files"])
                lfs = set(repo.commits[parent]["lfs"])
                message = ""
                for item in lines:
                    value = item["value"]
                    if item["key"] == "header":
                        message = value["summary"]
                    elif item["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                        lfs.discard(value["path"])
                    elif item["key"] == "lfsFile":
                        if value["oid"] not in hub.lfs_objects:
                            return self._error(400, f"LFS object of {value['path']} was never uploaded")
                        files[value["path"]] = hub.lfs_objects[value["oid"]]
                        lfs.add(value["path"])
                    elif item["key"] in ("deletedFile", "deletedFolder"):
                        files = {
                            p: c
                            for p, c in files.items()
                            if p != value["path"] and not p.startswith(value["path"].rstrip("/") + "/")
                        }
                    else:
                        return self._error(400, f"unsupported commit operation {item['key']}")
                oid = hub._new_commit(repo, parent, files, lfs, message)
                repo.branches[revision] = oid
            self._send(
                200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}
            )

        def _repo_info(self, repo_id: str, revision: str):
            if (repo := self._repo(repo_id)) is None:
                return
            files = repo.files(revision)
            if files is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            sha = repo.branches.get(revision, revision)
            self._send(200, {
                "id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(files)],
            })  # fmt: skip

        def _resolve(self, repo_id: str, revision: str, file: str):
            if (repo := self._repo(repo_id)) is None:
                return
            files = repo.files(revision)
            if files is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            commit = repo.branches.get(revision, revision)
            if file not in files:
                return self._error(404, f"Entry not found: {file}", "EntryNotFound")
            content = files[file]
            headers = {"X-Repo-Commit": commit}
            if file in repo.commits[commit]["lfs"]:
                headers["X-Linked-Etag"] = f'"{hashlib.sha256(content).hexdigest()}"'
                headers["X-Linked-Size"] = str(len(content))
            # a git blob id, as the Hub's ETag for regular files
            headers["ETag"] = '"' + hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest() + '"'
            self._send(200, headers=headers, raw=content)

    return Handler
