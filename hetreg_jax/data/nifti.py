"""Safe NIfTI reading and writing: every problem with a file is one line that starts with its path.

Reading (``read_image``, ``read_label``):
- a missing file, an unreadable/corrupt/truncated ``.nii``/``.nii.gz``, an array with the wrong
  number of axes (trailing length-1 axes are dropped first, so a 2D image stored as ``[X, Y, 1]``
  reads as 2D; a 4D file where 3D is expected is refused), non-finite voxels, a constant image,
  a label map with non-integer or out-of-range values, or a label map whose shape differs from its
  image raise ``DataError`` (a ``ValueError``): ``"<path>: <cause>"``.
- images are returned as float32 with the file's scaling (``scl_slope``/``scl_inter``) applied,
  labels as uint8, in one canonical voxel orientation (``canonical_axes``): volumes RAS+ (nibabel's
  ``as_closest_canonical``); short-axis stacks (``read_stack``) keep their slice axis last (the
  axis whose voxels are longest, when it is clearly so; else the file's third axis) and put their
  two in-plane axes in R-A-S order, each pointing to +; 2D images the same in-plane. ``affine`` is
  the file's best affine (sform, else qform) moved to that voxel order; the file's own is kept in
  ``file_affine`` and ``to_file`` puts any array of the canonical grid back in the file's axis
  order (a label map read ``like`` an image takes that image's voxel order: it annotates the
  image voxel by voxel, whatever its own header says).

Writing (``write``, ``write_vector``): outputs copy the reference header (so qform/sform codes and
the affine survive); a vector field ``[*S, D]`` is stored the NIfTI way, ``[X, Y, Z, 1, D]``
(spatial axes padded to three, the vector on the 5th axis) with intent ``VECTOR``.

ITK/ANTs displacement fields (``itk_displacement``, ``write_itk_warp``): ITK's
``DisplacementFieldTransform`` maps a physical point ``p`` of the fixed (output) space to
``p + d(p)`` in the moving (input) space, so resampling the moving image through it gives
``warped(p) = moving(p + d(p))``. ITK's physical space is LPS (NIfTI's affine is RAS: x and y
negate), the vectors are in mm, and a displacement field file is ``[X, Y, Z, 1, C]`` float32 with
intent code 1007 (``VECTOR``), C = the image dimension (ITK reads ``[X, Y, 1, 1, 2]`` as a 2D field,
and any file whose Z is 1 as 2D). ITK cannot represent sheared affines (direction cosines must be
orthonormal).
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib

import nibabel as nib
import numpy as np

from hetreg_jax.base.errors import InputError

_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, struct.error,
                nib.filebasedimages.ImageFileError)


class DataError(InputError):
    """A bad input file or folder; ``str(error)`` is ``"<path>: <cause>"`` on one line."""

    def __init__(self, path, cause: str):
        self.path, self.cause = str(path), " ".join(str(cause).split())
        super().__init__(f"{self.path}: {self.cause}")


@dataclasses.dataclass
class Volume:
    """A NIfTI array with its geometry: ``data`` (float32 image or uint8 label map, canonical voxel
    order), ``affine`` (4x4, canonical voxel index -> mm), ``header`` (the file's), ``spacing``
    (voxel size in mm per kept canonical axis), ``file_shape`` (the array shape on disk, before
    dropping length-1 axes), ``axes`` / ``flips`` (canonical axis k is file axis ``axes[k]``,
    reversed where ``flips[k]``; None: the file's order) and ``file_affine`` (the file's own)."""
    path: str
    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    spacing: tuple[float, ...]
    file_shape: tuple[int, ...]
    axes: tuple[int, ...] | None = None
    flips: tuple[bool, ...] | None = None
    file_affine: np.ndarray | None = None

    def to_file(self, array: np.ndarray, vector: bool = False, channels: bool = False) -> np.ndarray:
        """An array on this canonical grid (``[*S]``; ``[*S, C]`` with ``channels``: per-voxel
        vectors that do not depend on the voxel order, e.g. world vectors; ``[*S, D]`` with
        ``vector``: a displacement in canonical voxels, component k along canonical axis k,
        D = len(S)) in the file's axis order (a displacement's components permuted and negated
        along reversed axes, so it is in the file's voxels). ``S`` may lack trailing length-1 axes."""
        if self.axes is None:
            return array
        array = np.asarray(array)
        n = array.ndim - (1 if vector or channels else 0)
        axes, flips = self.axes[:n], self.flips[:n]
        if sorted(axes) != list(range(n)):
            raise InputError(f"an array of {n} spatial axes cannot take the voxel order {self.axes}")
        if vector and array.shape[-1] < n:
            raise InputError(f"a displacement with {n} components expected, got shape {array.shape}")
        for k, flip in enumerate(flips):
            if flip:
                array = np.flip(array, axis=k)
        order = np.argsort(axes)  # file axis j is canonical axis order[j]
        array = np.transpose(array, tuple(order) + tuple(range(n, array.ndim)))
        if vector:  # components beyond the spatial axes (a stack's through-plane one) stay where they are
            d = array.shape[-1]
            signs = np.ones(d, array.dtype)
            signs[:n] = np.where(np.asarray(flips), -1.0, 1.0)
            array = (array * signs)[..., list(order) + list(range(n, d))]
        return np.ascontiguousarray(array)


def canonical_axes(affine: np.ndarray, shape, zooms, stack: bool = False) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """``(axes, flips)`` of the canonical voxel order of an array of ``shape`` with this affine
    (module docstring): canonical axis k is file axis ``axes[k]``, reversed where ``flips[k]``.
    ``stack``: a short-axis stack, whose slice axis stays last."""
    ndim = len(shape)
    ornt = nib.orientations.io_orientation(np.asarray(affine, np.float64))
    world = [int(ornt[j, 0]) if np.isfinite(ornt[j, 0]) else 3 + j for j in range(ndim)]
    flips = {j: bool(ornt[j, 1] < 0) if np.isfinite(ornt[j, 1]) else False for j in range(ndim)}
    last = None
    if stack and ndim == 3:  # the slice axis: the only length-1 axis, else clearly the longest voxels, else axis 2
        z = [abs(float(v)) for v in zooms[:3]]
        longest = int(np.argmax(z))
        others = max(v for j, v in enumerate(z) if j != longest)
        single = [j for j, n in enumerate(shape) if n == 1]
        last = single[0] if len(single) == 1 else (longest if z[longest] > 1.2 * others else 2)
    plane = sorted((j for j in range(ndim) if j != last), key=lambda j: world[j])
    axes = tuple(plane + ([] if last is None else [last]))
    return axes, tuple(flips[j] for j in axes)


def _reorient(vol: Volume, axes, flips) -> Volume:
    """``vol`` (file order) in the voxel order ``(axes, flips)``."""
    data = np.transpose(vol.data, axes)
    shape = data.shape
    for k, flip in enumerate(flips):
        if flip:
            data = np.flip(data, axis=k)
    # canonical index c -> file index f: f[axes[k]] = c_k, or n_k - 1 - c_k where flipped
    to_file = np.zeros((4, 4))
    to_file[3, 3] = 1.0
    for k, (j, flip) in enumerate(zip(axes, flips)):
        to_file[j, k] = -1.0 if flip else 1.0
        to_file[j, 3] = shape[k] - 1 if flip else 0.0
    for j in range(len(axes), 3):  # dropped (length-1) axes stay at index 0
        to_file[j, j] = 1.0
    return dataclasses.replace(vol, data=np.ascontiguousarray(data), affine=vol.affine @ to_file,
                               spacing=tuple(vol.spacing[j] for j in axes), axes=tuple(axes),
                               flips=tuple(flips), file_affine=vol.affine)


def _load(path, ndim: int, as_label: bool, stack: bool = False, like: Volume | None = None) -> Volume:
    vol = _load_file_order(path, ndim, as_label)
    if like is not None and like.axes is not None and vol.data.shape == tuple(like.data.shape[j] for j in np.argsort(like.axes)):
        return _reorient(vol, like.axes, like.flips)
    if like is not None:
        return vol  # a shape mismatch: reported by the caller
    axes, flips = canonical_axes(vol.affine, vol.data.shape, vol.spacing, stack)
    return _reorient(vol, axes, flips)


def _load_file_order(path, ndim: int, as_label: bool) -> Volume:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    try:
        img = nib.load(path)
        raw = img.get_fdata(dtype=np.float32) if not as_label else np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, np.float64)
        header = img.header.copy()
    except _READ_ERRORS as exc:
        raise DataError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc}); "
                              "the file is corrupt, truncated or not NIfTI") from None
    file_shape = tuple(int(n) for n in raw.shape)
    data = np.asarray(raw)
    while data.ndim > ndim and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != ndim:
        raise DataError(path, f"{data.ndim}D image of shape {file_shape} where a {ndim}D image is expected")
    zooms = tuple(float(z) for z in header.get_zooms()[:ndim])
    zooms = zooms + (1.0,) * (ndim - len(zooms))
    return Volume(path, data, affine, header, zooms, file_shape)


