# Data stage: synthetic cohort (optional) -> validated scans table -> preprocessed scans -> slices
# (-> counterfactual twins of the synthetic test subjects, when synthetic.twins.enabled).


rule synthesize_cohort:
    output:
        scans=f"{S}/cohort/scans.tsv",
        participants=f"{S}/cohort/participants.tsv",
        truth=f"{S}/cohort/truth.tsv",
    params:
        config=stage_config("synthesize"),
        out=output_folder("scans"),
    log:
        f"{LOGS}/synthesize_cohort.log",
    benchmark:
        f"{BENCH}/synthesize_cohort.tsv"
    threads: CFG["synthetic"]["workers"]
    resources:
        **CPU,
    conda:
        ENV
    shell:
        "brainlatent synthesize --config {params.config:q} --out {params.out:q} 2> {log:q}"


checkpoint validate_inputs:
    input:
        table=input_table,
    output:
        scans=f"{S}/inputs/scans.tsv",
        ok=f"{S}/inputs/inputs.ok",
    params:
        config=stage_config("validate_inputs"),
        table=lambda w, input: [] if CFG["inputs"]["source"] == "bids" else ["--table", input.table],
    log:
        f"{LOGS}/validate_inputs.log",
    benchmark:
        f"{BENCH}/validate_inputs.tsv"
    resources:
        **CPU,
    conda:
        ENV
    shell:
        "brainlatent validate-inputs --config {params.config:q} {params.table:q} --out {output.scans:q} --ok {output.ok:q} 2> {log:q}"


rule preprocess:
    input:
        image=scan_field("image"),
        mask=mask_input,
    output:
        image=f"{S}/preprocessed/images/{{scan}}.nii.gz",
        mask=f"{S}/preprocessed/masks/{{scan}}.nii.gz",
        summary=f"{S}/preprocessed/summaries/{{scan}}.json",
        qc=f"{S}/qc/{{scan}}.png",
    params:
        config=stage_config("preprocess"),
        mask=mask_arg,
    log:
        f"{LOGS}/preprocess/{{scan}}.log",
    benchmark:
        f"{BENCH}/preprocess/{{scan}}.tsv"
    resources:
        **CPU,
    conda:
        ENV
    shell:
        "brainlatent preprocess --config {params.config:q} --image {input.image:q} {params.mask:q}"
        " --out-image {output.image:q} --out-mask {output.mask:q} --qc {output.qc:q} --summary {output.summary:q} 2> {log:q}"


rule slice_dataset:
    input:
        scans=f"{S}/inputs/scans.tsv",
        images=preprocessed("images"),
        masks=preprocessed("masks"),
        qc=qc_pictures,
        # per-scan QC checks (preprocess.qc), gathered here: stop, or exclude with qc.on_fail: exclude
        summaries=lambda w: expand(f"{S}/preprocessed/summaries/{{scan}}.json", scan=scan_ids()),
    output:
        images=f"{SLICES}/images.npy",
        manifest=f"{SLICES}/manifest.parquet",
        excluded=f"{SLICES}/excluded.tsv",
    params:
        config=stage_config("slice"),
        preprocessed=lambda w, input: str(Path(input.scans).parents[1] / "preprocessed"),
        out=output_folder("manifest"),
    log:
        f"{LOGS}/slice_dataset.log",
    benchmark:
        f"{BENCH}/slice_dataset.tsv"
    resources:
        **CPU,
    conda:
        ENV
    shell:
        # QC failures and exclusions (WARNING/error lines) are shown on the console too, not only in the log
        "brainlatent slice --config {params.config:q} --scans {input.scans:q} --preprocessed {params.preprocessed:q}"
        " --out {params.out:q} 2> {log:q} || rc=$?; grep -E -A1000 'WARNING|error' {log:q} >&2 || true; exit ${{rc:-0}}"


if twins_enabled():

    rule synthesize_twins:
        input:
            scans=f"{S}/cohort/scans.tsv",
            manifest=f"{SLICES}/manifest.parquet",
            images=preprocessed("images"),
        output:
            truth=f"{S}/twins/truth.tsv",
            manifest=f"{S}/twins/slices/{RES}/manifest.parquet",
            images=f"{S}/twins/slices/{RES}/images.npy",
            lesions=f"{S}/twins/slices/{RES}/lesions.npy",
            source_lesions=f"{S}/twins/slices/{RES}/source_lesions.npy",
        params:
            config=stage_config("twins"),
            slices=input_folder("manifest"),
            preprocessed=lambda w: f"{S}/preprocessed",
            out=output_folder("truth"),
        log:
            f"{LOGS}/synthesize_twins.log",
        benchmark:
            f"{BENCH}/synthesize_twins.tsv"
        threads: CFG["synthetic"]["workers"]
        resources:
            **CPU,
        conda:
            ENV
        shell:
            "brainlatent twins --config {params.config:q} --scans {input.scans:q} --slices {params.slices:q}"
            " --preprocessed {params.preprocessed:q} --out {params.out:q} --workers {threads} 2> {log:q}"
