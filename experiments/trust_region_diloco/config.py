"""DiLoCo with a trust-region outer step (schemes.py), over the diloco_nanochat preset."""
import sws

from experiments.diloco_nanochat.config import check_config, config_schema
from experiments.diloco_nanochat.config import get_config as diloco_config

__all__ = ["check_config", "config_schema", "get_config"]


def get_config() -> sws.Config:
    c = diloco_config()
    c.outer.name = "trust_region_diloco"
    c.run.name = "trust_region_diloco"
    return c