def read_image(path, ndim: int, stack: bool = False) -> Volume:
    """An ``ndim``-D intensity image as float32; refuses non-finite voxels and constant images."""
    vol = _load(path, ndim, as_label=False, stack=stack)
    data = vol.data.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    if not finite.all():
        raise DataError(vol.path, f"{int(data.size - finite.sum())} non-finite voxels (NaN or inf)")
    if data.size == 0 or data.min() == data.max():
        value = float(data.flat[0]) if data.size else float("nan")
        raise DataError(vol.path, f"constant image (every voxel is {value:g})")
    vol.data = data
    return vol


def read_label(path, ndim: int, like: Volume | None = None, required=None, stack: bool = False) -> Volume:
    """An ``ndim``-D label map as uint8 (integer values 0..255).

    ``like``: the image it annotates; its shape must match, and the map takes its voxel order.
    ``required``: a label value that must be present (e.g. the myocardium), or ``[(name, value)]``
    of which at least one must be (the configured structures); a map without it is refused.
    """
    vol = _load(path, ndim, as_label=True, stack=stack, like=like)
    data = np.asarray(vol.data, dtype=np.float64)
    if not np.isfinite(data).all():
        raise DataError(vol.path, "non-finite voxels (NaN or inf) in a label map")
    rounded = np.rint(data)
    if np.abs(data - rounded).max(initial=0.0) > 1e-3 or rounded.min(initial=0) < 0 or rounded.max(initial=0) > 255:
        raise DataError(vol.path, f"label map values must be integers in 0..255, found range "
                                  f"[{data.min():g}, {data.max():g}]")
    vol.data = rounded.astype(np.uint8)
    if like is not None and vol.data.shape != like.data.shape:
        like_shape = like.data.shape if like.axes is None else tuple(like.data.shape[k] for k in np.argsort(like.axes))
        shape = vol.data.shape if vol.axes is None else tuple(vol.data.shape[k] for k in np.argsort(vol.axes))
        raise DataError(vol.path, f"label shape {shape} differs from the image shape "
                                  f"{like_shape} of {like.path}")
    if isinstance(required, (int, np.integer)) and not np.any(vol.data == required):
        found = sorted(int(v) for v in np.unique(vol.data))
        raise DataError(vol.path, f"label map without myocardium (no voxel has label {required}; "
                                  f"labels found: {found})")
    if required is not None and not isinstance(required, (int, np.integer)):
        require_any(vol, required)
    return vol


