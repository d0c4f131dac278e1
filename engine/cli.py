"""The `farslip` command line.

    farslip models list                     # releases, architecture, cached or not
    farslip models download farslip2-vit-b-16
    farslip models verify farslip2-vit-b-16 # or a local file: --arch ViT-B-16

Bad input ends with one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading

from engine.errors import EXIT_INTERRUPTED, EXIT_USAGE, FarSLIPError, output_failure

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # what `timeout`, systemd, docker, QProcess.terminate send


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: a run stops as Ctrl-C stops it, its partial files removed."""


class OneLineParser(argparse.ArgumentParser):
    """Argument errors in one line (`farslip: error: …`, exit 2), like every other error, instead of
    the usage text and the error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"farslip: error: {message} (see `{self.prog} --help`)\n")


# a value that starts with '-' and a digit: a negative number or list of numbers (a --bbox west of
# Greenwich), which argparse would take for an option
_NEGATIVE_VALUE = re.compile(r"^-\.?\d")


def _negative_values_attached(argv: list[str]) -> list[str]:
    """`--bbox -122.5,37.7,…` as `--bbox=-122.5,37.7,…`, so that argparse takes it as the value."""
    out: list[str] = []
    for token in argv:
        if out and _NEGATIVE_VALUE.match(token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _cmd_models_list(args: argparse.Namespace) -> int:
    from engine.models import hub
    from engine.models.registry import RELEASES

    print(f"{'name':<20} {'arch':<9} {'cached':<7} description")
    for release in RELEASES.values():
        path = hub.cached_path(release)
        print(f"{release.name:<20} {release.arch:<9} {'yes' if path else 'no':<7} {release.description}")
        if path and args.paths:
            print(f"  {path}")
    return 0


def _cmd_models_download(args: argparse.Namespace) -> int:
    from engine.models import hub
    from engine.models.registry import RELEASES, find_release

    names = list(RELEASES) if args.all else args.names
    if not names:
        raise FarSLIPError("name a model to download (see `farslip models list`) or pass --all")
    for name in names:
        release = find_release(name)
        if release is None:
            raise FarSLIPError(f"unknown model '{name}' (releases: {', '.join(RELEASES)})")
        print(f"{release.name}: {hub.fetch(release)}")
    return 0


def _cmd_models_verify(args: argparse.Namespace) -> int:
    from engine.models import checkpoint, hub
    from engine.models.loader import build_from_state_dict, guess_arch, resolve_checkpoint
    from engine.models.registry import find_release

    path, arch = resolve_checkpoint(args.model, args.arch)
    release = find_release(args.model)
    digest = hub.file_sha256(path)
    if release is not None:
        expected = hub.hub_sha256(release)
        if expected is not None and expected != digest:
            raise FarSLIPError(f"{path.name}: SHA-256 {digest} differs from the Hub's {expected}; "
                               f"delete it and download again")
        checked = "matches the Hub" if expected else "not compared (Hub unreachable or offline)"
    else:
        checked = "local file"
    state = checkpoint.read_state_dict(path)
    arch = arch or guess_arch(state)
    clip = build_from_state_dict(state, arch, source=path.name)
    params = sum(p.numel() for p in clip.parameters())
    print(f"{path.name}: OK  arch={arch}  long_clip={'yes' if clip.long_clip else 'no'}  "
          f"context={clip.context_length}  params={params / 1e6:.1f}M  sha256={digest[:16]}… ({checked})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from engine import __version__

    parser = OneLineParser(prog="farslip", description="FarSLIP open-vocabulary segmentation engine")
    parser.add_argument("--version", action="version", version=f"farslip {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list, download and verify model checkpoints")
    models_cmds = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = models_cmds.add_parser("list", help="released checkpoints and whether they are cached")
    p.add_argument("--paths", action="store_true", help="print the cached file paths too")
    p.set_defaults(func=_cmd_models_list)
    p = models_cmds.add_parser("download", help="download releases into the Hugging Face cache")
    p.add_argument("names", nargs="*", help="release names (see `farslip models list`)")
    p.add_argument("--all", action="store_true", help="download every release")
    p.set_defaults(func=_cmd_models_download)
    p = models_cmds.add_parser("verify", help="check a release or a local file loads (and matches the Hub)")
    p.add_argument("model", help="release name or checkpoint file")
    p.add_argument("--arch", help="architecture of a local file (guessed when omitted)")
    p.set_defaults(func=_cmd_models_verify)

    from engine import cli_accuracy, cli_batch, cli_classes, cli_scenes, cli_segment, cli_serve

    cli_segment.add_commands(commands)
    cli_batch.add_commands(commands)
    cli_scenes.add_commands(commands)
    cli_classes.add_commands(commands)
    cli_accuracy.add_commands(commands)
    cli_serve.add_commands(commands)
    _add_entry_point_commands(commands)
    return parser


def _add_entry_point_commands(commands) -> None:
    """Sub-commands other installed packages register (group `farslip.commands`), e.g. `eval`."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="farslip.commands"):
        entry.load()(commands)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_negative_values_attached(sys.argv[1:] if argv is None else list(argv)))
    received: list[int] = []

    def stop(signum, _frame) -> None:
        received.append(signum)
        raise Terminated()

    # the server handles its own signals; a run in another thread (a test) cannot install handlers
    own_signals = args.command != "serve" and threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS} if own_signals else {}
    try:
        code = int(args.func(args) or 0)
    except FarSLIPError as exc:
        print(f"farslip: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        stopped = f"stopped by {signal.Signals(received[0]).name}" if received else "interrupted"
        print(f"farslip: {stopped}; no partial output was kept", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Exception as exc:  # a full disk fails in whichever library writes; anything else is a bug
        problem = output_failure(exc, getattr(args, "out", None))
        if problem is None:
            raise
        print(f"farslip: error: {problem}", file=sys.stderr)
        code = EXIT_USAGE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + received[0] if received else code


if __name__ == "__main__":
    sys.exit(main())
