"""Read and validate the study's inputs: a scans table (CSV/TSV), a BIDS folder or the synthetic cohort.

The **scans table** has one row per scan::

    subject, [session], image_flair|image_t1w|image_t2w, [mask], <one column per configured attribute>

Image and mask paths may be absolute or relative to the table's folder. :func:`validate_inputs`
checks the whole table (its header line, every value, and rows against each other: scan IDs, image
files, a subject's sex and ages across sessions) *and every image header* before any heavy work and
reports **all** problems at once (one line each, naming the file, line and column). Voxel-level problems (NaN, all-zero,
truncated data) are found by the per-scan preprocessing job, so ``--keep-going`` lets the other scans
finish.

The output is the normalised table every later stage reads: ``scan, subject, session, image, mask``
(absolute paths) plus the attribute columns.
"""

from __future__ import annotations

import argparse
import csv
import errno
import io as _io
import logging
import os
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
#: delimiters a table's header is checked for, with their names in messages
DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
#: attributes a person keeps for life: every row of one subject must give the same value
FIXED_ATTRIBUTES = ("sex",)
#: the longest plausible span (years) between a subject's first and last session; a longer one is
#: more likely a typo or two people sharing an ID than a real follow-up
MAX_AGE_SPAN_YEARS = 25.0


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or TSV table as strings, with clear errors for encoding and header problems.

    The delimiter follows the suffix (``.tsv``/``.tab`` → tab, otherwise comma); a header that is
    separated by another delimiter (comma, tab, ``;`` or ``|``) is rejected naming the one found,
    and so is a header that names a column twice (see :func:`check_header`).
    """
    path = Path(path)
    text = _read_text(path)
    header = text.splitlines()[0] if text.strip() else ""
    if not header:
        raise BrainlatentError(f"{path}: table is empty; expected a header line")
    expected = _expected_delimiter(path)
    raise_if_problems(f"invalid header in {path}", check_header(path, header, expected))
    try:
        df = pd.read_csv(_io.StringIO(text), sep=expected, dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    except pd.errors.ParserError as exc:
        raise BrainlatentError(f"{path}: cannot parse as a {DELIMITERS[expected]}-separated table ({exc})".replace("\n", " ")) from None
    df.columns = [c.strip() for c in df.columns]
    return df


def _os_reason(exc: OSError) -> str:
    """A short reason for an OS error, naming a symlink loop as such."""
    if exc.errno == errno.ELOOP:
        return f"path is a symlink loop ({exc.strerror})"
    return f"cannot be read ({exc.strerror or type(exc).__name__})"


def _read_text(path: Path) -> str:
    """The table's text (UTF-8, an optional BOM removed); any OS or decoding error is a clear error."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BrainlatentError(f"{path}: table not found") from None
    except OSError as exc:
        raise BrainlatentError(f"{path}: table {_os_reason(exc)}; expected a readable CSV/TSV file") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BrainlatentError(
            f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); save the table as UTF-8"
        ) from None


def _expected_delimiter(path: Path) -> str:
    """The delimiter a table must use, from its suffix: tab for ``.tsv``/``.tab``, else comma."""
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def _split_line(line: str, delimiter: str) -> list[str]:
    """One table line split into fields (quotes respected)."""
    return next(csv.reader([line], delimiter=delimiter), [])


def detect_delimiter(header: str, expected: str) -> str:
    """The candidate delimiter (:data:`DELIMITERS`) that splits ``header`` into the most columns.

    The expected delimiter wins a tie, so a one-column header is accepted as it is.
    """
    counts = {d: len(_split_line(header, d)) for d in DELIMITERS}
    return expected if counts[expected] == max(counts.values()) else max(counts, key=counts.__getitem__)


def check_header(path: Path, header: str, expected: str) -> list[str]:
    """Problems with a table's header line: a delimiter other than ``expected``, or a repeated column.

    pandas would silently read a ``;``-separated header as one column and rename a repeated column
    ``x`` to ``x.1``, so the raw header line is checked here.
    """
    found = detect_delimiter(header, expected)
    if found != expected:
        want, got = DELIMITERS[expected], DELIMITERS[found]
        kind = f"a {path.suffix} file" if path.suffix else "a table"
        message = (
            f"{path}: line 1: header is {got}-separated but {kind} must be {want}-separated "
            f"(found {_show(found)} between the column names, expected {_show(expected)}; a .csv file uses ',' and a .tsv file uses tab)"
        )
        return [message]
    first: dict[str, int] = {}
    problems = []
    for column, name in enumerate((n.strip() for n in _split_line(header, expected)), start=1):
        if name in first:
            problems.append(f"{path}: line 1: column {column}: column name {name!r} repeats column {first[name]}; expected unique column names")
        else:
            first[name] = column
    return problems