def require_any(vol: Volume, structures) -> None:
    """Refuse a label map in which none of ``structures`` (``[(name, value)]``) is labelled."""
    if not any(np.any(vol.data == value) for _, value in structures):
        found = sorted(int(v) for v in np.unique(vol.data))
        wanted = ",".join(f"{name}={value}" for name, value in structures)
        raise DataError(vol.path, f"no configured structure is labelled (config.data.structures={wanted!r}; "
                                  f"labels found: {found}); set config.data.structures to this data's labels")


GRID_TOLERANCE = 0.01  # voxels: two grids are the same when every corner is this close (in mm: times the smallest voxel)


def grid_offset(a: Volume, b: Volume) -> float:
    """The largest distance (mm) between the world positions of the corners of two grids of the
    same shape (canonical voxel order)."""
    shape = a.data.shape
    corners = np.array(np.meshgrid(*([0, n - 1] for n in shape), indexing="ij")).reshape(len(shape), -1).T
    corners = np.pad(corners.astype(np.float64), ((0, 0), (0, 4 - len(shape))), constant_values=0.0)
    corners[:, 3] = 1.0
    return float(np.abs((corners @ a.affine.T - corners @ b.affine.T)[:, :3]).max())


def check_same_grid(moving: Volume, fixed: Volume, hint: str = "") -> None:
    """Refuse (one line naming both files) a moving image whose grid (shape, affine) is not the
    fixed image's: every corner within ``GRID_TOLERANCE`` of the smallest fixed voxel."""
    if moving.data.shape != fixed.data.shape:
        raise DataError(moving.path, f"grid of shape {moving.data.shape} (canonical voxel order) differs from the "
                                     f"fixed image {fixed.path}'s {fixed.data.shape}{hint}")
    offset, tol = grid_offset(moving, fixed), GRID_TOLERANCE * min(fixed.spacing)
    if offset > tol:
        raise DataError(moving.path, f"grid (affine) differs from the fixed image {fixed.path}'s: a corner is "
                                     f"{offset:.3g} mm away (tolerance {tol:.3g} mm){hint}")


