"""Reading a config: YAML files, ``--set`` overrides, and every validation problem as one
``UsageError`` line naming the key, the bad value and (for names) the valid choices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pruning.errors import UsageError
from search.config.experiment import ExperimentConfig


def _valid_keys(loc: Sequence[Any]) -> list[str]:
    """Field names of the section at ``loc`` (list indices skipped), for an unknown-key message."""
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[str(part)].annotation
        inner = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        model = next((a for a in inner if issubclass(a, BaseModel)), model)
    return list(model.model_fields)


def _section_label(loc: Sequence[Any]) -> str:
    return f" of {'.'.join(str(p) for p in loc)!r}" if loc else ""


def _format_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        section = err["loc"][:-1]
        return f"unknown key {loc!r} in config; valid keys{_section_label(section)}: {', '.join(_valid_keys(section))}"
    if err["type"].startswith("literal_error"):
        return f"{loc}: got {err.get('input')!r}; {msg.lower()}"
    where = f"{loc}: " if loc else ""
    value = err.get("input")
    # Our validators' messages name the bad value themselves; pydantic's own never do.
    if err["type"] == "value_error" or isinstance(value, dict):
        return f"{where}{msg}"
    return f"{where}{msg} (got {value!r})"


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise UsageError(f"bad --set {item!r}; expected key.path=value, e.g. num_samples=8")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError(f"bad --set {item!r}: {p!r} is set twice")
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def config_from_dict(raw: dict[str, Any], *, saved: bool = False) -> ExperimentConfig:
    """Validate a config; ``saved``: one a search wrote, whose registry names are trusted.

    A saved config without ``data.select_fraction`` was written before the selection split
    existed: it reads back as None (no split), so its trials, base model and hash stay what
    they were; a new config without the key gets the default."""
    data = raw.get("data")
    if saved and isinstance(data, dict) and "select_fraction" not in data:
        raw = {**raw, "data": {**data, "select_fraction": None}}
    try:
        return ExperimentConfig.model_validate(raw, context={"saved": saved})
    except ValidationError as e:
        raise UsageError(_format_error(e)) from None
    except UsageError as e:  # a registry lookup inside a validator
        raise UsageError(str(e)) from None


def load_config(path: str | Path | None, overrides: Sequence[str] = (), *, saved: bool = False) -> ExperimentConfig:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply ``--set`` overrides.

    ``saved``: the file is one a search saved (see :func:`config_from_dict`)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file {str(p)!r} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise UsageError(f"config file {str(p)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return config_from_dict(_merge(raw, parse_set(overrides)), saved=saved)


def with_overrides(cfg: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """``cfg`` with ``--set`` overrides applied and validated again (resume of a saved config)."""
    if not overrides:
        return cfg
    return config_from_dict(_merge(cfg.model_dump(mode="json"), parse_set(overrides)))
