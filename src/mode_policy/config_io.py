"""JSON serialisation shared by every config dataclass (denoisers, policies, the VDD student).

A config class inherits ``JSONConfig`` and gets ``to_dict`` / ``from_dict`` (unknown keys refused, valid
ones listed) / ``save`` (atomic) / ``load`` (missing file, bad JSON and non-objects explained).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar

from mode_policy.io import atomic_write_text, read_json


class JSONConfig:
    """Mixin for ``@dataclass`` configs; ``config_file_hint`` says what writes the file, for errors."""

    config_file_hint = "save()"

    @classmethod
    def file_owner(cls) -> str:
        """Who writes this config's file, for messages (``<owner>.<config_file_hint>``)."""
        return cls.__name__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        check_known_keys(cls, values)
        check_field_types(cls, values)
        return cls(**values)

    def save(self, path: str | Path) -> None:
        """Write the config as indented JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path):
        values = read_config_json(path, cls.file_owner(), cls.config_file_hint)
        try:
            return cls.from_dict(cls._from_file(values))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    @classmethod
    def _from_file(cls, values: dict[str, Any]) -> dict[str, Any]:
        """What a file's values mean to ``from_dict`` (subclasses fill in what old files lack)."""
        return values


class TaggedConfig(JSONConfig):
    """A config whose JSON names the registered class it belongs to: ``{tag_key: tag, ...fields}``.

    ``tag`` is set by the class's registration (``mode_policy.registry``); a tag of another class is
    refused. ``from_dict`` reads values without a tag as this class's; ``load`` reads a *file* without one
    as ``default_tag`` (policies: "mode", whose files were saved before tags existed; None: this class).
    """

    tag_key: ClassVar[str] = "type"
    tag: ClassVar[str] = ""
    default_tag: ClassVar[str | None] = None
    describe: ClassVar[str] = "config"  # what the class is, for messages ("VDD student")

    def to_dict(self) -> dict[str, Any]:
        return {self.tag_key: self.tag, **super().to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        check_known_keys(cls, values, extra=(cls.tag_key,))
        values = dict(values)
        tag = values.pop(cls.tag_key, cls.tag)
        if tag != cls.tag:
            raise ValueError(
                f"this config is not a {cls.describe} ({cls.tag_key} {tag!r}, expected {cls.tag!r}); load it "
                f"with the class registered as {tag!r}"
            )
        return super().from_dict(values)

    @classmethod
    def _from_file(cls, values: dict[str, Any]) -> dict[str, Any]:
        return {cls.tag_key: cls.default_tag or cls.tag, **values}


def check_known_keys(
    cls: type, values: dict[str, Any], *, extra: tuple[str, ...] = (), hint: str = ""
) -> None:
    """Refuse keys that are not fields of ``cls`` (plus ``extra``), listing the valid ones."""
    known = {f.name for f in fields(cls)} | set(extra)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} key(s) {unknown}{hint}; valid keys are: {', '.join(sorted(known))}"
        )


# JSON kinds a field annotation admits, by the annotation's base names (``int | list[int]``).
_JSON_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list": (list,),
    "tuple": (list, tuple), "dict": (dict,), "None": (type(None),),
}  # fmt: skip


def check_field_types(cls: type, values: dict[str, Any]) -> None:
    """Refuse a value whose JSON kind the field's annotation does not admit (a string where a number
    belongs, a number for a flag, ...), naming the field; fields of other types are left to the class."""
    for f in fields(cls):
        if f.name not in values or not isinstance(f.type, str):
            continue
        bases = [part.strip().split("[")[0] for part in f.type.split("|")]
        if not all(base in _JSON_KINDS for base in bases):
            continue
        value = values[f.name]
        kinds = tuple(kind for base in bases for kind in _JSON_KINDS[base])
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"{cls.__name__}.{f.name} must be {' or '.join(bases)}, got {value!r}")


def read_config_json(path: str | Path, class_name: str, written_by: str = "save()") -> dict[str, Any]:
    """The JSON object in ``path``, with errors that say what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no config file at {path}; expected a config.json written by {class_name}.{written_by}"
        )
    values = read_json(path, fix=f"restore it, or re-save it with {class_name}.{written_by}")
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object of {class_name} fields")
    return values


def check_positive_int(owner: str, name: str, value: Any) -> None:
    """``owner.name`` must be an int >= 1 (booleans refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")
