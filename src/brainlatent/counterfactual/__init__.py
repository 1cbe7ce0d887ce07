"""Counterfactuals of real slices: project a slice into a generator's latent space, edit, re-render.

* :mod:`brainlatent.counterfactual.projector`: optimisation-based inversion of real 1-channel slices
  into Z, W, W+ or (z, y) of any generator family (offline: the study's own classifier features plus
  a pixel term inside the brain mask), and :func:`~brainlatent.counterfactual.projector.render`.
* :mod:`brainlatent.counterfactual.directions`: attribute directions from classifier-labelled
  samples (one-vs-rest LinearSVC normals, InterFaceGAN conditional orthogonalisation) that step a
  latent to a *target value*; label changes for the conditional families.
"""
