# The study's resolved config, and one self-contained HTML report per study.


rule resolved_config:
    output:
        f"{S}/config.yaml",
    params:
        config=stage_config("report"),
    log:
        f"{LOGS}/resolved_config.log",
    conda:
        ENV
    shell:
        "brainlatent config --config {params.config:q} --out {output:q} 2> {log:q}"


rule report:
    input:
        config=f"{S}/config.yaml",
        metrics=f"{S}/metrics.csv",
        classifier=f"{S}/classifier/metrics.json",
        manifest=f"{SLICES}/manifest.parquet",
        qc=qc_pictures,
        networks=model_outputs(),
        counterfactual=counterfactual_outputs(),
    output:
        html=report(f"{S}/report/index.html", caption="../report/report.rst", category="Report"),
    params:
        study_dir=input_folder("metrics"),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    resources:
        **CPU,
    conda:
        ENV
    shell:
        "brainlatent report --config {input.config:q} --study-dir {params.study_dir:q} --out {output.html:q} 2> {log:q}"
