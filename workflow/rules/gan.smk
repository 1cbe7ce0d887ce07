# Generators (GPU rule): one job per (family, latent size); families from brainlatent.models.families.


rule train_gan:
    input:
        images=f"{SLICES}/images.npy",
        manifest=f"{SLICES}/manifest.parquet",
    output:
        # log.csv, samples/ and checkpoints/ are not declared: Snakemake deletes the outputs of a
        # failed or cancelled job, and a resumed run continues the log it finds
        network=f"{S}/gan/{{arch}}-z{{zdim}}/network.pt",
    params:
        config=lambda w: stage_config(f"train:{w.arch}"),
        slices=input_folder("manifest"),
        out=output_folder("network"),
    log:
        f"{LOGS}/train_gan/{{arch}}-z{{zdim}}.log",
    benchmark:
        f"{BENCH}/train_gan/{{arch}}-z{{zdim}}.tsv"
    threads: CFG["resources"]["gpu_threads"]
    resources:
        **GPU,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} brainlatent train-gan --config {params.config:q} --slices {params.slices:q} --arch {wildcards.arch:q}"
        " --zdim {wildcards.zdim:q} --out {params.out:q} 2> {log:q}"
