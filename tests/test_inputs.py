"""The scans table and image headers are checked before any heavy work; every bad input gives
exit code 2, a message naming the file/line/column and the expectation, and no output."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainlatent.cli import main
from brainlatent.config import load_config
from brainlatent.errors import BrainlatentError
from brainlatent.inputs import validate_inputs
from brainlatent.io import load_nifti

from conftest import write_head

HEADER = "subject,session,image_flair,age,edss,ms_type,sex\n"


@pytest.fixture
def study(tmp_path):
    """A valid two-scan table and a config reading it."""
    write_head(tmp_path / "img" / "a.nii.gz", seed=1)
    write_head(tmp_path / "img" / "b.nii.gz", seed=2)
    table = tmp_path / "scans.csv"
    table.write_text(HEADER + "s01,ses-1,img/a.nii.gz,34,2.5,RRMS,F\ns02,,img/b.nii.gz,51,6,SPMS,M\n")
    cfg = load_config({"inputs": {"source": "table", "table": str(table)}, "results_dir": str(tmp_path / "results")})
    return tmp_path, table, cfg


def run_cli(cfg: dict, table: Path, out: Path, capsys) -> tuple[int, str]:
    import json

    code = main(["validate-inputs", "--config", json.dumps(cfg), "--table", str(table), "--out", str(out)])
    return code, capsys.readouterr().err


def test_valid_table_is_normalised(study):
    tmp_path, table, cfg = study
    out = tmp_path / "out" / "scans.tsv"
    df = validate_inputs(cfg, out)
    assert out.exists()
    assert df["scan"].tolist() == ["s01_ses-1", "s02"]
    assert Path(df["image"][0]).is_absolute() and Path(df["image"][0]).exists()
    assert df["age"].tolist() == [34.0, 51.0]


def _rewrite(table: Path, rows: str) -> None:
    table.write_text(HEADER + rows)


BAD_ROWS = {
    "duplicate": ("s01,ses-1,img/a.nii.gz,34,2,RRMS,F\ns01,ses-1,img/b.nii.gz,35,2,RRMS,F\n", "duplicate subject/session s01/ses-1"),
    "unsafe_id": ("../evil,,img/a.nii.gz,34,2,RRMS,F\n", "column 'subject': '../evil' is not a safe ID"),
    "missing_path": ("s01,,img/nope.nii.gz,34,2,RRMS,F\n", "image file not found"),
    "unknown_value": ("s01,,img/a.nii.gz,34,2,RRMS,X\n", "column 'sex': unknown value 'X'; expected one of ['F', 'M']"),
    "age_range": ("s01,,img/a.nii.gz,134,2,RRMS,F\n", "age 134 is outside inputs.age_range [0, 120]"),
    "not_number": ("s01,,img/a.nii.gz,old,2,RRMS,F\n", "column 'age': 'old' is not a number"),
    "edss_range": ("s01,,img/a.nii.gz,30,12,RRMS,F\n", "column 'edss': 12 is outside the configured bins [0, 10]"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows_exit_2_with_location(study, capsys, case):
    tmp_path, table, cfg = study
    rows, expected = BAD_ROWS[case]
    _rewrite(table, rows)
    out = tmp_path / "out" / "scans.tsv"
    code, err = run_cli(cfg, table, out, capsys)
    assert code == 2
    assert expected in err
    assert f"{table}: line " in err
    assert "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob("*")) if out.parent.exists() else True


def test_missing_required_attribute_value(study, capsys):
    tmp_path, table, cfg = study
    cfg["attributes"][3]["required"] = True
    _rewrite(table, "s01,,img/a.nii.gz,34,2,RRMS,\n")
    code, err = run_cli(cfg, table, tmp_path / "o.tsv", capsys)
    assert code == 2 and "line 2: column 'sex': missing value; this attribute is required" in err


def test_missing_optional_value_is_kept_as_missing(study):
    tmp_path, table, cfg = study
    _rewrite(table, "s01,,img/a.nii.gz,34,,RRMS,F\n")
    df = validate_inputs(cfg, tmp_path / "o.tsv")
    assert df["edss"].isna().all()


def test_every_problem_is_reported_at_once(study, capsys):
    tmp_path, table, cfg = study
    _rewrite(table, "s01,,img/a.nii.gz,200,2,RRMS,F\ns01,,img/zzz.nii.gz,30,2,XX,F\n")
    code, err = run_cli(cfg, table, tmp_path / "o.tsv", capsys)
    assert code == 2
    assert "(4 problems)" in err
    for fragment in ("age 200", "duplicate", "image file not found", "unknown value 'XX'"):
        assert fragment in err


def test_missing_column(study, capsys):
    tmp_path, table, cfg = study
    table.write_text("subject,image_flair,age\ns01,img/a.nii.gz,3\n")
    code, err = run_cli(cfg, table, tmp_path / "o.tsv", capsys)
    assert code == 2 and "missing column(s) ['edss', 'ms_type', 'sex']" in err


def test_wrong_encoding(study, capsys):
    tmp_path, table, cfg = study
    table.write_bytes((HEADER + "s01,,img/a.nii.gz,34,2,RRMS,F\n").replace("s01", "sé1").encode("latin-1"))
    code, err = run_cli(cfg, table, tmp_path / "o.tsv", capsys)
    assert code == 2 and "not UTF-8 text" in err and str(table) in err


def test_wrong_delimiter(study, capsys):
    tmp_path, table, cfg = study
    table.write_text(HEADER.replace(",", "\t") + "s01\t\timg/a.nii.gz\t34\t2\tRRMS\tF\n")
    code, err = run_cli(cfg, table, tmp_path / "o.tsv", capsys)
    assert code == 2 and "header is tab-separated but a .csv file must be comma-separated" in err


def _write_image(path: Path, data: np.ndarray, affine=None) -> Path:
    """Write a NIfTI file; a bad ``affine`` is patched into the header bytes as the sform (with the
    qform disabled), since nibabel itself refuses to write one."""
    raw_path = path.with_suffix("")  # .nii
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(raw_path))
    raw = bytearray(raw_path.read_bytes())
    if affine is not None:
        raw[252:254] = np.int16(0).tobytes()  # qform_code
        raw[254:256] = np.int16(1).tobytes()  # sform_code
        raw[280:328] = np.asarray(affine[:3], dtype="<f4").tobytes()  # srow_x, srow_y, srow_z
    path.write_bytes(gzip.compress(bytes(raw)))
    raw_path.unlink()
    return path


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("2d", "expected a 3D volume"),
        ("4d", "expected a 3D volume"),
        ("singular", "affine is singular"),
        ("nonfinite", "affine has non-finite values"),
        ("garbage", "not a readable NIfTI file"),
    ],
)
def test_bad_image_headers(study, capsys, kind, expected):
    tmp_path, table, cfg = study
    bad = tmp_path / "img" / "bad.nii.gz"
    vol = np.ones((8, 8, 8), np.float32)
    if kind == "2d":
        _write_image(bad, np.ones((8, 8), np.float32))
    elif kind == "4d":
        _write_image(bad, np.ones((8, 8, 8, 3), np.float32))
    elif kind == "singular":
        aff = np.eye(4)
        aff[2, 2] = 0
        _write_image(bad, vol, aff)
    elif kind == "nonfinite":
        aff = np.eye(4)
        aff[0, 3] = np.nan
        _write_image(bad, vol, aff)
    else:
        bad.write_bytes(b"this is not a nifti file at all" * 20)
    _rewrite(table, "s01,,img/bad.nii.gz,34,2,RRMS,F\n")
    code, err = run_cli(cfg, table, tmp_path / "o.tsv", capsys)
    assert code == 2 and expected in err and "bad.nii.gz" in err and "column 'image_flair'" in err


@pytest.mark.parametrize(
    "kind, expected",
    [("nan", "voxels are NaN or infinite"), ("inf", "voxels are NaN or infinite"), ("zero", "all voxels are zero"), ("truncated", "file truncated or corrupt")],
)
def test_bad_voxels_found_when_loading(tmp_path, kind, expected):
    path = tmp_path / "v.nii.gz"
    vol = np.ones((8, 8, 8), np.float32)
    if kind == "nan":
        vol[1, 1, 1] = np.nan
    elif kind == "inf":
        vol[1, 1, 1] = np.inf
    elif kind == "zero":
        vol[:] = 0
    _write_image(path, vol)
    if kind == "truncated":
        write_head(path, seed=3)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BrainlatentError, match=expected) as info:
        load_nifti(path)
    assert str(path) in str(info.value)


def test_bids_folder(tmp_path):
    root = tmp_path / "bids"
    (root).mkdir()
    (root / "participants.tsv").write_text("participant_id\tage\tedss\tms_type\tsex\nsub-01\t30\t1\tRRMS\tF\nsub-02\t60\t7\tSPMS\tM\n")
    write_head(root / "sub-01" / "ses-a" / "anat" / "sub-01_ses-a_FLAIR.nii.gz")
    write_head(root / "sub-01" / "ses-b" / "anat" / "sub-01_ses-b_FLAIR.nii.gz")
    write_head(root / "sub-02" / "anat" / "sub-02_FLAIR.nii.gz")
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-a\t30\nses-b\t32\n")
    cfg = load_config({"inputs": {"source": "bids", "bids_dir": str(root)}})
    df = validate_inputs(cfg, tmp_path / "scans.tsv")
    assert df["scan"].tolist() == ["01_a", "01_b", "02"]
    assert df["age"].tolist() == [30.0, 32.0, 60.0]


def test_config_errors_name_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("gan: {latent_sizes: [x]}\nbogus: 1\n")
    with pytest.raises(BrainlatentError) as info:
        load_config(cfg)
    text = str(info.value)
    assert "gan.latent_sizes.0: 'x' is not of type 'integer'" in text and "unknown key ('bogus' was unexpected)" in text


def test_inline_config_without_a_needed_key_is_a_clear_error(tmp_path, capsys):
    """An inline (stage) config is used as given: a key the stage reads but was not given is named
    by its dotted path, never filled with a default."""
    import json

    table = tmp_path / "scans.csv"
    table.write_text(HEADER + "s01,,img/a.nii.gz,34,2,RRMS,F\n")
    out = tmp_path / "o" / "scans.tsv"
    inline = json.dumps({"inputs": {"source": "table", "table": str(table)}})
    code = main(["validate-inputs", "--config", inline, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "config key 'inputs.modality' is not part of the config given to this stage" in err
    assert "Traceback" not in err and not out.parent.exists()


# --------------------------------------------------------------------------------------------
# integrity checks: paths, header line, rows that contradict each other, absurd image headers


def _expect_exit_2(cfg, table, capsys, *fragments) -> str:
    """Run validate-inputs on ``table``; assert exit 2, no traceback, no output and every fragment."""
    out = table.parent / "out" / "scans.tsv"
    code, err = run_cli(cfg, table, out, capsys)
    assert code == 2, err
    assert "Traceback" not in err and not out.exists()
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_symlink_loop_is_one_problem_line(study, capsys):
    tmp_path, table, cfg = study
    (tmp_path / "img" / "loop.nii.gz").symlink_to("loop.nii.gz")
    _rewrite(table, "s01,,img/loop.nii.gz,34,2,RRMS,F\n")
    _expect_exit_2(cfg, table, capsys, f"{table}: line 2: column 'image_flair': {tmp_path / 'img' / 'loop.nii.gz'}: path is a symlink loop")
    looped = tmp_path / "looped.csv"
    looped.symlink_to("looped.csv")
    _expect_exit_2(cfg, looped, capsys, f"{looped}: table path is a symlink loop")


@pytest.mark.parametrize("suffix, used, expected", [(".csv", ";", "semicolon-separated but a .csv file must be comma-separated"),
                                                    (".tsv", "|", "pipe-separated but a .tsv file must be tab-separated")])
def test_wrong_delimiter_is_named(study, capsys, suffix, used, expected):
    tmp_path, _, cfg = study
    table = tmp_path / f"scans{suffix}"
    table.write_text(HEADER.replace(",", used) + used.join(["s01", "", "img/a.nii.gz", "34", "2", "RRMS", "F"]) + "\n")
    _expect_exit_2(cfg, table, capsys, f"{table}: line 1: header is {expected}", f"found {used!r} between the column names")


def test_duplicate_column_names(study, capsys):
    _, table, cfg = study
    table.write_text(HEADER.rstrip("\n") + ", age\ns01,,img/a.nii.gz,34,2,RRMS,F,35\n")
    _expect_exit_2(cfg, table, capsys, f"{table}: line 1: column 8: column name 'age' repeats column 4; expected unique column names")


def _three_images(tmp_path: Path) -> None:
    write_head(tmp_path / "img" / "c.nii.gz", seed=3)


@pytest.mark.parametrize(
    "rows, expected",
    [
        ("s01,ses-1,img/a.nii.gz,34,2,RRMS,F\ns01,ses-2,img/b.nii.gz,35,2,RRMS,M\n",
         "line 3: column 'sex': subject 's01' has sex 'M' here but 'F' on line 2; expected the same sex in every session"),
        ("s01,ses-2,img/a.nii.gz,40,2,RRMS,F\ns01,ses-10,img/b.nii.gz,36,2,RRMS,F\ns01,ses-1,img/c.nii.gz,38,2,RRMS,F\n",
         "line 3: column 'age': subject 's01' is 36 at session 'ses-10' but 40 at the earlier session 'ses-2' on line 2"),
        ("s01,baseline,img/a.nii.gz,20,2,RRMS,F\ns01,followup,img/b.nii.gz,70,2,RRMS,F\n",
         "line 3: column 'age': subject 's01' is 70 here but 20 on line 2; expected at most 25 years between the sessions"),
    ],
    ids=["sex", "age_decreases", "age_span"],
)
def test_subject_attributes_conflict_between_sessions(study, capsys, rows, expected):
    tmp_path, table, cfg = study
    _three_images(tmp_path)
    _rewrite(table, rows)
    err = _expect_exit_2(cfg, table, capsys, f"{table}: {expected}")
    assert "(1 problem)" in err


def test_sessions_are_ordered_by_their_numbers(study):
    tmp_path, table, cfg = study
    _three_images(tmp_path)
    _rewrite(table, "s01,ses-2,img/a.nii.gz,34,2,RRMS,F\ns01,ses-10,img/b.nii.gz,38,2,SPMS,F\ns01,ses-1,img/c.nii.gz,33,2,RRMS,\n")
    df = validate_inputs(cfg, tmp_path / "o.tsv")
    assert df["scan"].tolist() == ["s01_ses-2", "s01_ses-10", "s01_ses-1"]


def test_same_image_file_under_two_subjects(study, capsys):
    tmp_path, table, cfg = study
    (tmp_path / "img" / "alias.nii.gz").symlink_to("a.nii.gz")
    _rewrite(table, "s01,,img/a.nii.gz,34,2,RRMS,F\ns02,,img/b.nii.gz,40,2,RRMS,M\ns03,,img/alias.nii.gz,50,2,RRMS,M\n")
    _expect_exit_2(
        cfg, table, capsys,
        f"{table}: line 4: column 'image_flair': {tmp_path / 'img' / 'a.nii.gz'} is the same file as the image of subject 's01' (no session) on line 2",
    )


@pytest.mark.parametrize(
    "rows, expected",
    [
        ("a_b,,img/a.nii.gz,34,2,RRMS,F\na,b,img/b.nii.gz,40,2,RRMS,M\n",
         "line 3: columns 'subject', 'session': subject 'a' (session 'b') gives scan ID 'a_b', the same as subject 'a_b' (no session) on line 2"),
        ("S01,,img/a.nii.gz,34,2,RRMS,F\ns01,,img/b.nii.gz,40,2,RRMS,M\n",
         "line 3: columns 'subject', 'session': subject 's01' (no session) gives scan ID 's01', the same as subject 'S01' (no session) on line 2 ('S01')"),
    ],
    ids=["underscore", "case"],
)
def test_rows_with_the_same_scan_id(study, capsys, rows, expected):
    _, table, cfg = study
    _rewrite(table, rows)
    _expect_exit_2(cfg, table, capsys, f"{table}: {expected}")


def _header_only_nifti(path: Path, shape: tuple[int, ...], zooms: tuple[float, ...]) -> Path:
    """A NIfTI file that is a header only (no voxel data at all) declaring ``shape`` and ``zooms``;
    the fields are patched directly, since nibabel refuses to set absurd values."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((8, 8, 8))
    header["dim"][0] = len(shape)
    header["dim"][1 : len(shape) + 1] = shape
    header["pixdim"][1 : len(zooms) + 1] = zooms
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0\0\0\0")
    return path


