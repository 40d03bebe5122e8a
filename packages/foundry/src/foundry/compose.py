"""Compose a command's config with Hydra's compose API, then check it against its schema.

    composed = compose_config("data_prep", ["model=mpt_tiny", "max_seq_len=512"])
    cfg = composed.build(DataPrepCommand)        # ConfigError lists every problem at once
    print(composed.to_yaml())

The YAML tree ships inside the package (`foundry/configs/`): one primary config per command
(`data_prep.yaml`, ...) whose defaults list picks options of the groups (`model/`, `hardware/`,
`data/`, `optimizer/`, `scheduler/`). The `model/` group holds `mpt_tiny.yaml` plus every preset
of `mpt.presets`, read from there when a config is composed (never copied into YAML).

Overrides: `group=option` picks an option; `key.sub=value` sets a value. Value overrides are
passed to Hydra as `++key=value`, so that a misspelt key does not stop Hydra at the first one:
the schema check then reports every unknown key together, with a "did you mean".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from foundry.validate import ConfigError, build

__all__ = [
    "CONFIG_DIR",
    "Composed",
    "YamlLocator",
    "command_groups",
    "compose_config",
    "group_options",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
T = TypeVar("T")
_KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][\w\-]*)\s*:")


def _register_model_presets() -> None:
    """Put every `mpt.presets` shape into Hydra's config store as `model/<name>` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from mpt.presets import PRESETS, preset

    store = ConfigStore.instance()
    for name in PRESETS:
        store.store(group="model", name=name, node=preset(name).to_dict(), provider="mpt.presets")


def _initialize():
    from hydra import initialize_config_dir

    _register_model_presets()
    return initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None)


def group_options(group: str) -> list[str]:
    """The options of a config group (YAML files and, for `model`, the mpt presets), sorted."""
    from hydra.core.global_hydra import GlobalHydra

    with _initialize():
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


@cache
def _groups(config_name: str) -> tuple[tuple[str, str | None], ...]:
    from hydra import compose

    with _initialize():
        cfg = compose(config_name, return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    return tuple((k, choices[k]) for k in choices if not k.startswith("hydra/"))


def command_groups(config_name: str) -> dict[str, str | None]:
    """{group: default option} of a command's primary config (None: no option by default)."""
    return dict(_groups(config_name))


@dataclass(frozen=True, kw_only=True)
class YamlLocator:
    """Finds where a dotted key was set: a command-line override, or a line of a YAML file."""

    config_name: str
    choices: dict[str, str | None]
    overrides: tuple[str, ...]

    def locate(self, key: str) -> str | None:
        plain = re.sub(r"\[\d+\]", "", key)
        names = [(o.split("=", 1)[0].lstrip("+~"), o) for o in self.overrides]
        for name, override in names:
            if name == plain:
                return f"command line {override!r}"
        for name, override in names:  # a value override that set a whole mapping
            if name not in self.choices and plain.startswith(name + "."):
                return f"command line {override!r}"
        head, _, rest = plain.partition(".")
        if head in self.choices and self.choices[head] is not None:
            option = self.choices[head]
            path = CONFIG_DIR / head / f"{option}.yaml"
            if not path.is_file():
                return f"{head}={option}" if not rest else None
            return _line_of(path, rest) if rest else _shown(path)
        return _line_of(CONFIG_DIR / f"{self.config_name}.yaml", plain)


def _shown(path: Path) -> str:
    return str(path.relative_to(CONFIG_DIR.parent.parent))  # foundry/configs/...


def _line_of(path: Path, dotted: str) -> str | None:
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        found = _KEY_LINE.match(line)
        if not found or line.lstrip().startswith("#"):
            continue
        indent = len(found[1])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, found[2]))
        if ".".join(name for _, name in stack) == dotted:
            return f"{_shown(path)}:{number}"
    return None


@dataclass(frozen=True, kw_only=True)
class Composed:
    """A composed, resolved config (plain dicts and lists) and where its parts came from."""

    config_name: str
    config: dict[str, Any]
    choices: dict[str, str | None]
    overrides: tuple[str, ...]

    @property
    def locator(self) -> YamlLocator:
        return YamlLocator(
            config_name=self.config_name, choices=self.choices, overrides=self.overrides
        )

    def build(self, schema: type[T]) -> T:
        """The config as `schema`; ConfigError names every unknown, missing or mistyped key."""
        return build(schema, self.config, locator=self.locator, what=f"{self.config_name} config")

    def to_yaml(self) -> str:
        """The resolved config as YAML, headed by the groups picked and the overrides given."""
        from omegaconf import OmegaConf

        picked = ", ".join(f"{k}={v}" for k, v in self.choices.items() if v is not None)
        head = f"# foundry {self.config_name}"
        head += f" ({picked})" if picked else ""
        head += f"\n# overrides: {' '.join(self.overrides) or '(none)'}\n"
        return head + OmegaConf.to_yaml(OmegaConf.create(self.config))


def _hydra_override(override: str, groups: dict[str, str | None]) -> str:
    key = override.split("=", 1)[0]
    if key.startswith(("+", "~")) or key in groups:
        return override
    return "++" + override


def _override_problems(overrides: list[str], groups: dict[str, str | None]) -> list[str]:
    """Every override that cannot work: bad syntax, a group this command does not have, an
    option that does not exist (with a did-you-mean)."""
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    all_groups = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())
    problems = []
    for override in overrides:
        key, _, value = override.partition("=")
        try:
            parser.parse_overrides([override])
        except HydraException as err:
            problems.append(f"cannot parse {override!r}: {str(err).splitlines()[0]}")
            continue
        if key in all_groups and key not in groups:
            mine = ", ".join(groups) or "none"
            problems.append(f"{override}: this command has no {key!r} group (its groups: {mine})")
        if key not in groups or value in ("null", ""):
            continue
        options = group_options(key)
        if value not in options:
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{key}={value}: no such option{hint} (options: {', '.join(options)})")
    return problems


def compose_config(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> Composed:
    """Compose `configs/<config_name>.yaml` with the overrides and resolve interpolations."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    if not (CONFIG_DIR / f"{config_name}.yaml").is_file():
        raise ValueError(f"no primary config {config_name}.yaml in {CONFIG_DIR}")
    groups = command_groups(config_name)
    problems = [
        f"{o!r} is not an override; write key=value or group=option"
        for o in overrides
        if "=" not in o
    ]
    problems += _override_problems([o for o in overrides if "=" in o], groups)
    if problems:
        raise ConfigError(problems, what="the command line")
    hydra_overrides = [_hydra_override(o, groups) for o in overrides]
    try:
        with _initialize():
            cfg = compose(config_name, overrides=hydra_overrides, return_hydra_config=True)
        choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}
        raw = OmegaConf.to_container(cfg, resolve=False)
        raw.pop("hydra", None)
        container = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError([str(err).strip()], what=f"{config_name} config") from err
    return Composed(
        config_name=config_name, config=container, choices=choices, overrides=tuple(overrides)
    )