def _show(delimiter: str) -> str:
    """A delimiter as written in messages: ``tab`` or the quoted character."""
    return "tab" if delimiter == "\t" else repr(delimiter)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip().lower() in MISSING_TOKENS


def _resolve(base: Path, value: str) -> Path:
    p = Path(value.strip())
    return p if p.is_absolute() else (base / p)


def _real_path(path: Path) -> str:
    """The absolute path with symlinks resolved; never raises (a symlink loop is left unresolved)."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return str(path.absolute())


def check_image(path: Path) -> list[str]:
    """Problems with one image or mask file: an OS error when reaching it (a symlink loop, a
    folder in the way...) or else the header checks of :func:`brainlatent.io.check_nifti_header`."""
    try:
        path.stat()
    except FileNotFoundError:
        pass  # the header check reports 'image file not found'
    except OSError as exc:
        return [f"{path}: {_os_reason(exc)}; expected a NIfTI file"]
    except ValueError as exc:
        return [f"{path}: not a valid path ({exc})"]
    return io.check_nifti_header(path)


def scan_id(subject: str, session: str) -> str:
    """The ID every later stage names a scan's files by: ``subject_session``, or ``subject``."""
    return f"{subject}_{session}" if session else subject


def check_scans_table(cfg: dict, df: pd.DataFrame, source: Path, check_images: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Check a scans table; return the normalised table and every problem found.

    Args:
        cfg: the study config (uses ``inputs`` and ``attributes``).
        df: the table as strings (see :func:`read_table`).
        source: the table's path; relative image paths are resolved against its folder and
            messages name it.
        check_images: also read every image/mask header (:func:`check_image`).

    Besides each row's values, rows are checked against each other (:func:`_cross_row_problems`).
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
    rows, lines = [], []
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
            problems.extend(f"{where}: column '{image_col}': {p}" for p in check_image(image_path))
        mask = str(row.get("mask", "") or "").strip()
        mask_path = _resolve(base, mask) if mask else None
        if mask_path is not None and check_images:
            problems.extend(f"{where}: column 'mask': {p}" for p in check_image(mask_path))
        if cfg["preprocess"]["mask"]["source"] == "table" and mask_path is None:
            problems.append(f"{where}: column 'mask': empty, but preprocess.mask.source is 'table'")
        out = {
            "scan": scan_id(subject, session),
            "subject": subject,
            "session": session,
            "image": _real_path(image_path) if image_path else "",
            "mask": _real_path(mask_path) if mask_path else "",
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
        lines.append(line)
    problems.extend(_cross_row_problems(cfg, list(zip(lines, rows)), source, image_col))
    if not rows and not problems:
        problems.append(f"{source}: no scans listed")
    table = pd.DataFrame(rows)
    return table, problems


Record = tuple[int, dict]  # (line in the table, normalised row)


def _cross_row_problems(cfg: dict, records: list[Record], source: Path, image_col: str) -> list[str]:
    """Problems between rows: colliding scan IDs, a shared image file, a subject whose fixed
    attributes or ages disagree between sessions."""
    return (
        _scan_id_collisions(records, source)
        + _shared_images(records, source, image_col)
        + _fixed_attribute_conflicts(cfg, records, source)
        + _age_conflicts(cfg, records, source)
    )


def _who(row: dict) -> str:
    """A row's subject and session as written in messages."""
    session = f"session {row['session']!r}" if row["session"] else "no session"
    return f"subject {row['subject']!r} ({session})"


def _same_key(a: dict, b: dict) -> bool:
    """Whether two rows name the same subject/session (already reported as a duplicate)."""
    return (a["subject"], a["session"]) == (b["subject"], b["session"])


def _scan_id_collisions(records: list[Record], source: Path) -> list[str]:
    """Rows with different subject/session but the same scan ID (:func:`scan_id`), e.g. subject
    ``a_b`` without a session and subject ``a`` session ``b``. IDs are compared ignoring case: they
    name files, and some file systems ignore case."""
    first: dict[str, Record] = {}
    problems = []
    for line, row in records:
        line0, row0 = first.setdefault(row["scan"].casefold(), (line, row))
        if line0 != line and not _same_key(row, row0):
            problems.append(
                f"{source}: line {line}: columns 'subject', 'session': {_who(row)} gives scan ID {row['scan']!r}, the same as "
                f"{_who(row0)} on line {line0} ({row0['scan']!r}); expected a distinct subject_session scan ID per row (compared ignoring case)"
            )
    return problems


def _shared_images(records: list[Record], source: Path, image_col: str) -> list[str]:
    """Rows of different subjects or sessions that name the same image file (after resolving
    symlinks and relative paths)."""
    first: dict[str, Record] = {}
    problems = []
    for line, row in records:
        if not row["image"]:
            continue
        line0, row0 = first.setdefault(row["image"], (line, row))
        if line0 != line and not _same_key(row, row0):
            problems.append(
                f"{source}: line {line}: column '{image_col}': {row['image']} is the same file as the image of {_who(row0)} "
                f"on line {line0}; expected one image file per scan"
            )
    return problems


def _by_subject(records: list[Record]) -> dict[str, list[Record]]:
    """The records grouped by subject, in table order."""
    groups: dict[str, list[Record]] = {}
    for line, row in records:
        groups.setdefault(row["subject"], []).append((line, row))
    return groups


def _fixed_attribute_conflicts(cfg: dict, records: list[Record], source: Path) -> list[str]:
    """Rows of one subject that disagree on an attribute in :data:`FIXED_ATTRIBUTES` (missing values
    are ignored); each is compared with the subject's first row that gives a value."""
    names = [a["name"] for a in cfg["attributes"] if a["name"] in FIXED_ATTRIBUTES]
    problems = []
    for subject, group in _by_subject(records).items():
        for name in names:
            given = [(line, row[name]) for line, row in group if row.get(name) is not None]
            for line, value in given[1:]:
                line0, value0 = given[0]
                if value != value0:
                    problems.append(
                        f"{source}: line {line}: column '{name}': subject {subject!r} has {name} {value!r} here but {value0!r} "
                        f"on line {line0}; expected the same {name} in every session of a subject"
                    )
    return problems


_NUMBER = re.compile(r"[0-9]+")


def session_order_key(label: str) -> tuple[str, tuple[int, ...]] | None:
    """A session label's place in time: its text with numbers blanked, then its numbers.

    Labels of one subject are ordered only when they all contain numbers and differ only in them
    (``ses-1 < ses-2 < ses-10``, ``M00 < M12``, ``2019-03-01 < 2020-01-15``); ``None`` for a label
    without numbers (``baseline``, ``followup``: no order is assumed).
    """
    numbers = _NUMBER.findall(label)
    return (_NUMBER.sub("#", label), tuple(int(n) for n in numbers)) if numbers else None


def _age_conflicts(cfg: dict, records: list[Record], source: Path) -> list[str]:
    """Rows of one subject whose ages cannot all be true: a later session younger than an earlier
    one (when sessions are ordered, :func:`session_order_key`), or a span of more than
    :data:`MAX_AGE_SPAN_YEARS` between the youngest and the oldest row."""
    if not any(a["name"] == "age" and a["kind"] == "numeric" for a in cfg["attributes"]):
        return []
    lo_age, hi_age = cfg["inputs"]["age_range"]  # an age outside it is reported on its own row
    problems = []
    for subject, group in _by_subject(records).items():
        aged = [(line, row) for line, row in group if row.get("age") is not None and lo_age <= row["age"] <= hi_age]
        problems += _age_span_problem(subject, aged, source) + _age_order_problems(subject, aged, source)
    return problems


def _age_span_problem(subject: str, aged: list[Record], source: Path) -> list[str]:
    """One problem if a subject's ages span more than :data:`MAX_AGE_SPAN_YEARS`."""
    if len(aged) < 2:
        return []
    (lo_line, lo), (hi_line, hi) = min(aged, key=lambda r: r[1]["age"]), max(aged, key=lambda r: r[1]["age"])
    if hi["age"] - lo["age"] <= MAX_AGE_SPAN_YEARS:
        return []
    message = (
        f"{source}: line {hi_line}: column 'age': subject {subject!r} is {hi['age']:g} here but {lo['age']:g} on line {lo_line}; "
        f"expected at most {MAX_AGE_SPAN_YEARS:g} years between the sessions of one subject"
    )
    return [message]


def _age_order_problems(subject: str, aged: list[Record], source: Path) -> list[str]:
    """Rows of a subject younger than the oldest of its earlier sessions (sessions ordered by
    :func:`session_order_key`; nothing is checked when they cannot be ordered)."""
    keys = [session_order_key(row["session"]) for _, row in aged]
    if len(aged) < 2 or None in keys or len({k[0] for k in keys}) != 1:
        return []
    problems = []
    for (line, row), key in zip(aged, keys):
        earlier = [(l0, r0) for (l0, r0), k0 in zip(aged, keys) if k0 < key]
        if not earlier:
            continue
        line0, row0 = max(earlier, key=lambda r: r[1]["age"])
        if row["age"] < row0["age"]:
            problems.append(
                f"{source}: line {line}: column 'age': subject {subject!r} is {row['age']:g} at session {row['session']!r} but "
                f"{row0['age']:g} at the earlier session {row0['session']!r} on line {line0}; expected the age not to decrease with the session"
            )
    return problems


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
