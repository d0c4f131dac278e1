"""`farslip serve`: run the local HTTP API.

    farslip serve                                            # 127.0.0.1:8765, token in ~/.config/farslip/token
    farslip serve --host 0.0.0.0 --allow-root /data/orthos   # remote mode: only these folders are served

On SIGTERM or Ctrl-C the engine stops within seconds: clients waiting on a job (long-polls, event
streams) are answered at once, and any request still open after STOP_GRACE_S is cut off. A job still
running is marked failed ("interrupted") at the next start.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from engine import config
from engine.errors import EXIT_INTERRUPTED, InputError

STOP_GRACE_S = 5  # seconds open requests get to finish once the engine is told to stop


def _cmd_serve(args: argparse.Namespace) -> int:
    from engine.geo.crs_text import forbid_network

    forbid_network()  # before GDAL's PROJ starts: no CRS makes the engine fetch a grid
    import uvicorn

    from engine.server.app import ServerSettings, create_app
    from engine.server.auth import load_or_create_token, token_path
    from engine.server.serving import OncePerMinute, StoppingServer, raise_open_files_limit

    roots = []
    for root in args.allow_root or []:
        path = config.user_path(root).resolve()
        if not path.is_dir():
            raise InputError(f"--allow-root {root} is not a folder")
        roots.append(path)
    token = load_or_create_token()
    settings = ServerSettings(token=token, host=args.host, port=args.port, allow_roots=roots,
                              data_dir=Path(args.data_dir) if args.data_dir else config.data_dir(),
                              default_model=args.model, default_arch=args.arch, device=args.device,
                              precision=args.precision, compile=args.compile, max_upload_mb=args.max_upload_mb,
                              max_uploads_mb=args.max_uploads_mb, job_ttl_s=args.job_ttl_hours * 3600,
                              max_queue=args.max_queue, max_pixels=args.max_mpx * 1e6 if args.max_mpx else None,
                              allowed_hosts=args.allowed_host)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("asyncio").addFilter(OncePerMinute())  # e.g. each connection refused when out of files
    raise_open_files_limit()
    app = create_app(settings)  # (a data folder another engine serves is refused here, before any word)
    print(f"farslip engine on http://{args.host}:{args.port}  (token file: {token_path()})", file=sys.stderr)
    if settings.remote and not roots:
        print("farslip: remote mode without --allow-root: only uploaded rasters are accepted", file=sys.stderr)
    config_ = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                             timeout_graceful_shutdown=STOP_GRACE_S)
    try:
        StoppingServer(config_, on_stop=app.state.watch.close).run()
    except KeyboardInterrupt:  # uvicorn stopped for Ctrl-C and raises it again once it has
        # A job's compute threads may still be running: the interpreter's own exit would abort in C++
        # ("terminate called without an active exception"). The job is reported interrupted at the next
        # start, as after SIGTERM.
        print("farslip: engine stopped", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_INTERRUPTED)
    return 0


def _number(kind=float, least: float = 0, above: bool = True, most: float = math.inf):
    """An argparse type: a finite number over `least` (at least it, when not `above`), at most `most`."""
    def read(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'a whole number' if kind is int else 'a number'}") \
                from None
        if not math.isfinite(value) or (value <= least if above else value < least) or value > most:
            bound = f"over {least:g}" if above else f"at least {least:g}"
            raise argparse.ArgumentTypeError(f"'{text}' must be a number {bound}"
                                             + (f" and at most {most:g}" if math.isfinite(most) else ""))
        return value

    return read


def add_commands(commands: argparse._SubParsersAction) -> None:
    from engine.cli_segment import add_model_arguments

    p = commands.add_parser("serve", help="run the HTTP API for the QGIS plugin and scripts")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_number(int, 1, above=False, most=65535), default=8765)
    p.add_argument("--allow-root", action="append", metavar="DIR",
                   help="folder whose rasters clients may name by path (repeatable)")
    p.add_argument("--data-dir", help=f"jobs and results folder (default {config.data_dir()})")
    p.add_argument("--max-upload-mb", type=_number(), default=4096, help="largest single upload")
    p.add_argument("--max-uploads-mb", type=_number(), default=16384,
                   help="all uploads on record together (DELETE /v1/uploads/{id} frees room)")
    p.add_argument("--max-mpx", type=_number(above=False), default=2000,
                   help="largest working grid of one segmentation job, in megapixels (0: no limit; default "
                        "2000 = 1,000 km² at 0.7 m)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="Host header value to answer (repeatable; default: loopback names on a loopback "
                        "address, any name in remote mode)")
    p.add_argument("--job-ttl-hours", type=_number(), default=24, help="jobs and their files expire after this")
    p.add_argument("--max-queue", type=_number(int, 1, above=False), default=8,
                   help="waiting jobs before new ones get 429")
    add_model_arguments(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each model when loaded (its first job waits 10-20 s on a GPU for the "
                        "compilation; later ones run ~25%% faster)")
    p.set_defaults(func=_cmd_serve)
