"""python train.py --config experiments/<exp>/config.py [key=value ...]

Wiring only: check the config and start JAX, build the run (mesh, state, programs, data, run
directory), train it. The pieces live in jaximus/ and outer_optimizers/.
"""
import sys
from pathlib import Path

from jax.errors import JaxRuntimeError

from jaximus import UserError
from jaximus.build import build, start
from jaximus.cli import config_help
from jaximus.config import parse_command_line
from jaximus.distributed import leave, peer_failure, processes_done
from jaximus.files import io_error
from jaximus.loop import Interrupted, train

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "experiments" / "diloco_nanochat" / "config.py")  # the Quickstart's


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        return show_help([a for a in argv if a not in ("-h", "--help")])
    try:
        cfg, exp = start(*parse_command_line(argv))
        with build(cfg, exp) as run:
            train(run)
        processes_done()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return leave(2)
    except OSError as e:  # a write the library did not expect to fail (its own are UserErrors)
        print(f"error: {io_error(e, e.filename or '.')}", file=sys.stderr)
        return leave(2)
    except Interrupted as e:  # every process stops at the same step, so none waits on another
        processes_done()
        print(f"jaximus: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return leave(130)
    except JaxRuntimeError as e:  # with several processes: a collective whose peer is gone
        peer_failure(e)
    return 0


def show_help(argv: list[str]) -> int:
    """The usage, then every key of the experiment (--config, else the Quickstart's) with the overrides applied."""
    try:
        config, overrides = parse_command_line(argv) if "--config" in argv else (DEFAULT_CONFIG, argv)
        about = __doc__.strip().split("\n", 1)[1].strip()  # its first line is the usage
        print(f"usage: python train.py --config experiments/<exp>/config.py [key=value ...]\n\n{about}\n\n"
              f"{config_help(config, overrides)}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
