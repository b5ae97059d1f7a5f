"""``python -m rerankd.deployment.healthcheck``: the container images' HEALTHCHECK, on the port really served.

Why not a fixed URL: the images' HEALTHCHECKs used to GET ``http://127.0.0.1:8000/health`` (8080, 7860), so a
container started with ``serve --port 9000`` or ``-e RERANKD_PORT=9000`` listened on one port while Docker
probed another, and was marked unhealthy while serving. Here the probe reads the command line and the
environment of the rerankd process in the container (PID 1, else the first process running ``rerankd``),
takes the port and host as click does (a flag, else its ``RERANKD_*`` variable, else the command's default,
parsed by the real click command), and GETs that host and port: ``/health`` for ``serve``, ``gateway`` and
``alert-relay``, ``/`` for ``ui``. Exit status 0 for a 2xx answer, 1 otherwise (what Docker reads).

    python -m rerankd.deployment.healthcheck            # in the container
    python -m rerankd.deployment.healthcheck --pid 4242 # the process to probe (default: found as above)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["HEALTH_PATHS", "find_rerankd", "main", "probe_url"]

# The route each long-running command answers while its process lives.
HEALTH_PATHS = {"serve": "/health", "gateway": "/health", "alert-relay": "/health", "ui": "/"}
_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def _read_nul_list(path: Path) -> list[str]:
    return [part.decode("utf-8", "surrogateescape") for part in path.read_bytes().split(b"\0") if part]


def command_of(argv: list[str]) -> list[str] | None:
    """``[subcommand, *args]`` when ``argv`` runs rerankd (its console script or ``-m rerankd.cli``), else None."""
    for i, word in enumerate(argv):
        runs_rerankd = Path(word).name == "rerankd" or (word in ("rerankd", "rerankd.cli") and argv[i - 1:i] == ["-m"])
        if runs_rerankd and i + 1 < len(argv) and argv[i + 1] in HEALTH_PATHS:
            return argv[i + 1:]
    return None


def _pids() -> Iterator[int]:
    yield 1
    others = sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and p.name != "1")
    yield from (pid for pid in others if pid != os.getpid())


def find_rerankd(pid: int | None = None) -> tuple[list[str], dict[str, str]]:
    """(``[subcommand, *args]``, environment) of the rerankd process ``pid``, or of the first one found."""
    for candidate in [pid] if pid is not None else _pids():
        try:
            argv = _read_nul_list(Path(f"/proc/{candidate}/cmdline"))
            environ = _read_nul_list(Path(f"/proc/{candidate}/environ"))
        except OSError:
            continue
        command = command_of(argv)
        if command is not None:
            return command, dict(item.split("=", 1) for item in environ if "=" in item)
    raise LookupError(f"no rerankd {'/'.join(HEALTH_PATHS)} process found"
                      + (f" at PID {pid}" if pid is not None else ""))


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _given(args: list[str], flag: str, env: dict[str, str]) -> str | None:
    """``flag``'s value as click takes it when given: the last ``--flag V``/``--flag=V``, else ``RERANKD_FLAG``."""
    value = None
    for i, word in enumerate(args):
        if word == "--":
            break
        if word == flag and i + 1 < len(args):
            value = args[i + 1]
        elif word.startswith(flag + "="):
            value = word.split("=", 1)[1]
    return value if value is not None else env.get("RERANKD_" + flag[2:].upper())


def probe_url(command: list[str], env: dict[str, str]) -> str:
    """The URL that answers while ``rerankd COMMAND`` (run with ``env``) lives: its host and port as parsed.

    The port and host as given (flag, else variable: the images set RERANKD_PORT) are read without importing
    anything, so the probe stays fast on a container whose CPUs are busy serving; a command that gives neither
    is parsed by the real click command for its defaults.
    """
    name, args = command[0], command[1:]
    if name not in HEALTH_PATHS:
        raise ValueError(f"rerankd {name} serves no health route")
    params: dict[str, object] = {"port": _given(args, "--port", env), "host": _given(args, "--host", env)}
    if params["port"] is None or params["host"] is None:
        import click

        from rerankd.cli import cli

        group_ctx = click.Context(cli)
        click_command = cli.get_command(group_ctx, name)
        if click_command is None:
            raise ValueError(f"rerankd {name} is not installed here")
        with _environment(env):
            params = click_command.make_context(name, list(args), parent=group_ctx).params
    host = str(params.get("host") or "")
    host = "127.0.0.1" if host in _ANY_ADDRESS else (f"[{host}]" if ":" in host else host)
    return f"http://{host}:{int(str(params['port']))}{HEALTH_PATHS[name]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rerankd.deployment.healthcheck",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pid", type=int, default=None, help="the rerankd process to probe (default: PID 1, ...)")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    try:
        url = probe_url(*find_rerankd(args.pid))
    except Exception as exc:  # no rerankd process, or a command that does not parse: unhealthy too
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"healthcheck: GET {url}: {exc}", file=sys.stderr)
        return 1
    print(f"healthcheck: GET {url}: {status}")
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
