"""Turning Flower ``ArrayRecord`` replies into one ``(n, d)`` update matrix, and back.

The server knows the arrays it sent (the global model); every reply must carry the same
keys with the same shapes and dtypes. :class:`Layout` records them once per round and
decodes each reply straight into a row of a preallocated matrix:

* fast path: a reply array whose serialized ``.npy`` header is byte-identical to the one
  ``numpy.save`` writes for the expected dtype and shape is read with
  ``numpy.frombuffer`` (no parsing, no intermediate copy);
* slow path: anything else is parsed with :meth:`flwr.app.Array.numpy` (``np.load`` with
  ``allow_pickle=False``) and checked for the exact dtype and shape.

Malformed replies raise :class:`MalformedReply` with a reason; the strategy rejects the
client and goes on. Only floating-point arrays are aggregated; integer buffers (e.g.
BatchNorm's ``num_batches_tracked``) are not learnable and keep the global value.
"""

from __future__ import annotations

import io
from typing import Dict, List, Optional, Tuple

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord

NUMPY_STYPE = "numpy.ndarray"


class MalformedReply(ValueError):
    """A reply that cannot be turned into an update (wrong keys, shapes, dtypes, encoding)."""


def _npy_header(dtype: np.dtype, shape: Tuple[int, ...]) -> bytes:
    """The exact header ``numpy.save`` writes for a C-ordered array of ``dtype`` and ``shape``."""
    from numpy.lib import format as npformat

    info = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    buf = io.BytesIO()
    try:
        npformat.write_array_header_1_0(buf, info)
    except ValueError:  # header too long for format 1.0 (huge shapes): numpy.save uses 2.0
        buf = io.BytesIO()
        npformat.write_array_header_2_0(buf, info)
    return buf.getvalue()


def _trailing_bytes(data: bytes) -> int:
    """How many bytes of a serialized ``.npy`` array follow its data (``np.load`` ignores them)."""
    from numpy.lib import format as npformat

    buf = io.BytesIO(data)
    version = npformat.read_magic(buf)
    read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    shape, _, dtype = read(buf)
    if dtype.hasobject:
        return 0  # rejected as undecodable by np.load(allow_pickle=False)
    return len(data) - buf.tell() - int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


