"""Names shared by every model and guide: the data plate and the standard sites."""

DATA_PLATE = "data"  #: the plate over datapoints; estimators weigh each of its entries
LATENT = "z"  #: the latent code of a one-layer VAE
OBSERVED = "x"  #: the observed image
