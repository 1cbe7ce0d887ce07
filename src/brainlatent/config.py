"""Load and validate a study configuration; defaults live in one place (the JSON schema).

A config is a plain ``dict`` after :func:`load_config`: every default filled in, unknown keys and
wrong types rejected with the key path in the message. Stages read only their own sections.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from brainlatent.errors import BrainlatentError, raise_if_problems

SCHEMA_NAME = "config.schema.yaml"


@lru_cache(maxsize=1)
def schema() -> dict:
    """The study config's JSON schema (shipped with the package)."""
    text = resources.files("brainlatent").joinpath("schemas", SCHEMA_NAME).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def schema_path() -> Path:
    """Filesystem path of the schema (for Snakemake's ``validate``)."""
    return Path(str(resources.files("brainlatent").joinpath("schemas", SCHEMA_NAME)))


def _fill_defaults(node: dict, value: Any) -> Any:
    """Return ``value`` with the schema's defaults filled in, recursively, for objects."""
    if value is None and "default" in node:
        value = copy.deepcopy(node["default"])
    if isinstance(value, dict) and "properties" in node:
        out = dict(value)
        for key, sub in node["properties"].items():
            if key in out:
                out[key] = _fill_defaults(sub, out[key])
            elif "default" in sub:
                out[key] = _fill_defaults(sub, copy.deepcopy(sub["default"]))
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_fill_defaults(node["items"], v) for v in value]
    return value


class PartialConfig(dict):
    """A config holding only some top-level sections; reading an absent one is a clear error."""

    def __missing__(self, key: str):
        raise BrainlatentError(
            f"config section '{key}' is missing from the inline config (it has {sorted(self)}); "
            f"pass the whole study config as a YAML path, or include '{key}' in the JSON"
        )


# a partial config is written out like any mapping (the report shows the config as YAML)
yaml.SafeDumper.add_representer(PartialConfig, yaml.representer.SafeRepresenter.represent_dict)


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate(config: dict, source: str = "config", partial: bool = False) -> dict:
    """Fill defaults and validate ``config``; returns the completed config.

    With ``partial=True`` only the top-level sections present are completed and checked (the
    workflow passes each rule the sections it uses, taken from an already validated config); a
    stage that reads a section it was not given fails with a :class:`BrainlatentError` naming the
    section (see :class:`PartialConfig`) instead of silently using a default.

    Raises:
        BrainlatentError: listing every problem with its key path, e.g.
            ``config.yaml: gan.latent_sizes.0: 'x' is not of type 'integer'``.
    """
    import jsonschema

    if not isinstance(config, dict):
        raise BrainlatentError(f"{source}: expected a mapping of config keys at the top level, got {type(config).__name__}")
    full = _fill_defaults(schema(), config)
    if partial:
        full = PartialConfig((key, value) for key, value in full.items() if key in config)
    validator = jsonschema.Draft202012Validator(schema())
    problems = []
    for err in sorted(validator.iter_errors(full), key=lambda e: list(map(str, e.absolute_path))):
        msg = err.message
        if err.validator == "additionalProperties":
            msg = msg.replace("Additional properties are not allowed", "unknown key")
        problems.append(f"{source}: {_key_path(err)}: {msg}")
    if not problems and not partial:
        problems.extend(_semantic_problems(full, source))
    raise_if_problems(f"invalid study configuration {source}", problems)
    return full


def _semantic_problems(cfg: dict, source: str) -> list[str]:
    """Checks JSON schema cannot express."""
    problems = []
    names = [a["name"] for a in cfg["attributes"]]
    if len(set(names)) != len(names):
        problems.append(f"{source}: attributes: names must be unique, got {names}")
    for i, attr in enumerate(cfg["attributes"]):
        where = f"{source}: attributes.{i} ({attr['name']})"
        if attr["kind"] == "numeric":
            bins = attr.get("bins")
            if not bins:
                problems.append(f"{where}: numeric attribute needs 'bins' (at least 3 increasing edges)")
            elif any(b >= c for b, c in zip(bins, bins[1:])):
                problems.append(f"{where}: bins must be strictly increasing, got {bins}")
        elif not attr.get("levels"):
            problems.append(f"{where}: categorical attribute needs 'levels' (at least 2 values)")
    split = cfg["slices"]["split"]
    total = split["train"] + split["val"] + split["test"]
    if abs(total - 1.0) > 1e-6:
        problems.append(f"{source}: slices.split: train + val + test must be 1, got {total:g}")
    for name in split["stratify"]:
        if name not in names:
            problems.append(f"{source}: slices.split.stratify: '{name}' is not a configured attribute {names}")
    lo, hi = cfg["slices"]["band"]
    if lo >= hi:
        problems.append(f"{source}: slices.band: lower fraction must be below upper, got {[lo, hi]}")
    inp = cfg["inputs"]
    if inp["source"] == "table" and not inp["table"]:
        problems.append(f"{source}: inputs.table: required when inputs.source is 'table'")
    if inp["source"] == "bids" and not inp["bids_dir"]:
        problems.append(f"{source}: inputs.bids_dir: required when inputs.source is 'bids'")
    norm = cfg["preprocess"]["normalise"]
    if norm["lower_percentile"] >= norm["upper_percentile"]:
        problems.append(f"{source}: preprocess.normalise: lower_percentile must be below upper_percentile")
    for name in cfg["evaluate"]["separability"]["attributes"]:
        if name not in names:
            problems.append(f"{source}: evaluate.separability.attributes: '{name}' is not a configured attribute {names}")
    for name in cfg["evaluate"]["separability"]["binarise"]:
        if name not in names:
            problems.append(f"{source}: evaluate.separability.binarise: '{name}' is not a configured attribute {names}")
    return problems


def load_config(source: str | Path | dict) -> dict:
    """Load a study config from a YAML path, an inline JSON string or a dict, then validate it.

    An inline JSON string (what the workflow's rules pass) is a *partial* config holding the
    sections one stage needs, see :func:`validate`; a YAML file is a whole study config.

    Relative input paths in the config (``inputs.table``, ``inputs.bids_dir``) are kept as given:
    they are relative to the directory the workflow runs in.
    """
    if isinstance(source, dict):
        return validate(copy.deepcopy(source), "config")
    text = str(source)
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BrainlatentError(f"inline config: not valid JSON ({exc.msg})") from None
        return validate(data, "inline config", partial=True)
    path = Path(text)
    if not path.exists():
        raise BrainlatentError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BrainlatentError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    except UnicodeDecodeError:
        raise BrainlatentError(f"{path}: not UTF-8 text; expected a YAML config file") from None
    return validate(data or {}, str(path))


def derive_seed(seed: int, *names: object) -> int:
    """A 31-bit seed for one stage/wildcard, derived from the config's seed and names.

    Example:
        >>> derive_seed(1, "train_gan", "stylegan", 32) != derive_seed(1, "train_gan", "gan", 32)
        True
    """
    key = ":".join([str(seed), *map(str, names)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


def study_dir(cfg: dict) -> Path:
    """``<results_dir>/<study>``: the folder every output of this study goes to."""
    return Path(cfg["results_dir"]) / cfg["study"]


def attribute(cfg: dict, name: str) -> dict:
    """The attribute spec called ``name``."""
    for attr in cfg["attributes"]:
        if attr["name"] == name:
            return attr
    raise BrainlatentError(f"attribute '{name}' is not configured; configured: {[a['name'] for a in cfg['attributes']]}")


def config_hash(cfg: dict) -> str:
    """Short stable hash of a completed config (provenance)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
