"""python train.py --config experiments/<exp>/config.py [key=value ...]

Wiring only: check the config and start JAX, build the run (mesh, state, programs, data, run
directory), train it. The pieces live in jaximus/ and outer_optimizers/.
"""
import sys

from jaximus import UserError
from jaximus.build import build, start
from jaximus.config import parse_command_line
from jaximus.loop import Interrupted, train


def main(argv: list[str]) -> int:
    try:
        cfg, exp = start(*parse_command_line(argv))
        with build(cfg, exp) as run:
            train(run)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"jaximus: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
