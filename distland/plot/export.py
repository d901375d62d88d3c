"""Exports for other viewers: a ParaView structured grid (.vts), an XDMF sidecar (.xmf) and interactive HTML; for
3-D surfaces a ParaView volume (.vti) and an XDMF 3DRectMesh.

pyevtk and plotly are optional (``pip install 'distland[plot]'``); they are imported only when used.
"""
from __future__ import annotations

import importlib
import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional

import numpy as np

from .common import (METRICS, PlotError, PlotOptions, metric_label, pick_metric, title, transform_scalar,
                     value_range, values)


def _require(module: str, package: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PlotError(f"{what} needs the optional package {package}: pip install 'distland[plot]'") from e


def _metric_order(data: Any, first: str) -> List[str]:
    return [first] + [m for m in METRICS if m in data.metrics and m != first]


# ------------------------------------------------------------------------------------------------ ParaView .vts
def export_vts(data: Any, base: str, opts: PlotOptions) -> str:
    """Write ``base.vts``: a structured grid with z = the metric (log10 with ``log``, clipped at ``zmax``).

    Every metric is also attached as point data in data units (NaN where not done or diverged), with ``done`` and
    ``valid`` (done and finite) flags: points that have no height sit at the top of the surface, so use
    ParaView's Threshold on ``valid`` to cut them out. A 1-D surface becomes a line of points at y = 0.
    ``opts.upsample`` = K > 1 writes a K× finer grid interpolated from the computed one (see :func:`upsample`).
    """
    hl = _require("pyevtk.hl", "pyevtk", "the ParaView export (--vtk)")
    metric = pick_metric(data, opts.metric)
    names = _metric_order(data, metric)   # the first array is the one ParaView colours by
    xs = np.asarray(data.x, dtype=np.float64)
    ys = None if data.y is None else np.asarray(data.y, dtype=np.float64)
    nx, ny = len(xs), 1 if ys is None else len(ys)
    height = values(data, metric, opts.log).reshape(nx, ny)
    fields = {name: values(data, name, False).reshape(nx, ny) for name in names}
    done = np.asarray(data.done, dtype=bool).reshape(nx, ny)
    if opts.upsample > 1:
        axes = [xs] if ys is None else [xs, ys]
        shape = tuple(len(a) for a in axes)
        fine_axes, fine = upsample(axes, {"__height": height.reshape(shape), "__done": np.where(done, 1.0, np.nan)
                                          .reshape(shape), **{k: v.reshape(shape) for k, v in fields.items()}},
                                   opts.upsample)
        xs, ys = fine_axes[0], (None if ys is None else fine_axes[1])
        nx, ny = len(xs), 1 if ys is None else len(ys)
        height = fine.pop("__height").reshape(nx, ny)
        done = np.isfinite(fine.pop("__done")).reshape(nx, ny)   # every corner of the point's cell done
        fields = {k: v.reshape(nx, ny) for k, v in fine.items()}
    valid = np.isfinite(height)
    if not valid.any():
        raise PlotError(f"{data.path}: no finite {metric} values to export")
    top = transform_scalar(opts.zmax, opts.log, "zmax")
    if top is not None:
        height = np.minimum(height, top)
    # NaN point coordinates break ParaView's bounds and camera; a gap is parked at the top and flagged instead.
    height[~valid] = float(np.nanmax(height)) if top is None else top

    def grid(a: np.ndarray) -> np.ndarray:
        # pyevtk takes (nx, ny, nz) arrays indexed [i, j, k] and writes them x-fastest as VTK expects.
        return np.ascontiguousarray(np.broadcast_to(a, (nx, ny)).reshape(nx, ny, 1))

    point_data: Dict[str, np.ndarray] = {name: grid(v) for name, v in fields.items()}
    point_data["done"] = grid(done.astype(np.uint8))
    point_data["valid"] = grid(valid.astype(np.uint8))
    ycol = np.zeros((1, 1)) if ys is None else ys[None, :]
    hl.gridToVTK(base, grid(xs[:, None]), grid(ycol), grid(height), pointData=point_data)
    return base + ".vts"


def upsample(axes: List[np.ndarray], arrays: Dict[str, np.ndarray], k: int
             ) -> "tuple[List[np.ndarray], Dict[str, np.ndarray]]":
    """Each array on a ``k``× finer grid (``(n − 1)·k + 1`` points per axis, the computed points among them).

    The method: scipy's ``RegularGridInterpolator``, ``cubic`` (a cubic spline per axis) when every axis has at
    least 4 points, else ``linear``. Gaps (NaN: not done or diverged) stay gaps: a fine point gets NaN when any
    corner of the coarse cell it lies in is NaN (a spline cannot pass through a hole); the gaps are filled with the
    array's mean only to fit the spline, which is then discarded there. Computed points keep their exact values.
    """
    try:
        from scipy.interpolate import RegularGridInterpolator
    except ImportError as e:
        raise PlotError("--upsample needs scipy: pip install scipy") from e
    if k < 1:
        raise PlotError(f"--upsample must be an integer >= 1, got {k}")
    if any(len(a) < 2 for a in axes):
        raise PlotError("--upsample needs at least 2 points on every axis")
    method = "cubic" if all(len(a) >= 4 for a in axes) else "linear"
    fine_axes = [np.concatenate([np.linspace(a[i], a[i + 1], k + 1)[:-1] for i in range(len(a) - 1)] + [a[-1:]])
                 for a in axes]
    mesh = np.stack(np.meshgrid(*fine_axes, indexing="ij"), axis=-1)
    out: Dict[str, np.ndarray] = {}
    for name, v in arrays.items():
        v = np.asarray(v, dtype=np.float64)
        bad = ~np.isfinite(v)
        filled = np.where(bad, np.nanmean(v) if (~bad).any() else 0.0, v)
        smooth = RegularGridInterpolator(axes, filled, method=method)(mesh)
        touched = RegularGridInterpolator(axes, bad.astype(np.float64), method="linear")(mesh) > 0
        smooth[touched] = np.nan
        every = tuple(slice(None, None, k) for _ in axes)
        smooth[every] = np.where(bad, np.nan, v)   # computed points exactly as computed (no spline round-off)
        out[name] = smooth
    return fine_axes, out


# ----------------------------------------------------------------------------------------------- XDMF sidecar
_NUMBER_TYPES = {"f": "Float", "i": "Int", "u": "UInt"}


def _data_item(parent: ET.Element, ref: str, shape: tuple, dtype: np.dtype) -> ET.Element:
    number = _NUMBER_TYPES[dtype.kind]
    if dtype.kind in "iu" and dtype.itemsize == 1:
        number = "Char" if dtype.kind == "i" else "UChar"
    item = ET.SubElement(parent, "DataItem", Dimensions=" ".join(map(str, shape)), NumberType=number,
                         Precision=str(dtype.itemsize), Format="HDF")
    item.text = ref
    return item


def export_xdmf(data: Any, out_path: str) -> str:
    """Write an XDMF (.xmf) file that lets ParaView / VisIt open the surface ``.h5`` itself, no copy of the data.

    XDMF has no transpose: it reads each dataset in storage order with the last index fastest, and that index
    becomes the viewer's X axis. distland stores ``[i, j]`` (y fastest), so in the viewer X shows the surface's y
    and Y its x (a mirror across the diagonal, recorded in an Information element); files of the paper authors'
    tool store ``[j, i]`` and come out unswapped.
    """
    import h5py

    with h5py.File(data.path, "r") as f:
        layout = getattr(data, "layout", None)   # the reader's verdict; else judge as it does
        ours = layout == "distland" if layout else ("distland_layout" in f.attrs or "done" in f)
        names = [m for m in METRICS if m in f]
        if not names or "xcoordinates" not in f:
            raise PlotError(f"{data.path} is not a surface file: no xcoordinates or metric datasets")
        nx = f["xcoordinates"].shape[0]
        two_d = "ycoordinates" in f and len(f[names[0]].shape) == 2
        ny = f["ycoordinates"].shape[0] if two_d else 1
        items = {n: (f[n].shape, f[n].dtype) for n in names}
        if "done" in f and f["done"].dtype.kind in "iu":   # bool is an HDF5 enum, which XDMF readers cannot read
            items["done"] = (f["done"].shape, f["done"].dtype)
        coord_types = {c: f[c].dtype for c in ("xcoordinates", "ycoordinates") if c in f}
    if two_d:
        slow, fast = ("xcoordinates", "ycoordinates") if ours else ("ycoordinates", "xcoordinates")
        dims = (nx, ny) if ours else (ny, nx)
    else:
        slow, fast, dims = "", "xcoordinates", (1, nx)
    for name, (shape, _) in items.items():
        if int(np.prod(shape)) != nx * ny or (two_d and tuple(shape) != dims):
            raise PlotError(f"{data.path}: dataset {name} has shape {tuple(shape)}, expected {dims}")

    h5 = os.path.relpath(os.path.abspath(data.path), os.path.dirname(os.path.abspath(out_path)))
    root = ET.Element("Xdmf", Version="2.0")
    domain = ET.SubElement(root, "Domain")
    grid = ET.SubElement(domain, "Grid", Name=os.path.splitext(os.path.basename(data.path))[0], GridType="Uniform")
    ET.SubElement(grid, "Topology", TopologyType="2DRectMesh", Dimensions=f"{dims[0]} {dims[1]}")
    geometry = ET.SubElement(grid, "Geometry", GeometryType="VXVY")
    _data_item(geometry, f"{h5}:/{fast}", (dims[1],), coord_types[fast])
    if slow:
        _data_item(geometry, f"{h5}:/{slow}", (dims[0],), coord_types[slow])
    else:   # a 1-D surface: a single row of points at y = 0, given inline
        zero = ET.SubElement(geometry, "DataItem", Dimensions="1", NumberType="Float", Precision="8", Format="XML")
        zero.text = "0.0"
    viewer_x, viewer_y = fast.replace("coordinates", ""), (slow or "_").replace("coordinates", "")
    ET.SubElement(grid, "Information", Name="axes",
                  Value=f"viewer X = surface {viewer_x}, viewer Y = surface {viewer_y}")
    for name, (shape, dtype) in items.items():
        attr = ET.SubElement(grid, "Attribute", Name=name, AttributeType="Scalar", Center="Node")
        _data_item(attr, f"{h5}:/{name}", tuple(shape), dtype)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    tree.write(out_path, encoding="utf-8", xml_declaration=True)
    return out_path


# ---------------------------------------------------------------------------------------------- plotly HTML
def _as_list(a: np.ndarray) -> List[Any]:
    """Nested lists with None for gaps: plain JSON numbers keep the file readable, and plotly leaves None as holes."""
    return [_as_list(r) for r in a] if a.ndim > 1 else [None if not np.isfinite(v) else float(v) for v in a]


def export_html(data: Any, path: str, opts: PlotOptions) -> str:
    """A self-contained HTML page (plotly.js inlined, opens offline) with a rotatable 3-D surface or a 1-D curve."""
    go = _require("plotly.graph_objects", "plotly", "the interactive HTML export (--html)")
    metric = pick_metric(data, opts.metric)
    v = values(data, metric, opts.log)
    lo, hi = value_range([v], opts, f"{data.path} {metric}")
    label = f"log10({metric})" if opts.log else metric_label(metric, False)
    x = np.asarray(data.x, dtype=np.float64)
    if data.y is None:
        trace = go.Scatter(x=x.tolist(), y=_as_list(v), mode="lines+markers", name=metric, connectgaps=False)
        fig = go.Figure(trace)
        fig.update_layout(xaxis_title="x", yaxis_title=label)
    else:
        top: Optional[float] = transform_scalar(opts.zmax, opts.log, "zmax")
        top = hi if top is None else top
        # plotly's Surface wants z[row][col] with rows along y: the transpose of the [i, j] layout.
        z = np.minimum(v.T, top)
        trace = go.Surface(x=x.tolist(), y=np.asarray(data.y, dtype=np.float64).tolist(), z=_as_list(z),
                           colorscale="Viridis", cmin=lo, cmax=hi, colorbar={"title": {"text": label}})
        fig = go.Figure(trace)
        fig.update_layout(scene={"xaxis_title": "x", "yaxis_title": "y", "zaxis_title": label})
    fig.update_layout(title={"text": title(data, metric, opts.log).replace("\n", "<br>")}, height=750)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


# ------------------------------------------------------------------------------------- volumes (K >= 3 axes)
def _vtk_array(parent: ET.Element, name: str, a: np.ndarray) -> None:
    """One DataArray in VTK's inline ``binary`` format: base64 of a UInt32 byte count, then the values (little
    endian), the points x-fastest as VTK orders them (our arrays are [i, j, k] with k fastest: transposed)."""
    import base64

    kinds = {"f8": "Float64", "u1": "UInt8"}
    a = np.asarray(a)
    a = a.astype("<f8") if a.dtype.kind == "f" else a.astype("u1")
    raw = np.ascontiguousarray(a.transpose()).tobytes()
    item = ET.SubElement(parent, "DataArray", type=kinds[a.dtype.str.lstrip("<|")], Name=name, format="binary",
                         NumberOfComponents="1")
    item.text = base64.b64encode(np.array(len(raw), dtype="<u4").tobytes() + raw).decode("ascii")


def export_vti(data: Any, base: str, opts: PlotOptions) -> str:
    """Write ``base.vti``: a 3-D surface as VTK image data (a volume ParaView renders, slices and contours).

    The grid's axes are evenly spaced, so the volume is an image with origin (x₀, y₀, z₀) and one spacing per axis,
    ParaView's X, Y, Z being the surface's x, y, z (no mirror). Every metric is a point array in data units (NaN
    where not done or diverged; log10 with ``log``, the first array being the one drawn), with ``done`` and
    ``valid`` flags: threshold on ``valid`` to cut the gaps out. Plain XML with base64 data, no extra package.
    """
    if data.ndim != 3:
        raise PlotError(f"{data.path}: a volume export needs 3 axes, this surface has {data.ndim}")
    metric = pick_metric(data, opts.metric)
    axes = [np.asarray(a, dtype=np.float64) for a in data.axes]
    shape = tuple(a.size for a in axes)
    spacing = [float(a[1] - a[0]) if a.size > 1 else 1.0 for a in axes]
    for a, step in zip(axes, spacing):
        if a.size > 2 and not np.allclose(np.diff(a), step, rtol=1e-9, atol=1e-12 * (abs(step) or 1.0)):
            raise PlotError(f"{data.path}: a volume export needs evenly spaced axes")
    extent = " ".join(f"0 {n - 1}" for n in shape)
    root = ET.Element("VTKFile", type="ImageData", version="1.0", byte_order="LittleEndian",
                      header_type="UInt32")
    image = ET.SubElement(root, "ImageData", WholeExtent=extent, Origin=" ".join(f"{a[0]:.17g}" for a in axes),
                          Spacing=" ".join(f"{s:.17g}" for s in spacing))
    piece = ET.SubElement(image, "Piece", Extent=extent)
    points = ET.SubElement(piece, "PointData", Scalars=metric)
    valid = np.isfinite(values(data, metric, False)) & np.asarray(data.done, dtype=bool)
    for name in _metric_order(data, metric):
        shown = values(data, name, opts.log and name == metric)
        _vtk_array(points, f"log10({name})" if opts.log and name == metric else name, shown.reshape(shape))
    if opts.log:
        points.set("Scalars", f"log10({metric})")
    _vtk_array(points, "done", np.asarray(data.done, dtype=np.uint8).reshape(shape))
    _vtk_array(points, "valid", valid.astype(np.uint8).reshape(shape))
    ET.SubElement(piece, "CellData")
    tree = ET.ElementTree(root)
    ET.indent(tree)
    tree.write(base + ".vti", encoding="utf-8", xml_declaration=True)
    return base + ".vti"


def export_xdmf_volume(data: Any, out_path: str) -> str:
    """An XDMF (.xmf) 3DRectMesh over the 3-D surface ``.h5`` itself, no copy of the data.

    As for 2-D (:func:`export_xdmf`), XDMF reads [i, j, k] with k fastest, and the fastest index is the viewer's X:
    viewer X, Y, Z are the surface's z, y, x (recorded in an Information element)."""
    import h5py

    with h5py.File(data.path, "r") as f:
        coords = ("xcoordinates", "ycoordinates", "zcoordinates")
        if any(c not in f for c in coords) or "axis4coordinates" in f:
            raise PlotError(f"{data.path}: the XDMF volume export needs a 3-D surface file (x, y, z axes)")
        dims = tuple(int(f[c].shape[0]) for c in coords)
        names = [m for m in METRICS if m in f] + [m for m in ("done",) if m in f and f[m].dtype.kind in "iu"]
        items = {n: (tuple(f[n].shape), f[n].dtype) for n in names}
        coord_types = {c: f[c].dtype for c in coords}
    for name, (shape, _) in items.items():
        if shape != dims:
            raise PlotError(f"{data.path}: dataset {name} has shape {shape}, expected {dims}")
    h5 = os.path.relpath(os.path.abspath(data.path), os.path.dirname(os.path.abspath(out_path)))
    root = ET.Element("Xdmf", Version="2.0")
    domain = ET.SubElement(root, "Domain")
    grid = ET.SubElement(domain, "Grid", Name=os.path.splitext(os.path.basename(data.path))[0], GridType="Uniform")
    ET.SubElement(grid, "Topology", TopologyType="3DRectMesh", Dimensions=" ".join(map(str, dims)))
    geometry = ET.SubElement(grid, "Geometry", GeometryType="VXVYVZ")
    for c in reversed(coords):   # VX is the fastest index: z
        _data_item(geometry, f"{h5}:/{c}", (dims[coords.index(c)],), coord_types[c])
    ET.SubElement(grid, "Information", Name="axes", Value="viewer X = surface z, viewer Y = surface y, "
                                                          "viewer Z = surface x")
    for name, (shape, dtype) in items.items():
        attr = ET.SubElement(grid, "Attribute", Name=name, AttributeType="Scalar", Center="Node")
        _data_item(attr, f"{h5}:/{name}", shape, dtype)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    tree.write(out_path, encoding="utf-8", xml_declaration=True)
    return out_path
