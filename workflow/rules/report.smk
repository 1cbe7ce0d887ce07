# Report: one self-contained HTML page per study.


rule report:
    input:
        metrics=f"{S}/metrics.csv",
        classifier=f"{S}/classifier/metrics.json",
        manifest=f"{SLICES}/manifest.parquet",
        qc=qc_pictures,
        networks=model_outputs(),
    output:
        html=report(f"{S}/report/index.html", caption="../report/report.rst", category="Report"),
    params:
        study_dir=input_folder("metrics"),
        config=shlex.quote(json.dumps(CFG, sort_keys=True, separators=(",", ":"))),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    resources:
        **CPU,
    conda:
        ENV
    shell:
        "brainlatent report --config {params.config} --study-dir {params.study_dir} --out {output.html} 2> {log}"
