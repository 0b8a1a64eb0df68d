"""Building blocks: what models and guides are made of.

Base classes (:mod:`.base`), networks (:mod:`.nn`), likelihoods p(x | z) (:mod:`.likelihoods`,
with the 8-bit discretized ones of :mod:`.discretized`), learned priors p(z) (:mod:`.priors`),
a VQ-VAE's codebook (:mod:`.quantize`) and priors over its codes (:mod:`.codes`), and the
layers of a top-down hierarchical VAE (:mod:`.hierarchy`).
"""

from typing import TYPE_CHECKING

from pyrovae.facade import lazy

if TYPE_CHECKING:  # the exports: read by pyrovae.facade.lazy, each loaded when first used
    from pyrovae.blocks.base import ImageModel, ImageModule
    from pyrovae.blocks.codes import (
        CODE_PRIORS,
        AutoregressiveCodes,
        CodePrior,
        CodeTransformer,
        TransformerCodePrior,
        UniformCodePrior,
        make_code_prior,
    )
    from pyrovae.blocks.discretized import Categorical256, DiscretizedLogistic, DiscretizedLogisticMixture
    from pyrovae.blocks.hierarchy import TopDownLayer
    from pyrovae.blocks.likelihoods import LIKELIHOODS, BernoulliImage, BernoulliLogits, Likelihood
    from pyrovae.blocks.nn import (
        CodeConditioned,
        ConvDecoder,
        ConvEncoder,
        GridDecoder,
        GridEncoder,
        ResNetDecoder,
        ResNetEncoder,
        activation,
        gaussian_head,
        mlp,
    )
    from pyrovae.blocks.priors import (
        PRIORS,
        FlowPrior,
        MixturePrior,
        Prior,
        StandardPrior,
        VampPrior,
        make_prior,
    )
    from pyrovae.blocks.quantize import VectorQuantizer

__getattr__, __dir__, __all__ = lazy(__name__, __file__)
