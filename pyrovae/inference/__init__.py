"""Inference on a model and guide: the per-datapoint log importance weights (:mod:`.weights`)
and their consumers, the estimators (:mod:`.estimators`), run in memory-sized chunks
(:mod:`.chunks`) with discrete sites summed out (:mod:`.enumeration`), K particles drawn
under a plate or on repeated data (:mod:`.particles`, :mod:`.plates`); AIS (:mod:`.ais`, its
path in :mod:`.paths`, its step sizes in :mod:`.stepsize`) and BDMC (:mod:`.bidirectional`);
the pair check and the per-datapoint-state decision (:mod:`.pairs`), input checks (:mod:`.checks`); the
evaluation of a trained pair on data (:mod:`.scoring`) and its classification and clustering
figures (:mod:`.clusters`).

This facade is also ``pyrovae.estimators``: ``from pyrovae.estimators import elbo`` works.
"""

from typing import TYPE_CHECKING

from pyrovae.facade import lazy

if TYPE_CHECKING:  # the exports: read by pyrovae.facade.lazy, each loaded when first used
    from pyrovae.inference.ais import AIS, ais_log_likelihood, sigmoid_schedule
    from pyrovae.inference.bidirectional import BDMC, Sandwich, bdmc, sandwich, simulate
    from pyrovae.inference.checks import check_inputs
    from pyrovae.inference.chunks import (
        AUTO_CAPTURE_CHUNKS,
        CPU_ROWS,
        MAX_ROWS,
        MEMORY_FRACTION,
        bytes_per_row,
        chunk_rows,
        chunk_sizes,
        fold_terms,
        free_memory,
        map_terms,
    )
    from pyrovae.inference.clusters import classification_error, cluster_accuracy, discrete_probs
    from pyrovae.inference.enumeration import ENUMERATE
    from pyrovae.inference.estimators import (
        elbo,
        elbo_terms,
        ess_from_log_weights,
        evaluate_terms,
        importance_ess,
        iwae_bound,
        iwae_from_log_weights,
        log_likelihood,
        log_weights,
        mean_and_stderr,
    )
    from pyrovae.inference.pairs import check_pair, per_datapoint_state, whole_data
    from pyrovae.inference.particles import broadcast_failure, decide
    from pyrovae.inference.plates import PARTICLE_PLATE, vectorize
    from pyrovae.inference.scoring import class_report, class_report_data, evaluate_data
    from pyrovae.inference.stepsize import frozen_steps
    from pyrovae.inference.weights import (
        LogProbTerms,
        data_frame,
        inspection_traces,
        log_prob_terms,
        per_datapoint,
        plate_nesting,
        site_log_prob,
        sum_sites,
        traces,
    )

__getattr__, __dir__, __all__ = lazy(__name__, __file__)
