"""What the engine may call on a model or guide besides ``model(*args)`` / ``guide(*args)``.

A model and a guide are any Pyro callables with a ``"data"`` plate. Each hook below is
optional and has a default, so a plain function needs none of them; this module is the one
place the engine reads them (:class:`pyrovae.blocks.base.ImageModel` defines them for registered
models). :class:`ModelHooks` and :class:`GuideHooks` list them as Protocols, for reading
and for type checkers.
"""

from __future__ import annotations

import enum
from contextlib import contextmanager
from typing import Any, Iterator, Protocol

import torch

from pyrovae.errors import DataError, ModelError
from pyrovae.sites import LATENT


class Takes(enum.StrEnum):
    """The arguments a model and its guide take (a model's or guide's ``takes``; plain strings
    with these values work too)."""

    IMAGE = "image"  #: (x): the default
    IMAGE_LABEL = "image,label"  #: (x, one-hot y): a label-conditioned model, p(x | y)
    QUADRANTS = "quadrants"  #: (x, y): the visible quadrant and the rest, p(y | x)
    #: (x, labels with -1 for unlabelled): ``fit`` batches labelled and unlabelled datapoints
    #: apart and evaluation hides the labels (semi-supervised)
    IMAGE_PARTIAL_LABEL = "image,partial_label"
    #: (x (N, T, D), mask (N, T)): a sequence model; a sequence split's labels hold each
    #: sequence's length, and :func:`inputs` makes the prefix mask from them
    SEQUENCE = "sequence"
    ANY = "any"  #: a guide only: serves every model with its sites


class ModelHooks(Protocol):
    """The optional members of a model, each read through the function of this module that
    gives its default when the model lacks it (a model defines any subset, or none).

    - ``inputs(images, labels) -> tuple``: the arguments of model and guide for a batch of
      images and their labels. Defining it makes the model *conditional*: ``fit`` then batches
      (images, labels) pairs. Default: ``(images,)``.
    - ``check_data(x)``: raise :class:`pyrovae.DataError` for a batch the model cannot take
      (shape, dtype, the likelihood's support). Default: no check beyond finiteness.
    - ``check_pixels(pixels)``: raise :class:`pyrovae.ConfigError` when the likelihood cannot
      model the pixel mode (a Bernoulli on 8-bit levels), warn when a density meets discrete
      pixels. Default: no check.
    - ``attach_guide(guide)``: called once the guide exists (a prior built from the guide,
      the VampPrior). Default: nothing.
    - ``latent_sites``: names of the latent sample sites, the one ``decode`` takes last.
      Default: ``("z",)``.
    - ``takes``: a :class:`Takes`; a registered guide must take the same. Default: image.
    - ``num_classes``: the number of classes of a label-conditioned model. Default: none.
    - ``complete(x, num)``: sampled completions of partly observed inputs (the quadrant
      task); reports draw completions instead of samples when it exists.
    - ``label_site``: the discrete latent site that stands for the class label
      (``takes = Takes.IMAGE_PARTIAL_LABEL``): ``evaluate`` reports the test classification
      error of its q(y | x); other discrete sites get the clustering accuracy.
    - ``decode(z)``, ``sample(num)``: images from codes and from the prior, for plots and
      ``pyrovae sample``.
    - ``likelihood``: an object whose ``discrete`` says whether log p(x) is a probability
      (reported in bits/dim). Default: by the pixel mode.
    - ``prior``: a prior with ``init == "data"`` and ``init_from(x)`` (a VampPrior's
      pseudo-inputs) is given training images before training.
    - ``per_datapoint`` (on a model or a guide): True for state with one row per datapoint read
      by position (the pair always runs on whole data), False for none, or tables indexed by an
      argument of one row per datapoint (sliced freely). Default: found by
      :func:`pyrovae.inference.pairs.per_datapoint_state`.
    """

    latent_sites: tuple[str, ...]
    takes: Takes
    num_classes: int
    label_site: str
    likelihood: Any
    prior: Any
    per_datapoint: bool

    def __call__(self, *args: Any) -> Any: ...
    def inputs(self, images: torch.Tensor, labels: torch.Tensor | None) -> tuple: ...
    def check_data(self, x: torch.Tensor) -> None: ...
    def check_pixels(self, pixels: str) -> None: ...
    def attach_guide(self, guide: Any) -> None: ...
    def complete(self, x: torch.Tensor, num: int) -> torch.Tensor: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...
    def sample(self, num: int) -> torch.Tensor: ...
    def attach_data(self, labels: torch.Tensor) -> None: ...
    def auxiliary_loss(self, *args: torch.Tensor) -> torch.Tensor: ...
    def local_inputs(self, *args: torch.Tensor) -> torch.Tensor: ...


