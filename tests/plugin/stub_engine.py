"""A stand-in engine *package* for the set-up tests: installs in seconds from a local wheel (no torch).

It is what the plugin's set-up installs and starts in those tests (the component under test is the
set-up, not the engine): a `farslip` command with `--version` and `serve --port P` (health and models on the
standard library's HTTP server, answers delayed by `--delay`). Tests that need real results (model
downloads included) use the real engine (`engine_process.py`).
"""

from __future__ import annotations

import json
import sys
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "0.0.1"
RELEASES = ["farslip2-vit-b-16", "farslip2-vit-b-32"]


def serve(port: int, delay: float) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            time.sleep(delay)
            if self.path == "/v1/health":
                body = {"version": VERSION, "device": "cpu", "models_loaded": [], "queue_length": 0, "running": None}
            elif self.path == "/v1/models":
                body = {"default": RELEASES[0], "loaded": [],
                        "releases": [{"name": n, "arch": "ViT-B-16", "file": f"{n}.pt", "description": "stub",
                                      "cached": False} for n in RELEASES]}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            print("stub engine:", fmt % args, file=sys.stderr, flush=True)

    print(f"farslip engine on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"]:
        print(f"farslip {VERSION}")
        return 0
    if args[:1] == ["serve"]:
        port = int(args[args.index("--port") + 1]) if "--port" in args else 8765
        delay = float(args[args.index("--delay") + 1]) if "--delay" in args else 0.0
        serve(port, delay)
        return 0
    print(f"farslip: error: unknown command {args}", file=sys.stderr)
    return 2


def build_wheel(folder: Path) -> Path:
    """A wheel of this module with a `farslip` console script, as a local package source."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"farslip-{VERSION}-py3-none-any.whl"
    info = f"farslip-{VERSION}.dist-info"
    files = {
        "farslip_stub_engine.py": Path(__file__).read_text(encoding="utf-8"),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: farslip\nVersion: {VERSION}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": "[console_scripts]\nfarslip = farslip_stub_engine:main\n",
    }
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n")
    return wheel


if __name__ == "__main__":
    sys.exit(main())
