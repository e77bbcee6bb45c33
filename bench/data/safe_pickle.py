"""A restricted, lazy unpickler for the numpy-array dicts THINGS-EEG is published in.

Restricted: the official ``np.save``'d dicts, the NICE/ATM ``pickle.dump``'ed dicts and the numpy arrays inside UBP's
``torch.save``'d dicts need nothing but numpy's array and dtype constructors. Any other global (``os.system``,
``builtins.eval``, a class of some package, ...) is refused with :class:`UnsafePickleError` before anything it
names is imported or called. Persistent ids and ``torch`` globals raise :class:`TorchPickle` so the caller can hand
the file to ``torch.load(weights_only=True)`` instead.

Lazy: a counted byte string of at least ``blob_min`` bytes (the EEG array's raw data) is not read. Its position in the
file is recorded and the stream seeks past it, so the result holds a :class:`~bench.data.diskarray.DiskArray`
pointing into the source file. Probing an 8 GB file costs a few reads, and converting it streams through it.

The pure-Python unpickler (``pickle._Unpickler``) is used because the C one reads every byte string into memory. Its
``_unframer`` attribute (protocol-4 framing) is private; if a Python version lacks it, large strings are read
normally, which is correct but uses more memory.
"""
from __future__ import annotations

import codecs
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bench.data.diskarray import DiskArray
from bench.data.errors import DataFormatError, UnsafePickleError

BLOB_MIN = 1 << 20


class TorchPickle(Exception):
    """The pickle holds torch tensors (persistent ids or torch globals): read it with torch.load(weights_only=True)."""


class BlobRef:
    """A large byte string left in the file: ``length`` bytes at ``offset``."""

    __slots__ = ("offset", "length")

    def __init__(self, offset: int, length: int):
        self.offset, self.length = offset, length