class GuideHooks(Protocol):
    """The optional members of a guide: ``attach_model(model)`` (called once the model exists,
    for a guide that falls back on the model's prior network), ``latent_sites`` and ``takes``
    (as for models; :attr:`Takes.ANY` serves every model with its sites), and ``head`` with
    ``local_inputs(*args) -> Tensor`` (a guide of one site ``z`` whose q is ``head(local_inputs(*args))``:
    refinement then fits those inputs per datapoint, :mod:`pyrovae.diagnostics.refine`; without
    them a local Gaussian is fitted); ``needs_model``, the names of the methods it calls on its
    model (a registered guide then fits only models that have them).

    Either a model or a guide may define:

    - ``attach_data(labels)``: called by ``fit`` with the training labels (-1 unlabelled)
      before training (the share of labelled data scales M2's auxiliary loss).
    - ``auxiliary_loss(*args) -> Tensor | None``: a term added to the training loss, summed over
      the batch (the classifier loss of Kingma et al. 2014, eq. 9; the ladder's spectral
      regularisation). Default: none.
    - ``after_step()``: called by ``fit`` after every optimizer step, outside the loss, so that
      state it moves (the power iteration of the ladder's spectral penalty) leaves the loss a
      function of its parameters and inputs that capture can record. Default: none.
    """

    latent_sites: tuple[str, ...]
    takes: Takes

    def __call__(self, *args: Any) -> Any: ...
    def attach_model(self, model: Any) -> None: ...
    def attach_data(self, labels: torch.Tensor) -> None: ...
    def auxiliary_loss(self, *args: torch.Tensor) -> torch.Tensor: ...
    def after_step(self) -> None: ...


STEP_BUCKET = 8  #: a batch of sequences is cut to its longest, rounded up to a multiple of this


