"""The classical baseline: multi-resolution B-spline registration with elastix (``method="elastix"``).

elastix (Klein et al. 2010) through the ``itk-elastix`` package; no network is trained. Each test
pair is registered on its own, then scored by the same code as the networks (``evaluation.score``).

The paper gives no parameter map; `parameter_map` is a standard one (see docs/results-phantoms.md, "Elastix baseline"):
one metric, ``AdaptiveStochasticGradientDescent`` on a ``BSplineTransform``, a 3-level smoothing
pyramid with the grid refined by 2 per level, random-coordinate sampling with a fixed
``RandomSeed`` and a fixed thread count (elastix's gradient sums depend on it), so a run is
reproducible.

Conversion to the project's convention (docs/method.md). elastix registers the moving image to
the fixed one: its transform ``T`` maps a point of the fixed grid to the moving image, and the
result is ``m(T(x))``; transformix's deformation field is ``T(x) - x`` on the fixed grid, which is
our ``u`` (``warp(m, u)(x) = m(x + u(x))``). ITK indexes a numpy array ``[z, y, x]`` (``[y, x]``)
but orders vector components ``(x, y[, z])``, in physical units: the components are reversed and,
with the unit spacing and zero origin given to the images here, already in voxels. Tested with a
known translation.

``import itk`` (and its lazily loaded elastix module, ~15-30 s on a loaded CPU) happens only here,
on the first registration, and is excluded from ``seconds_per_pair``.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from hetreg_jax.base import workdir as workdir_lib
from hetreg_jax.base.errors import InputError
from hetreg_jax.base.progress import print_summary, say
from hetreg_jax.config.check import ELASTIX_METRICS, validate_config
from hetreg_jax.core import metrics, spatial
from hetreg_jax.data import pipeline
from hetreg_jax.evaluate import evaluation

_ITK = None


def _itk():
    """``itk`` with its elastix classes loaded (their lazy load is the slow part of the import)."""
    global _ITK
    if _ITK is None:
        import itk
        itk.ParameterObject, itk.ElastixRegistrationMethod, itk.TransformixFilter  # noqa: B018 (force the load)
        _ITK = itk
    return _ITK


def parameter_map(elastix_cfg, ndim: int, seed: int = 0) -> dict[str, list[str]]:
    """The elastix parameter map of ``config.elastix`` for ``ndim``-D images (each value a list of
    strings, one per level or axis where elastix expects several)."""
    levels = int(elastix_cfg.resolutions)
    factors = [2 ** (levels - 1 - r) for r in range(levels)]  # pyramid and grid: 4, 2, 1 for 3 levels
    scalars = {
        "Registration": "MultiResolutionRegistration",
        "Metric": ELASTIX_METRICS[elastix_cfg.metric],
        "Transform": "BSplineTransform",
        "BSplineTransformSplineOrder": "3",
        "FinalGridSpacingInPhysicalUnits": f"{float(elastix_cfg.grid_spacing):g}",
        "GridSpacingSchedule": [str(f) for f in factors],
        "HowToCombineTransforms": "Compose",
        "Optimizer": "AdaptiveStochasticGradientDescent",
        "AutomaticParameterEstimation": "true",
        "MaximumNumberOfIterations": str(int(elastix_cfg.iterations)),
        "NumberOfResolutions": str(levels),
        "FixedImagePyramid": "FixedSmoothingImagePyramid",
        "MovingImagePyramid": "MovingSmoothingImagePyramid",
        "FixedImagePyramidSchedule": [str(f) for f in factors for _ in range(ndim)],
        "MovingImagePyramidSchedule": [str(f) for f in factors for _ in range(ndim)],
        "ImageSampler": "RandomCoordinate",
        "NumberOfSpatialSamples": str(int(elastix_cfg.samples)),
        "NewSamplesEveryIteration": "true",
        "CheckNumberOfSamples": "true",
        "MaximumNumberOfSamplingAttempts": "8",
        "RandomSeed": str(int(seed)),
        "NumberOfHistogramBins": "32",  # used by mutual_information only
        "Interpolator": "LinearInterpolator",
        "ResampleInterpolator": "FinalLinearInterpolator",
        "Resampler": "DefaultResampler",
        "DefaultPixelValue": "0",
        "WriteResultImage": "false",
        "ResultImageFormat": "nii",
    }
    return {k: (v if isinstance(v, list) else [v]) for k, v in scalars.items()}


def register_pair(moving: np.ndarray, fixed: np.ndarray, config) -> np.ndarray:
    """Register one pair (``[*S]`` images, 2D or 3D, intensities in [0, 1]) with elastix.

    Returns the displacement ``u`` ``[*S, ndim]`` float32 in the project's convention: voxels,
    component ``k`` along array axis ``k``, ``warp(moving, u) ≈ fixed`` on the fixed grid. Uses
    ``config.elastix`` and ``config.seed`` (elastix's ``RandomSeed``).
    """
    moving, fixed = np.asarray(moving, np.float32), np.asarray(fixed, np.float32)
    if moving.shape != fixed.shape or moving.ndim not in (2, 3):
        raise InputError(f"elastix.register_pair needs two images of one 2D or 3D shape [*S]; got moving "
                         f"{moving.shape} and fixed {fixed.shape}")
    for name, image in (("moving", moving), ("fixed", fixed)):
        if not np.isfinite(image).all() or np.ptp(image) == 0:  # elastix's MI crashes on a constant image
            raise InputError(f"elastix.register_pair: the {name} image is "
                             f"{'not finite' if not np.isfinite(image).all() else 'constant'}; nothing to register")
    itk = _itk()
    ndim = moving.ndim
    params = itk.ParameterObject.New()
    params.AddParameterMap(parameter_map(config.elastix, ndim, config.seed))
    fixed_image = itk.GetImageFromArray(np.ascontiguousarray(fixed))  # spacing 1, origin 0, identity direction
    moving_image = itk.GetImageFromArray(np.ascontiguousarray(moving))
    run = dict(parameter_object=params, number_of_threads=int(config.elastix.threads))
    try:
        _, transform = itk.elastix_registration_method(fixed_image, moving_image, log_to_console=False, **run)
    except RuntimeError:
        raise InputError(f"elastix failed on images of shape {fixed.shape}: "
                         f"{_failure_reason(itk, fixed_image, moving_image, run)}") from None
    with tempfile.TemporaryDirectory(prefix="hetreg_transformix_") as scratch:  # transformix writes the field
        transformix = itk.TransformixFilter.New(moving_image, transform_parameter_object=transform)
        transformix.SetComputeDeformationField(True)
        transformix.SetOutputDirectory(scratch)
        transformix.SetLogToConsole(False)
        transformix.UpdateLargestPossibleRegion()
        field = np.array(itk.array_from_image(transformix.GetOutputDeformationField()), np.float32)
    if field.shape != (*fixed.shape, ndim):
        raise RuntimeError(f"transformix returned a field of shape {field.shape} for images {fixed.shape}")
    return np.ascontiguousarray(field[..., ::-1])  # (x, y[, z]) components -> array-axis order


def _failure_reason(itk, fixed_image, moving_image, run) -> str:
    """elastix reports failures only in its log: run again with a log file and return its error line."""
    with tempfile.TemporaryDirectory(prefix="hetreg_elastix_") as scratch:
        try:
            itk.elastix_registration_method(fixed_image, moving_image, log_to_console=False, log_to_file=True,
                                            output_directory=scratch, log_file_name="elastix.log", **run)
        except RuntimeError:
            pass
        try:
            with open(os.path.join(scratch, "elastix.log"), encoding="utf-8", errors="replace") as f:
                lines = [line.strip() for line in f if "ERROR" in line]
        except OSError:
            lines = []
    reason = lines[-1].split("ERROR:")[-1].split("):", 1)[-1].strip() if lines else "see the elastix log"
    return f"{reason} (check the images and config.elastix)"


def _warp_all(pairs, displacement: np.ndarray, labels=(("myo", 2),)) -> dict[str, np.ndarray]:
    """The warped images and soft warped ED structures ``labels`` (``[(name, value)]``, channel k =
    ``labels[k]``), with the networks' warp (linear, zeros outside)."""
    import jax
    import jax.numpy as jnp


    @jax.jit
    def warp(moving, moving_labels, disp):
        return spatial.warp(moving, disp), spatial.warp(moving_labels, disp)

    values = np.array([v for _, v in labels], np.uint8)
    masks = (pairs["moving_label"][..., None] == values).astype(np.float32)
    warped, warped_labels = warp(jnp.asarray(pairs["moving"]), jnp.asarray(masks), jnp.asarray(displacement))
    out = {"displacement": displacement, "warped": np.asarray(warped), "warped_labels": np.asarray(warped_labels)}
    names = [name for name, _ in labels]
    if "myo" in names:
        out["warped_myo"] = out["warped_labels"][..., names.index("myo"), None]
    return out


def _eta(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def register_split(pairs, config, say=print) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """Register every pair of a split; the predictions (``displacement``, ``warped``, ``warped_myo``)
    and the ``wall`` and process ``cpu`` seconds of each registration (registration + deformation
    field; the CPU time is the steadier figure on a shared machine)."""
    n = len(pairs["moving"])
    t0 = time.perf_counter()
    _itk()
    say(f"elastix loaded in {time.perf_counter() - t0:.1f} s; registering {n} pairs "
        f"({config.elastix.metric}, {config.elastix.iterations} iterations x {config.elastix.resolutions} "
        f"levels, grid {config.elastix.grid_spacing:g} px, {config.elastix.threads} thread(s))")
    fields, seconds, cpu, last_report = [], [], [], time.perf_counter()
    for i in range(n):
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            fields.append(register_pair(pairs["moving"][i, ..., 0], pairs["fixed"][i, ..., 0], config))
        except InputError as exc:
            raise InputError(f"test pair {pairs['pair_id'][i]}: {exc}") from None
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if time.perf_counter() - last_report >= 5.0 or i + 1 == n:
            last_report = time.perf_counter()
            eta = np.mean(seconds) * (n - i - 1)
            say(f"registered {i + 1}/{n} pairs | {seconds[-1]:.2f} s/pair | ETA {_eta(eta)}")
    shape = pairs["moving"].shape[1:-1]
    displacement = np.stack(fields) if fields else np.zeros((0, *shape, len(shape)), np.float32)

    return _warp_all(pairs, displacement, evaluation.structures(config)), {"wall": seconds, "cpu": cpu}


def evaluate(config, workdir: str, out: str | None = None, record: bool = True,
             allow_config_change: bool = False) -> dict:
    """Register and score the test split (loaded as training does); write ``test_metrics.json``,
    ``test_per_pair.csv`` and ``test_examples.png`` to ``out`` (default ``workdir/eval``).

    ``record=True`` (``--mode=train``): the workdir is locked, compared with and recorded in
    ``config.json`` like a training run. ``record=False`` (``--mode=eval``): read-only lock, nothing
    written outside the report folder. ``seconds_per_pair`` (mean/std/n of the wall time per
    registration, the itk import excluded) and ``cpu_seconds_per_pair`` (the process CPU time) are
    added to the summary.
    """
    import jax

    validate_config(config)
    lead = jax.process_index() == 0
    data = config.data
    say(f"loading data: {data.root or f'built-in {data.dataset} phantoms'}, {'x'.join(map(str, data.image_size))} ...")
    if record:
        pipeline.refuse_all_split(config)
    splits = pipeline.load_splits(config)
    test = pipeline.evaluated(splits, config)
    outdir = out or os.path.join(workdir, "eval")
    with workdir_lib.WorkdirLock(workdir, enabled=lead, read_only=not record) as lock:
        if record:
            changes = workdir_lib.config_changes(config, workdir, allow_config_change)
            if lead:
                lock.claim()
                workdir_lib.record_config(config, workdir, changes)
            if changes:
                say("config changed: " + "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in changes.items()))
        if lead:
            workdir_lib.check_writable(outdir, "--out" if out else "--workdir")
        say(f"elastix: no training, registering {pipeline.num_pairs(test)} test pairs")
        pred, seconds = register_split(test, config, say)
        summary = evaluation.score(test, pred, config, outdir if lead else None, extra={
            "method": "elastix", "seconds_per_pair": _timing(seconds["wall"], "wall time"),
            "cpu_seconds_per_pair": _timing(seconds["cpu"], "process CPU time"),
            "parameter_map": parameter_map(config.elastix, len(data.image_size), config.seed),
            "threads": int(config.elastix.threads)})
    print_summary(summary, outdir)
    timing, cpu = summary["seconds_per_pair"], summary["cpu_seconds_per_pair"]
    say(f"elastix: {timing['mean']:.3f} ± {timing['std']:.3f} s per pair, CPU {cpu['mean']:.3f} ± "
        f"{cpu['std']:.3f} s ({timing['n']} pairs, {config.elastix.threads} thread(s))")
    return summary


def _timing(seconds: list[float], kind: str) -> dict:
    return {**metrics.summarize(seconds), "unit": f"s (elastix registration + deformation field, {kind})"}
