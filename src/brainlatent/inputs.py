"""Read and validate the study's inputs: a scans table (CSV/TSV), a BIDS folder or the synthetic cohort.

The **scans table** has one row per scan::

    subject, [session], image_flair|image_t1w|image_t2w, [mask], <one column per configured attribute>

Image and mask paths may be absolute or relative to the table's folder. :func:`validate_inputs`
checks the whole table *and every image header* before any heavy work and reports **all** problems
at once (one line each, naming the file, line and column). Voxel-level problems (NaN, all-zero,
truncated data) are found by the per-scan preprocessing job, so ``--keep-going`` lets the other scans
finish.

The output is the normalised table every later stage reads: ``scan, subject, session, image, mask``
(absolute paths) plus the attribute columns.
"""

from __future__ import annotations

import argparse
import csv
import io as _io
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from brainlatent import io
from brainlatent.config import load_stage_config, study_dir
from brainlatent.errors import BrainlatentError, raise_if_problems

log = logging.getLogger(__name__)

#: a subject/session ID becomes part of file names: letters, digits, '-' and '_' only
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
BIDS_SUFFIX = {"flair": "FLAIR", "t1w": "T1w", "t2w": "T2w"}
MISSING_TOKENS = {"", "na", "n/a", "nan", "none", "null"}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or TSV table as strings, with clear errors for encoding and delimiter problems.

    The delimiter follows the suffix (``.tsv`` → tab, otherwise comma); a table whose header only
    splits with the *other* delimiter is rejected with a message saying so.
    """
    path = Path(path)
    if not path.exists():
        raise BrainlatentError(f"{path}: table not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BrainlatentError(
            f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); save the table as UTF-8"
        ) from None
    expected = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    other = "," if expected == "\t" else "\t"
    header = text.splitlines()[0] if text.strip() else ""
    if not header:
        raise BrainlatentError(f"{path}: table is empty; expected a header line")
    if expected not in header and (other in header or ";" in header):
        found = "tab" if other == "\t" else ("comma" if other in header else "semicolon")
        want = "tab" if expected == "\t" else "comma"
        raise BrainlatentError(f"{path}: header is {found}-separated but a {path.suffix or 'table'} file must be {want}-separated")
    try:
        df = pd.read_csv(_io.StringIO(text), sep=expected, dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    except pd.errors.ParserError as exc:
        raise BrainlatentError(f"{path}: cannot parse as a {'tab' if expected == chr(9) else 'comma'}-separated table ({exc})".replace("\n", " ")) from None
    df.columns = [c.strip() for c in df.columns]
    return df


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip().lower() in MISSING_TOKENS


def _resolve(base: Path, value: str) -> Path:
    p = Path(value.strip())
    return p if p.is_absolute() else (base / p)


def check_scans_table(cfg: dict, df: pd.DataFrame, source: Path, check_images: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Check a scans table; return the normalised table and every problem found.

    Args:
        cfg: the study config (uses ``inputs`` and ``attributes``).
        df: the table as strings (see :func:`read_table`).
        source: the table's path; relative image paths are resolved against its folder and
            messages name it.
        check_images: also read every image/mask header (:func:`brainlatent.io.check_nifti_header`).
    """
    problems: list[str] = []
    modality = cfg["inputs"]["modality"]
    image_col = f"image_{modality}"
    base = source.parent if source.is_file() or source.suffix else source
    required_cols = ["subject", image_col] + [a["name"] for a in cfg["attributes"]]
    missing_cols = [c for c in required_cols if c not in df.columns]
    if missing_cols:
        problems.append(f"{source}: missing column(s) {missing_cols}; found columns {list(df.columns)}")
        return pd.DataFrame(), problems
    lo_age, hi_age = cfg["inputs"]["age_range"]
    rows = []
    seen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(df.to_dict("records")):
        line = i + 2  # header is line 1
        where = f"{source}: line {line}"
        subject = str(row["subject"]).strip()
        session = str(row.get("session", "") or "").strip()
        if not SAFE_ID.match(subject):
            problems.append(f"{where}: column 'subject': {subject!r} is not a safe ID (expected letters, digits, '-', '_'; max 64)")
        if session and not SAFE_ID.match(session):
            problems.append(f"{where}: column 'session': {session!r} is not a safe ID (expected letters, digits, '-', '_'; max 64)")
        key = (subject, session)
        if key in seen:
            problems.append(f"{where}: duplicate subject/session {subject}/{session or '-'} (first on line {seen[key]})")
        else:
            seen[key] = line
        image = str(row[image_col]).strip()
        image_path = _resolve(base, image) if image else None
        if not image:
            problems.append(f"{where}: column '{image_col}': empty; expected a NIfTI path")
        elif check_images:
            problems.extend(f"{where}: column '{image_col}': {p}" for p in io.check_nifti_header(image_path))
        mask = str(row.get("mask", "") or "").strip()
        mask_path = _resolve(base, mask) if mask else None
        if mask_path is not None and check_images:
            problems.extend(f"{where}: column 'mask': {p}" for p in io.check_nifti_header(mask_path))
        if cfg["preprocess"]["mask"]["source"] == "table" and mask_path is None:
            problems.append(f"{where}: column 'mask': empty, but preprocess.mask.source is 'table'")
        out = {
            "scan": f"{subject}_{session}" if session else subject,
            "subject": subject,
            "session": session,
            "image": str(image_path.resolve()) if image_path else "",
            "mask": str(mask_path.resolve()) if mask_path else "",
        }
        for attr in cfg["attributes"]:
            name, value = attr["name"], row[attr["name"]]
            col = f"{where}: column '{name}'"
            if _is_missing(value):
                if attr.get("required"):
                    problems.append(f"{col}: missing value; this attribute is required")
                out[name] = None
                continue
            value = str(value).strip()
            if attr["kind"] == "numeric":
                try:
                    number = float(value)
                except ValueError:
                    problems.append(f"{col}: {value!r} is not a number")
                    continue
                if not np.isfinite(number):
                    problems.append(f"{col}: {value!r} is not a finite number")
                elif name == "age" and not (lo_age <= number <= hi_age):
                    problems.append(f"{col}: age {number:g} is outside inputs.age_range [{lo_age:g}, {hi_age:g}]")
                elif name != "age" and not (attr["bins"][0] - 1e-9 <= number <= attr["bins"][-1] + 1e-9):
                    problems.append(f"{col}: {number:g} is outside the configured bins [{attr['bins'][0]:g}, {attr['bins'][-1]:g}]")
                out[name] = number
            else:
                if value not in attr["levels"]:
                    problems.append(f"{col}: unknown value {value!r}; expected one of {attr['levels']}")
                out[name] = value
        rows.append(out)
    if not rows and not problems:
        problems.append(f"{source}: no scans listed")
    table = pd.DataFrame(rows)
    return table, problems


