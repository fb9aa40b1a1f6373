"""Read a TFLite flatbuffer once and give its graph as plain data: tensors with their constant values as NumPy
arrays, and operators with the builtin options a runner needs.

The flatbuffer is read through the PyPI package `tflite` (generated from TFLite's official schema). Constant
folding then removes what only exists to make the file small: weights stored as float16 behind a DEQUANTIZE op,
and sparse weights behind a DENSIFY op (TFLite's sparsity format: a traversal order over the tensor's dimensions,
each stored DENSE or SPARSE_CSR, optionally split into blocks). After `read_graph` every weight is a dense
float32 array and those ops are gone, so a runner only sees the operators that compute.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tflite
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.DimensionType import DimensionType
from tflite.Padding import Padding
from tflite.SparseIndexVector import SparseIndexVector
from tflite.TensorType import TensorType
from tflite.utils import BUILTIN_OPCODE2NAME

# TFLite tensor types -> NumPy dtypes (those a vision model's graph holds)
DTYPES: dict[int, np.dtype] = {
    TensorType.FLOAT32: np.dtype(np.float32),
    TensorType.FLOAT16: np.dtype(np.float16),
    TensorType.INT32: np.dtype(np.int32),
    TensorType.UINT8: np.dtype(np.uint8),
    TensorType.INT64: np.dtype(np.int64),
    TensorType.INT16: np.dtype(np.int16),
    TensorType.INT8: np.dtype(np.int8),
    TensorType.BOOL: np.dtype(np.bool_),
}

# Per opcode: its options table in the schema and the fields read from it (schema getter names). Ops not listed
# have no options a runner needs. Enum values are turned into their schema names ("SAME", "RELU6", ...).
OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "CONV_2D": (
        "Conv2DOptions",
        ("Padding", "StrideH", "StrideW", "DilationHFactor", "DilationWFactor", "FusedActivationFunction"),
    ),
    "DEPTHWISE_CONV_2D": (
        "DepthwiseConv2DOptions",
        (
            "Padding",
            "StrideH",
            "StrideW",
            "DilationHFactor",
            "DilationWFactor",
            "DepthMultiplier",
            "FusedActivationFunction",
        ),
    ),
    "MAX_POOL_2D": (
        "Pool2DOptions",
        ("Padding", "StrideH", "StrideW", "FilterHeight", "FilterWidth", "FusedActivationFunction"),
    ),
    "AVERAGE_POOL_2D": (
        "Pool2DOptions",
        ("Padding", "StrideH", "StrideW", "FilterHeight", "FilterWidth", "FusedActivationFunction"),
    ),
    "ADD": ("AddOptions", ("FusedActivationFunction",)),
    "CONCATENATION": ("ConcatenationOptions", ("Axis", "FusedActivationFunction")),
    "FULLY_CONNECTED": ("FullyConnectedOptions", ("FusedActivationFunction", "KeepNumDims", "WeightsFormat")),
    "RESIZE_BILINEAR": ("ResizeBilinearOptions", ("AlignCorners", "HalfPixelCenters")),
    "DEPTH_TO_SPACE": ("DepthToSpaceOptions", ("BlockSize",)),
    "MEAN": ("ReducerOptions", ("KeepDims",)),
}
_ENUMS = {
    "Padding": {v: k for k, v in vars(Padding).items() if not k.startswith("_")},
    "FusedActivationFunction": {v: k for k, v in vars(ActivationFunctionType).items() if not k.startswith("_")},
}


@dataclass(frozen=True)
class Dimension:
    """How one dimension of a sparse tensor's traversal is stored: DENSE (``size`` entries) or SPARSE_CSR
    (``segments``: where each parent's entries start and end in ``indices``, the coordinates kept)."""

    dense: bool
    size: int = 0
    segments: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass(frozen=True)
class Sparsity:
    """TFLite's sparsity parameters. ``order`` lists the expanded dimensions (the tensor's own, then one per
    block dimension) in storage order; ``block_map[k]`` is the tensor dimension that block dimension k splits;
    ``dims[i]`` stores the expanded dimension ``order[i]``."""

    order: tuple[int, ...]
    block_map: tuple[int, ...]
    dims: tuple[Dimension, ...]


@dataclass
class Tensor:
    """A tensor of the graph: ``data`` holds a constant's values (None for an activation)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None = None
    # per-tensor or per-axis affine quantization (scale, zero point, axis), for int8/uint8 constants
    quantization: tuple[np.ndarray, np.ndarray, int] | None = None
    sparsity: Sparsity | None = None


@dataclass(frozen=True)
class Operator:
    """One op: its opcode name, the tensors it reads and writes (-1: an optional input left out), its options."""

    opcode: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any]


@dataclass
class Graph:
    """A model's (first) subgraph."""

    tensors: list[Tensor]
    operators: list[Operator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def constant(self, index: int) -> np.ndarray:
        data = self.tensors[index].data
        if data is None:
            raise ValueError(f"tensor {index} ({self.tensors[index].name}) is not a constant")
        return data


# --------------------------------------------------------------------------------------------------- reading


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _options(op: Any, opcode: str) -> dict[str, Any]:
    if opcode not in OPTIONS:
        return {}
    class_name, fields = OPTIONS[opcode]
    table = op.BuiltinOptions()
    if table is None:
        raise ValueError(f"{opcode} has no {class_name}")
    options = getattr(tflite, class_name)()
    options.Init(table.Bytes, table.Pos)
    read: dict[str, Any] = {}
    for name in fields:
        value = getattr(options, name)()
        read[_snake(name)] = _ENUMS[name][value] if name in _ENUMS else value
    return read


def _index_vector(kind: int, table: Any) -> np.ndarray:
    """A sparse dimension's segments or indices (stored as int32, uint16 or uint8 vectors) as int64."""
    vectors = {
        SparseIndexVector.Int32Vector: tflite.Int32Vector,
        SparseIndexVector.Uint16Vector: tflite.Uint16Vector,
        SparseIndexVector.Uint8Vector: tflite.Uint8Vector,
    }
    if kind == SparseIndexVector.NONE or table is None:
        return np.zeros(0, np.int64)
    vector = vectors[kind]()
    vector.Init(table.Bytes, table.Pos)
    return np.asarray(vector.ValuesAsNumpy(), dtype=np.int64)


def _sparsity(tensor: Any) -> Sparsity | None:
    params = tensor.Sparsity()
    if params is None:
        return None
    dims = []
    for i in range(params.DimMetadataLength()):
        meta = params.DimMetadata(i)
        if meta.Format() == DimensionType.DENSE:
            dims.append(Dimension(dense=True, size=int(meta.DenseSize())))
        else:
            segments = _index_vector(meta.ArraySegmentsType(), meta.ArraySegments())
            indices = _index_vector(meta.ArrayIndicesType(), meta.ArrayIndices())
            dims.append(Dimension(dense=False, segments=segments, indices=indices))
    # (flatbuffers' *AsNumpy gives 0, not an empty array, for an absent vector: go by the length)
    order = tuple(int(params.TraversalOrder(j)) for j in range(params.TraversalOrderLength()))
    block_map = tuple(int(params.BlockMap(j)) for j in range(params.BlockMapLength()))
    return Sparsity(order=order, block_map=block_map, dims=tuple(dims))


def _quantization(tensor: Any) -> tuple[np.ndarray, np.ndarray, int] | None:
    params = tensor.Quantization()
    if params is None or params.ScaleLength() == 0:
        return None
    scale = np.asarray(params.ScaleAsNumpy(), np.float32)
    zero = np.asarray(params.ZeroPointAsNumpy(), np.int64) if params.ZeroPointLength() else np.zeros_like(scale)
    return scale, zero.astype(np.int64), int(params.QuantizedDimension())


def _buffer(model: Any, file: bytes, index: int) -> bytes | None:
    """The bytes of buffer ``index``: inside the flatbuffer, or (models over 2 GB) at an offset of the file."""
    buffer = model.Buffers(index)
    if buffer is None:
        return None
    if buffer.DataLength():
        return bytes(buffer.DataAsNumpy().tobytes())
    if buffer.Offset() > 1:  # 0 and 1 mean "no data" in the schema
        return file[buffer.Offset() : buffer.Offset() + buffer.Size()]
    return None


def _tensor(model: Any, file: bytes, graph: Any, index: int) -> Tensor:
    raw = graph.Tensors(index)
    kind = raw.Type()
    if kind not in DTYPES:
        raise ValueError(f"tensor {index}: unsupported TFLite type {kind}")
    dtype = DTYPES[kind]
    shape = tuple(int(raw.Shape(j)) for j in range(raw.ShapeLength()))
    sparsity = _sparsity(raw)
    data = None
    payload = _buffer(model, file, raw.Buffer())
    if payload:
        values = np.frombuffer(payload, dtype=dtype).copy()
        # a sparse constant holds only its kept values: shaped later, by densify
        data = values if sparsity is not None else values.reshape(shape)
    name = raw.Name().decode("utf-8", "replace")
    return Tensor(index, name, shape, dtype, data, _quantization(raw), sparsity)


def read_raw_graph(path: Path | str) -> Graph:
    """The first subgraph of the ``.tflite`` file as it is stored (no folding). A truncated or damaged file is
    a ValueError naming it (the flatbuffer reader itself fails with a bare struct.error or IndexError)."""
    file = Path(path).read_bytes()
    if not tflite.Model.ModelBufferHasIdentifier(file, 0):
        raise ValueError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        return _graph(file)
    except (struct.error, IndexError, ValueError) as err:
        raise ValueError(f"{path}: a truncated or damaged TFLite file ({type(err).__name__}: {err})") from err


def _graph(file: bytes) -> Graph:
    model = tflite.Model.GetRootAsModel(file, 0)
    if model.SubgraphsLength() < 1:
        raise ValueError("no subgraph")
    graph = model.Subgraphs(0)
    tensors = [_tensor(model, file, graph, i) for i in range(graph.TensorsLength())]
    operators = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        # the schema keeps small codes in a deprecated int8 field and all codes in an int32 one: take the larger
        number = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        opcode = BUILTIN_OPCODE2NAME.get(number, f"#{number}")
        if opcode == "CUSTOM":
            opcode = "CUSTOM:" + (code.CustomCode() or b"").decode()
        inputs = tuple(int(op.Inputs(j)) for j in range(op.InputsLength()))
        outputs = tuple(int(op.Outputs(j)) for j in range(op.OutputsLength()))
        operators.append(Operator(opcode, inputs, outputs, _options(op, opcode)))
    inputs = tuple(int(graph.Inputs(j)) for j in range(graph.InputsLength()))
    outputs = tuple(int(graph.Outputs(j)) for j in range(graph.OutputsLength()))
    return Graph(tensors, operators, inputs, outputs)


# --------------------------------------------------------------------------------------------------- folding


def densify(values: np.ndarray, shape: tuple[int, ...], sparsity: Sparsity) -> np.ndarray:
    """The dense tensor of ``shape`` whose kept ``values`` and ``sparsity`` TFLite stores.

    Storage walks the expanded dimensions in ``sparsity.order``, level by level. At each level every entry of
    the level above (its position in that level's storage) has children: ``size`` consecutive ones for a DENSE
    level (positions parent·size + i, coordinate i), or, for a SPARSE_CSR level, the entries
    ``segments[parent]`` to ``segments[parent + 1]`` (positions themselves, coordinates ``indices[...]``). The
    positions of the last level index ``values``. Block dimensions are then folded back into the dimension they
    split: coordinate · block size + coordinate within the block.
    """
    rank = len(shape)
    if len(sparsity.order) != len(sparsity.dims):
        raise ValueError("sparsity: traversal order and dimension metadata differ in length")
    positions = np.zeros(1, np.int64)
    coords = np.zeros((1, 0), np.int64)
    level_size: dict[int, int] = {}  # expanded dimension -> its extent
    for dimension, meta in zip(sparsity.order, sparsity.dims, strict=True):
        if meta.dense:
            level_size[dimension] = meta.size
            child = np.arange(meta.size, dtype=np.int64)
            coords = np.concatenate(
                [np.repeat(coords, meta.size, axis=0), np.tile(child, len(positions))[:, None]], axis=1
            )
            positions = (positions[:, None] * meta.size + child[None, :]).reshape(-1)
        else:
            starts, stops = meta.segments[positions], meta.segments[positions + 1]
            counts = stops - starts
            # every parent's run of stored entries, concatenated
            stored = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
            coords = np.concatenate([np.repeat(coords, counts, axis=0), meta.indices[stored][:, None]], axis=1)
            positions = stored
    if len(positions) != len(values):
        raise ValueError(f"sparsity: {len(positions)} positions for {len(values)} stored values")
    by_dimension = np.empty_like(coords)
    by_dimension[:, list(sparsity.order)] = coords  # columns in expanded-dimension order
    index = by_dimension[:, :rank].copy()
    for k, target in enumerate(sparsity.block_map):
        block = level_size[rank + k]
        index[:, target] = index[:, target] * block + by_dimension[:, rank + k]
    dense = np.zeros(shape, dtype=values.dtype)
    dense[tuple(index.T)] = values[positions]
    return dense


def dequantize(tensor: Tensor) -> np.ndarray:
    """A constant's values as float32: float16 widened, int8/uint8 through its affine quantization."""
    data = tensor.data
    if data is None:
        raise ValueError(f"tensor {tensor.index} ({tensor.name}) has no data to dequantize")
    if data.dtype.kind == "f":
        return data.astype(np.float32)
    if tensor.quantization is None:
        raise ValueError(f"tensor {tensor.index} ({tensor.name}): integer data without quantization parameters")
    scale, zero, axis = tensor.quantization
    shape = [1] * data.ndim
    if len(scale) > 1:  # per-axis
        shape[axis] = len(scale)
    return ((data.astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def fold_constants(graph: Graph) -> Graph:
    """The graph with every DENSIFY and DEQUANTIZE of a constant evaluated: their outputs become dense float32
    constants (DENSIFY keeps the stored dtype; a DEQUANTIZE after it widens), and the ops are dropped."""
    tensors = list(graph.tensors)
    operators = []
    for op in graph.operators:
        source = tensors[op.inputs[0]] if op.inputs else None
        if op.opcode in ("DENSIFY", "DEQUANTIZE") and source is not None and source.data is not None:
            if op.opcode == "DENSIFY":
                if source.sparsity is None:
                    raise ValueError(f"DENSIFY of tensor {source.index}, which has no sparsity parameters")
                value = densify(source.data, source.shape, source.sparsity)
            else:
                if source.sparsity is not None:
                    raise ValueError(f"DEQUANTIZE of the sparse tensor {source.index}: expected a DENSIFY first")
                value = dequantize(source)
            out = tensors[op.outputs[0]]
            tensors[out.index] = Tensor(out.index, out.name, out.shape, value.dtype, value.reshape(out.shape))
        else:
            operators.append(op)
    return Graph(tensors, operators, graph.inputs, graph.outputs)


def read_graph(path: Path | str) -> Graph:
    """The ``.tflite`` file's first subgraph with its weights as dense float32 constants (see `fold_constants`)."""
    return fold_constants(read_raw_graph(path))