def inputs(model: Any, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
    """The arguments a model and its guide take for observed ``images`` (a sequence model's:
    :func:`sequence_inputs`)."""
    fn = getattr(model, "inputs", None)
    if fn is not None:
        return tuple(fn(images, labels))
    return sequence_inputs(images, labels) if takes(model) == Takes.SEQUENCE else (images,)


def prefix_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(N, T) bool: True at the steps t < length of each sequence."""
    return torch.arange(steps, device=lengths.device) < lengths[:, None]


def sequence_inputs(x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, mask) for sequences x (N, T, D) of ``lengths`` steps: x cut to the longest of them,
    rounded up to :data:`STEP_BUCKET` steps (so that a batch of short sequences costs what they
    are, and captured graphs see few shapes), and the prefix mask; masked steps count nowhere."""
    if lengths is None or lengths.shape != x.shape[:1]:
        raise DataError(
            "a sequence model takes (x, lengths): give one length per sequence (a sequence "
            "dataset's labels hold them)"
        )
    lengths = lengths.to(x.device)
    steps = min(x.shape[1], -(-int(lengths.max()) // STEP_BUCKET) * STEP_BUCKET)
    return x[:, :steps], prefix_mask(lengths, steps)


def trim_steps(model: Any, args: tuple) -> tuple:
    """A sequence model's arguments ``(x, mask)`` for some of its sequences cut to the longest of
    them (:func:`sequence_inputs`): a chunk of short sequences costs what they are. Other models'
    arguments as they are."""
    if takes(model) != Takes.SEQUENCE or len(args) != 2:
        return args
    return sequence_inputs(args[0], args[1].sum(-1))


def auto_compile(model: Any, mode: str) -> str:
    """``mode``, but ``"none"`` for ``"auto"`` on a sequence model: its recurrence's arithmetic
    outweighs Pyro's bookkeeping, so a replayed graph gains a few per cent a step while each new
    sequence length costs seconds of capture (``benchmarks/dmm_speed.py``)."""
    return "none" if mode == "auto" and takes(model) == Takes.SEQUENCE else mode


def sequence_steps(model: Any, args: tuple) -> torch.Tensor | None:
    """The number of observed steps of each sequence in a sequence model's arguments, else None."""
    return args[1].sum(-1) if takes(model) == Takes.SEQUENCE else None


def evaluation_inputs(model: Any, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
    """The arguments for scoring ``images``: a semi-supervised model
    (:attr:`Takes.IMAGE_PARTIAL_LABEL`) sees no labels, so that its log p(x) sums the class out."""
    return inputs(model, images, None if takes(model) == Takes.IMAGE_PARTIAL_LABEL else labels)


def attach_data(model: Any, guide: Any, labels: torch.Tensor) -> None:
    """Give model and guide the training labels (``attach_data``), where they ask for them."""
    for obj in (model, guide):
        fn = getattr(obj, "attach_data", None)
        if fn is not None:
            fn(labels)


def auxiliary_loss(model: Any, guide: Any, *args: torch.Tensor):
    """The sum of the model's and the guide's ``auxiliary_loss(*args)``, or None when neither has
    one (or each returns None)."""
    fns = [fn for fn in (getattr(o, "auxiliary_loss", None) for o in (model, guide)) if fn is not None]
    terms = [t for t in (fn(*args) for fn in fns) if t is not None]
    return sum(terms[1:], terms[0]) if terms else None


def after_step(model: Any, guide: Any) -> None:
    """The model's and then the guide's ``after_step()``, where they have one."""
    for fn in (getattr(o, "after_step", None) for o in (model, guide)):
        if fn is not None:
            fn()


def label_site(model: Any) -> str | None:
    """The discrete latent site standing for the class label, else None."""
    return getattr(model, "label_site", None)


def is_conditional(model: Any) -> bool:
    """True when the model takes more than the images (it defines ``inputs``, or takes
    sequences and their lengths)."""
    return getattr(model, "inputs", None) is not None or takes(model) == Takes.SEQUENCE


def check_data(model: Any, x: torch.Tensor) -> None:
    """The model's own data check, if it has one."""
    fn = getattr(model, "check_data", None)
    if fn is not None:
        fn(x)


def check_pixels(model: Any, pixels: str) -> None:
    """The model's check of its likelihood against the data's pixel mode, if it has one."""
    fn = getattr(model, "check_pixels", None)
    if fn is not None:
        fn(pixels)


def attach(model: Any, guide: Any) -> None:
    """Introduce model and guide to each other (``attach_guide`` / ``attach_model``)."""
    for obj, name, other in ((model, "attach_guide", guide), (guide, "attach_model", model)):
        fn = getattr(obj, name, None)
        if fn is not None:
            fn(other)


def latent_sites(obj: Any) -> tuple[str, ...]:
    """The latent sites a model or guide class declares (default ``("z",)``)."""
    return tuple(getattr(obj, "latent_sites", (LATENT,)))


def code_site(model: Any) -> str:
    """The latent site whose values ``model.decode`` takes (the outermost one)."""
    return latent_sites(model)[-1]


def takes(obj: Any) -> Takes:
    """The arguments a model or guide takes: :attr:`Takes.IMAGE` unless it says otherwise."""
    value = getattr(obj, "takes", Takes.IMAGE)
    try:
        return Takes(value)
    except ValueError:
        known = ", ".join(repr(str(t)) for t in Takes)
        name = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise ModelError(f"{name}.takes is {value!r}; use a pyrovae.hooks.Takes ({known})") from None


def likelihood_is_discrete(model: Any, pixels: str) -> bool:
    """Whether the model's log p(x) is a probability (a mass over discrete pixels), comparable
    across models and reported in bits/dim, rather than a density over grey levels: its
    likelihood's ``discrete``, else by the pixel mode."""
    return getattr(getattr(model, "likelihood", None), "discrete", pixels in ("dynamic", "static", "8bit"))


def data_init_rows(model: Any) -> int:
    """How many training images the model's prior asks for before training (a VampPrior with
    ``init = "data"``: one per pseudo-input), else 0."""
    prior = getattr(model, "prior", None)
    return prior.pseudo_inputs.shape[0] if getattr(prior, "init", None) == "data" else 0


def init_from_data(model: Any, images: torch.Tensor) -> None:
    """Give the model's prior the training images it asked for (:func:`data_init_rows`)."""
    model.prior.init_from(images)


def can_draw(model: Any) -> bool:
    """True for a model that draws images unconditionally (``sample`` and ``decode``)."""
    return not is_conditional(model) and all(hasattr(model, n) for n in ("sample", "decode"))


def num_classes(model: Any) -> int | None:
    """The number of classes of a label-conditioned model, else None."""
    return getattr(model, "num_classes", None)


def can_complete(model: Any) -> bool:
    """True for a structured-output model that completes partly observed inputs."""
    return getattr(model, "complete", None) is not None


def per_datapoint(model: Any, guide: Any) -> bool | None:
    """What model or guide declares with ``per_datapoint``: True for state with one row per
    datapoint read by position (the pair then always runs on whole data), False for none, or
    tables indexed by an argument that carries one row per datapoint (the data are then sliced
    freely, without probes); None when neither declares it (then probed:
    :func:`pyrovae.inference.pairs.per_datapoint_state`)."""
    said = [getattr(fn, "per_datapoint", None) for fn in (model, guide, *owner_modules(model, guide))]
    said = [s for s in said if s is not None]
    return None if not said else any(bool(s) for s in said)


@contextmanager
def eval_mode(*fns: Any) -> Iterator[None]:
    """The modules behind ``fns`` in eval mode (dropout off, running norms), their modes restored after."""
    modules = [m for owner in owner_modules(*fns) for m in owner.modules()]
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.training = False
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


def owner_modules(*fns: Any) -> list[torch.nn.Module]:
    """The ``nn.Module``s that hold the parameters of callables: a module itself, the module
    behind a bound method (model and guide as methods of one module, as in Pyro's VAE
    tutorial) or behind a ``functools.partial``; each once, in order."""
    out: list[torch.nn.Module] = []
    for fn in fns:
        while not isinstance(fn, torch.nn.Module) and hasattr(fn, "func"):  # functools.partial
            fn = fn.func
        owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module) and all(owner is not m for m in out):
            out.append(owner)
    return out
