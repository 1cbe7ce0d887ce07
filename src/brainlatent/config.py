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


class StageConfig(dict):
    """The config keys one stage reads, as given (validated and completed upstream).

    Reading a key that is not there is a clear error naming its dotted path, never a silent
    default: the stage's key list (:data:`brainlatent.stage_keys.STAGE_KEYS`) must name every key
    its code reads, so that Snakemake reruns a job exactly when one of those keys changes.
    Nested mappings (and mappings inside lists) are wrapped too.
    """

    def __init__(self, data: dict, path: str = "", stage: str = "") -> None:
        super().__init__()
        self._path, self._stage = path, stage
        for key, value in data.items():
            self[key] = _wrap(value, f"{path}{key}", stage)

    def __missing__(self, key: str):
        where = f"{self._path}{key}"
        stage = f"stage '{self._stage}'" if self._stage else "this stage"
        raise BrainlatentError(
            f"config key '{where}' is not part of the config given to {stage} (it has {sorted(self)}); "
            "pass the whole study config as a YAML path, or add the key to the stage's list in brainlatent/stage_keys.py"
        )

    def __deepcopy__(self, memo):
        return StageConfig(copy.deepcopy(dict(self), memo), self._path, self._stage)

    def __reduce__(self):
        return (StageConfig, (dict(self), self._path, self._stage))


def _wrap(value: Any, path: str, stage: str) -> Any:
    if isinstance(value, dict) and not isinstance(value, StageConfig):
        return StageConfig(value, f"{path}.", stage)
    if isinstance(value, list):
        return [_wrap(v, f"{path}.{i}", stage) for i, v in enumerate(value)]
    return value


def plain(value: Any) -> Any:
    """``value`` with every :class:`StageConfig` turned back into a plain ``dict`` (for JSON, YAML, torch.save)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# a stage config is written out like any mapping (the report shows the config as YAML)
yaml.SafeDumper.add_representer(StageConfig, yaml.representer.SafeRepresenter.represent_dict)


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate(config: dict, source: str = "config") -> dict:
    """Fill the schema's defaults into ``config`` and validate it; returns the completed config.

    A key the config leaves out takes the schema's default, whoever runs the study (Snakemake, a
    CLI stage or ``batch``): there is no other layer of defaults.

    Raises:
        BrainlatentError: listing every problem with its key path, e.g.
            ``config.yaml: gan.latent_sizes.0: 'x' is not of type 'integer'``.
    """
    import jsonschema

    if not isinstance(config, dict):
        raise BrainlatentError(f"{source}: expected a mapping of config keys at the top level, got {type(config).__name__}")
    full = _fill_defaults(schema(), plain(config))
    validator = jsonschema.Draft202012Validator(schema())
    problems = []
    for err in sorted(validator.iter_errors(full), key=lambda e: list(map(str, e.absolute_path))):
        msg = err.message
        if err.validator == "additionalProperties":
            msg = msg.replace("Additional properties are not allowed", "unknown key")
        problems.append(f"{source}: {_key_path(err)}: {msg}")
    if not problems:
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
    from brainlatent.models.families import families

    known = list(families())
    for i, arch in enumerate(cfg["gan"]["archs"]):
        if arch not in known:
            problems.append(f"{source}: gan.archs.{i}: unknown generator family '{arch}'; known: {known}")
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
    """Load a study config from a YAML path, an inline JSON string or a dict.

    - A YAML file or a plain dict is a whole study config: the schema's defaults are filled in and
      everything is validated (:func:`validate`).
    - An inline JSON string is what the workflow's rules pass: the keys one stage reads, taken from
      a study config that was already resolved and validated. It is used as given (never
      re-completed with defaults) as a :class:`StageConfig`, so reading a key it lacks is an error.
    - A :class:`StageConfig` is returned as it is.

    Relative input paths in the config (``inputs.table``, ``inputs.bids_dir``) are kept as given:
    they are relative to the directory the workflow runs in.
    """
    if isinstance(source, StageConfig):
        return source
    if isinstance(source, dict):
        return validate(copy.deepcopy(source), "config")
    text = str(source)
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BrainlatentError(f"inline config: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise BrainlatentError(f"inline config: expected a JSON object, got {type(data).__name__}")
        return StageConfig(data)
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


def load_stage_config(source: str | Path | dict, stage: str) -> StageConfig:
    """The config of one stage: exactly the keys :data:`brainlatent.stage_keys.STAGE_KEYS` lists.

    The same study YAML gives the same stage config here (a CLI run) and through the workflow
    (which passes :func:`brainlatent.stage_keys.stage_view` of the resolved config as inline JSON).
    """
    from brainlatent.stage_keys import stage_view

    cfg = load_config(source)
    if isinstance(cfg, StageConfig):
        return cfg
    return StageConfig(stage_view(cfg, stage), stage=stage)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_study(config: dict, from_configfile: bool, default_study: str | Path) -> dict:
    """The one resolved config of a Snakemake run.

    Args:
        config: Snakemake's ``config`` (the ``--configfile`` contents with ``--config`` on top).
        from_configfile: whether a ``--configfile`` was given. If so, that file *is* the study:
            keys it leaves out take the schema's defaults, exactly as in ``brainlatent <stage>
            --config <file>`` and in ``batch``. If not, ``default_study`` (the demo) is the study,
            with any ``--config key=value`` laid over it.
        default_study: the study run when no ``--configfile`` is given.
    """
    source = "--configfile"
    if not from_configfile:
        path = Path(default_study)
        base = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        config, source = _merged(base, plain(config)), str(path)
    return validate(copy.deepcopy(plain(config)), source)


def write_resolved(cfg: dict, path: str | Path) -> None:
    """Write a resolved study config as YAML (atomically); ``load_config`` of it gives ``cfg`` back."""
    from brainlatent.io import write_text

    write_text(path, "# the fully resolved study config (schema defaults filled in)\n" + yaml.safe_dump(plain(cfg), sort_keys=False))


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


# --------------------------------------------------------------------------------------------
# CLI: ``brainlatent config`` writes a study's resolved config


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="study config (YAML path or inline JSON of a resolved config)")
    parser.add_argument("--out", required=True, help="where to write the resolved config (YAML)")


def run(args) -> None:
    write_resolved(load_config(args.config), args.out)