def resample_to(moving: Volume, fixed: Volume, order: int = 1) -> Volume:
    """``moving`` resampled onto ``fixed``'s grid through both affines (world space): linear
    (``order=1``, images) or nearest (``order=0``, labels), 0 outside."""
    from scipy import ndimage

    shape = fixed.data.shape
    index = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij"), -1)
    index = np.pad(index.reshape(-1, len(shape)), ((0, 0), (0, 3 - len(shape))))
    to_moving = np.linalg.inv(moving.affine) @ fixed.affine
    points = index @ to_moving[:3, :3].T + to_moving[:3, 3]
    nd = moving.data.ndim
    if np.abs(points[:, nd:]).max(initial=0.0) > 0.5:
        raise DataError(moving.path, f"cannot be resampled onto the grid of {fixed.path}: the fixed grid "
                                     "leaves the moving image's plane")
    points = points[:, :nd]
    for k, n in enumerate(moving.data.shape):  # rounding at the edges (e.g. a slice index 3 + 1e-12) stays inside
        edge = (np.abs(points[:, k]) < 1e-3) | (np.abs(points[:, k] - (n - 1)) < 1e-3)
        points[edge, k] = np.clip(np.round(points[edge, k]), 0, n - 1)
    data = ndimage.map_coordinates(moving.data.astype(np.float32 if order else np.float64), points.T,
                                   order=order, mode="constant", cval=0.0).reshape(shape)
    return dataclasses.replace(moving, data=data.astype(moving.data.dtype), affine=fixed.affine,
                               spacing=fixed.spacing)


def _header_for(reference: nib.Nifti1Header | None, dtype) -> nib.Nifti1Header:
    header = reference.copy() if reference is not None else nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_slope_inter(None, None)
    header.set_intent("none")
    return header


def read_stack(path, label: bool = False, like: Volume | None = None, required: int | None = None) -> Volume:
    """A short-axis stack ``[X, Y, Z]`` (image, or label map with ``label=True``); a 2D ``[X, Y]``
    file is a one-slice stack ``[X, Y, 1]`` (its ``file_shape`` stays 2D, so outputs written on
    its geometry can be 2D again)."""
    def read(ndim, reference):
        if label:
            return read_label(path, ndim, like=reference, required=required, stack=True)
        return read_image(path, ndim, stack=True)
    try:
        return read(3, like)
    except DataError as exc:
        if "2D image" not in str(exc):
            raise
    flat_like = None if like is None else dataclasses.replace(
        like, data=like.data[..., 0], axes=None if like.axes is None else like.axes[:2],
        flips=None if like.flips is None else like.flips[:2])
    vol = read(2, flat_like)
    axes = None if vol.axes is None else vol.axes + (2,)
    flips = None if vol.flips is None else vol.flips + (False,)
    return dataclasses.replace(vol, data=vol.data[..., None], axes=axes, flips=flips,
                               spacing=vol.spacing + (float(np.linalg.norm(vol.affine[:3, 2])) or 1.0,))


def _file_shaped(data: np.ndarray, file_shape) -> np.ndarray:
    """``data`` with the length-1 axes of the reference file restored (a 2D result of a
    ``[X, Y, 1]`` file is written as ``[X, Y, 1]``)."""
    if file_shape is not None and int(np.prod(file_shape)) == data.size and data.ndim < len(file_shape):
        return data.reshape(file_shape)
    return data


def write(path, data: np.ndarray, affine: np.ndarray, header=None, file_shape=None) -> str:
    """Write a scalar image on the reference geometry (``affine``, a copy of ``header``)."""
    data = np.asarray(data)
    dtype = np.uint8 if data.dtype == np.uint8 else np.float32
    img = nib.Nifti1Image(_file_shaped(data.astype(dtype), file_shape), affine,
                          _header_for(header, dtype))
    _set_codes(img, header)
    nib.save(img, os.fspath(path))
    return os.fspath(path)


