"""The synthetic MS cohort: heads with skull, atrophy and lesions built from nilearn's MNI152 templates.

``synthesize_cohort(cfg, out_dir)`` writes NIfTI images, true brain and lesion masks and the
scans/participants/truth tables; ``sample_attributes`` draws the clinical attributes alone.
"""

from brainlatent.synth.clinical import sample_attributes
from brainlatent.synth.cohort import synthesize_cohort

__all__ = ["sample_attributes", "synthesize_cohort"]
