"""Run one command as N processes on this machine, joined by jax.distributed over 127.0.0.1.

    python -m jaximus.launch --processes 2 -- train.py --config experiments/diloco_nanochat/config.py [key=value ...]

Each process gets `distributed.coordinator/num_processes/process_id` appended to its arguments (so it
brings 1/N of the fake CPU devices); output is merged line by line with a `[pN]` prefix, without Gloo's
connection notices (printed by jaxlib's C++ for every collective group). The launcher
returns the first non-zero exit code; when one process fails, the others are stopped (SIGTERM, then
SIGKILL after --grace seconds) so nothing waits on a dead peer.
"""
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from jaximus.cli import ArgumentParser

# jaxlib's Gloo prints "[Gloo] Rank R is connected to N peer ranks. Expected number of connected peer ranks
# is : N" in pieces from several threads, so halves of two notices interleave within a line: drop each piece
GLOO_PIECES = re.compile(rb"\[Gloo\] Rank \d*|"
                         rb"\d* is connected to \d+ peer ranks\. Expected number of connected peer ranks is : \d+")


def without_gloo_notices(line: bytes) -> bytes | None:
    """The line without Gloo's connection notices; None when nothing else was on it."""
    kept = GLOO_PIECES.sub(b"", line)
    return None if kept != line and not kept.strip() else kept


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code > 128 and code - 128 in signal.valid_signals():
        return f"exit code {code} ({signal.Signals(code - 128).name})"
    return f"exit code {code}"


def exit_status(code: int) -> int:
    return 128 - code if code < 0 else code


class Launch:
    def __init__(self, command: list[str], processes: int, grace: float):
        self.command, self.processes, self.grace = command, processes, grace
        self.children: list[subprocess.Popen] = []
        self.relays: list[threading.Thread] = []
        self.interrupted = False  # forwarded a signal: every process stops on its own at an agreed step
        self.print_lock = threading.Lock()
        self.progress_tty = sys.stdout.isatty()

    def start(self):
        port = free_port()
        for pid in range(self.processes):
            keys = [f"distributed.coordinator=127.0.0.1:{port}", f"distributed.num_processes={self.processes}",
                    f"distributed.process_id={pid}"]
            child = subprocess.Popen([*self.command, *keys], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
            self.children.append(child)
            self.relays.append(threading.Thread(target=self.relay, args=(pid, child), daemon=True))
            self.relays[-1].start()

    def relay(self, pid: int, child: subprocess.Popen):
        """Copy a child's output with its prefix; a progress bar's carriage-return updates only go to a terminal."""
        pending = b""
        for chunk in iter(lambda: child.stdout.read1(65536), b""):
            pending += chunk
            *pieces, pending = re.split(rb"(\r|\n)", pending)
            for text, end in zip(pieces[::2], pieces[1::2]):
                text = without_gloo_notices(text)
                if text is not None and (end == b"\n" or self.progress_tty):
                    self.emit(pid, text.decode(errors="replace"), "\n" if end == b"\n" else "\r")
        if pending:
            self.emit(pid, pending.decode(errors="replace"), "\n")

    def emit(self, pid: int, text: str, end: str):
        """A child's `error:` line goes to stderr, where a user (or a script) looks for why it failed."""
        stream = sys.stderr if text.startswith("error:") else sys.stdout
        with self.print_lock:
            stream.write(f"[p{pid}] {text}{end}")
            stream.flush()

    def say(self, text: str):
        with self.print_lock:
            print(f"launch: {text}", file=sys.stderr, flush=True)

    def forward(self, signum: int, _frame=None):
        self.interrupted = True
        self.signal_all(signum)

    def signal_all(self, signum: int):
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)

    def wait(self) -> int:
        """The first non-zero exit code (0 if all succeed); a failure stops the rest within `grace` seconds.

        After a forwarded signal every process stops by itself at an agreed step; one still running
        `grace` seconds after the first has exited is waiting on a dead peer, and is killed.
        """
        first_failure, first_exit = None, None
        while any(c.poll() is None for c in self.children):
            for pid, child in enumerate(self.children):
                code = child.poll()
                if code and first_failure is None and not self.interrupted:
                    first_failure = (pid, code)
                    self.say(f"process {pid} failed ({describe(code)}); stopping the other processes")
                    self.stop_rest()
            if self.interrupted and first_exit is None and any(c.poll() is not None for c in self.children):
                first_exit = time.monotonic()
            if first_exit is not None and time.monotonic() - first_exit > self.grace:
                self.say(f"processes still running {self.grace:g} s after the first stopped; killing them")
                self.signal_all(signal.SIGKILL)
                first_exit = float("inf")
            time.sleep(0.05)
        for relay in self.relays:
            relay.join(timeout=5)
        if first_failure is None:
            first_failure = next(((pid, c.returncode) for pid, c in enumerate(self.children) if c.returncode), None)
        if first_failure is None:
            return 0
        pid, code = first_failure
        self.say(f"failed: process {pid} of {self.processes}, {describe(code)}")
        return exit_status(code)

    def stop_rest(self):
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and any(c.poll() is None for c in self.children):
            time.sleep(0.05)
        if any(c.poll() is None for c in self.children):
            self.say(f"processes still running after {self.grace:g} s; killing them")
            self.signal_all(signal.SIGKILL)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = ArgumentParser(prog="python -m jaximus.launch", description=__doc__.splitlines()[0],
                            usage="python -m jaximus.launch [--processes N] [--grace S] -- COMMAND ...")
    parser.add_argument("--processes", type=int, default=2, help="processes to start (default 2)")
    parser.add_argument("--grace", type=float, default=20.0,
                        help="seconds the others get to stop after one fails, before SIGKILL (default 20)")
    args, stray = parser.parse_known_args(argv[:split])
    if stray:  # the usual slip: the command given without the `--` before it
        parser.error(f"{stray[0]} is not a launcher flag; put the command after --, as in "
                     "python -m jaximus.launch --processes 2 -- train.py --config ...")
    command = argv[split + 1:]
    if args.processes < 1 or not command:
        print("error: usage: python -m jaximus.launch --processes N -- train.py --config ... [key=value ...] "
              "(N >= 1, and a command after --)", file=sys.stderr)
        return 2
    if command[0].endswith(".py") or command[0] == "-m":
        command = [sys.executable, *command]
    launch = Launch(command, args.processes, args.grace)
    signal.signal(signal.SIGINT, launch.forward)  # each process saves at the step boundary they agree on
    signal.signal(signal.SIGTERM, launch.forward)
    try:
        launch.start()
    except OSError as e:
        print(f"error: cannot start {command[0]}: {e}", file=sys.stderr)
        launch.signal_all(signal.SIGKILL)
        return 2
    return launch.wait()


if __name__ == "__main__":
    sys.exit(main())