@pytest.mark.parametrize(
    "shape, zooms, expected",
    [
        ((4000, 8, 8), (1, 1, 1), "header dimensions (4000, 8, 8) are absurd; expected 2 to 2048 voxels along each axis"),
        ((2000, 2000, 2000), (1, 1, 1), "header dimensions (2000, 2000, 2000) make 8,000,000,000 voxels; expected at most 1,000,000,000"),
        ((8, 8, 8), (1, 0, 1), "header voxel sizes (1.0, 0.0, 1.0) mm are absurd; expected each above 0 and at most 20 mm"),
        ((8, 8, 8), (1, 1, 50), "header voxel sizes (1.0, 1.0, 50.0) mm are absurd"),
    ],
    ids=["too_long", "too_many_voxels", "zero_voxel", "huge_voxel"],
)
def test_absurd_header_is_rejected_before_reading_voxels(study, capsys, monkeypatch, shape, zooms, expected):
    tmp_path, table, cfg = study
    bad = _header_only_nifti(tmp_path / "img" / "bad.nii", shape, zooms)

    def no_voxels(*args, **kwargs):
        raise AssertionError("voxel data was read")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_voxels)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__getitem__", no_voxels)
    _rewrite(table, "s01,,img/bad.nii,34,2,RRMS,F\n")
    err = _expect_exit_2(cfg, table, capsys, f"{table}: line 2: column 'image_flair': {bad}: {expected}")
    assert "truncated" not in err
    with pytest.raises(BrainlatentError, match="absurd|expected at most") as info:
        load_nifti(bad)
    assert "voxel data cannot be read" not in str(info.value)
