"""The base of every config section, and whether a config is being read back from a saved experiment."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationInfo


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _saved(info: ValidationInfo) -> bool:
    """Reading back a config a search saved: its registry names (model, dataset, criteria) were
    checked when it started, and checking them again would import torch into ``status``."""
    return bool(info.context and info.context.get("saved"))
