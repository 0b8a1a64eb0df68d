"""Posterior diagnostics for amortized guides q(z | x), one datapoint at a time.

- :func:`to_inference_data`: draws of every latent site per datapoint, posterior predictive
  draws, observed data, log importance weights and pointwise log-likelihoods as an
  ``arviz.InferenceData`` (ArviZ 0.x, 0.18 or later: the line that installs on Python 3.11;
  ArviZ 1.x changed ``from_dict`` and is not supported yet);
- :func:`posterior_quality`: per datapoint, the Pareto k-hat of the importance weights
  (PSIS, Yao et al. 2018, sec. 2.2, through ``arviz.psislw``), the importance ESS and the
  gap log p(x) - ELBO(x), an estimate of KL(q(z|x) || p(z|x));
- :func:`amortization_gap`: that gap split into approximation and amortization gaps
  (Cremer et al. 2018, eq. 4) by fitting a local q_n(z) of the guide's family to each chosen
  datapoint;
- :func:`refined_log_likelihood`: log p(x) and k-hat by importance sampling from the guide and
  from proposals refined per datapoint (:func:`refine`);
- :func:`latent_activity`: active units (Burda et al. 2015, sec. 5.2: Cov_x(E_q[z_u]) > 0.01)
  and the KL per latent dimension, with a posterior-collapse warning; :func:`step_activity`
  for a sequence model's z_t, step by step;
- disentanglement against ground-truth factors: :func:`mig`, :func:`dci`,
  :func:`factor_vae_score`, :func:`sap` (:mod:`pyrovae.diagnostics.disentanglement`);
- latent plots: posterior means by label, the decoded manifold of a 2-D latent, traversals
  and interpolations; piano rolls drawn from and reconstructed by sequence models
  (:mod:`pyrovae.diagnostics.rolls`, :func:`save_rolls`).

Reading k-hat (Yao et al. 2018, sec. 2.2; Vehtari et al. 2024, sec. 3): below 0.5 the
importance weights have finite variance and the IS estimate of log p(x) converges fast;
between 0.5 and 0.7 it still converges, slowly; above 0.7 the estimate is unreliable at any
practical K: q(z|x) misses mass of p(z|x) (too narrow, too light tails, or off centre).
"""

from typing import TYPE_CHECKING

from pyrovae.facade import lazy

if TYPE_CHECKING:  # the exports: read by pyrovae.facade.lazy, each loaded when first used
    from pyrovae.diagnostics.activity import (
        ACTIVE_THRESHOLD,
        LatentActivity,
        PosteriorCollapseWarning,
        StepActivity,
        latent_activity,
        step_activity,
    )
    from pyrovae.diagnostics.amortization import amortization_gap
    from pyrovae.diagnostics.disentanglement import (
        IMPORTANCE,
        METRICS,
        Score,
        dci,
        factor_vae_score,
        mig,
        sap,
    )
    from pyrovae.diagnostics.draws import PosteriorDraws, sample_posterior, to_inference_data
    from pyrovae.diagnostics.importance import (
        FLAT_SPREAD,
        KHAT_BAD,
        KHAT_GOOD,
        importance_table,
        plot_quality,
        posterior_quality,
        psis_khat,
        quality_summary,
        worst,
    )
    from pyrovae.diagnostics.latent import (
        batched_posterior_means,
        interpolate,
        plot_images,
        plot_latent_means,
        plot_manifold,
        posterior_means,
        traversals,
    )
    from pyrovae.diagnostics.plots import plot_curves, save_grid, save_rolls, show_grid
    from pyrovae.diagnostics.refine import (
        LocalGaussian,
        LocalHead,
        Refined,
        fit_local,
        local_proposal,
        refine,
        refined_log_likelihood,
    )
    from pyrovae.diagnostics.rolls import sequence_reconstructions, sequence_samples

__getattr__, __dir__, __all__ = lazy(__name__, __file__)
