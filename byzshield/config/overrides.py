"""Hydra's compose API with one-line errors, for the command-line front ends.

>>> from byzshield.config.overrides import compose
>>> compose("placement", ["approach=mols"]).approach.l
5
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "UsageError",
    "approach_params",
    "compose",
    "compose_config",
    "did_you_mean",
    "group_options",
    "groups",
]


class UsageError(ValueError):
    """A bad command-line or config value; printed as one line."""


def compose(config_name: str, overrides: Sequence[str], *, job: str | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides, errors as UsageError.

    With ``job``, the config is composed as ``@hydra.main`` composes a single run of the
    application named ``job`` (``train`` for ``python -m byzshield.train``): the ``hydra``
    node is kept (the run folder, logging, the overrides recorded in ``.hydra/``), and
    sweep overrides are refused as on the command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from byzshield.config import register_schema

    register_schema()

    def run(ovs: Sequence[str]) -> DictConfig:
        if job is None:
            with initialize_config_module(config_module="byzshield.conf", version_base="1.3"):
                return hydra_compose(config_name=config_name, overrides=list(ovs))
        with initialize_config_module(
            config_module="byzshield.conf", job_name=job, version_base="1.3"
        ):
            hydra = GlobalHydra.instance().hydra
            assert hydra is not None
            return hydra.compose_config(config_name, list(ovs), run_mode=RunMode.RUN)

    try:
        return run(overrides)
    except MissingConfigException as exc:
        first = str(exc).strip().splitlines()[0]
        options = [o for o in exc.options or [] if not o.endswith("_schema")]
        import re

        found = re.search(r"Could not find '([^']+)'", first)
        group, _, name = (found[1] if found else "").rpartition("/")
        if group and name:
            guess = did_you_mean(name, options)
            raise UsageError(
                f"no {group} option {name!r}{'; ' + guess if guess else ''}; available: "
                f"{', '.join(options)}"
            ) from None
        raise UsageError(f"{first.split(': ', 1)[-1]}; available: {', '.join(options)}") from None
    except (HydraException, OmegaConfBaseException) as exc:
        msg = str(exc).strip().splitlines()[0]
        if msg.startswith("Could not override '"):
            key = msg.split("'")[1]
            hint = ""
            if "." in key:  # list the keys the chosen group option does take
                node = key.rsplit(".", 1)[0]
                choices = [o for o in overrides if "=" in o and "." not in o.split("=")[0]]
                try:
                    keys = list(OmegaConf.select(run(choices), node) or {})
                    guess = did_you_mean(key.rsplit(".", 1)[1], keys)
                    hint = f"{'; ' + guess if guess else ''}; {node} takes: {', '.join(keys)}"
                except (HydraException, OmegaConfBaseException):
                    pass
            if "." not in key:
                guess = did_you_mean(key, [*_top_level_keys(), *groups()])
                hint = f"; {guess}" if guess else ""
            group, _, leaf = key.partition(".")
            if group == "attack" and leaf in MOVED_TO_ADVERSARY:
                hint = f"; it is adversary.{leaf} now (who the Byzantine workers are)"
            raise UsageError(f"unknown config key {key!r}{hint}") from None
        cause = str(exc.__cause__ or "").strip().splitlines()
        detail = f" ({cause[0]})" if cause else ""
        raise UsageError(f"bad config override: {msg}{detail}") from None


MOVED_TO_ADVERSARY = ("q", "selection", "search_work", "digest_lie")
"""Keys that were ``attack.<key>`` before they moved to the ``adversary`` node: an old
override is told the new key, and the report reads old runs under it."""


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """ "did you mean X?" for the closest choice (``_`` and ``-`` count as equal), or ""."""
    import difflib

    def norm(text: str) -> str:
        return text.replace("_", "-").lower()

    by_norm = {norm(c): c for c in choices}
    close = difflib.get_close_matches(norm(word), list(by_norm), n=1, cutoff=0.6)
    return f"did you mean {by_norm[close[0]]}?" if close else ""


def _top_level_keys() -> list[str]:
    import dataclasses

    from byzshield.config import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig)]


def groups() -> list[str]:
    """The config groups: the folders of ``conf/`` (``approach``, ``mode``, ...)."""
    from pathlib import Path

    import byzshield.conf

    root = Path(byzshield.conf.__file__).parent
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def group_options(group: str) -> list[str]:
    """The options Hydra accepts for ``group=NAME``: the YAML files of ``conf/<group>/``
    (what ``compose`` validates against), sorted."""
    from pathlib import Path

    import byzshield.conf

    folder = Path(byzshield.conf.__file__).parent / group
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.endswith("_schema"))


def compose_config(overrides: Sequence[str] = ()):
    """``conf/config.yaml`` composed with Hydra overrides as the typed
    :class:`byzshield.config.TrainConfig` (for tests, notebooks and the front ends)."""
    from byzshield.config import load_config

    return load_config(compose("config", overrides))


def approach_params(cfg: DictConfig) -> tuple[str, dict]:
    """(approach name, builder parameters) from the composed ``approach`` group."""
    node = OmegaConf.to_container(cfg.approach, resolve=True)
    assert isinstance(node, dict)
    name = node.pop("name", None)
    if name is None:
        raise UsageError("approach has no name; pick one with approach=NAME")
    for key, value in node.items():
        if value == "???" or value is None:
            raise UsageError(f"approach {name}: set approach.{key}=...")
    return str(name), node
