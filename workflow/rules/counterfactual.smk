# Counterfactuals (GPU rule): one job per model when counterfactual.enabled; with synthetic twins
# (synthetic.twins.enabled) the true counterfactual error is measured too.


rule counterfactual:
    input:
        network=f"{S}/gan/{{arch}}-z{{zdim}}/network.pt",
        classifier=f"{S}/classifier/model.pt",
        manifest=f"{SLICES}/manifest.parquet",
        twins=twins_manifest(),
    output:
        json=f"{S}/counterfactual/{{arch}}-z{{zdim}}/metrics.json",
        pictures=directory(f"{S}/counterfactual/{{arch}}-z{{zdim}}/pictures"),
    params:
        config=stage_config("counterfactual"),
        slices=input_folder("manifest"),
        twins=lambda w, input: ["--twins", str(Path(input.twins[0]).parent)] if input.twins else [],
    log:
        f"{LOGS}/counterfactual/{{arch}}-z{{zdim}}.log",
    benchmark:
        f"{BENCH}/counterfactual/{{arch}}-z{{zdim}}.tsv"
    threads: CFG["resources"]["gpu_threads"]
    resources:
        **GPU,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} brainlatent counterfactual --config {params.config:q} --network {input.network:q}"
        " --classifier {input.classifier:q} --slices {params.slices:q} {params.twins:q}"
        " --out {output.json:q} --out-dir {output.pictures:q} 2> {log:q}"