class Layout:
    """Keys, shapes and dtypes of the global ``ArrayRecord`` and their place in the flat vector.

    Parameters
    ----------
    arrays : flwr.app.ArrayRecord
        The global arrays the server sent this round (their key order fixes the layout).

    Attributes
    ----------
    keys : list of str
        All keys, in record order.
    float_keys : list of str
        The floating-point arrays, the ones aggregated; ``slices[key]`` is each one's range
        in the flat vector of length ``d``.
    dtype : numpy.dtype
        The dtype of the flat vector (the common type of the float arrays).
    """

    def __init__(self, arrays: ArrayRecord) -> None:
        if not isinstance(arrays, ArrayRecord) or len(arrays) == 0:
            raise ValueError("the global model must be a non-empty ArrayRecord")
        self.keys: List[str] = list(arrays.keys())
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self.dtypes: Dict[str, np.dtype] = {}
        self.slices: Dict[str, slice] = {}
        self.float_keys: List[str] = []
        self._headers: Dict[str, bytes] = {}
        offset = 0
        for key in self.keys:
            arr = arrays[key]
            if arr.stype != NUMPY_STYPE:
                raise ValueError(f"global array {key!r} has serialization {arr.stype!r}; expected {NUMPY_STYPE!r}")
            dtype, shape = np.dtype(arr.dtype), tuple(int(s) for s in arr.shape)
            self.shapes[key], self.dtypes[key] = shape, dtype
            self._headers[key] = _npy_header(dtype, shape)
            if dtype.kind == "f":
                size = int(np.prod(shape, dtype=np.int64))
                self.slices[key] = slice(offset, offset + size)
                self.float_keys.append(key)
                offset += size
        if not self.float_keys:
            raise ValueError("the global model has no floating-point arrays to aggregate")
        self.d = offset
        self._keyset = frozenset(self.keys)
        self._dtype_names = {k: str(v) for k, v in self.dtypes.items()}
        # what a well-formed reply array looks like: (key, dtype, count, .npy header, total bytes)
        self._fast = [(k, self.dtypes[k], self.slices[k].stop - self.slices[k].start, self._headers[k],
                       len(self._headers[k]) + (self.slices[k].stop - self.slices[k].start) * self.dtypes[k].itemsize)
                      for k in self.float_keys]
        self._other = [(k, self._headers[k], len(self._headers[k])
                        + int(np.prod(self.shapes[k], dtype=np.int64)) * self.dtypes[k].itemsize)
                       for k in self.keys if k not in self.slices]
        self.dtype = np.result_type(*(self.dtypes[k] for k in self.float_keys))

    # ------------------------------------------------------------------ decoding
    def _decode(self, key: str, arr: Array, out: np.ndarray, minus: Optional[np.ndarray]) -> None:
        """Write array ``key`` of a reply (minus ``minus``) into ``out`` (1-D), or raise MalformedReply."""
        if not isinstance(arr, Array):
            raise MalformedReply(f"array {key!r} is a {type(arr).__name__}, not a flwr Array")
        if arr.stype != NUMPY_STYPE:
            raise MalformedReply(f"array {key!r} has serialization {arr.stype!r}")
        dtype, shape, header = self.dtypes[key], self.shapes[key], self._headers[key]
        data = arr.data
        if (isinstance(data, bytes) and len(data) == len(header) + out.size * dtype.itemsize
                and data.startswith(header)):
            value = np.frombuffer(data, dtype=dtype, count=out.size, offset=len(header))
        else:
            try:
                extra = _trailing_bytes(data)
                value = arr.numpy()
            except Exception as exc:  # noqa: BLE001 - any decoding failure is the client's fault
                raise MalformedReply(f"array {key!r} cannot be decoded ({type(exc).__name__}: {exc})") from None
            if extra:
                raise MalformedReply(f"array {key!r} has {extra} byte(s) after its data")
            if value.dtype != dtype:
                raise MalformedReply(f"array {key!r} has dtype {value.dtype}, expected {dtype}")
            if tuple(value.shape) != shape:
                raise MalformedReply(f"array {key!r} has shape {tuple(value.shape)}, expected {shape}")
            value = value.ravel()
        if minus is None:
            out[...] = value
        else:
            np.subtract(value, minus, out=out)

    def views(self, vector: np.ndarray) -> List[np.ndarray]:
        """The place of every float array in ``vector`` (shape ``(d,)``), as views, in key order."""
        return [vector[self.slices[key]] for key in self.float_keys]

    def decode_into(self, record: object, row: np.ndarray, minus: Optional[np.ndarray] = None) -> None:
        """Fill ``row`` (shape ``(d,)``) with the flattened float arrays of ``record`` (minus ``minus``).

        ``minus`` (shape ``(d,)``, e.g. the global model) is subtracted in the same pass.
        Raises :class:`MalformedReply` when a key is missing or extra, or an array has the
        wrong encoding, dtype or shape. Non-float arrays are checked the same way and dropped.
        """
        self.decode_views(record, self.views(row), None if minus is None else self.views(minus))

    def decode_views(self, record: object, out: List[np.ndarray], minus: Optional[List[np.ndarray]] = None) -> None:
        """:meth:`decode_into` with the destination (and ``minus``) already cut by :meth:`views`.

        The per-round hot loop of the server: a strategy keeps the views of its update
        buffer's rows and of the global model across replies and rounds, so each array of a
        well-formed reply costs one header comparison and one ``np.subtract`` (or copy) from
        the reply's bytes, with no intermediate array.
        """
        if not isinstance(record, ArrayRecord):
            raise MalformedReply(f"the reply's arrays are a {type(record).__name__}, not an ArrayRecord")
        items = record.__dict__.get("_data")  # flwr's TypedDict storage: no copy, no type checks
        if type(items) is not dict:  # pragma: no cover - another flwr layout
            items = dict(record.items())
        if len(items) != len(self.keys) or items.keys() != self._keyset:
            missing, extra = sorted(self._keyset - items.keys()), sorted(items.keys() - self._keyset)
            raise MalformedReply(f"wrong array keys (missing {missing[:5]}, unexpected {extra[:5]})")
        for j, (key, dtype, count, header, nbytes) in enumerate(self._fast):
            arr = items[key]
            data = arr.data if type(arr) is Array else None
            dst = out[j]
            if (type(data) is bytes and len(data) == nbytes and arr.stype == NUMPY_STYPE
                    and data.startswith(header)):
                value = np.frombuffer(data, dtype, count, len(header))
                if minus is None:
                    dst[...] = value
                else:
                    np.subtract(value, minus[j], out=dst)
            else:
                self._decode(key, arr, dst, None if minus is None else minus[j])
        for key, header, nbytes in self._other:
            arr = items[key]
            data = arr.data if type(arr) is Array else None
            if not (type(data) is bytes and len(data) == nbytes and arr.stype == NUMPY_STYPE
                    and data.startswith(header)):
                scratch = np.empty(int(np.prod(self.shapes[key], dtype=np.int64)), dtype=self.dtypes[key])
                self._decode(key, arr, scratch, None)

    def flatten(self, record: ArrayRecord) -> np.ndarray:
        """The flat ``(d,)`` vector of the float arrays of ``record`` (the global model)."""
        row = np.empty(self.d, dtype=self.dtype)
        self.decode_into(record, row)
        return row

    # ------------------------------------------------------------------ encoding
    def to_record(self, flat: np.ndarray, template: ArrayRecord) -> ArrayRecord:
        """An ``ArrayRecord`` with the float arrays taken from ``flat`` and the others from ``template``."""
        out = ArrayRecord()
        for key in self.keys:
            if key in self.slices:  # the bytes numpy.save would write, without its BytesIO round trip
                value = np.ascontiguousarray(flat[self.slices[key]], dtype=self.dtypes[key])
                out[key] = Array(self._dtype_names[key], self.shapes[key], NUMPY_STYPE,
                                 b"".join((self._headers[key], memoryview(value).cast("B"))))
            else:
                out[key] = template[key]
        return out


def metric_scalar(metrics: object, key: str) -> Optional[float]:
    """The finite scalar ``metrics[key]`` of a ``MetricRecord``, or ``None`` when absent or invalid."""
    try:
        value = metrics[key]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def split_records(content: object) -> Tuple[list, list]:
    """The ArrayRecords and MetricRecords of a ``RecordDict``, in one pass.

    (``RecordDict.array_records`` / ``.metric_records`` build a new type-checked dict on
    every access, which costs more than decoding a small model.)
    """
    arrays, metrics = [], []
    for value in content.values():  # type: ignore[attr-defined]
        if isinstance(value, ArrayRecord):
            arrays.append(value)
        elif isinstance(value, MetricRecord):
            metrics.append(value)
    return arrays, metrics
