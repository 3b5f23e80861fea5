"""A Jenkins at the HTTP level, for the tests: a real HTTP server on
127.0.0.1 (port 0) speaking the REST endpoints python-jenkins calls. A real
Jenkins cannot be installed here; this one is strict where Jenkins is:

- every request needs HTTP basic auth with the right user and API token (401
  otherwise; anonymous gets nothing);
- every POST needs the CSRF crumb header issued by crumbIssuer/api/json for
  the same session cookie (403 otherwise), as Jenkins >= 2.176 does.

Builds are scripted per job: ``scripts[job] = fn(parameters) -> (chunks,
result)``. A build releases one console chunk per progressiveText request, so
a follower sees X-More-Data until the last one, then the result.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

CRUMB_FIELD = "Jenkins-Crumb"
Script = Callable[[dict[str, str]], tuple[list[str], str]]


@dataclass
class Build:
    number: int
    parameters: dict[str, str]
    chunks: list[str]
    result: str
    released: int = 0

    @property
    def building(self) -> bool:
        return self.released < len(self.chunks)

    def text(self) -> bytes:
        return "".join(self.chunks[:self.released]).encode("utf-8")


@dataclass
class QueueItem:
    number: int
    job: str
    parameters: dict[str, str]
    polls: int = 0
    build: Build | None = None


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    status: int = 0


@dataclass
class FakeJenkins:
    user: str = "ci-bot"
    token: str = "tok-5f1d9c2e7a"
    jobs: dict[str, str] = field(default_factory=dict)
    builds: dict[str, list[Build]] = field(default_factory=dict)
    scripts: dict[str, Script] = field(default_factory=dict)
    cancel_in_queue: set[str] = field(default_factory=set)
    log: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: dict[int, QueueItem] = {}
        self._crumbs: dict[str, str] = {}  # session cookie -> crumb
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-jenkins", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def posts(self) -> list[Request]:
        return [r for r in self.log if r.method == "POST"]

    # -- the Jenkins model ---------------------------------------------------------
    def _start(self, item: QueueItem) -> Build:
        script = self.scripts.get(item.job, lambda params: (["Started\n", "Finished: SUCCESS\n"], "SUCCESS"))
        chunks, result = script(item.parameters)
        runs = self.builds.setdefault(item.job, [])
        build = Build(number=len(runs) + 1, parameters=item.parameters, chunks=chunks, result=result)
        runs.append(build)
        return build

    def build_url(self, job: str, number: int) -> str:
        return f"{self.url}job/{job}/{number}/"

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        with self._lock:
            if method == "GET" and parts == ["api", "json"]:
                jobs = [{"_class": "hudson.model.FreeStyleProject", "name": name,
                         "url": f"{self.url}job/{name}/", "color": "blue"} for name in sorted(self.jobs)]
                return _json({"_class": "hudson.model.Hudson", "jobs": jobs})
            if method == "POST" and parts == ["createItem"]:
                name = query.get("name", "")
                if not name or name in self.jobs:
                    return 400, {}, f"A job already exists with the name '{name}'".encode()
                self.jobs[name] = body.decode("utf-8")
                return 200, {}, b""
            if parts[:2] == ["queue", "item"] and len(parts) == 5 and method == "GET":
                return self._queue_item(int(parts[2]))
            if len(parts) >= 2 and parts[0] == "job":
                return self._job(method, parts[1], parts[2:], query, body)
        return 404, {}, b"Not Found"

    def _queue_item(self, number: int) -> tuple[int, dict, bytes]:
        item = self._queue.get(number)
        if item is None:
            return 404, {}, b"Not Found"
        item.polls += 1
        doc: dict[str, Any] = {"id": number, "task": {"name": item.job}}
        if item.job in self.cancel_in_queue:
            doc["cancelled"] = True
        elif item.polls == 1:  # first look: still waiting, as a busy Jenkins says
            doc["why"] = "Waiting for next available executor"
        else:
            item.build = item.build or self._start(item)
            number = item.build.number
            doc["executable"] = {"number": number, "url": self.build_url(item.job, number)}
        return _json(doc)

    def _job(self, method: str, name: str, rest: list[str], query: dict[str, str],
             body: bytes) -> tuple[int, dict, bytes]:
        if name not in self.jobs:
            return 404, {}, b"Not Found"
        if rest == ["api", "json"] and method == "GET":
            runs = self.builds.get(name, [])
            last = {"number": runs[-1].number, "url": self.build_url(name, runs[-1].number)} if runs else None
            return _json({"name": name, "fullName": name, "lastBuild": last,
                          "builds": [{"number": b.number} for b in reversed(runs)]})
        if rest == ["config.xml"]:
            if method == "GET":
                return 200, {"Content-Type": "application/xml"}, self.jobs[name].encode("utf-8")
            self.jobs[name] = body.decode("utf-8")
            return 200, {}, b""
        if rest in (["buildWithParameters"], ["build"]) and method == "POST":
            number = len(self._queue) + 1
            self._queue[number] = QueueItem(number, name, dict(query))
            return 201, {"Location": f"{self.url}queue/item/{number}/"}, b""
        if len(rest) >= 2 and rest[0].isdigit():
            runs = self.builds.get(name, [])
            index = int(rest[0]) - 1
            if not 0 <= index < len(runs):
                return 404, {}, b"Not Found"
            build = runs[index]
            if rest[1:] == ["api", "json"]:
                params = [{"name": k, "value": v} for k, v in build.parameters.items()]
                return _json({"number": build.number, "building": build.building,
                              "result": None if build.building else build.result,
                              "url": self.build_url(name, build.number),
                              "actions": [{"_class": "hudson.model.ParametersAction", "parameters": params}]})
            if rest[1:] == ["logText", "progressiveText"]:
                build.released = min(build.released + 1, len(build.chunks))
                text = build.text()
                start = int(query.get("start", "0"))
                headers = {"Content-Type": "text/plain;charset=UTF-8", "X-Text-Size": str(len(text))}
                if build.building:
                    headers["X-More-Data"] = "true"
                return 200, headers, text[start:]
        return 404, {}, b"Not Found"

    # -- security ------------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
        return header == f"Basic {expected}"

    def issue_crumb(self, session: str | None) -> tuple[str, str]:
        with self._lock:
            session = session if session in self._crumbs else secrets.token_hex(8)
            self._crumbs[session] = self._crumbs.get(session) or secrets.token_hex(16)
            return session, self._crumbs[session]

    def crumb_valid(self, session: str | None, crumb: str | None) -> bool:
        with self._lock:
            return bool(session and crumb) and self._crumbs.get(session) == crumb


def _json(doc: dict) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "application/json;charset=utf-8"}, json.dumps(doc).encode("utf-8")


def _handler_for(jenkins: FakeJenkins) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # One request per connection: nothing lingers in a handler thread
        # when the server stops.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
            pass

        def _session(self) -> str | None:
            for part in (self.headers.get("Cookie") or "").split(";"):
                key, _, value = part.strip().partition("=")
                if key == "JSESSIONID":
                    return value
            return None

        def _reply(self, status: int, headers: dict, body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, method: str) -> None:
            split = urlsplit(self.path)
            query = dict(parse_qsl(split.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            record = Request(method, split.path, query)
            jenkins.log.append(record)
            if not jenkins.authorized(self.headers.get("Authorization")):
                record.status = 401
                return self._reply(401, {"WWW-Authenticate": 'Basic realm="Jenkins"'}, b"Unauthorized")
            if method == "GET" and split.path == "/crumbIssuer/api/json":
                session, crumb = jenkins.issue_crumb(self._session())
                record.status = 200
                doc = {"_class": "hudson.security.csrf.DefaultCrumbIssuer", "crumb": crumb,
                       "crumbRequestField": CRUMB_FIELD}
                status, headers, payload = _json(doc)
                headers["Set-Cookie"] = f"JSESSIONID={session}; Path=/"
                return self._reply(status, headers, payload)
            if method == "POST" and not jenkins.crumb_valid(self._session(), self.headers.get(CRUMB_FIELD)):
                record.status = 403
                return self._reply(403, {}, b"No valid crumb was included in the request")
            status, headers, payload = jenkins.handle(method, split.path, query, body)
            record.status = status
            self._reply(status, headers, payload)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler
