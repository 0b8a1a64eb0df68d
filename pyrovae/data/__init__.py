"""Data: splits held on the device, pixel modes and batches (:mod:`.splits`); the published
on-disk formats (:mod:`.published`); the user's own folders and tensor files (:mod:`.own`);
partly labelled data (:mod:`.labelled`); sequences and their lengths (:mod:`.sequences`);
datasets with ground-truth factors (:mod:`.factors`); small files in each format for tests
(:mod:`.fixtures`).
"""

from typing import TYPE_CHECKING

from pyrovae.facade import lazy

if TYPE_CHECKING:  # the exports: read by pyrovae.facade.lazy, each loaded when first used
    from pyrovae.data import factors, fixtures, own, published, sequences
    from pyrovae.data.batches import Batches
    from pyrovae.data.factors import FACTOR_NAMES, load_factors
    from pyrovae.data.labelled import LabelledBatches, keep_labels
    from pyrovae.data.own import read_folder, read_tensor
    from pyrovae.data.splits import (
        DATASETS,
        EVAL_BINARIZATION_SEED,
        PIXEL_MODES,
        STATIC_BINARIZATION_SEED,
        VAL_BINARIZATION_SEED,
        Split,
        data_root,
        image_shape,
        load_split,
    )

__getattr__, __dir__, __all__ = lazy(__name__, __file__)
