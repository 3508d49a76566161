"""Outer schemes by name, with the config keys each declares; a scheme registers itself where it is written.

    @register
    class MyScheme(DiLoCo):                      # in the library, or in an experiment's schemes.py
        name = "my_scheme"                       # what outer.name picks
        keys = {"outer.my_radius": Key(1.0, number(0), "what it does, in one line")}   # inherited keys add up
        compressible = True                      # it exchanges a mean pseudo-gradient (outer.compress.* applies)

        @classmethod
        def check(cls, cfg): ...                 # its own relations between keys, raised before JAX starts

`add_outer_config(c)` puts every registered key with its default into an experiment's config, and
`outer_schema()` gives their types and ranges, so a scheme's keys are checked like the library's.
"""
from dataclasses import dataclass, replace
from typing import Any

from jaximus import UserError
from jaximus.compress import COMPRESS_SCHEMA, add_compress_config, check_settings
from jaximus.schema import Spec, number, text

SCHEMES: dict[str, type] = {}  # outer.name -> scheme class, in registration order


@dataclass(frozen=True)
class Key:
    default: Any  # a value, or a function of the config for a derived default (e.g. 3 x outer.sync_every)
    spec: Spec
    meaning: str

    def same_as(self, other: "Key") -> bool:
        """Two declarations of one key agree (derived defaults are functions: compared by being ones)."""
        defaults_agree = (callable(self.default) and callable(other.default)) or self.default == other.default
        return defaults_agree and self.spec == other.spec and self.meaning == other.meaning


COMMON_KEYS = {  # what every scheme shares; a scheme's own keys live in its file
    "outer.name": Key("sync", text(), "the outer scheme: one of the registered names (python train.py --help)"),
    "outer.sync_every": Key(20, Spec("int", lo=1), "H: inner steps between syncs (DiLoCo paper: 500)"),
    "faults.island_dropout": Key(0.0, number(0, 1, hi_open=True),
                                 "probability that an island misses a sync (torchft-style quorum), seeded"),
}


def declared_keys(cls) -> dict[str, Key]:
    """A scheme's keys: its own and every base class's."""
    keys = {}
    for base in reversed(cls.__mro__):
        keys.update(vars(base).get("keys", {}))
    return keys


def register(cls):
    """Make a scheme class known by its name; a second class under a taken name, or a key declared
    differently from another scheme's declaration of it, is refused."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise UserError(f"{cls.__qualname__}: a scheme needs name = '<identifier>' to be picked by outer.name")
    old = SCHEMES.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise UserError(f"outer.name={name}: taken by {old.__module__}.{old.__qualname__}; give "
                        f"{cls.__module__}.{cls.__qualname__} another name")
    others = {**COMMON_KEYS, **{k: v for n, s in SCHEMES.items() if n != name for k, v in declared_keys(s).items()}}
    for key, declared in declared_keys(cls).items():
        if key in others and not others[key].same_as(declared):
            raise UserError(f"{cls.__qualname__}: declares {key} unlike the scheme that declared it first; share one "
                            "Key (default, spec and meaning), or name the key after the scheme")
    SCHEMES[name] = cls
    return cls


def all_keys() -> dict[str, Key]:
    """Every registered scheme's keys, and the shared ones."""
    keys = dict(COMMON_KEYS)
    for scheme in SCHEMES.values():
        keys.update(declared_keys(scheme))
    return keys


def owners(key: str) -> list[str]:
    return [n for n, s in SCHEMES.items() if key in declared_keys(s)]


def add_outer_config(c) -> None:
    """outer.* (and faults.*) defaults of every registered scheme, then the compression layer's."""
    for key, k in all_keys().items():
        c[key] = _derived(k.default, c) if callable(k.default) else k.default
    add_compress_config(c)


def _derived(fn, c):
    return lambda: fn(c)


def outer_schema() -> dict[str, Spec]:
    """Every registered key's spec, carrying its meaning, and the compression layer's."""
    return {**{key: replace(k.spec, meaning=k.meaning) for key, k in all_keys().items()}, **COMPRESS_SCHEMA}


def scheme_named(name: str) -> type:
    if name not in SCHEMES:
        raise UserError(f"outer.name={name!r}: unknown scheme; choose one of {', '.join(SCHEMES)} (a scheme of your "
                        "own registers itself in its experiment's schemes.py)")
    return SCHEMES[name]


def check_scheme(cfg) -> None:
    """The compression layer's settings, then the scheme's own checks; before JAX starts and at build."""
    check_settings(cfg.outer.compress)
    scheme_named(cfg.outer.name).check(cfg)
