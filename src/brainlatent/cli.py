"""``brainlatent <stage> ...``: one subcommand per workflow rule.

Each stage module provides ``add_arguments(parser)`` and ``run(args)``; it is imported only when
its subcommand is used, so ``brainlatent --help`` is fast. A :class:`BrainlatentError` is printed
as ``brainlatent <stage>: error: ...`` without a traceback and the process exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from brainlatent import __version__
from brainlatent.errors import BrainlatentError

#: subcommand -> (module, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "config": ("brainlatent.config", "write a study's fully resolved config (schema defaults filled in)"),
    "synthesize": ("brainlatent.synth.cohort", "write the synthetic MS cohort (NIfTI, participants, truth)"),
    "validate-inputs": ("brainlatent.inputs", "check the scans table and every image header; write the normalised table"),
    "preprocess": ("brainlatent.preprocess", "reorient, resample, bias-correct, mask, normalise one scan; QC picture"),
    "twins": ("brainlatent.synth.twins", "counterfactual twins of the synthetic test subjects (one attribute changed), preprocessed and sliced"),
    "slice": ("brainlatent.slices", "build the 2D slice dataset (memmap + manifest + subject-level split)"),
    "train-classifier": ("brainlatent.train.classifier", "train the VGG-16 attribute classifier"),
    "train-gan": ("brainlatent.train.generator", "train one generator of a registered family (StyleGAN, mapping-free GAN, ...)"),
    "generate": ("brainlatent.generate", "images from a trained network for given seeds, in Z or W"),
    "evaluate": ("brainlatent.metrics.evaluate", "PPL, path profile, linear separability or image quality for one model"),
    "counterfactual": ("brainlatent.counterfactual.stage", "one scan's counterfactual slices (--scan --set), or a model's counterfactual metrics"),
    "aggregate": ("brainlatent.metrics.aggregate", "collect every model's metrics into one metrics.csv"),
    "report": ("brainlatent.report.build", "build the study's HTML report"),
    "batch": ("brainlatent.batch", "run many study configs and build the comparison page"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainlatent",
        description="Does a generative model's latent space disentangle clinical attributes of brain MRI?",
        epilog="stages:\n" + "\n".join(f"  {name:<18} {help_}" for name, (_, help_) in STAGES.items())
        + "\n\nRun 'brainlatent <stage> --help' for a stage's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"brainlatent {__version__}")
    parser.add_argument("stage", choices=list(STAGES), metavar="stage", help="one of: " + ", ".join(STAGES))
    return parser


def stage_parser(stage: str) -> tuple[argparse.ArgumentParser, object]:
    """The argument parser of one stage and its module."""
    module_name, help_ = STAGES[stage]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"brainlatent {stage}", description=help_)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.add_arguments(parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in STAGES:
        _top_parser().parse_args(argv[:1] or ["--help"])
        return 0  # pragma: no cover - argparse exits
    stage = argv[0]
    parser, module = stage_parser(stage)
    args = parser.parse_args(argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        module.run(args)
    except BrainlatentError as exc:
        print(f"brainlatent {stage}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"brainlatent {stage}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
