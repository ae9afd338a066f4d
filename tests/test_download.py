"""The first-run download of names.txt against a real HTTP server on 127.0.0.1 (no mocks):
good, truncated, wrong and cut-off bodies, a 500, a stall, and no server at all.
Every failure: exit 1, one line naming --data / NPMLP_DATA, and no cache or temp file left."""
from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import TINY_RUN, assert_user_error, make_names, notes, run_cli, temp_files

from npmlp.loading import SHA256

STALL = 5.0  # seconds a slow route sleeps; the client's timeout is set far below it


@pytest.fixture(scope="module")
def server(names_path):
    good = names_path.read_bytes()
    assert hashlib.sha256(good).hexdigest() == SHA256, "the shared names.txt is not the lecture's file"
    hits: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def send_body(self, body: bytes, length: int | None = None, status: int = 200):
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            hits[self.path] = hits.get(self.path, 0) + 1
            if self.path == "/good":
                self.send_body(good)
            elif self.path == "/short":            # a body that ends early but claims to be complete
                self.send_body(good[: len(good) // 2])
            elif self.path == "/cut":              # the connection drops mid-body
                self.send_body(good[: len(good) // 3], length=len(good))
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            elif self.path == "/wrong":            # a captive portal or a changed file
                self.send_body(("\n".join(make_names(500)) + "\n").encode())
            elif self.path == "/error":
                self.send_body(b"internal error", status=500)
            elif self.path == "/stall-headers":
                time.sleep(STALL)
                self.send_body(good)
            elif self.path == "/stall-body":
                self.send_response(200)
                self.send_header("Content-Length", str(len(good)))
                self.end_headers()
                self.wfile.write(good[:1000])
                self.wfile.flush()
                time.sleep(STALL)
            else:
                self.send_body(b"not found", status=404)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):  # a client that timed out and hung up: expected
            pass

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused, as with no network
    return f"http://127.0.0.1:{port}/names.txt"


def fetch(tmp_path, url, *extra_env, quiet=True):
    """`npmlp train` with no --data and no NPMLP_DATA: it must download into $XDG_CACHE_HOME."""
    env = {"NPMLP_DATA_URL": url, "XDG_CACHE_HOME": str(tmp_path / "cache"), "NPMLP_DOWNLOAD_TIMEOUT": "1",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", **dict(extra_env)}
    opts = TINY_RUN if quiet else [o for o in TINY_RUN if o != "--quiet"]
    return run_cli("train", "--steps", 5, "--out", tmp_path / "run", *opts, env=env, timeout=60)


def cache_file(tmp_path):
    return tmp_path / "cache" / "npmlp" / "names.txt"


FAILURES = {
    "/short": ["SHA-256", "truncated or changed"],
    "/cut": ["cut off before the end"],
    "/wrong": ["SHA-256", "truncated or changed"],
    "/error": ["HTTP 500"],
    "/stall-headers": ["timed out after 1s"],
    "/stall-body": ["timed out after 1s"],
}


@pytest.mark.parametrize("route", FAILURES)
def test_failed_download_is_refused_and_leaves_no_cache(tmp_path, server, route):
    base, _ = server
    r = fetch(tmp_path, base + route)
    assert_user_error(r, 1, base + route, *FAILURES[route], "--data FILE", "NPMLP_DATA=FILE")
    assert not cache_file(tmp_path).exists()
    assert temp_files(tmp_path / "cache") == []
    assert not (tmp_path / "run").exists()


def test_no_network_is_refused(tmp_path):
    url = closed_port_url()
    r = fetch(tmp_path, url)
    assert_user_error(r, 1, url, "cannot connect", "--data FILE", "NPMLP_DATA=FILE")
    assert not cache_file(tmp_path).exists()


def test_bad_timeout_setting_is_a_usage_error(tmp_path, server):
    r = fetch(tmp_path, server[0] + "/good", ("NPMLP_DOWNLOAD_TIMEOUT", "soon"))
    assert_user_error(r, 2, "NPMLP_DOWNLOAD_TIMEOUT", "'soon'")
    assert not cache_file(tmp_path).exists()


def test_good_download_is_cached_checked_and_reused(tmp_path, server, names_path):
    base, hits = server
    before = hits.get("/good", 0)
    r = fetch(tmp_path, base + "/good")
    assert r.returncode == 0, r.stderr
    assert hits["/good"] == before + 1
    cached = cache_file(tmp_path)
    assert cached.read_bytes() == names_path.read_bytes()
    assert temp_files(tmp_path / "cache") == []

    # a second run reads the cache: the server is not asked again (even a failing URL is not touched)
    r = fetch(tmp_path / "second", base + "/error", ("XDG_CACHE_HOME", str(tmp_path / "cache")))
    assert r.returncode == 0, r.stderr
    assert hits["/good"] == before + 1 and notes(r) == []

    # a damaged cache file is caught by its checksum and fetched again
    cached.write_bytes(names_path.read_bytes()[:5000])
    r = fetch(tmp_path / "third", base + "/good", ("XDG_CACHE_HOME", str(tmp_path / "cache")), quiet=False)
    assert r.returncode == 0, r.stderr
    assert hits["/good"] == before + 2
    assert any("failed its SHA-256 check" in n for n in notes(r)), r.stderr
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == SHA256


def test_damaged_cache_and_failed_download_leave_no_bad_file(tmp_path, server):
    cached = cache_file(tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"emma\nava\n")
    r = fetch(tmp_path, server[0] + "/error")
    assert_user_error(r, 1, "HTTP 500", "NPMLP_DATA")
    assert not cached.exists(), "the file that failed its checksum must not be read again"
    assert temp_files(tmp_path / "cache") == []
