# Evaluation (GPU rules): one rule per metric family and model, then one metrics.csv per study.


rule evaluate_ppl:
    input:
        network=f"{S}/gan/{{arch}}-z{{zdim}}/network.pt",
        classifier=f"{S}/classifier/model.pt",
        manifest=f"{SLICES}/manifest.parquet",
    output:
        json=f"{S}/eval/{{arch}}-z{{zdim}}/ppl.json",
    params:
        config=stage_config("evaluate:ppl"),
        slices=input_folder("manifest"),
        metric="ppl",
        extra=[],
    log:
        f"{LOGS}/evaluate/ppl/{{arch}}-z{{zdim}}.log",
    benchmark:
        f"{BENCH}/evaluate/ppl/{{arch}}-z{{zdim}}.tsv"
    threads: CFG["resources"]["gpu_threads"]
    resources:
        **GPU,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} brainlatent evaluate --metric {params.metric:q} --config {params.config:q} --network {input.network:q}"
        " --classifier {input.classifier:q} --slices {params.slices:q} --out {output.json:q} {params.extra:q} 2> {log:q}"


use rule evaluate_ppl as evaluate_separability with:
    output:
        json=f"{S}/eval/{{arch}}-z{{zdim}}/separability.json",
    params:
        config=stage_config("evaluate:separability"),
        slices=input_folder("manifest"),
        metric="separability",
        extra=[],
    log:
        f"{LOGS}/evaluate/separability/{{arch}}-z{{zdim}}.log",
    benchmark:
        f"{BENCH}/evaluate/separability/{{arch}}-z{{zdim}}.tsv"


use rule evaluate_ppl as evaluate_quality with:
    output:
        json=f"{S}/eval/{{arch}}-z{{zdim}}/quality.json",
    params:
        config=stage_config("evaluate:quality"),
        slices=input_folder("manifest"),
        metric="quality",
        extra=[],
    log:
        f"{LOGS}/evaluate/quality/{{arch}}-z{{zdim}}.log",
    benchmark:
        f"{BENCH}/evaluate/quality/{{arch}}-z{{zdim}}.tsv"


use rule evaluate_ppl as evaluate_path_profile with:
    output:
        json=f"{S}/eval/{{arch}}-z{{zdim}}/path_profile.json",
        plot=report(f"{S}/eval/{{arch}}-z{{zdim}}/path_profile.png", caption="../report/path_profile.rst", category="Path profiles"),
        gifs=directory(f"{S}/eval/{{arch}}-z{{zdim}}/interpolations"),
    params:
        config=stage_config("evaluate:path_profile"),
        slices=input_folder("manifest"),
        metric="path_profile",
        extra=lambda w, output: ["--plot", output.plot, "--gif-dir", output.gifs],
    log:
        f"{LOGS}/evaluate/path_profile/{{arch}}-z{{zdim}}.log",
    benchmark:
        f"{BENCH}/evaluate/path_profile/{{arch}}-z{{zdim}}.tsv"



use rule evaluate_ppl as evaluate_mode_discovery with:
    output:
        json=f"{S}/eval/{{arch}}-z{{zdim}}/mode_discovery.json",
        pictures=f"{S}/eval/{{arch}}-z{{zdim}}/components.png",
    params:
        config=stage_config("evaluate:mode_discovery"),
        slices=input_folder("manifest"),
        metric="mode_discovery",
        extra=lambda w, output: ["--gif-dir", str(Path(output.pictures).parent)],
    log:
        f"{LOGS}/evaluate/mode_discovery/{{arch}}-z{{zdim}}.log",
    benchmark:
        f"{BENCH}/evaluate/mode_discovery/{{arch}}-z{{zdim}}.tsv"

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
