"""Load an experiment folder (config.py, model.py, optimizer.py, and schemes.py if any) and finalize its config.

Everything here runs before JAX initializes, so errors in the command line cost nothing.
"""
import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import sws

from jaximus import UserError
from jaximus.schema import check_types, flatten

CONTRACT = {  # an experiment's config.py may also define config_schema() and check_config(cfg)
    "config.py": ["get_config"],
    "model.py": ["init_model_weights", "make_model_forward"],
    "optimizer.py": ["make_optimizer"],
}
SCHEMES_FILE = "schemes.py"  # optional: outer schemes of the experiment's own, registered when it is loaded


def _load_module(path: Path) -> ModuleType:
    name = "jaximus_exp_" + "_".join(path.with_suffix("").parts[-2:])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: syntax error ({e.msg}); fix the file") from None
    return module


def load_experiment(config_path: str) -> dict[str, ModuleType]:
    """The experiment's three modules, checked against the contract before anything runs."""
    path = Path(config_path)
    if not path.is_file():
        raise UserError(f"--config {config_path}: no such file; pass experiments/<exp>/config.py")
    load_schemes(path.parent)
    modules = {}
    for filename, functions in CONTRACT.items():
        file = path if filename == "config.py" else path.parent / filename
        if not file.is_file():
            raise UserError(f"{file}: missing; an experiment folder needs {', '.join(CONTRACT)}")
        module = _load_module(file.resolve())
        for fn in functions:
            if not callable(getattr(module, fn, None)):
                raise UserError(f"{file}: no function {fn}(); the experiment contract requires it")
        modules[filename.removesuffix(".py")] = module
    return modules


def load_schemes(folder: Path) -> ModuleType | None:
    """An experiment folder's schemes.py, imported before its config.py so that what it registers has its keys
    in the config and can be picked by outer.name."""
    path = Path(folder) / SCHEMES_FILE
    return _load_module(path.resolve()) if path.is_file() else None  # it imports outer_optimizers: theirs list first


def finalize_config(config_module: ModuleType, overrides: list[str], schema: dict | None = None) -> sws.FinalConfig:
    """get_config() with the command line's key=value overrides applied, every value checked against schema."""
    builder = config_module.get_config()
    if not isinstance(builder, sws.Config):
        raise UserError(f"{config_module.__file__}: get_config() must return an unfinalized sws.Config")
    for arg in overrides:
        if "=" not in arg or arg.startswith("-"):
            raise UserError(f"argument {arg!r}: overrides are written key=value (e.g. max_steps=100)")
    try:
        cfg = builder.finalize(overrides)
    except (sws.OverrideError, sws.CycleError) as e:  # both are FinalizeErrors
        raise UserError(f"config: {_one_line(e)}") from None
    except sws.FinalizeError as e:  # a derived value failed: most likely an override of the wrong type
        if schema is not None:
            check_types(_without_derived(config_module).finalize(overrides), schema)
        raise UserError(f"config: {_one_line(e)} ({_one_line(e.__cause__ or e)}); check the overrides") from None
    if schema is not None:
        check_types(cfg, schema)
    return cfg


def _without_derived(config_module: ModuleType) -> sws.Config:
    """The defaults as plain values: overrides then apply without computing anything from them."""
    plain = sws.Config()
    for key, value in flatten(config_module.get_config().finalize([]).to_dict()).items():
        *parents, name = key.split(".")
        node = plain
        for p in parents:
            node = getattr(node, p)
        setattr(node, name, value)
    return plain


def parse_command_line(argv: list[str]) -> tuple[str, list[str]]:
    """(config path, overrides) from `--config path [key=value ...]`."""
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        raise UserError("usage: python train.py --config experiments/<exp>/config.py [key=value ...]")
    i = argv.index("--config")
    return argv[i + 1], argv[:i] + argv[i + 2:]


def check_writable(directory: str, key: str) -> None:
    """Fail before training if `directory` (or the ancestor that would create it) is not writable."""
    path = Path(directory).absolute()
    while not path.exists():
        path = path.parent
    try:  # a probe, not os.access: root passes every access check, and /proc refuses mkdir anyway
        Path(tempfile.mkdtemp(dir=path, prefix=".jaximus-probe-")).rmdir()
    except OSError:
        raise UserError(f"{key}={directory}: {path} is not a writable directory; choose another {key}") from None


def _one_line(e: BaseException) -> str:
    """sws puts "did you mean:" suggestions on the next line: keep them, on one line."""
    return " ".join(str(e).split()) or type(e).__name__


def check_config(cfg, language_model: bool = True) -> None:
    """Relations between config values that every experiment relies on (types and ranges: the schema); the
    corpus and sequence checks only where the experiment trains a language model (not its own objective)."""
    p, d = cfg.parallel, cfg.data
    islands_devices = p.replica * p.fsdp
    if d.batch_size % islands_devices:
        raise UserError(f"data.batch_size={d.batch_size}: must split evenly over {p.replica} islands x {p.fsdp} "
                        f"devices; use a multiple of {islands_devices}")
    if p.cpu_devices != islands_devices:
        raise UserError(f"parallel.cpu_devices={p.cpu_devices} but parallel.replica x parallel.fsdp = "
                        f"{islands_devices}; make them equal (or leave cpu_devices unset)")
    if not language_model:
        return
    if d.island_split == "topic" and d.source != "embedded":
        raise UserError(f"data.island_split=topic with data.source={d.source}: topics are the embedded corpus's "
                        "stdlib packages; use data.source=embedded or data.island_split=iid")
    if d.seq_len > cfg.model.max_seq_len:
        raise UserError(f"data.seq_len={d.seq_len}: must be between 1 and model.max_seq_len="
                        f"{cfg.model.max_seq_len}; lower data.seq_len or raise model.max_seq_len")
    if cfg.eval.tokens < d.batch_size * d.seq_len:
        raise UserError(f"eval.tokens={cfg.eval.tokens}: must be at least one batch "
                        f"(data.batch_size x data.seq_len = {d.batch_size * d.seq_len})")
