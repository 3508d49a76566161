"""Test environment: 8 fake CPU devices, no network, wandb off, one shared cache (docs/jax_notes.md §12)."""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = os.environ.setdefault("JAXIMUS_CACHE", str(ROOT / ".cache" / "test"))
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
                  WANDB_DIR=tempfile.mkdtemp(prefix="jaximus-wandb-"), HF_HOME=str(Path(CACHE) / "hf"))
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import pytest  # noqa: E402

from jaximus.config import finalize_config, load_experiment, load_schemes  # noqa: E402
from jaximus.mesh import enable_compile_cache  # noqa: E402
from outer_optimizers import SCHEMES  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
assert jax.device_count() == 8  # start the backend now, so no test's train.main() can change the device count
enable_compile_cache(CACHE)

NANOCHAT = str(ROOT / "experiments" / "nanochat" / "config.py")
DILOCO = str(ROOT / "experiments" / "diloco_nanochat" / "config.py")
PLUGINS = {}  # scheme -> the config.py of the experiment whose schemes.py registers it
for _folder in sorted((ROOT / "experiments").iterdir()):
    _known = set(SCHEMES)
    if load_schemes(_folder):
        PLUGINS.update({name: str(_folder / "config.py") for name in set(SCHEMES) - _known})
REGISTERED = list(SCHEMES)  # every test over the schemes runs over these: a new scheme is checked automatically


def config_for(scheme: str) -> str:
    """A config a fresh process can run the scheme from: its own experiment's, or the DiLoCo preset."""
    return PLUGINS.get(scheme, DILOCO)
# A model that compiles in about a second: 2 layers, width 128, one head.
TINY = ["model.depth=2", "model.vocab_size=512", "data.seq_len=32", "data.batch_size=16",
        "data.tokenizer_train_chars=2000000", "eval.tokens=1024", "eval.every=4", "max_steps=8",
        "optimizer.ns_dtype='float32'", "data.prefetch=1"]


@pytest.fixture(scope="session")
def nanochat():
    return load_experiment(NANOCHAT)


@pytest.fixture(scope="session")
def tiny_cfg(nanochat):
    def make(*overrides):
        return finalize_config(nanochat["config"], [*TINY, *overrides])
    return make
