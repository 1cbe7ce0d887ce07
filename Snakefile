# The workflow lives in workflow/Snakefile (the layout the Snakemake workflow catalog expects).
# A rule's default_target inside an included file is not kept by Snakemake, so the default
# target is named here: `snakemake` from the repository root runs the whole study.
include: "workflow/Snakefile"


localrules:
    study,


rule study:
    input:
        rules.all.input,
    default_target: True
