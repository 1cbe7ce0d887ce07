# Attribute classifier (GPU rule): VGG-16 with one head per attribute.


rule train_classifier:
    input:
        images=f"{SLICES}/images.npy",
        manifest=f"{SLICES}/manifest.parquet",
    output:
        model=f"{S}/classifier/model.pt",
        last=f"{S}/classifier/last.pt",
        metrics=f"{S}/classifier/metrics.json",
        curves=report(f"{S}/classifier/curves.png", caption="../report/classifier_curves.rst", category="Classifier"),
    params:
        config=stage_config("train_classifier"),
        slices=input_folder("manifest"),
        out=output_folder("model"),
    log:
        f"{LOGS}/train_classifier.log",
    benchmark:
        f"{BENCH}/train_classifier.tsv"
    threads: CFG["resources"]["gpu_threads"]
    resources:
        **GPU,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} brainlatent train-classifier --config {params.config:q} --slices {params.slices:q} --out {params.out:q} 2> {log:q}"
