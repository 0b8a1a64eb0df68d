"""Names shared by every model and guide: the data plate and the standard sites."""

DATA_PLATE = "data"  #: the plate over datapoints; estimators weigh each of its entries
LATENT = "z"  #: the latent code of a one-layer VAE
OBSERVED = "x"  #: the observed image
CLUSTER = "c"  #: a discrete latent: the mixture component of a Gaussian-mixture model
LABEL = "y"  #: the class of the semi-supervised model, latent where the label is missing
CODES = "codes"  #: the grid of code indices of a VQ-VAE


def step_site(kind: str, t: int) -> str:
    """Time step ``t``'s (from 1) latent (``kind = "z"``) or observed (``"x"``) site of a sequence
    model: ``z_1``, ``x_1``, ... as Pyro's deep Markov model names them."""
    return f"{kind}_{t}"