def write_vector(path, field: np.ndarray, affine: np.ndarray, header=None, name: str = "") -> str:
    """Write ``field [*S, D]`` as ``[X, Y, Z, 1, D]`` float32 with intent ``VECTOR``."""
    field = np.asarray(field, np.float32)
    spatial = field.shape[:-1]
    if len(spatial) > 3:
        raise InputError(f"at most 3 spatial axes, got field shape {field.shape}")
    padded = spatial + (1,) * (3 - len(spatial)) + (1, field.shape[-1])
    header = _header_for(header, np.float32)
    header.set_intent("vector", (), name=name[:15])
    img = nib.Nifti1Image(field.reshape(padded), affine, header)
    _set_codes(img, header)
    nib.save(img, os.fspath(path))
    return os.fspath(path)


def itk_displacement(displacement: np.ndarray, fixed_affine: np.ndarray, moving_affine: np.ndarray | None = None,
                     moving_scale=None) -> np.ndarray:
    """The voxel displacement ``u [*S, D]`` of ``warped(x) = moving(x + u(x))`` (voxels of the
    fixed grid, component k along array axis k, D = len(S) <= 3) as ITK displacement vectors
    ``[*S, 3]`` in LPS mm: ``d(x) = M(s * (x + u(x))) - F(x)``, with ``F``/``M`` the fixed/moving
    voxel -> LPS maps (the RAS affines with x and y negated; missing axes at index 0) and ``s``
    (``moving_scale``, default 1) the moving image's voxels per fixed voxel along each axis (aligned
    corners, when the moving image was resized onto the fixed shape). ``moving_affine`` defaults to
    the fixed one."""
    u = np.asarray(displacement, np.float64)
    spatial, dim = u.shape[:-1], u.shape[-1]
    if dim != len(spatial) or not 1 <= dim <= 3:
        raise InputError(f"a displacement field [*S, len(S)] with 1 to 3 spatial axes, got shape {u.shape}")
    fixed_affine = np.asarray(fixed_affine, np.float64)
    moving_affine = fixed_affine if moving_affine is None else np.asarray(moving_affine, np.float64)
    index = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in spatial), indexing="ij"), axis=-1)
    target = (index + u) * (1.0 if moving_scale is None else np.asarray(moving_scale, np.float64))
    pad = [(0, 0)] * len(spatial) + [(0, 3 - dim)]
    index, target = np.pad(index, pad), np.pad(target, pad)
    ras = (target @ moving_affine[:3, :3].T + moving_affine[:3, 3]) - (index @ fixed_affine[:3, :3].T + fixed_affine[:3, 3])
    return ras * np.array([-1.0, -1.0, 1.0])


_MM_PER_UNIT = {"meter": 1000.0, "micron": 0.001}


def mm_affine(volume: Volume) -> np.ndarray:
    """``volume``'s affine in mm: ITK converts a file's spatial unit (``xyzt_units``: metres,
    microns) to mm when it reads it, nibabel does not; mm and "unknown" are taken as mm."""
    unit = volume.header.get_xyzt_units()[0]
    return np.diag([_MM_PER_UNIT.get(unit, 1.0)] * 3 + [1.0]) @ np.asarray(volume.affine, np.float64)


def write_itk_warp(path, vectors: np.ndarray, affine: np.ndarray, header=None) -> str:
    """Write LPS-mm displacement vectors ``[*S, C]`` (`itk_displacement` of the
    `mm_affine` s, C = 2 for a 2D field, else 3) as an ITK/ANTs displacement field
    ``[X, Y, Z, 1, C]`` float32, intent 1007, with the reference's spatial unit and ``affine``
    (in that unit, as in the reference file) as both sform and qform (ITK reads one, nibabel the other: they must agree;
    the codes are the reference's sform code, else its qform code, else 1 = scanner)."""
    vectors = np.asarray(vectors, np.float32)
    spatial = vectors.shape[:-1]
    padded = spatial + (1,) * (3 - len(spatial)) + (1, vectors.shape[-1])
    header = _header_for(header, np.float32)
    header.set_intent("vector", (), name="itk_warp")
    img = nib.Nifti1Image(vectors.reshape(padded), affine, header)
    code = int(header["sform_code"]) or int(header["qform_code"]) or 1
    img.set_qform(img.affine, code=code)
    img.set_sform(img.affine, code=code)
    nib.save(img, os.fspath(path))
    return os.fspath(path)


def _set_codes(img: nib.Nifti1Image, reference) -> None:
    """Keep the reference's qform/sform codes (nibabel resets them when the affine is passed)."""
    if reference is None:
        return
    _, qcode = reference.get_qform(coded=True)
    _, scode = reference.get_sform(coded=True)
    img.set_qform(img.affine, code=int(qcode))
    img.set_sform(img.affine, code=int(scode))