class _ArrayStub:
    """Stands in for an ndarray while unpickling; becomes a real array or a DiskArray in :func:`_resolve`."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()
        self.dtype: np.dtype | None = None
        self.fortran = False
        self.data: Any = None

    def __setstate__(self, state: tuple) -> None:
        # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, rawdata); very old pickles omit the version.
        if len(state) == 5:
            state = state[1:]
        if len(state) != 4 or not isinstance(state[1], np.dtype):
            raise DataFormatError(f"unexpected ndarray state {type(state).__name__} of length {len(state)}")
        self.shape, self.dtype, self.fortran, self.data = tuple(state[0]), state[1], bool(state[2]), state[3]


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _ArrayStub:
    if cls is not np.ndarray:
        raise UnsafePickleError(f"_reconstruct called with {cls!r} instead of numpy.ndarray")
    return _ArrayStub()


def _frombuffer(buffer: Any, dtype: np.dtype, shape: tuple, order: str) -> _ArrayStub:
    stub = _ArrayStub()
    stub.shape, stub.dtype, stub.fortran, stub.data = tuple(shape), np.dtype(dtype), order == "F", buffer
    return stub


def _scalar(dtype: np.dtype, data: bytes = b"") -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} refused")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles store bytes as `_codecs.encode(text, 'latin1')`; no other codec is needed or admitted.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} refused")
    return codecs.encode(text, "latin1")


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    ALLOWED_GLOBALS[(_mod, "_reconstruct")] = _reconstruct
    ALLOWED_GLOBALS[(_mod, "scalar")] = _scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    ALLOWED_GLOBALS[(_mod, "_frombuffer")] = _frombuffer


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    dispatch = pickle._Unpickler.dispatch.copy()  # type: ignore[attr-defined]

    def __init__(self, fh: BinaryIO, path: Path, blob_min: int):
        super().__init__(fh)
        self._fh, self._path, self._blob_min = fh, path, blob_min
        self._size = path.stat().st_size

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            pass
        if module.split(".")[0] == "torch" or (module, name) == ("collections", "OrderedDict"):
            raise TorchPickle(f"{module}.{name}")
        raise UnsafePickleError(
            f"{self._path}: refused to unpickle: the file names the global {module}.{name}, but a THINGS-EEG file "
            f"needs only numpy arrays (allowed: numpy ndarray/dtype/_reconstruct/_frombuffer/scalar). "
            f"It may have been tampered with; nothing in it was run.")

    def persistent_load(self, pid: Any) -> Any:
        raise TorchPickle("persistent id")

    def _load_counted(self, size_format: str, kind: type) -> None:
        (length,) = struct.unpack(size_format, self.read(struct.calcsize(size_format)))
        if length >= self._blob_min and not self._inside_frame():
            offset = self._fh.tell()
            if offset + length > self._size:
                raise DataFormatError(f"{self._path}: truncated: a {length}-byte array starts at byte {offset} "
                                      f"but the file has {self._size} bytes")
            self._fh.seek(length, 1)
            self.append(BlobRef(offset, length))
            return
        data = self.read(length)
        if len(data) != length:
            raise DataFormatError(f"{self._path}: truncated inside a pickled byte string")
        self.append(kind(data))

    def _inside_frame(self) -> bool:
        unframer = getattr(self, "_unframer", None)
        if unframer is None:
            return True  # unknown internals: read normally
        frame = unframer.current_frame
        if frame is None:
            return False
        with frame.getbuffer() as buf:
            return frame.tell() < buf.nbytes

    def load_binbytes(self) -> None:
        self._load_counted("<I", bytes)

    def load_binbytes8(self) -> None:
        self._load_counted("<Q", bytes)

    def load_bytearray8(self) -> None:
        self._load_counted("<Q", bytearray)

    dispatch[pickle.BINBYTES[0]] = load_binbytes
    dispatch[pickle.BINBYTES8[0]] = load_binbytes8
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def load_restricted(path: str | Path, offset: int = 0, blob_min: int = BLOB_MIN) -> Any:
    """Unpickle the stream starting at ``offset`` in ``path`` (see the module docstring)."""
    path = Path(path)
    with open(path, "rb") as fh:
        fh.seek(offset)
        try:
            raw = _RestrictedUnpickler(fh, path, blob_min).load()
        except (DataFormatError, TorchPickle):
            raise
        except (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError, IndexError, KeyError,
                AttributeError, MemoryError, RecursionError) as exc:
            raise DataFormatError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc
        return _resolve(raw, path)


def _resolve(obj: Any, path: Path) -> Any:
    if isinstance(obj, _ArrayStub):
        return _stub_to_array(obj, path)
    if isinstance(obj, dict):
        return {k: _resolve(v, path) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, path) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, path) for v in obj)
    if isinstance(obj, BlobRef):
        with open(path, "rb") as fh:
            fh.seek(obj.offset)
            return fh.read(obj.length)
    return obj


def _stub_to_array(stub: _ArrayStub, path: Path) -> Any:
    if stub.dtype is None:
        raise DataFormatError(f"{path}: an ndarray in the pickle has no state (corrupt file)")
    shape, dtype = stub.shape, stub.dtype
    if dtype.hasobject:
        items = [_resolve(v, path) for v in (stub.data if isinstance(stub.data, list) else [])]
        count = int(np.prod(shape, dtype=np.int64))
        if len(items) != count:
            raise DataFormatError(f"{path}: object array of shape {shape} holds {len(items)} items (corrupt file)")
        out = np.empty(count, dtype=object)
        for i, item in enumerate(items):
            out[i] = item
        return out.reshape(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = stub.data
    if isinstance(data, BlobRef):
        if data.length != nbytes:
            raise DataFormatError(f"{path}: array {shape} {dtype} should hold {nbytes} bytes, the file has "
                                  f"{data.length} (corrupt or truncated file)")
        if not stub.fortran or len(shape) <= 1:
            return DiskArray(path, data.offset, dtype, shape)
        data = _resolve(data, path)  # Fortran order cannot be read by rows: materialise (rare, correct)
    if not isinstance(data, (bytes, bytearray)):
        raise DataFormatError(f"{path}: ndarray data is a {type(data).__name__}, expected bytes (corrupt file)")
    if len(data) != nbytes:
        raise DataFormatError(f"{path}: array {shape} {dtype} should hold {nbytes} bytes, found {len(data)}")
    return np.frombuffer(bytes(data), dtype=dtype).reshape(shape, order="F" if stub.fortran else "C").copy()
