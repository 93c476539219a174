"""Every config value checked in one place, before anything is computed or written.

`validate_config` refuses a setting that cannot run or has no meaning with a one-line
``InputError`` (a ``ValueError``) naming the key, the value and what is allowed, e.g.
``config.loss.beta=2.0 is not allowed: a number in [0, 1] (0 = plain NLL, 1 = MSE-like gradients)``.
``main.py`` calls it before the devices are set up or the workdir is touched; the library entry
points (training, evaluation, register) call it again, so a config built in Python is held to the
same rules. A mistyped key is refused earlier, when the command line is parsed (locked config).

Ranges with a reason:
- ``loss.gamma`` in [0, 1]: the exponent of the relative SNR. 0 gives a constant weight (plain
  MSE), 1 the full SNR; the paper's Table 4 spans [0, 1]. A negative gamma would invert the weight
  (trust the noisiest voxels most), a gamma above 1 sharpens it past the full SNR.
- ``loss.beta`` in [0, 1]: beta-NLL interpolates between the NLL (0) and MSE-like gradients (1).
- ``loss.smooth_weight``, ``loss.reg_scale`` >= 0: a negative weight rewards rough fields.
- learning rates > 0 and finite.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from hetreg_jax.base.errors import InputError
from hetreg_jax.config.defaults import get_config
from hetreg_jax.core import losses, methods
from hetreg_jax.data import structures, synthetic
from hetreg_jax.models.unet import UPSAMPLE_FORMS

MODELS = ("voxelmorph", "transmorph")
MOTION_SCHEDULES = ("auto", "constant", "poly")
LABEL_RULES = ("threshold", "reference")
EMPTY_PENALTIES = ("nan", "diagonal")
EVAL_SPLITS = ("test", "all")
DATA_PLACEMENTS = ("auto", "device", "host")
DATA_ORDERS = ("host", "device")
CHUNK_FORMS = ("auto", "loop", "unrolled")
COMPUTE_DTYPES = ("float32", "bfloat16")
REMAT_MODES = ("none", "blocks")
CHECKPOINT_ASYNC = ("auto", "on", "off")
# elastix.metric: the config's name -> the Elastix metric it selects (hetreg_jax/baselines/elastix.py)
ELASTIX_METRICS = {"mean_squares": "AdvancedMeanSquares", "mutual_information": "AdvancedMattesMutualInformation",
                   "ncc": "AdvancedNormalizedCorrelation"}
POSITIVE_INTS = ("num_steps", "steps_per_epoch", "batch_size", "steps_per_call", "log_every", "checkpoint_every",
                 "keep_checkpoints", "eval.batch_size", "data.slices_per_subject")
NON_NEGATIVE_INTS = ("seed", "eval_every", "warm_start_epochs", "motion.int_steps", "eval.val_pairs",
                     "data.folds", "data.fold")
BOOLS = ("warm_start", "motion.bidirectional", "motion.predict_sigma", "loss.use_mask")
# Keys read by one displacement estimator only (motion.predict_sigma is read by both).
VOXELMORPH_ONLY = ("motion.enc_features", "motion.dec_features", "motion.int_steps", "motion.int_downsize",
                   "motion.bidirectional")
TRANSMORPH_ONLY = ("transmorph.embed_dim", "transmorph.depths", "transmorph.num_heads", "transmorph.window_size",
                   "transmorph.drop_path_rate")


def _get(config, key: str) -> Any:
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def _refuse(key: str, value: Any, allowed: str) -> InputError:
    return InputError(f"config.{key}={value!r} is not allowed: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(config, key: str, low: int) -> None:
    value = _get(config, key)
    if not _is_int(value) or value < low:
        raise _refuse(key, value, "a whole number >= 1" if low == 1 else f"a whole number >= {low}")


def _check_number(config, key: str, low: float, high: float = math.inf, low_open: bool = False,
                  note: str = "") -> None:
    value = _get(config, key)
    ok = _is_number(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bounds = (f"> {low:g}" if low_open else f">= {low:g}") if high == math.inf else \
            f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise _refuse(key, value, f"a finite number {bounds}" + (f" ({note})" if note else ""))


def _check_choice(config, key: str, choices: Iterable[str]) -> None:
    value = _get(config, key)
    choices = tuple(choices)
    if value not in choices:
        raise _refuse(key, value, "one of " + ", ".join(repr(c) for c in choices))


def _check_widths(config, key: str, allow_zero_sentinel: bool = False) -> None:
    value = _get(config, key)
    items = tuple(value) if isinstance(value, (tuple, list)) else None
    if allow_zero_sentinel and items == (0,):
        return
    if not items or not all(_is_int(v) and v >= 1 for v in items):
        raise _refuse(key, value, "a non-empty tuple of whole numbers >= 1")


def _plain(value: Any) -> Any:
    """A value as compared with its default: lists (a config read from JSON) as tuples."""
    return tuple(_plain(v) for v in value) if isinstance(value, (tuple, list)) else value


def _check_model_scope(config) -> None:
    """Refuse a key that the chosen networks never read, set away from its default: ``motion.*``
    (other than ``predict_sigma``) with TransMorph, ``transmorph.*`` with VoxelMorph; and
    ``motion.bidirectional`` with a separately trained variance net, which is trained on the forward
    (moving -> fixed) pairs only but would weight the backward direction too."""
    defaults = get_config()
    other, unread = (("voxelmorph", VOXELMORPH_ONLY) if config.model == "transmorph"
                     else ("transmorph", TRANSMORPH_ONLY))
    for key in unread:
        value, default = _get(config, key), _get(defaults, key)
        if _plain(value) != _plain(default):
            raise _refuse(key, _plain(value), f"the default {_plain(default)!r} with model={config.model!r} "
                          f"(only {other} reads it: the setting would do nothing)")
    method = methods.get_method(config.method)
    if config.motion.bidirectional and method.uses_variance and not method.joint:
        raise _refuse("motion.bidirectional", True, f"False with method={config.method!r} (its variance net is "
                      "trained on the moving -> fixed direction only, so it cannot weight fixed -> moving)")


def validate_config(config) -> None:
    """Raise a one-line ``InputError`` for the first key whose value cannot run (see the module doc)."""
    for key in POSITIVE_INTS:
        _check_int(config, key, 1)
    for key in NON_NEGATIVE_INTS:
        _check_int(config, key, 0)
    for key in BOOLS:
        if not isinstance(_get(config, key), bool):
            raise _refuse(key, _get(config, key), "True or False")
    _check_choice(config, "model", MODELS)
    _check_choice(config, "method", methods.METHODS)
    _check_choice(config, "optim.motion_schedule", MOTION_SCHEDULES)
    _check_choice(config, "loss.snr_form", losses.SNR_FORMS)
    _check_choice(config, "loss.minmax_scope", losses.MINMAX_SCOPES)
    _check_choice(config, "eval.label_rule", LABEL_RULES)
    _check_choice(config, "eval.empty_penalty", EMPTY_PENALTIES)
    _check_choice(config, "eval.split", EVAL_SPLITS)
    _check_choice(config, "data.centre", ("label", "images"))
    if config.data.structures != "auto":
        structures.parse(config.data.structures)
    _check_choice(config, "data.dataset", synthetic.KINDS)
    _check_choice(config, "data.on_device", DATA_PLACEMENTS)
    _check_choice(config, "data.order", DATA_ORDERS)
    _check_choice(config, "steps_per_call_form", CHUNK_FORMS)
    _check_choice(config, "compute_dtype", COMPUTE_DTYPES)
    _check_choice(config, "remat", REMAT_MODES)
    _check_choice(config, "unet_upsample", UPSAMPLE_FORMS)
    _check_choice(config, "checkpoint_async", CHECKPOINT_ASYNC)
    if config.data.on_device == "host" and config.steps_per_call > 1:
        raise _refuse("steps_per_call", config.steps_per_call,
                      "1 with data.on_device='host' (several steps per call gather their batches on the devices)")

    _check_number(config, "optim.motion_lr", 0.0, low_open=True)
    _check_number(config, "optim.variance_lr", 0.0, low_open=True)
    _check_number(config, "loss.gamma", 0.0, 1.0, note="0 = a constant weight, i.e. plain MSE; 1 = the full SNR")
    _check_number(config, "loss.beta", 0.0, 1.0, note="0 = NLL; 1 = MSE-like gradients")
    _check_number(config, "loss.smooth_weight", 0.0)
    _check_number(config, "loss.reg_scale", 0.0)
    _check_int(config, "loss.mi_bins", 2)
    _check_number(config, "loss.adareg_c", 0.0, note="adareg's c in exp(-c * |r(x)| * mean|r|); 0 = plain MSE + lambda R")
    _check_number(config, "loss.adaframe_sigma", 0.0, low_open=True,
                  note="adaframe's sigma in exp(-|r(x)| / (sigma * mean|r|))")
    if methods.get_method(config.method).adaptive and config.model == "voxelmorph" and config.motion.bidirectional:
        raise _refuse("motion.bidirectional", True,
                      f"False with method={config.method!r} (its residual weights are defined for one direction)")
    _check_number(config, "loss.sigma_z_weight", 0.0, low_open=True,
                  note="alpha of the sigma_z prior term; 0 would let sigma_z collapse to 0")
    _check_number(config, "loss.image_sigma", 0.0, low_open=True, note="vxm_diff's image noise std")
    _check_number(config, "loss.prior_lambda", 0.0, low_open=True, note="vxm_diff's prior precision")
    if config.method == "vxm_diff" and (config.model != "voxelmorph" or config.motion.int_steps == 0):
        raise _refuse("method", config.method,
                      "'vxm_diff' needs model='voxelmorph' with motion.int_steps > 0 (a diffeomorphic velocity)")
    if config.motion.predict_sigma and config.method == "vxm_diff":
        raise _refuse("motion.predict_sigma", True, "False with method='vxm_diff' (it has its own velocity sigma)")
    if config.motion.predict_sigma and config.model == "voxelmorph" and config.motion.bidirectional:
        raise _refuse("motion.predict_sigma", True, "False with motion.bidirectional=True (one sampled direction only)")
    window = config.loss.ncc_window
    if not _is_int(window) or window < 1 or window % 2 == 0:
        raise _refuse("loss.ncc_window", window, "an odd whole number >= 1")

    _check_int(config, "motion.int_downsize", 1)
    for key in ("motion.enc_features", "motion.dec_features", "variance.enc_features",
                "variance.dec_features", "transmorph.depths", "transmorph.num_heads"):
        _check_widths(config, key)
    _check_widths(config, "transmorph.window_size", allow_zero_sentinel=True)
    _check_int(config, "transmorph.embed_dim", 1)
    if len(config.transmorph.depths) != len(config.transmorph.num_heads):
        raise _refuse("transmorph.num_heads", config.transmorph.num_heads,
                      f"one entry per stage of transmorph.depths ({len(config.transmorph.depths)})")
    rate = config.transmorph.drop_path_rate
    if not _is_number(rate) or not 0.0 <= rate < 1.0:
        raise _refuse("transmorph.drop_path_rate", rate, "a finite number in [0, 1)")
    _check_model_scope(config)

    size = config.data.image_size
    if not isinstance(size, (tuple, list)) or len(size) not in (2, 3) or \
            not all(_is_int(n) and n >= 1 for n in size):
        raise _refuse("data.image_size", size, "2 or 3 whole numbers >= 1, e.g. (128, 128) or (64, 64, 64)")
    if config.method == "vxm_diff":  # any other network pads its input (hetreg_jax/models/padding.py)
        multiple = math.lcm(2 ** len(config.motion.enc_features), config.motion.int_downsize)
        if any(n % multiple for n in size):
            raise _refuse("data.image_size", tuple(size), f"multiples of {multiple} with method='vxm_diff' (its "
                          "velocity noise is drawn on the unpadded grid; the other methods take any size)")
    _check_int(config, "data.synthetic_subjects", 3)
    folds = config.data.folds
    if folds and folds < 3:
        raise _refuse("data.folds", folds, "0 (the layout's own split) or a number of folds >= 3")
    if config.data.fold and config.data.fold >= max(folds, 1):
        raise _refuse("data.fold", config.data.fold,
                      f"a fold in 0 .. data.folds - 1 = {folds - 1}" if folds else "0 unless data.folds is set")
    _check_number(config, "data.noise_scale", 0.0, note="multiplies the phantoms' noise std; 0 = noise-free")
    root = config.data.root
    if root is not None and (not isinstance(root, str) or not root.strip()):
        raise _refuse("data.root", root, "a folder path, or None for the built-in phantoms")
    _check_int(config, "eval.sparsification_steps", 2)
    _check_choice(config, "elastix.metric", ELASTIX_METRICS)
    for key in ("elastix.iterations", "elastix.resolutions", "elastix.samples", "elastix.threads"):
        _check_int(config, key, 1)
    _check_number(config, "elastix.grid_spacing", 0.0, low_open=True, note="voxels between B-spline control points")
