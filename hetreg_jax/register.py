"""``--mode=register``: register one moving NIfTI image to a fixed one with a trained workdir.

The images are preprocessed like the training data of the config (``preprocessing``):

- ``"crop"`` (ACDC layout, a ``pairs.csv`` of stacks with ``slices=yes``, or ``data.dataset="acdc"``):
  3D ``[X, Y, Z]`` short-axis stacks on the same grid, registered slice by slice on a ``data.image_size`` crop centred on the ED (moving)
  myocardium centroid of the mid slice when ``--moving_label`` is given, else where the two images
  differ most (``preprocess.motion_centre``: the beating heart; the centre is printed);
  the prediction is put back into the full slice: displacement 0 outside the crop, log-variance
  and weight NaN there (not predicted);
- ``"resize"`` (CAMUS, paired volumes, ``echo3d``): ``len(data.image_size)``-D images resized to
  ``data.image_size``; the prediction is resized back to the fixed image's shape (linear, aligned
  corners) and each displacement component k multiplied by ``(n_fixed_k - 1) / (n_net_k - 1)``.

Geometry: both files are read in one canonical voxel order (``nifti``: RAS+ volumes; stacks with
their slice axis last), so a file stored flipped or transposed gives the same result in world
space. The moving image must lie on the fixed image's grid (shape and affine, within
``nifti.GRID_TOLERANCE`` of a voxel; refused in one line naming both files), unless
``resample_moving`` (``--resample_moving``) resamples it onto that grid through both affines
(linear, 0 outside; its label nearest). Everything is computed on the fixed image's canonical
grid and written back in the fixed file's own voxel order (``Volume.to_file``).

Outputs in ``--out``, all on the fixed image's grid with its affine and header (its voxel order):

- ``warped.nii.gz``: the moving image at full resolution (its own intensities) warped by the
  back-mapped displacement, ``warped(x) = moving(x + u(x))``, linear, 0 outside;
- ``displacement.nii.gz``: ``u`` in voxels of the fixed image's grid, component k along array
  axis k, stored as ``[X, Y, Z, 1, D]`` float32 with intent VECTOR (D = the fixed image's number of
  axes; spatial axes padded to 3; the through-plane component of slice-wise ACDC registration is 0);
- ``log_variance.nii.gz`` and ``weight.nii.gz`` (methods with a variance net): the predicted log
  sigma^2 of the fixed image's noise (normalised intensity units) and the SNR weight in [0.5, 0.73];
- ``displacement_sigma.nii.gz`` (models predicting σ_z: ``motion.predict_sigma`` or ``vxm_diff``): the
  predicted per-voxel displacement std σ_z of the mean displacement, in voxels of the fixed grid
  (resize mode: σ_z times the RMS of the per-axis scale factors; crop mode: NaN outside the crop);
- ``sigma_z_mm.nii.gz`` (with σ_z, where the network grid's voxels are isotropic, within 1%, along the
  displacement axes: in-plane for slice-wise ACDC registration): σ_z in mm (network voxels times
  that voxel size); not written, with a printed line, for anisotropic network voxels;
- ``itk_warp.nii.gz``: the same registration as an ITK/ANTs displacement field on the fixed grid
  (``nifti.itk_displacement``): vectors ``d`` in LPS mm with ``fixed point + d = moving point``
  (the moving file's own affine; a moving image resized onto the fixed shape is mapped back through
  the aligned-corners scale factors), ``[X, Y, Z, 1, 3]`` float32, intent 1007. Resampling the
  moving file through ``DisplacementFieldTransform`` with linear interpolation reproduces
  ``warped.nii.gz`` (exactly for equal shapes, up to the ITK/spatial.warp difference within one
  voxel of the image border). Slice stacks get a zero-displacement-through-plane 3D field; 2D
  images and one-slice stacks a 2D field ``[X, Y, 1, 1, 2]`` (ITK reads a one-slice field as 2D),
  written only when the slice lies in the scanner's x-y plane (else a printed line says why not);
- ``warped_label.nii.gz`` (with ``--moving_label``): every label warped linearly as a one-hot map,
  then the most likely label per voxel (for the myocardium alone: the evaluation's 0.5 threshold);
- ``overview.png``: moving, fixed, warped, |fixed - warped|, |u|, log-variance, weight.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from hetreg_jax.base import plotting as plt
from hetreg_jax.base import workdir as workdir_lib
from hetreg_jax.base.errors import InputError, MissingFileError
from hetreg_jax.base.workdir import atomic_write_text, json_safe
from hetreg_jax.core import metrics, spatial
from hetreg_jax.data import acdc, nifti, pipeline, preprocess
from hetreg_jax.data import pairs as pairs_layout
from hetreg_jax.evaluate import evaluation
from hetreg_jax.train import loop as train
from hetreg_jax.train import step as steps
from hetreg_jax.train.checkpoint import Checkpointer

_LAYOUT_OF_DATASET = {"acdc": "acdc", "camus": "camus", "echo3d": "pairs", "pairs": "pairs"}


def preprocessing(config) -> str:
    """``"crop"`` for ACDC-like data (ACDC, or a ``pairs.csv`` of stacks with ``slices=yes``),
    ``"resize"`` otherwise (see the module docstring)."""
    data = config.data
    if data.root is not None:
        root = os.path.abspath(os.path.expanduser(data.root))
        layout = pipeline.detect_layout(root, data.dataset)
        if layout == "pairs" and pairs_layout.slicewise(root):
            return "crop"
    else:
        layout = _LAYOUT_OF_DATASET.get(data.dataset, "pairs")
    return "crop" if layout == "acdc" else "resize"


@dataclasses.dataclass
class Inputs:
    """The files read (moving already on the fixed grid's shape) and the network-grid pair set."""
    moving: nifti.Volume
    fixed: nifti.Volume
    moving_label: np.ndarray | None
    pairs: dict
    crop_start: tuple[int, ...] | None = None  # crop mode only
    single_slice: bool = False  # crop mode: the files are 2D [X, Y] slices, handled as [X, Y, 1] stacks
    moving_shape: tuple[int, ...] | None = None  # resize mode: the moving file's own shape (before its resize)


def _as_pair_set(pairs: list[dict], image_size) -> dict:
    for i, pair in enumerate(pairs):
        pair.setdefault("spacing", np.ones(len(image_size), np.float32))
        pair.update(subject="input", pair_id=f"input_{i:02d}")
    return pipeline.stack_pairs(pairs, image_size)


RESAMPLE_HINT = "; pass --resample_moving to resample the moving image onto the fixed grid"


def _moving_on_fixed_grid(m: nifti.Volume, f: nifti.Volume, label: nifti.Volume | None, resample: bool):
    """The moving image (and label) on the fixed grid: checked to be on it already (one line naming
    both files otherwise), or, with ``resample``, resampled onto it through both affines."""
    if not resample:
        nifti.check_same_grid(m, f, RESAMPLE_HINT)
        return m, label
    same = m.data.shape == f.data.shape and nifti.grid_offset(m, f) <= nifti.GRID_TOLERANCE * min(f.spacing)
    if same:
        return m, label
    return nifti.resample_to(m, f, order=1), None if label is None else nifti.resample_to(label, f, order=0)


def prepare(mode: str, moving: str, fixed: str, moving_label: str | None, image_size,
            resample_moving: bool = False) -> Inputs:
    """Read the files (canonical voxel order, ``nifti``), put the moving image on the fixed grid
    (checked, or resampled with ``resample_moving``) and preprocess them like training data."""
    size = tuple(int(n) for n in image_size)
    if mode == "crop":
        m, f = nifti.read_stack(moving), nifti.read_stack(fixed)
        label = nifti.read_stack(moving_label, label=True, like=m) if moving_label else None
        m, label = _moving_on_fixed_grid(m, f, label, resample_moving)
        label = None if label is None else label.data
        if label is not None:
            centre = acdc.crop_centre(label)
        else:
            centre = preprocess.motion_centre(m.data, f.data, f.spacing[:2])
            print(f"no --moving_label: the {size[0]}x{size[1]} crop is centred where ED and ES differ most, "
                  f"voxel ({centre[0]:.0f}, {centre[1]:.0f}) of the fixed image")
        pairs = acdc.slice_pairs(m.data, f.data, label, None, centre, size)
        return Inputs(m, f, label, _as_pair_set(pairs, size), preprocess.crop_start(centre, size),
                      single_slice=len(f.file_shape) == 2)
    m, f = nifti.read_image(moving, len(size)), nifti.read_image(fixed, len(size))
    label = nifti.read_label(moving_label, len(size), like=m) if moving_label else None
    m, label = _moving_on_fixed_grid(m, f, label, resample_moving)
    label = None if label is None else label.data
    pair = preprocess.resized_pair(m, f, label, None, size)
    return Inputs(m, f, label, _as_pair_set([pair], size))


def to_fixed_grid(inputs: Inputs, pred: dict) -> dict:
    """Network-grid predictions -> arrays on the fixed image's grid: ``displacement`` ``[*F, D]``
    (voxels of the fixed grid) and, when predicted, ``log_var`` / ``weight`` ``[*F]``."""
    shape = inputs.fixed.data.shape
    out = {}
    if inputs.crop_start is not None:  # slices along axis 2, crops in axes 0 and 1
        def place(window, fill):
            return np.stack([preprocess.uncrop(w, inputs.crop_start, shape[:2], fill) for w in window], axis=2)
        in_plane = place(pred["displacement"], 0.0)
        out["displacement"] = np.concatenate([in_plane, np.zeros_like(in_plane[..., :1])], axis=-1)
        for key in ("log_var", "weight", "sigma_z"):
            if key in pred:
                out[key] = place(pred[key][..., 0], np.nan)
        return out
    out["displacement"] = preprocess.resize_field(pred["displacement"][0], shape)
    for key in ("log_var", "weight", "sigma_z"):
        if key in pred:
            out[key] = preprocess.resize(pred[key][0, ..., 0], shape, order=1)
    if "sigma_z" in pred:  # network voxels -> fixed voxels: the RMS of the per-axis scale factors
        net = pred["displacement"].shape[1:-1]
        scales = [(f - 1) / (n - 1) if n > 1 else 1.0 for f, n in zip(shape, net)]
        out["sigma_z"] = out["sigma_z"] * float(np.sqrt(np.mean(np.square(scales))))
    return out


def warp_full(image: np.ndarray, displacement: np.ndarray, slicewise: bool, order: int = 1) -> np.ndarray:
    """``image(x + u(x))`` on the image's own grid (``spatial.warp``: linear, 0 outside).
    ``slicewise``: ``image`` is ``[X, Y, Z]`` and only the first two components of ``u`` are used,
    slice by slice."""
    if slicewise:
        moved = spatial.warp(np.moveaxis(image, 2, 0)[..., None].astype(np.float32),
                             np.moveaxis(displacement[..., :2], 2, 0).astype(np.float32), order=order)
        return np.moveaxis(np.asarray(jax.device_get(moved))[..., 0], 0, 2)
    moved = spatial.warp(image[None, ..., None].astype(np.float32), displacement[None].astype(np.float32), order)
    return np.asarray(jax.device_get(moved))[0, ..., 0]


def warp_labels(label: np.ndarray, displacement: np.ndarray, slicewise: bool) -> np.ndarray:
    """Each label value warped linearly as a one-hot map; the most likely value per voxel (on a
    tie, e.g. where every map reads 0 outside the image, the smallest value: background 0)."""
    values = np.unique(label)
    scores = np.stack([warp_full((label == v).astype(np.float32), displacement, slicewise) for v in values])
    return values[np.argmax(scores, axis=0)].astype(np.uint8)


def restore(config, workdir: str):
    """``(trainer, state)`` from the latest checkpoint of ``workdir`` (``MissingFileError`` if none)."""
    train.validate_config(config)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    message = f"no checkpoint in {ckpt_dir}: train first (--mode=train) or pass the workdir of a trained run"
    if not os.path.isdir(ckpt_dir):
        raise MissingFileError(message)
    ckpt = Checkpointer(ckpt_dir, keep=config.keep_checkpoints, create=False)
    try:
        if ckpt.latest_step() is None:
            raise MissingFileError(message)
        trainer = steps.Trainer(config)
        return trainer, train.restore_or_init(trainer, ckpt, config)
    finally:
        ckpt.close()


def register(config, workdir: str, moving: str, fixed: str, out: str, moving_label: str | None = None,
             restored: tuple | None = None, fixed_label: str | None = None, resample_moving: bool = False) -> dict:
    """Register ``moving`` to ``fixed`` and write the outputs (module docstring); returns their paths.
    ``restored``: an already restored ``(trainer, state)`` of ``workdir`` (the Python API keeps one).
    ``fixed_label`` (with ``moving_label``): also score the warped label against it
    (`label_metrics`, printed and written to ``label_metrics.json``). ``resample_moving``:
    a moving image on another grid is resampled onto the fixed one (else refused)."""
    workdir_lib.check_writable(out, "--out")  # before the work, not after it
    if fixed_label is not None and moving_label is None:
        raise InputError("--fixed_label needs --moving_label (the label that is warped)")
    mode = preprocessing(config)
    inputs = prepare(mode, moving, fixed, moving_label, config.data.image_size, resample_moving)
    reference = None
    if fixed_label is not None:  # read (and checked) before the work
        reference = (nifti.read_stack(fixed_label, label=True, like=inputs.fixed).data if mode == "crop"
                     else nifti.read_label(fixed_label, len(config.data.image_size), like=inputs.fixed).data)
    trainer, state = restored or restore(config, workdir)
    pred = evaluation.predict_pairs(trainer, state, inputs.pairs, config.eval.batch_size)
    # everything below is computed on the fixed image's canonical grid, then written in its file order
    fixed_vol = inputs.fixed
    full = to_fixed_grid(inputs, pred)
    slicewise = mode == "crop"
    full["warped"] = warp_full(inputs.moving.data, full["displacement"], slicewise)
    if inputs.moving_label is not None:
        full["warped_label"] = warp_labels(inputs.moving_label, full["displacement"], slicewise)
    scales = np.ones(2) if inputs.crop_start is not None else preprocess.scale_factors(
        config.data.image_size, fixed_vol.data.shape)
    if "sigma_z" in full:
        sigma_mm, why = sigma_z_in_mm(full["sigma_z"], fixed_vol, scales)
        if sigma_mm is not None:
            full["sigma_z_mm"] = sigma_mm
        else:
            print(f"sigma_z_mm.nii.gz not written: {why}")
    itk, why = itk_warp(inputs, fixed_vol, full["displacement"])
    if itk is None:
        print(f"itk_warp.nii.gz not written: {why}")
    scores = None if reference is None else label_metrics(full["warped_label"], reference, fixed_vol.spacing)
    window = None
    if inputs.crop_start is not None:  # show the region the network saw
        window = tuple(slice(max(0, start), min(n, start + size))
                       for start, size, n in zip(inputs.crop_start, config.data.image_size, fixed_vol.data.shape[:2]))
    shown = (inputs.moving.data, fixed_vol.data, full, window)  # the overview: canonical orientation
    files = {k: fixed_vol.to_file(v, vector=k == "displacement") for k, v in full.items()}
    itk = None if itk is None else fixed_vol.to_file(itk, channels=True)
    file_vol = dataclasses.replace(fixed_vol, data=fixed_vol.to_file(fixed_vol.data), axes=None, flips=None,
                                   affine=fixed_vol.affine if fixed_vol.file_affine is None else fixed_vol.file_affine)
    if inputs.single_slice:  # outputs keep the input's own dimensionality: [X, Y], displacement [X, Y, 2]
        files = {k: v[:, :, 0, :2] if k == "displacement" else v[:, :, 0] for k, v in files.items()}
        file_vol = dataclasses.replace(file_vol, data=file_vol.data[..., 0])
        if shown is not None:
            full2 = {k: v[:, :, 0, :2] if k == "displacement" else v[:, :, 0] for k, v in full.items()}
            shown = (shown[0][..., 0], shown[1][..., 0], full2, window)
    paths = write_outputs(out, file_vol, files, None, itk_warp=itk, shown=shown)
    if scores is not None:
        paths["label_metrics"] = write_label_metrics(out, scores)
    return paths


def sigma_z_in_mm(sigma_z: np.ndarray, fixed: nifti.Volume, scales) -> tuple[np.ndarray | None, str]:
    """σ_z (voxels of the fixed grid, `to_fixed_grid`) in mm, ``(map, "")``, where the
    network grid's voxels are isotropic within 1% along the displacement axes (``scales``: fixed
    voxels per network voxel along each of them; the network's voxel size along axis k is the fixed
    voxel size times ``scales[k]``); else ``(None, why)``."""
    scales = np.asarray(scales, np.float64)
    fixed_mm = np.linalg.norm(nifti.mm_affine(fixed)[:3, :len(scales)], axis=0)
    net_mm = fixed_mm * scales
    if net_mm.max() > 1.01 * net_mm.min():
        sizes = " x ".join(f"{h:.3g}" for h in net_mm)
        return None, f"the network grid's voxels are anisotropic ({sizes} mm), so σ_z has no single size in mm"
    rms = float(np.sqrt(np.mean(np.square(scales))))  # to_fixed_grid's voxels -> network voxels
    return (sigma_z / rms * float(net_mm.mean())).astype(np.float32), ""


def itk_warp(inputs: Inputs, fixed: nifti.Volume, displacement: np.ndarray) -> tuple[np.ndarray | None, str]:
    """``displacement`` (the output's, voxels of the fixed grid) as ITK/ANTs vectors for
    ``itk_warp.nii.gz`` (module docstring): ``([*S, 3] or [X, Y, 2], "")``, or ``(None, why)``
    for 2D images / one-slice stacks whose plane is not the scanner's x-y plane."""
    fixed_mm, moving_mm = nifti.mm_affine(fixed), nifti.mm_affine(inputs.moving)
    scale = None
    if inputs.moving_shape is not None and inputs.moving_shape != tuple(inputs.fixed.data.shape):
        scale = preprocess.scale_factors(inputs.fixed.data.shape, inputs.moving_shape)
    u = displacement
    flat = u.ndim == 3 or u.shape[2] == 1  # a 2D image or a one-slice stack: ITK reads a 2D field
    if flat:
        u = u[..., :2] if u.ndim == 3 else u[:, :, 0, :2]
        scale = None if scale is None else scale[:2]
        for name, affine in (("fixed", fixed_mm), ("moving", moving_mm)):
            if np.abs(affine[2, :2]).max() > 1e-6 * np.abs(affine[:3, :2]).max():
                return None, (f"the {name} image's slice is not in the scanner's x-y plane, which ITK's "
                              "2D geometry cannot hold")
    vectors = nifti.itk_displacement(u, fixed_mm, moving_mm, scale)
    return (vectors[..., :2] if flat else vectors), ""


def label_metrics(warped: np.ndarray, reference: np.ndarray, spacing) -> dict:
    """Dice (%), Hausdorff, HD95 and ASD (reference surface -> warped) of every label value > 0 of
    the reference, in voxels of the fixed grid and in mm (its voxel size). A value the reference
    lacks (e.g. no ES myocardium) is not labelled in that frame: it is not scored."""
    out = {}
    for value in sorted(set(np.unique(reference)) - {0}):
        a, b = reference == value, warped == value
        entry = {"dice": 100.0 * metrics.dice(b, a)}
        for unit, sp in (("px", None), ("mm", tuple(spacing))):
            entry[f"hd_{unit}"] = metrics.hausdorff(a, b, spacing=sp)
            entry[f"hd95_{unit}"] = metrics.hausdorff(a, b, percentile=95, spacing=sp)
            entry[f"asd_{unit}"] = metrics.average_surface_distance(a, b, spacing=sp)
        out[str(int(value))] = entry
    return out


def write_label_metrics(out: str, scores: dict) -> str:
    """Print one line per label of ``scores`` (`label_metrics`) and write
    ``label_metrics.json`` (strict JSON); returns its path."""
    import json


    for value, e in scores.items():
        print(f"label {value}: Dice {e['dice']:.2f}%, Hausdorff {e['hd_px']:.2f} px ({e['hd_mm']:.2f} mm), "
              f"HD95 {e['hd95_px']:.2f} px, ASD {e['asd_px']:.2f} px ({e['asd_mm']:.2f} mm)")
    path = os.path.join(out, "label_metrics.json")
    atomic_write_text(path, json.dumps(json_safe({"labels": scores, "units": {
        "dice": "%", "hd/hd95/asd_px": "voxels of the fixed grid", "hd/hd95/asd_mm": "mm (the fixed image's voxel size)",
        "asd": "directed from the fixed label's surface to the warped one"}}), indent=2, allow_nan=False))
    return path


def write_outputs(out: str, fixed: nifti.Volume, full: dict, moving_on_grid: np.ndarray | None,
                  window: tuple[slice, slice] | None = None, itk_warp: np.ndarray | None = None,
                  shown: tuple | None = None) -> dict:
    """Write the NIfTI files and ``overview.png`` on ``fixed``'s geometry (``itk_warp``: the
    vectors of ``itk_warp.nii.gz``, `itk_warp`). ``shown``: ``(moving, fixed, full, window)``
    drawn in the overview instead of the written arrays (e.g. in the canonical orientation)."""
    workdir_lib.ensure_directory(out, "--out")
    geometry = dict(affine=fixed.affine, header=fixed.header)
    paths = {"displacement": nifti.write_vector(os.path.join(out, "displacement.nii.gz"),
                                                full["displacement"], name="displacement", **geometry)}
    names = {"warped": "warped", "log_var": "log_variance", "weight": "weight", "warped_label": "warped_label",
             "sigma_z": "displacement_sigma", "sigma_z_mm": "sigma_z_mm"}
    for key, name in names.items():
        if key in full:
            paths[key] = nifti.write(os.path.join(out, f"{name}.nii.gz"), full[key],
                                     file_shape=fixed.file_shape, **geometry)
    if itk_warp is not None:
        paths["itk_warp"] = nifti.write_itk_warp(os.path.join(out, "itk_warp.nii.gz"), itk_warp, **geometry)
    shown = shown or (moving_on_grid, fixed.data, full, window)
    paths["overview"] = overview(os.path.join(out, "overview.png"), *shown)
    magnitude = np.linalg.norm(full["displacement"], axis=-1)
    print(f"registered: |u| mean {magnitude.mean():.3f}, max {magnitude.max():.3f} voxels of the fixed grid; "
          f"wrote {', '.join(os.path.basename(p) for p in paths.values())} to {out}")
    return paths


def overview(path: str, moving: np.ndarray, fixed: np.ndarray, full: dict,
             window: tuple[slice, slice] | None = None) -> str:
    """A 2 x 4 grid: moving, fixed, warped (with the warped label's contours when there is one),
    |fixed - warped|; |u|, log variance, weight. ``window``: the in-plane region shown (the network's
    crop for ACDC-style data). 3D: the middle slice of the last axis, named in the title."""
    depth = fixed.shape[-1] if fixed.ndim == 3 else None
    box = window or (slice(None), slice(None))

    def view(a):
        return (a if a.ndim == 2 else a[..., a.shape[-1] // 2])[box]
    lo, hi = float(fixed.min()), float(fixed.max())
    label = full.get("warped_label")
    panels = [("moving", moving, "gray", None), ("fixed", fixed, "gray", None),
              ("warped" + (" + warped label" if label is not None else ""), full["warped"], "gray", None),
              ("|fixed − warped|", np.abs(fixed - full["warped"]), "magma", "intensity"),
              ("|u|", np.linalg.norm(full["displacement"], axis=-1), "viridis", "voxels")]
    panels += [(title, full[key], "viridis", unit) for key, title, unit in
               (("log_var", "log σ² (noise)", "log intensity²"), ("weight", "SNR weight", "w"),
                ("sigma_z", "σ_z (displacement std)", "voxels")) if key in full]
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, image, cmap, unit) in zip(axes.flat, panels):
        shown = ax.imshow(view(image), cmap=cmap, **({"vmin": lo, "vmax": hi} if cmap == "gray" else {}))
        if unit is not None:
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
            bar.set_label(unit, fontsize=8)
        if title.startswith("warped") and label is not None:
            for value in (v for v in np.unique(view(label)) if v):
                ax.contour((view(label) == value).astype(float), levels=[0.5], linewidths=0.8,
                           colors=[plt.cm.tab10(int(value) % 10)])
        ax.set_title(title, fontsize=10)
    where = f"slice {depth // 2} of {depth} (last axis)" if depth else "2D"
    fig.suptitle(f"registration overview: {where}" + (", the network's crop" if window else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
