"""``brainlatent batch``: run many study configs with Snakemake, then compare their metrics.

A **sweep file** names a base study config and a grid of config keys; every combination becomes one
study with its own config and its own ``results/<study>/`` folder::

    # config/batch/seeds.yaml
    name: seeds                        # -> results/batch/seeds/
    base: config/studies/tiny.yaml     # relative to the directory snakemake runs in (the repository root)
    grid:                              # dotted config keys -> list of values (one study per combination)
      seed: [1, 2, 3]
      gan.latent_sizes: [[8]]          # a list-valued key takes a list of lists
    replicate: [seed]                  # keys averaged over in the comparison (default: [seed])

The study name is the base study's name followed by every grid key's last part and value
(``tiny-seed1-latent_sizes8``; ``prefix:`` replaces the base name). ``--configs a.yaml b.yaml`` runs
a list of configs instead; their "grid" is every config key whose value differs between them.

For every study: ``snakemake --configfile results/batch/<name>/configs/<study>.yaml
[--cores N] [--profile P | --workflow-profile profiles/local] [--jobs J] [--dry-run]``, one after
the other (Snakemake locks the working directory, so studies never run concurrently here; with
``--profile slurm`` each study's jobs still run in parallel on the cluster). A failed study does
not stop the others; the command ends with an error listing the failed ones.

Then (or with ``--compare-only`` alone) it writes into ``results/batch/<name>/``:

* ``all_metrics.csv``: every number of every study, long format: ``batch, study, <grid columns>,
  arch, z_dim, metric, variant, statistic, value`` (the rows of each study's ``metrics.csv`` plus its
  classifier scores as ``metric = classifier``, ``variant = <best|last>/<split>/<attribute>``);
* ``comparison.csv``: per group of everything but the replicate keys (and per metric row), the
  ``n``, ``mean`` and ``std`` (ddof = 1) over the replicates, scalar statistics only;
* ``comparison.html``: the same as tables, headline metrics first, with links to each study's report.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from markupsafe import Markup

from brainlatent import io
from brainlatent.config import load_config, study_dir, validate
from brainlatent.errors import BrainlatentError, raise_if_problems
from brainlatent.models.families import model_id
from brainlatent.report.primitives import esc as _esc
from brainlatent.report.templating import page

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["arch", "z_dim", "metric", "variant", "statistic"]
DEFAULT_REPLICATE = ("seed",)
SWEEP_KEYS = {"name", "base", "grid", "replicate", "prefix"}
NAME_OK = re.compile(r"[^A-Za-z0-9._-]+")
#: (metric, variant pattern, statistic, title) of the comparison page's headline table
HEADLINE = [
    ("classifier", r"best/test/.*", "accuracy", "classifier test accuracy (best epoch)"),
    ("separability", r"[zw]/(?!combined).*", "entropy_bits_mean", "separability H(Y|X), bits"),
    ("separability", r"[zw]/(?!combined).*", "accuracy_mean", "separability SVM accuracy"),
    ("path_profile", r"[zw]", "r2_mean", "path linearity R²"),
    ("ppl", r".*", "mean", "perceptual path length"),
    ("quality", r"fid", "generated_vs_real_matched", "FID (generated, matched)"),
    ("quality", r"fid", "real_vs_real", "FID (real floor)"),
]


@dataclass
class Run:
    """One study of a batch: its name, its config (as written), its grid values and its config file."""

    study: str
    config: dict
    values: dict[str, Any]
    path: Path | None = None
    status: str = "not run"
    folder: Path | None = field(default=None)


# --------------------------------------------------------------------------------------------
# Sweeps


def _value_text(value: Any) -> str:
    """A grid value as it appears in a study name: lists joined by '_', floats with %g."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "_".join(_value_text(v) for v in value)
    if isinstance(value, dict):
        return "_".join(f"{k}{_value_text(v)}" for k, v in value.items())
    return str(value)


