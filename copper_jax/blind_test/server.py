"""The blind test's local web server: the page, the images without labels, and one saved answer per POST."""
import http.server
import json
import re
import threading
import urllib.parse

from copper_jax.blind_test.page import page
from copper_jax.blind_test.session import PRACTICE_PER_LABEL, BlindTest, check_expert
from copper_jax.errors import UserError
from copper_jax.store.logs import log

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# An answer is about 60 bytes of JSON; anything far larger is not one.
MAX_BODY_BYTES = 4096
# Seconds a connection may stay silent: a client that announces more bytes than it sends cannot hold a thread.
READ_TIMEOUT_S = 10.0


class _Refused(UserError):
  """A request refused with an HTTP status other than 400."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def _content_length(header) -> int:
  """The announced body size in bytes; _Refused unless it is a plain number up to MAX_BODY_BYTES."""
  if header is None:
    raise _Refused(411, "the answer needs a Content-Length header")
  if not header.strip().isdigit():
    raise _Refused(400, f"Content-Length {header[:20]!r} is not a number of bytes")
  length = int(header)
  if length > MAX_BODY_BYTES:
    raise _Refused(413, f"the answer is {length} bytes; at most {MAX_BODY_BYTES} are accepted")
  return length


class _Handler(http.server.BaseHTTPRequestHandler):
  """GET /, /api/state, /image/...; POST /api/answer. Loopback only, JSON in and out."""
  test: BlindTest = None
  default_expert: str = ""
  quiet: bool = True
  timeout = READ_TIMEOUT_S  # socketserver sets it on the connection: a silent client times out

  def log_message(self, fmt, *args):
    """Silent: every image request would be a line; saved answers are logged instead."""

  def _send(self, status: int, body: bytes, content_type: str) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    self.end_headers()
    self.wfile.write(body)

  def _json(self, status: int, obj) -> None:
    self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

  def _json_body(self) -> dict:
    """The POSTed JSON object, read to exactly its announced length (a short body times out, unsaved)."""
    content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
      raise _Refused(415, f"Content-Type {content_type or 'none'!r}: send the answer as application/json")
    length = _content_length(self.headers.get("Content-Length"))
    raw = self.rfile.read(length)
    if len(raw) < length:
      raise UserError(f"the answer ended after {len(raw)} of {length} bytes")
    try:
      body = json.loads(raw)
    except ValueError:
      raise UserError("the answer is not JSON") from None
    if not isinstance(body, dict):
      raise UserError(f"the answer is JSON but not an object ({type(body).__name__}); send "
                      "{\"expert\": ..., \"position\": ..., \"label\": ...}")
    return body

  def _guarded(self, handle) -> None:
    # A page from another site must not reach this server through a name that resolves to 127.0.0.1.
    host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
    if host not in _LOOPBACK_HOSTS:
      self._json(403, {"error": f"host {host!r} refused: open http://127.0.0.1:{self.server.server_port}/"})
      return
    try:
      handle()
    except _Refused as e:
      self._json(e.status, {"error": str(e)})
    except UserError as e:
      self._json(400, {"error": str(e)})
    except TimeoutError:
      raise  # the server closes the connection; nothing was saved
    except Exception as e:  # noqa: BLE001 -- one line for the expert and the log, never a traceback
      log(f"error: {self.command} {self.path[:80]}: {type(e).__name__}: {str(e)[:160]}", False)
      self._json(500, {"error": f"the server could not answer ({type(e).__name__}); see its terminal"})

  def do_GET(self):
    self._guarded(self._get)

  def do_POST(self):
    self._guarded(self._post)

  def _get(self):
    url = urllib.parse.urlparse(self.path)
    query = dict(urllib.parse.parse_qsl(url.query))
    if url.path == "/":
      self._send(200, page(self.default_expert).encode("utf-8"), "text/html; charset=utf-8")
    elif url.path == "/api/state":
      self._json(200, self.test.public_state(check_expert(query.get("expert", ""))))
    elif m := re.fullmatch(r"/image/(practice|test)/(\d+)\.png", url.path):
      self._send(200, self.test.png(m[1], int(m[2]), query.get("expert")), "image/png")
    else:
      self._json(404, {"error": f"no page {url.path}"})

  def _post(self):
    if urllib.parse.urlparse(self.path).path != "/api/answer":
      self._json(404, {"error": f"no endpoint {self.path}"})
      return
    body = self._json_body()
    expert = check_expert(body.get("expert", ""))
    counts = self.test.answer(expert, body.get("position"), body.get("label"))
    log(f"{expert}: answer saved, {counts['answered']} of {counts['total']}", self.quiet)
    self._json(200, counts)


def serve(work_dir: str, port: int = 8000, expert: str | None = None, quiet: bool = False,
          practice_per_label: int = PRACTICE_PER_LABEL):
  """A started server on 127.0.0.1:`port` (0: any free port) in a background thread; `.shutdown()` stops it.
  `practice_per_label` training images of every stress time are shown, labelled, before the test."""
  if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
    raise UserError(f"port {port!r}: use a number from 1 to 65535, or 0 for any free port")
  test = BlindTest(work_dir, practice_per_label)
  handler = type("Handler", (_Handler,), {"test": test, "default_expert": check_expert(expert) if expert else "",
                                          "quiet": quiet})
  try:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
  except OSError as e:
    raise UserError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); choose another --port") from None
  server.daemon_threads = True
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server
