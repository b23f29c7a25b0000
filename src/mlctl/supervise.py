"""The supervisor on the host: shell snippets that start, inspect and stop a deployment.

Pure builders of shell strings (every path quoted). A deployment directory
holds ``spec.json``, ``run.sh`` (the readable launch), ``server.log``,
``server.pid`` and, once the engine has exited, ``exit_code``. The engine runs
in its own session (``setsid`` + ``nohup``), so it outlives the SSH
connection; a small ``sh`` wrapper records the exit code. A person who SSHes
in can stop it by hand: ``kill -TERM -- -"$(cat server.pid)"``.
"""

from __future__ import annotations

from mlctl import shell

# The wrapper that runs run.sh and writes its exit code. It forwards TERM/INT/HUP
# to the engine (a trap, not an ignore: ignored signals would be inherited) and
# keeps waiting until the engine is really gone.
WRAPPER = (
    "echo $$ > server.pid.tmp && mv server.pid.tmp server.pid; "
    'child=""; '
    "trap 'kill -TERM \"$child\" 2>/dev/null' TERM INT HUP; "
    "sh ./run.sh & child=$!; "
    'while :; do wait "$child"; rc=$?; kill -0 "$child" 2>/dev/null || break; done; '
    'echo "$rc" > exit_code.tmp && mv exit_code.tmp exit_code'
)


def start_command(deploy_dir: str) -> str:
    """Start run.sh under the wrapper in a new session; prints the wrapper's pid.

    The wrapper writes its own pid (``$$``): when ``setsid`` has to fork (its
    caller leads a process group, as under sshd) ``$!`` would name the wrong
    process. That pid leads the session and the process group of the engine.
    """
    d = shell.quote(deploy_dir)
    wrapper = shell.quote(WRAPPER)
    return (
        f"cd {d} && rm -f exit_code exit_code.tmp server.pid && : > server.log && "
        "if command -v setsid >/dev/null 2>&1; then SETSID=setsid; else SETSID=; fi && "
        f"{{ $SETSID nohup sh -c {wrapper} >> server.log 2>&1 < /dev/null & }} && "
        "i=0; while [ ! -s server.pid ] && [ $i -lt 100 ]; do sleep 0.02; i=$((i+1)); done; "
        "cat server.pid"
    )


# ``ours PID DIR MARK``: true when PID is alive AND is the process working in DIR. A pid
# file can outlive its process (a crash, a reboot) and the number can be reused by an
# unrelated process, even one leading its own process group; a signal to it would hit a
# stranger. mlctl's wrappers ``cd`` into their directory, so /proc/PID/cwd identifies
# them; where there is no /proc, the command line must contain MARK. Every check of a
# pid from a file (deployments, downloads, status) goes through this one function.
OURS_FUNCTION = (
    "ours() { "
    '[ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1; '
    'if [ -d "/proc/$1" ]; then '
    '[ "$(readlink "/proc/$1/cwd" 2>/dev/null)" = "$(cd "$2" 2>/dev/null && pwd -P)" ]; '
    'else ps -o args= -p "$1" 2>/dev/null | grep -q -- "$3"; fi; }; '
)
DEPLOYMENT_MARK = "run.sh"  # in the supervisor wrapper's command line


def _ours_prelude(deploy_dir: str) -> str:
    """Shell that sets ``pid`` from server.pid and defines ``alive``: true only for OUR process."""
    d = shell.quote(deploy_dir)
    return (
        OURS_FUNCTION
        + f"pid=$(cat {d}/server.pid 2>/dev/null | tr -dc 0-9); "
        + f'alive() {{ ours "$pid" {d} {DEPLOYMENT_MARK}; }}; '
    )


def alive_command(deploy_dir: str) -> str:
    """Exit 0 when the deployment's own process (the session leader) is alive."""
    return _ours_prelude(deploy_dir) + "alive"


def stop_command(deploy_dir: str, timeout: float = 20.0) -> str:
    """SIGTERM our process group, wait up to ``timeout`` s, then SIGKILL. Prints what it did."""
    ticks = max(1, int(timeout * 10))
    return (
        _ours_prelude(deploy_dir) + 'if [ -z "$pid" ]; then echo "not-started"; exit 0; fi; '
        'if ! alive; then echo "not-running"; exit 0; fi; '
        'kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; '
        f"i=0; while alive && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done; "
        'if alive; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; '
        'echo "killed"; else echo "terminated"; fi'
    )


def log_chunk_command(deploy_dir: str, offset: int) -> str:
    """Print ``<alive> <exit_code|-> <size>`` then the log's bytes from ``offset`` on."""
    d = shell.quote(deploy_dir)
    return (
        f"{alive_command(deploy_dir)} && a=1 || a=0; "
        f"e=$(cat {d}/exit_code 2>/dev/null | tr -dc 0-9-); "
        f"s=$(wc -c < {d}/server.log 2>/dev/null | tr -dc 0-9); "
        'echo "$a ${e:--} ${s:-0}"; '
        f"tail -c +{int(offset) + 1} {d}/server.log 2>/dev/null | head -c 1048576"
    )


def parse_log_chunk(text: str) -> tuple[bool, int | None, int, str]:
    """Parse :func:`log_chunk_command` output into (alive, exit_code, size, new_text)."""
    head, _, rest = text.partition("\n")
    parts = head.split()
    if len(parts) != 3:
        return False, None, 0, ""
    alive = parts[0] == "1"
    exit_code = int(parts[1]) if parts[1].lstrip("-").isdigit() else None
    size = int(parts[2]) if parts[2].isdigit() else 0
    return alive, exit_code, size, rest


def port_listening_command(port: int) -> str:
    """Print ``busy`` when something listens on TCP ``port`` on the host, else ``free``.

    Reads /proc/net/tcp{,6} (state 0A = LISTEN), so it needs neither ss nor netstat.
    """
    hex_port = f"{int(port):04X}"
    return (
        'awk \'FNR>1 && $4=="0A" {n=split($2,a,":"); print a[n]}\' '
        "/proc/net/tcp /proc/net/tcp6 2>/dev/null | "
        f"grep -qx {hex_port} && echo busy || echo free"
    )
