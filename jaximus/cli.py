"""What every command-line tool shares: a bad flag is one `error:` line and exit 2, as a bad key is in train.py."""
import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        sys.stderr.write(f"error: {self.prog}: {message}; see {self.prog} --help\n")
        sys.exit(2)


def _spec_of(key: str, schema: dict):
    """A key's spec, or its dict-valued parent's (model.rope_scaling.factor is part of model.rope_scaling)."""
    while key and key not in schema:
        key = key.rpartition(".")[0]
    return schema.get(key)


def _kind(spec) -> tuple[str, str]:
    """(type and range, meaning and the choices) of a key."""
    if spec is None:
        return "", ""
    return spec.describe(), spec.meaning + (f" (one of: {', '.join(map(str, spec.choices))})" if spec.choices else "")


def config_help(config_path: str, overrides: list[str]) -> str:
    """Every config key of an experiment with its value (after the overrides), type and range, and meaning."""
    from jaximus.build import full_schema  # here, not above: the other tools import this module without JAX
    from jaximus.config import finalize_config, load_experiment
    from jaximus.schema import flatten

    exp = load_experiment(config_path)
    schema = full_schema(exp)
    values = flatten(finalize_config(exp["config"], overrides, schema).to_dict())
    rows = [(key, repr(value), *_kind(_spec_of(key, schema))) for key, value in values.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"  {k:{widths[0]}}  {v:{widths[1]}}  {t:{widths[2]}}  {m}".rstrip() for k, v, t, m in rows]
    return (f"keys of {config_path} ({len(rows)}; override any as key=value, or pass --config to list another "
            "experiment's):\n" + "\n".join(lines))