def study_name(prefix: str, values: dict[str, Any]) -> str:
    """``<prefix>-<key><value>-...`` with each dotted key's last part (full path when ambiguous).

    Example:
        >>> study_name("tiny", {"seed": 2, "gan.latent_sizes": [8, 16]})
        'tiny-seed2-latent_sizes8_16'
    """
    lasts = [k.rsplit(".", 1)[-1] for k in values]
    parts = [prefix]
    for key, last in zip(values, lasts):
        short = last if lasts.count(last) == 1 else key.replace(".", "_")
        parts.append(NAME_OK.sub("_", f"{short}{_value_text(values[key])}"))
    return "-".join(parts)


def set_key(cfg: dict, dotted: str, value: Any) -> None:
    """Set ``cfg["a"]["b"]`` for ``"a.b"``, creating intermediate mappings."""
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part, {}), dict):
            raise BrainlatentError(f"grid key '{dotted}': '{part}' is not a section of the config")
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _resolve(path_text: str, sweep_path: Path) -> Path:
    """A path from a sweep file: relative to the current directory, else to the sweep file's folder."""
    path = Path(path_text)
    if path.is_absolute() or path.exists():
        return path
    beside = sweep_path.parent / path
    if beside.exists():
        return beside
    raise BrainlatentError(f"{sweep_path}: base: '{path_text}' not found (relative to {Path.cwd()} or to {sweep_path.parent})")


