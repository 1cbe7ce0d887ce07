# Evaluation (GPU rule): one job per (model, metric), the metrics each family lists in the registry
# (brainlatent.models.families; metrics from brainlatent.metrics.registry); then one metrics.csv.


rule evaluate:
    input:
        network=f"{S}/gan/{{arch}}-z{{zdim}}/network.pt",
        classifier=f"{S}/classifier/model.pt",
        classifier_metrics=f"{S}/classifier/metrics.json",
        manifest=f"{SLICES}/manifest.parquet",
    output:
        json=f"{S}/eval/{{arch}}-z{{zdim}}/{{metric}}.json",
        pictures=directory(f"{S}/eval/{{arch}}-z{{zdim}}/{{metric}}"),
    params:
        config=lambda w: stage_config(f"evaluate:{w.metric}"),
        slices=input_folder("manifest"),
    log:
        f"{LOGS}/evaluate/{{metric}}/{{arch}}-z{{zdim}}.log",
    benchmark:
        f"{BENCH}/evaluate/{{metric}}/{{arch}}-z{{zdim}}.tsv"
    threads: CFG["resources"]["gpu_threads"]
    resources:
        **GPU,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} brainlatent evaluate --metric {wildcards.metric:q} --config {params.config:q}"
        " --network {input.network:q} --classifier {input.classifier:q} --classifier-metrics {input.classifier_metrics:q}"
        " --slices {params.slices:q} --out {output.json:q} --out-dir {output.pictures:q} 2> {log:q}"


rule aggregate:
    input:
        eval_outputs(),
    output:
        report(f"{S}/metrics.csv", caption="../report/metrics.rst", category="Metrics"),
    params:
        config=stage_config("aggregate"),
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCH}/aggregate.tsv"
    resources:
        **CPU,
    conda:
        ENV
    shell:
        "brainlatent aggregate --config {params.config:q} --inputs {input:q} --out {output:q} 2> {log:q}"