def table_from_bids(cfg: dict, bids_dir: str | Path) -> tuple[pd.DataFrame, Path]:
    """Build a scans table (strings) from a BIDS folder with ``participants.tsv``.

    Images are found as ``sub-*/[ses-*/]anat/sub-*[_ses-*]_<FLAIR|T1w|T2w>.nii[.gz]``. Attributes
    come from ``participants.tsv`` (``participant_id`` column); a ``sub-*_sessions.tsv`` with an
    ``age`` column overrides the age per session.
    """
    root = Path(bids_dir)
    part_path = root / "participants.tsv"
    participants = read_table(part_path)
    if "participant_id" not in participants.columns:
        raise BrainlatentError(f"{part_path}: missing column 'participant_id'; found {list(participants.columns)}")
    modality = cfg["inputs"]["modality"]
    suffix = BIDS_SUFFIX[modality]
    rows = []
    for rec in participants.to_dict("records"):
        pid = str(rec["participant_id"]).strip()
        subject = pid[4:] if pid.startswith("sub-") else pid
        sub_dir = root / f"sub-{subject}"
        sessions_tsv = sub_dir / f"sub-{subject}_sessions.tsv"
        session_ages = {}
        if sessions_tsv.exists():
            sess = read_table(sessions_tsv)
            if "age" in sess.columns and "session_id" in sess.columns:
                session_ages = {str(s).removeprefix("ses-"): a for s, a in zip(sess["session_id"], sess["age"])}
        images = sorted(sub_dir.glob(f"ses-*/anat/sub-{subject}_ses-*_{suffix}.nii*")) or sorted(
            sub_dir.glob(f"anat/sub-{subject}_{suffix}.nii*")
        )
        if not images:
            rows.append({**rec, "subject": subject, "session": "", f"image_{modality}": ""})
        for img in images:
            m = re.search(r"_ses-([A-Za-z0-9]+)_", img.name)
            session = m.group(1) if m else ""
            row = {k: v for k, v in rec.items() if k != "participant_id"}
            row.update(subject=subject, session=session, **{f"image_{modality}": str(img)})
            if session in session_ages:
                row["age"] = session_ages[session]
            rows.append(row)
    return pd.DataFrame(rows).astype(str).replace("nan", ""), part_path


def input_table_path(cfg: dict) -> Path | None:
    """Where the study's scans table is read from (``None`` for BIDS)."""
    source = cfg["inputs"]["source"]
    if source == "synthetic":
        return study_dir(cfg) / "cohort" / "scans.tsv"
    if source == "table":
        return Path(cfg["inputs"]["table"])
    return None


def validate_inputs(cfg: dict, out_table: str | Path, table: str | Path | None = None, out_ok: str | Path | None = None) -> pd.DataFrame:
    """Validate the study's inputs and write the normalised scans table.

    Args:
        cfg: the study config.
        out_table: where to write the normalised table (TSV).
        table: override the scans table path (else from the config).
        out_ok: optional marker file with a one-line summary.

    Raises:
        BrainlatentError: listing every problem; nothing is written.
    """
    if cfg["inputs"]["source"] == "bids" and table is None:
        df, source = table_from_bids(cfg, cfg["inputs"]["bids_dir"])
        source = Path(cfg["inputs"]["bids_dir"])
    else:
        source = Path(table) if table is not None else input_table_path(cfg)
        df = read_table(source)
    normalised, problems = check_scans_table(cfg, df, source)
    raise_if_problems(f"invalid inputs in {source}", problems)
    io.write_table(out_table, normalised)
    if out_ok is not None:
        io.write_text(out_ok, f"{len(normalised)} scans of {normalised['subject'].nunique()} subjects validated from {source}\n")
    log.info("%d scans of %d subjects validated from %s", len(normalised), normalised["subject"].nunique(), source)
    return normalised


def read_scans(path: str | Path) -> pd.DataFrame:
    """Read the normalised scans table written by :func:`validate_inputs`."""
    df = pd.read_csv(path, sep="\t", dtype={"subject": str, "session": str, "scan": str, "mask": str}, keep_default_na=True)
    df["session"] = df["session"].fillna("")
    df["mask"] = df["mask"].fillna("")
    return df


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study config (YAML path or inline JSON)")
    parser.add_argument("--table", help="scans table to check (default: from the config)")
    parser.add_argument("--out", required=True, help="normalised scans table to write (TSV)")
    parser.add_argument("--ok", help="marker file written when everything is valid")


def run(args: argparse.Namespace) -> None:
    cfg = load_stage_config(args.config, "validate_inputs")
    validate_inputs(cfg, args.out, table=args.table, out_ok=args.ok)