def load_sweep(path: str | Path) -> tuple[str, list[Run], list[str]]:
    """Expand a sweep file into runs; returns ``(batch name, runs, replicate keys)``.

    Raises:
        BrainlatentError: unknown sweep keys, an empty grid, a grid value that is not a list, a
            config key the schema rejects (named with the run's study), or two runs with one name.
    """
    path = Path(path)
    if not path.exists():
        raise BrainlatentError(f"{path}: sweep file not found")
    try:
        sweep = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise BrainlatentError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(sweep, dict):
        raise BrainlatentError(f"{path}: expected a mapping with 'base' and 'grid'")
    problems = [f"{path}: unknown key '{k}' (expected {sorted(SWEEP_KEYS)})" for k in sweep if k not in SWEEP_KEYS]
    if "base" not in sweep:
        problems.append(f"{path}: 'base' is required (the study config the grid modifies)")
    grid = sweep.get("grid")
    if not isinstance(grid, dict) or not grid:
        problems.append(f"{path}: 'grid' must map config keys to lists of values, e.g. 'seed: [1, 2, 3]'")
        grid = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            problems.append(f"{path}: grid.{key}: expected a non-empty list of values, got {values!r}")
    replicate = sweep.get("replicate", list(DEFAULT_REPLICATE))
    if isinstance(replicate, str):
        replicate = [replicate]
    raise_if_problems(f"invalid sweep file {path}", problems)
    base_path = _resolve(str(sweep["base"]), path)
    base = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
    load_config(base_path)  # the base itself must be valid
    prefix = NAME_OK.sub("_", str(sweep.get("prefix") or base.get("study") or base_path.stem))
    name = NAME_OK.sub("_", str(sweep.get("name") or path.stem))
    runs, problems = [], []
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        cfg = json.loads(json.dumps(base))  # deep copy of plain YAML data
        study = study_name(prefix, values)
        try:
            for key, value in values.items():
                set_key(cfg, key, value)
            cfg["study"] = study
            validate(json.loads(json.dumps(cfg)), f"{path}: run {study}")
        except BrainlatentError as exc:
            problems.append(str(exc))
            continue
        runs.append(Run(study, cfg, values))
    raise_if_problems(f"sweep {path} gives invalid study configs", problems)
    names = [r.study for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BrainlatentError(f"{path}: grid values give the same study name more than once: {dupes}")
    return name, runs, list(replicate)


def _flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in cfg.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def runs_from_configs(paths: Sequence[str | Path]) -> list[Run]:
    """Runs for a list of study config files; the grid values are the keys that differ between them."""
    loaded = [(Path(p), load_config(p)) for p in paths]
    flat = [_flatten(cfg) for _, cfg in loaded]
    keys = sorted({k for f in flat for k in f} - {"study", "results_dir"})
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    runs = [Run(cfg["study"], cfg, {k: f.get(k) for k in differing}, path=p) for (p, cfg), f in zip(loaded, flat)]
    names = [r.study for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BrainlatentError(f"--configs: several configs name the same study {dupes}; each study needs its own name (results folder)")
    return runs


def write_configs(runs: Sequence[Run], out_dir: Path) -> None:
    """Write each run's config to ``out_dir/<study>.yaml`` (atomically) and remember the path."""
    for run in runs:
        run.path = out_dir / f"{run.study}.yaml"
        header = (f"# written by 'brainlatent batch': study {run.study}\n"
                  f"# grid values: {json.dumps(run.values)}\n")
        io.write_text(run.path, header + yaml.safe_dump(run.config, sort_keys=False))


# --------------------------------------------------------------------------------------------
# Running


def snakemake_executable() -> list[str]:
    """The Snakemake beside this Python (same environment), else on PATH, else ``python -m snakemake``."""
    beside = Path(sys.executable).parent / "snakemake"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("snakemake")
    return [found] if found else [sys.executable, "-m", "snakemake"]


def snakemake_command(
    configfile: Path,
    cores: int | str | None = None,
    jobs: int | None = None,
    profile: str | None = None,
    workflow_profile: str | None = None,
    dry_run: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The Snakemake command line of one study.

    Example:
        >>> snakemake_command(Path("c.yaml"), cores=2, workflow_profile="profiles/local", dry_run=True)[1:]
        ['--configfile', 'c.yaml', '--cores', '2', '--workflow-profile', 'profiles/local', '--dry-run']
    """
    cmd = [*snakemake_executable(), "--configfile", str(configfile)]
    if cores is not None:
        cmd += ["--cores", str(cores)]
    if profile:
        cmd += ["--profile", profile]
    elif workflow_profile:
        cmd += ["--workflow-profile", workflow_profile]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    if dry_run:
        cmd.append("--dry-run")
    return cmd + list(extra)


def run_studies(runs: Sequence[Run], command: Callable[[Run], list[str]], runner: Callable[..., Any] = subprocess.run) -> None:
    """Run every study's Snakemake, one after the other; sets ``run.status`` (``ok`` / ``failed (exit N)``)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # the 'brainlatent' of this environment
    for i, run in enumerate(runs, 1):
        cmd = command(run)
        print(f"[batch {i}/{len(runs)}] {run.study}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        result = runner(cmd, env=env)
        rc = getattr(result, "returncode", result)
        run.status = "ok" if rc == 0 else f"failed (exit {rc})"
        print(f"[batch {i}/{len(runs)}] {run.study}: {run.status}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Collecting and comparing


def _cell_value(value: Any) -> Any:
    """A grid value as a table cell: scalars as they are, lists/dicts as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def classifier_rows(metrics: dict, study: str) -> list[dict]:
    """Long rows of a classifier ``metrics.json``: ``variant = <best|last>/<split>/<head>``."""
    from brainlatent.metrics.aggregate import flatten

    rows = []
    for which in ("best", "last"):
        for split, part in (metrics.get(which) or {}).items():
            if not isinstance(part, dict):
                continue
            if "mean_balanced_accuracy" in part:
                value = part["mean_balanced_accuracy"]
                rows.append({"study": study, "arch": "classifier", "z_dim": math.nan, "metric": "classifier",
                             "variant": f"{which}/{split}", "statistic": "mean_balanced_accuracy",
                             "value": math.nan if value is None else float(value)})
            for head, stats in (part.get("heads") or {}).items():
                for stat, value in flatten({k: v for k, v in stats.items() if k not in ("confusion_matrix", "class_names")}):
                    rows.append({"study": study, "arch": "classifier", "z_dim": math.nan, "metric": "classifier",
                                 "variant": f"{which}/{split}/{head}", "statistic": stat, "value": value})
    return rows


def collect_metrics(runs: Sequence[Run], batch: str):
    """Every metric of every run as one long table (grid values as columns); missing studies give no rows."""
    import pandas as pd

    grid_cols = list(dict.fromkeys(k for r in runs for k in r.values))
    frames = []
    for run in runs:
        folder = run.folder or study_dir(load_config(run.config))
        parts = []
        metrics_csv = folder / "metrics.csv"
        if metrics_csv.is_file():
            df = pd.read_csv(metrics_csv)
            if len(df):
                parts.append(df.assign(study=run.study))
        clf = folder / "classifier" / "metrics.json"
        if clf.is_file():
            parts.append(pd.DataFrame(classifier_rows(io.read_json(clf), run.study)))
        if not parts:
            log.warning("%s: no metrics.csv or classifier/metrics.json; the study is left out of the comparison", folder)
            continue
        df = pd.concat(parts, ignore_index=True)
        df.insert(0, "batch", batch)
        for i, col in enumerate(grid_cols):
            df.insert(2 + i, col, _cell_value(run.values.get(col)))
        frames.append(df)
    columns = ["batch", "study", *grid_cols, *METRIC_COLUMNS, "value"]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    out["z_dim"] = pd.to_numeric(out["z_dim"], errors="coerce").astype("Int64")  # empty for the classifier
    return out[columns]


def compare(all_metrics, group_cols: Sequence[str]):
    """n, mean and std (ddof = 1) of ``value`` over the replicates, per group and metric row.

    Only scalar statistics are compared (list elements such as ``curve_mean[17]`` are left out).
    """
    import pandas as pd

    df = all_metrics[~all_metrics["statistic"].astype(str).str.contains(r"\[", regex=True)].copy()
    keys = [*group_cols, *METRIC_COLUMNS]
    if df.empty:
        return pd.DataFrame(columns=[*keys, "n", "mean", "std", "studies"])
    df["z_dim"] = pd.to_numeric(df["z_dim"], errors="coerce").astype("Int64")
    for col in group_cols:
        df[col] = df[col].astype(str)
    grouped = df.groupby(keys, dropna=False, sort=False)
    out = grouped["value"].agg(n="count", mean="mean", std=lambda v: v.std(ddof=1)).reset_index()
    out["studies"] = grouped["study"].agg(lambda s: " ".join(sorted(set(s)))).to_numpy()
    return out


# --------------------------------------------------------------------------------------------
# Comparison page


def _num(value: Any, stat: str, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f'<span class="na" data-stat="{stat}">n/a</span>'
    return f'<span class="num" data-stat="{stat}" data-value="{float(value)!r}" data-format="{fmt}">{format(float(value), fmt)}</span>'


def _norm(value: Any) -> Any:
    """Missing values (NaN, NA) as ``None`` and integral z_dim as ``int``, so keys compare equal."""
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _fmt_for(value: float) -> str:
    from brainlatent.report.build import auto_format

    return auto_format(value)


def _table(comp, settings: list[tuple], group_cols: Sequence[str], table_id: str, caption: str) -> str:
    """Rows = metric rows, columns = settings (combinations of the non-replicate grid values)."""
    rows = [tuple(_norm(v) for v in r) for r in comp.drop_duplicates(METRIC_COLUMNS)[METRIC_COLUMNS].itertuples(index=False, name=None)]
    index = {tuple(_norm(r[c]) for c in [*group_cols, *METRIC_COLUMNS]): r for r in comp.to_dict("records")}
    head = "".join(f"<th>{_esc(c)}</th>" for c in ("model", "metric", "variant", "statistic"))
    head += "".join(f"<th>{_esc(', '.join(f'{k}={v}' for k, v in zip(group_cols, s)) or 'all runs')}</th>" for s in settings)
    body = []
    for arch, z, metric, variant, stat in rows:
        model = arch if z is None else model_id(arch, z)
        cells = [f'<td class="label">{_esc(model)}</td>', f'<td class="label">{_esc(metric)}</td>',
                 f'<td class="label">{_esc(variant)}</td>', f'<td class="label">{_esc(stat)}</td>']
        for s in settings:
            rec = index.get((*s, arch, z, metric, variant, stat))
            if rec is None:
                cells.append('<td class="missing">—</td>')
                continue
            fmt = _fmt_for(rec["mean"])
            row_key = "|".join(str(x) for x in (model, metric, variant, stat))
            setting = ";".join(f"{k}={v}" for k, v in zip(group_cols, s))
            cells.append(f'<td data-row="{_esc(row_key)}" data-setting="{_esc(setting)}">{_num(rec["mean"], "mean", fmt)} '
                         f'<span class="pm">±</span> {_num(rec["std"], "std", fmt)} '
                         f'<span class="small">(n={_num(rec["n"], "n", ".0f")})</span></td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="data" id="{_esc(table_id)}"><caption>{_esc(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def comparison_html(name: str, runs: Sequence[Run], comp, group_cols: Sequence[str], replicate: Sequence[str], out_dir: Path) -> str:
    """The batch's comparison page (self-contained HTML)."""
    import re as _re

    settings = list(dict.fromkeys(tuple(_norm(r[c]) for c in group_cols) for r in comp.to_dict("records"))) or [()]
    run_rows = []
    for run in runs:
        folder = run.folder or study_dir(load_config(run.config))
        report = folder / "report" / "index.html"
        link = (f'<a href="{_esc(os.path.relpath(report, out_dir))}">report</a>' if report.exists() else "no report")
        values = ", ".join(f"{k} = {json.dumps(v)}" for k, v in run.values.items())
        run_rows.append(f'<tr><td class="label">{_esc(run.study)}</td><td class="label">{_esc(values)}</td>'
                        f'<td class="label">{_esc(run.status)}</td><td class="label">{link}</td></tr>')
    parts = [
        f"<p>{len(runs)} studies. Every number below is the <strong>mean ± standard deviation</strong> (ddof = 1) over "
        f"the runs that differ only in {_esc(', '.join(replicate) or 'nothing')} (n = runs with a value), "
        f"grouped by everything else: {_esc(', '.join(group_cols) or 'no other grid key')}, model, metric. "
        "The same numbers are in <code>comparison.csv</code>; every value of every run is in <code>all_metrics.csv</code>.</p>",
        '<div class="scroll"><table class="data" id="table-runs"><caption>Runs</caption><thead><tr><th>study</th>'
        "<th>grid values</th><th>status</th><th>report</th></tr></thead><tbody>" + "".join(run_rows) + "</tbody></table></div>",
    ]
    if comp.empty:
        parts.append('<p class="not-run"><strong>Not run:</strong> no study of this batch has results yet.</p>')
    else:
        head_mask = None
        for metric, variant, stat, _ in HEADLINE:
            m = (comp["metric"] == metric) & comp["variant"].astype(str).str.fullmatch(variant) & (comp["statistic"] == stat)
            head_mask = m if head_mask is None else head_mask | m
        headline = comp[head_mask]
        if not headline.empty:
            parts.append("<h2>Headline metrics</h2>")
            parts.append(_table(headline, settings, group_cols, "table-headline", "Headline metrics across runs"))
        parts.append("<h2>Every metric</h2>")
        for metric in dict.fromkeys(comp["metric"]):
            parts.append(_table(comp[comp["metric"] == metric], settings, group_cols, f"table-{_re.sub(r'[^a-z0-9_-]', '_', str(metric))}",
                                f"{metric}: mean ± std over runs"))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    heading = Markup("Batch comparison <code>{}</code>").format(name)
    return page(f"brainlatent batch: {name}", heading, Markup("".join(parts)), [f"generated {stamp}"])


def build_comparison(name: str, runs: Sequence[Run], replicate: Sequence[str], out_dir: Path) -> tuple[Path, Path, Path]:
    """Write ``all_metrics.csv``, ``comparison.csv`` and ``comparison.html`` into ``out_dir``."""
    all_metrics = collect_metrics(runs, name)
    grid_cols = list(dict.fromkeys(k for r in runs for k in r.values))
    group_cols = [c for c in grid_cols if c not in replicate]
    comp = compare(all_metrics, group_cols)
    paths = (out_dir / "all_metrics.csv", out_dir / "comparison.csv", out_dir / "comparison.html")
    io.write_table(paths[0], all_metrics)
    io.write_table(paths[1], comp)
    io.write_text(paths[2], comparison_html(name, runs, comp, group_cols, replicate, out_dir))
    log.info("batch %s: %d metric rows from %d studies -> %s", name, len(all_metrics), all_metrics["study"].nunique(), paths[2])
    return paths


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--sweep", metavar="YAML", help="sweep file: base config + grid (see config/batch/seeds.yaml)")
    what.add_argument("--configs", nargs="+", metavar="YAML", help="study config files to run and compare")
    parser.add_argument("--name", help="batch name (folder results/batch/<name>/); default: the sweep's name or 'compare'")
    parser.add_argument("--results-dir", default=None, help="root of results/batch/ (default: the configs' results_dir)")
    parser.add_argument("--cores", default=None, help="snakemake --cores (default: the profile's)")
    parser.add_argument("--jobs", type=int, default=None, help="snakemake --jobs (cluster jobs at once)")
    parser.add_argument("--profile", default=None, help="snakemake --profile, e.g. slurm (replaces the workflow profile)")
    parser.add_argument("--workflow-profile", default="profiles/local",
                        help="snakemake --workflow-profile when no --profile is given (default profiles/local; '' for none)")
    parser.add_argument("--dry-run", action="store_true", help="snakemake --dry-run for every study (no comparison)")
    parser.add_argument("--compare-only", action="store_true", help="do not run anything; build the comparison from existing results")
    parser.add_argument("--replicate", nargs="*", default=None, metavar="KEY",
                        help="grid keys averaged over (default: the sweep's 'replicate', else seed)")
    parser.add_argument("--snakemake-args", default="", metavar="ARGS", help="more snakemake arguments, one quoted string")


def run(args: argparse.Namespace, runner: Callable[..., Any] = subprocess.run) -> None:
    if args.sweep:
        name, runs, replicate = load_sweep(args.sweep)
    else:
        runs, replicate = runs_from_configs(args.configs), list(DEFAULT_REPLICATE)
        name = "compare"
    name = NAME_OK.sub("_", args.name) if args.name else name
    if args.replicate is not None:
        replicate = list(args.replicate)
    results = Path(args.results_dir) if args.results_dir else Path(load_config(runs[0].config)["results_dir"])
    out_dir = results / "batch" / name
    for run_ in runs:
        run_.folder = study_dir(load_config(run_.config))
    if args.sweep:
        write_configs(runs, out_dir / "configs")
    log.info("batch %s: %d studies (%s); outputs in %s", name, len(runs), ", ".join(r.study for r in runs), out_dir)
    if not args.compare_only:
        extra = shlex.split(args.snakemake_args)
        run_studies(runs, lambda r: snakemake_command(r.path, args.cores, args.jobs, args.profile, args.workflow_profile or None,
                                                     args.dry_run, extra), runner)
        if args.dry_run:
            failed = [r.study for r in runs if r.status != "ok"]
            raise_if_problems("snakemake --dry-run failed", [f"study {s}: see the output above" for s in failed])
            return
    else:
        for run_ in runs:
            run_.status = "results found" if (run_.folder / "metrics.csv").is_file() else "no results"
    build_comparison(name, runs, replicate, out_dir)
    failed = [f"study {r.study}: snakemake {r.status}; rerun it with: snakemake --configfile {r.path}" for r in runs if r.status.startswith("failed")]
    raise_if_problems(f"batch {name}: the comparison was built, but some studies failed", failed)
