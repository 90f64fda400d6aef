"""Headless Chromium driven over the DevTools protocol on a pipe, for tests of the report and the blind test.

`--remote-debugging-pipe` makes Chromium read NUL-terminated JSON commands on fd 3 and write replies and events
on fd 4: no port, no websocket, no chromedriver, nothing but the standard library. Real mouse events go through
`Input.dispatchMouseEvent`, so a test clicks the page the way a person does.
"""
import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]


def require_chromium() -> str:
  """The Chromium executable; the test is skipped without one, except in CI where that is a failure."""
  if CHROMIUM is None:
    if os.environ.get("CI"):
      pytest.fail("chromium is not installed but CI is set: .ci/run must install it")
    pytest.skip("chromium is not installed (apt-get install chromium)")
  return CHROMIUM


class Browser:
  """One headless Chromium with one page; `errors` collects console errors and uncaught exceptions."""

  def __init__(self, width: int = 1200, height: int = 900, timeout: float = 60.0):
    self.timeout = timeout
    self.errors = []
    self._profile = tempfile.mkdtemp(prefix="chromium-")
    to_child_r, self._to_child = os.pipe()
    self._from_child, from_child_w = os.pipe()

    # Chromium's pipe protocol wants commands on fd 3 and replies on fd 4. The shell moves the two pipe ends
    # there from stdin and stdout, so no Python runs between fork and exec (unsafe with JAX's threads).
    self._proc = subprocess.Popen(
        ["/bin/sh", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null', "sh", require_chromium(), *FLAGS,
         f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"],
        stdin=to_child_r, stdout=from_child_w, stderr=subprocess.DEVNULL)
    os.close(to_child_r)
    os.close(from_child_w)
    self._buffer = b""
    self._next_id = 0
    self._session = None
    try:
      target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
      self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
      for domain in ("Page", "Runtime", "Log"):
        self.send(f"{domain}.enable")
      self.send("Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    except BaseException:
      self.close()
      raise

  def _read_message(self, deadline: float) -> dict:
    while b"\0" not in self._buffer:
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
        raise TimeoutError("chromium did not answer in time")
      chunk = os.read(self._from_child, 1 << 16)
      if not chunk:
        raise RuntimeError("chromium closed its DevTools pipe (crashed?)")
      self._buffer += chunk
    message, self._buffer = self._buffer.split(b"\0", 1)
    return json.loads(message)

  def _note_event(self, message: dict) -> None:
    method, params = message.get("method"), message.get("params", {})
    if method == "Runtime.exceptionThrown":
      details = params["exceptionDetails"]
      self.errors.append(details.get("exception", {}).get("description") or details.get("text"))
    elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
      self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
    elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
      self.errors.append(f"{params['entry'].get('url', '')}: {params['entry']['text']}")

  def send(self, method: str, params: dict | None = None) -> dict:
    """Sends one command (to the page once attached) and returns its result; events meanwhile are noted."""
    self._next_id += 1
    message = {"id": self._next_id, "method": method, "params": params or {}}
    if self._session is not None:
      message["sessionId"] = self._session
    os.write(self._to_child, json.dumps(message).encode("utf-8") + b"\0")
    deadline = time.monotonic() + self.timeout
    while True:
      reply = self._read_message(deadline)
      if reply.get("id") == self._next_id:
        if "error" in reply:
          raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})
      self._note_event(reply)

  def eval(self, expression: str):
    """The JSON value of a JavaScript expression in the page (promises awaited)."""
    result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                            "awaitPromise": True})
    if "exceptionDetails" in result:
      raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
    return result["result"].get("value")

  def wait_for(self, expression: str, timeout: float = 20.0):
    """Polls a JavaScript expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      value = self.eval(expression)
      if value:
        return value
      time.sleep(0.05)
    raise TimeoutError(f"page never satisfied {expression}")

  def open(self, url: str) -> None:
    """Navigates and waits until the document and its images have loaded."""
    self.send("Page.navigate", {"url": url})
    self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

  def click(self, selector: str) -> None:
    """A real left click (press and release) at the centre of the first element matching `selector`."""
    box = self.wait_for(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null; "
                        f"e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); "
                        f"return r.width > 0 ? [r.x + r.width / 2, r.y + r.height / 2] : null; }})()")
    for kind in ("mousePressed", "mouseReleased"):
      self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                             "clickCount": 1})

  def screenshot(self, path: str, full_page: bool = True) -> None:
    """PNG of the page (the whole document by default)."""
    params = {"format": "png", "captureBeyondViewport": full_page}
    if full_page:
      width, height = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
      params["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
    with open(path, "wb") as f:
      f.write(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))

  def close(self) -> None:
    try:
      self._session = None
      self.send("Browser.close")
    except (RuntimeError, TimeoutError, OSError):
      pass
    try:
      self._proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self._proc.kill()
      self._proc.wait()
    os.close(self._to_child)
    os.close(self._from_child)
    shutil.rmtree(self._profile, ignore_errors=True)

  def __enter__(self) -> "Browser":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
