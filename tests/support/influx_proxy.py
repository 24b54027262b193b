"""A loopback HTTP proxy that lets influxdb-client (v2 API) write into an InfluxDB 1.x server.

Maps `POST /api/v2/write?org=..&bucket=DB[/RP]&precision=ns|us|ms|s` onto
`POST /write?db=DB[&rp=RP]&precision=n|u|ms|s` (body and `Content-Encoding: gzip` passed through,
status codes passed back) and answers `/ping` and `/health`. `set_down(True)` simulates an
InfluxDB outage, either by refusing connections (default) or by answering 503. Two more InfluxDB
2.x behaviours: `answer_writes(status)` refuses every write (401 bad token, 403, 404 missing bucket),
and `reject_whole_batch_if(pred)` answers 400 for a batch with any line matching `pred` and stores
none of it (1.x would store the good lines: a "partial write").
"""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stream.tools.embedded import free_port

_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
DOWN_MODES = ("refuse", "503")


class InfluxV2Proxy:
    def __init__(self, v1_url: str, port: int | None = None, host: str = "127.0.0.1"):
        self.v1_url = v1_url.rstrip("/")
        self.host = host
        self.port = port or free_port(host)
        self.writes_ok = 0  # successful writes forwarded
        self.writes_failed = 0  # writes answered with an error (including while down)
        self._down: str | None = None
        self.write_status: int | None = None  # answer every write with this status (answer_writes)
        self.strict_bad_line = None  # predicate: 2.x-style whole-batch rejection (reject_whole_batch_if)
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The proxy's base URL (give it to influxdb-client)."""
        return f"http://{self.host}:{self.port}"

    @property
    def down(self) -> bool:
        """An outage is being simulated (`set_down`)."""
        return self._down is not None

    def start(self) -> "InfluxV2Proxy":
        """Listen in a background thread; returns self."""
        with self._lock:
            self._listen()
        return self

    def _listen(self) -> None:
        if self._server is not None:
            return
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"influx-proxy-{self.port}", daemon=True)
        self._thread.start()

    def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(5)

    def _count(self, ok: bool) -> None:
        with self._count_lock:
            if ok:
                self.writes_ok += 1
            else:
                self.writes_failed += 1

    def set_down(self, down: bool, mode: str = "refuse") -> None:
        """Simulate an outage: `refuse` closes the port (connection refused), `503` answers 503."""
        if mode not in DOWN_MODES:
            raise ValueError(f"mode must be one of {DOWN_MODES}")
        with self._lock:
            self._down = mode if down else None
            if down and mode == "refuse":
                self._unlisten()
            else:
                self._listen()  # same port again (SO_REUSEADDR), so clients reconnect unchanged

    def answer_writes(self, status: int | None) -> None:
        """Answer every write with `status` (None: forward again)."""
        self.write_status = status

    def reject_whole_batch_if(self, pred) -> None:
        """`pred(line: str) -> bool`: a batch with a matching line gets 400 and nothing of it is stored (None: off)."""
        self.strict_bad_line = pred

    def stop(self) -> None:
        """Stop listening."""
        with self._lock:
            self._unlisten()

    def __enter__(self) -> "InfluxV2Proxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    proxy: InfluxV2Proxy
    # HTTP/1.0: one request per connection, so "refuse" mode leaves no kept-alive connection behind.
    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _reply(self, status: int, body: bytes = b"", content_type: str = "application/json", headers: dict | None = None):
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._reply(status, json.dumps(obj).encode())

    def _unavailable(self) -> bool:
        if self.proxy._down == "503":
            self._json(503, {"code": "unavailable", "message": "simulated InfluxDB outage"})
            return True
        return False

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if self._unavailable():
            return
        if path == "/ping":
            self._reply(204, headers={"X-Influxdb-Version": "1.x-via-wavebridge-proxy"})
        elif path == "/health":
            self._json(200, {"name": "influxdb", "message": "ready for queries and writes", "status": "pass",
                             "checks": [], "version": "1.x-via-wavebridge-proxy"})
        else:
            self._json(404, {"code": "not found", "message": f"proxy does not serve {path}"})

    do_HEAD = do_GET

    def do_POST(self):
        split = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if split.path != "/api/v2/write":
            self._json(404, {"code": "not found", "message": f"proxy only maps /api/v2/write, not {split.path}"})
            return
        if self._unavailable():
            self.proxy._count(False)
            return
        if self.proxy.write_status is not None:
            self.proxy._count(False)
            self._json(self.proxy.write_status, {"code": "simulated", "message": f"simulated {self.proxy.write_status}"})
            return
        pred = self.proxy.strict_bad_line
        if pred is not None and any(pred(line) for line in body.decode(errors="replace").splitlines()):
            self.proxy._count(False)
            self._json(400, {"code": "invalid", "message": "unable to parse points (simulated 2.x: nothing stored)"})
            return
        params = urllib.parse.parse_qs(split.query)
        bucket = (params.get("bucket") or [""])[0]
        precision = (params.get("precision") or ["ns"])[0]
        if not bucket or precision not in _PRECISION:
            self.proxy._count(False)
            self._json(400, {"code": "invalid", "message": f"need bucket and precision in {sorted(_PRECISION)}"})
            return
        db, _, rp = bucket.partition("/")  # v2 compatibility: bucket "db/rp"
        query = {"db": db, "precision": _PRECISION[precision]}
        if rp:
            query["rp"] = rp
        headers = {"Content-Type": self.headers.get("Content-Type", "text/plain; charset=utf-8")}
        if self.headers.get("Content-Encoding"):
            headers["Content-Encoding"] = self.headers["Content-Encoding"]
        request = urllib.request.Request(f"{self.proxy.v1_url}/write?{urllib.parse.urlencode(query)}", data=body,
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            status, payload = 502, json.dumps({"code": "unavailable", "message": f"v1 server unreachable: {exc}"}).encode()
        if 200 <= status < 300:
            self.proxy._count(True)
        else:
            self.proxy._count(False)
            payload = _v2_error(payload)
        self._reply(status, payload)


def _v2_error(payload: bytes) -> bytes:
    """v1 errors are `{"error": msg}`; influxdb-client expects `{"code", "message"}`."""
    try:
        msg = json.loads(payload).get("error") or payload.decode(errors="replace")
    except (ValueError, AttributeError):
        msg = payload.decode(errors="replace")
    return json.dumps({"code": "invalid", "message": msg}).encode()


def influx_v2_proxy(v1_url: str, port: int | None = None) -> InfluxV2Proxy:
    """Start a proxy in a background thread; caller must `.stop()` it."""
    return InfluxV2Proxy(v1_url, port=port).start()
