"""A TFLite graph (`curate.detect.tflite_weights.Graph`) as a PyTorch module that runs a batch in one pass.

Each operator becomes a small module holding its weights converted once to PyTorch's layout. Activations of
rank 4 travel as NCHW (TFLite's are NHWC), so convolutions run natively; the ops whose meaning depends on the
layout (RESHAPE, CONCATENATION, MEAN, PAD, DEPTH_TO_SPACE, and constants broadcast against an activation) map
their NHWC axes, and outputs of rank 4 go back to NHWC. Dimension 0 is the batch: the graph's own batch of 1
becomes N, and no op mixes images.

TFLite's SAME padding puts the odd pixel at the right and bottom (pad_before = total // 2), which PyTorch's
symmetric `padding` cannot say: such convolutions and pools pad explicitly first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curate.detect.tflite_weights import Graph, Operator, read_graph

# NHWC axis -> NCHW axis, for tensors of rank 4
_NCHW_AXIS = (0, 2, 3, 1)

# Fused activations, applied in place: they always act on an op's fresh output.
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "NONE": lambda x: x,
    "RELU": torch.relu_,
    "RELU6": lambda x: x.clamp_(0.0, 6.0),
    "RELU_N1_TO_1": lambda x: x.clamp_(-1.0, 1.0),
    "TANH": torch.tanh_,
}


def _activation(op: Operator) -> Callable[[torch.Tensor], torch.Tensor]:
    name = op.options.get("fused_activation_function", "NONE")
    if name not in _ACTIVATIONS:
        raise NotImplementedError(f"{op.opcode}: fused activation {name}")
    return _ACTIVATIONS[name]


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite's SAME padding of one spatial dimension: (before, after), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _nchw_constant(value: np.ndarray, rank: int) -> torch.Tensor:
    """A constant broadcast against an activation of ``rank``, in the layout that activation travels in: NHWC
    broadcasting aligns trailing axes, so a lower-rank constant is first given leading 1s."""
    tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if rank != 4:
        return tensor
    tensor = tensor.reshape((1,) * (4 - tensor.ndim) + tuple(tensor.shape))
    return tensor.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------------- steps


class _Conv(nn.Module):
    """CONV_2D and DEPTHWISE_CONV_2D: NCHW weights, explicit asymmetric padding where SAME needs it."""

    def __init__(self, graph: Graph, op: Operator) -> None:
        super().__init__()
        source = graph.tensors[op.inputs[0]]
        weight = graph.constant(op.inputs[1])
        depthwise = op.opcode == "DEPTHWISE_CONV_2D"
        in_channels = source.shape[3]
        if depthwise:
            # (1, KH, KW, C·M) -> (C·M, 1, KH, KW): output channel c·M + m reads input channel c, in both
            kernel = np.transpose(weight, (3, 0, 1, 2))
            self.groups = in_channels
        else:
            kernel = np.transpose(weight, (0, 3, 1, 2))  # (O, KH, KW, I) -> (O, I, KH, KW)
            self.groups = 1
        self.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(kernel)), requires_grad=False)
        bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        self.bias = None if bias is None else nn.Parameter(torch.from_numpy(bias.copy()), requires_grad=False)
        o = op.options
        self.stride = (o["stride_h"], o["stride_w"])
        self.dilation = (o["dilation_h_factor"], o["dilation_w_factor"])
        self.padding, self.pre_pad = _spatial_padding(o, source.shape[1:3], kernel.shape[2:], self.stride)
        self.act = _activation(op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.act(y)


def _spatial_padding(
    options: dict[str, Any], size: Sequence[int], kernel: Sequence[int], stride: Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """(symmetric padding for the op itself, explicit (left, right, top, bottom) padding before it, or None).
    Padding "EXPLICIT" is that of a PAD folded into the op (`fold_pads`), (top, bottom, left, right)."""
    mode = options["padding"]
    if mode == "VALID":
        return (0, 0), None
    if mode == "EXPLICIT":
        top, bottom, left, right = options["explicit_padding"]
    elif mode == "SAME":
        dilation = (options.get("dilation_h_factor", 1), options.get("dilation_w_factor", 1))
        (top, bottom), (left, right) = (same_padding(size[i], kernel[i], stride[i], dilation[i]) for i in range(2))
    else:
        raise NotImplementedError(f"padding {mode}")
    if top == bottom and left == right:
        return (top, left), None
    return (0, 0), (left, right, top, bottom)


def fold_pads(graph: Graph) -> list[Operator]:
    """The graph's operators with each zero PAD of height and width alone that feeds only a VALID convolution
    folded into that convolution's padding: BlazeFace pads before 43 of its convolutions, and a separate pad
    costs a copy of the whole map each time."""
    readers: dict[int, list[int]] = {}
    for k, op in enumerate(graph.operators):
        for i in op.inputs:
            readers.setdefault(i, []).append(k)
    operators = list(graph.operators)
    for k, op in enumerate(graph.operators):
        if op.opcode != "PAD" or len(op.inputs) != 2 or len(graph.tensors[op.inputs[0]].shape) != 4:
            continue
        pads = graph.constant(op.inputs[1]).astype(int)
        users = readers.get(op.outputs[0], [])
        if pads[0].any() or pads[3].any() or len(users) != 1 or op.outputs[0] in graph.outputs:
            continue
        user = operators[users[0]]
        if user.opcode not in ("CONV_2D", "DEPTHWISE_CONV_2D") or user.options["padding"] != "VALID":
            continue
        if user.inputs[0] != op.outputs[0]:
            continue
        explicit = (int(pads[1, 0]), int(pads[1, 1]), int(pads[2, 0]), int(pads[2, 1]))
        options = {**user.options, "padding": "EXPLICIT", "explicit_padding": explicit}
        operators[users[0]] = Operator(user.opcode, (op.inputs[0], *user.inputs[1:]), user.outputs, options)
        operators[k] = Operator("FOLDED", (), (), {})
    return [op for op in operators if op.opcode != "FOLDED"]


class _MaxPool(nn.Module):
    def __init__(self, graph: Graph, op: Operator) -> None:
        super().__init__()
        o = op.options
        self.kernel = (o["filter_height"], o["filter_width"])
        self.stride = (o["stride_h"], o["stride_w"])
        size = graph.tensors[op.inputs[0]].shape[1:3]
        # TFLite's pools ignore padded cells, as PyTorch's implicit padding does; explicit padding uses -inf,
        # which a max never picks
        self.padding, self.pre_pad = _spatial_padding(o, size, self.kernel, self.stride)
        self.act = _activation(op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad, value=float("-inf"))
        return self.act(F.max_pool2d(x, self.kernel, self.stride, self.padding))


class _PRelu(nn.Module):
    def __init__(self, graph: Graph, op: Operator) -> None:
        super().__init__()
        rank = len(graph.tensors[op.inputs[0]].shape)
        alpha = graph.constant(op.inputs[1])
        # one slope per channel (the usual case) runs as PyTorch's fused prelu, which wants them as (C,)
        self.per_channel = rank == 4 and alpha.size == alpha.shape[-1]
        value = torch.from_numpy(alpha.reshape(-1).copy()) if self.per_channel else _nchw_constant(alpha, rank)
        self.alpha = nn.Parameter(value, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            return F.prelu(x, self.alpha)
        return torch.where(x >= 0, x, x * self.alpha)


class _Add(nn.Module):
    """ADD of two activations, or of an activation and a constant."""

    def __init__(self, graph: Graph, op: Operator) -> None:
        super().__init__()
        rank = len(graph.tensors[op.outputs[0]].shape)
        constants = [graph.tensors[i].data for i in op.inputs]
        value = next((c for c in constants if c is not None), None)
        self.const = None if value is None else nn.Parameter(_nchw_constant(value, rank), requires_grad=False)
        self.act = _activation(op)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        a, b = (xs[0], self.const) if self.const is not None else xs
        assert b is not None
        return self.act(a + b)


class _Pad(nn.Module):
    def __init__(self, graph: Graph, op: Operator) -> None:
        super().__init__()
        pads = graph.constant(op.inputs[1]).astype(int)  # (rank, 2): before, after per NHWC axis
        rank = pads.shape[0]
        if pads[0].any():
            raise NotImplementedError("PAD of the batch dimension")
        axes = [_NCHW_AXIS[a] for a in range(rank)] if rank == 4 else list(range(rank))
        by_axis = {axes[a]: pads[a] for a in range(rank)}
        # F.pad lists (before, after) from the last axis backwards
        self.pad = tuple(int(v) for axis in range(rank - 1, 0, -1) for v in by_axis[axis])
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            raise NotImplementedError("PAD with a constant value (PADV2)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad)


class _ResizeBilinear(nn.Module):
    def __init__(self, graph: Graph, op: Operator) -> None:
        super().__init__()
        self.size = tuple(int(v) for v in graph.constant(op.inputs[1]))
        self.align_corners = bool(op.options["align_corners"])
        # half-pixel centres are PyTorch's align_corners=False; TF1's legacy mode (neither) has no equivalent
        if not self.align_corners and not op.options["half_pixel_centers"]:
            raise NotImplementedError("RESIZE_BILINEAR without half_pixel_centers or align_corners")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=self.align_corners)


class _DepthToSpace(nn.Module):
    """NHWC DEPTH_TO_SPACE: output (h·b + i, w·b + j, c) reads channel (i·b + j)·C + c, an order that
    ``pixel_shuffle`` (channel c·b² + i·b + j) does not share."""

    def __init__(self, graph: Graph, op: Operator) -> None:
        super().__init__()
        self.block = int(op.options["block_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        b = self.block
        x = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(n, c // (b * b), h * b, w * b)


class _Reshape(nn.Module):
    def __init__(self, graph: Graph, op: Operator) -> None:
        super().__init__()
        source, target = graph.tensors[op.inputs[0]].shape, graph.tensors[op.outputs[0]].shape
        if source[0] != target[0]:
            raise NotImplementedError(f"RESHAPE across the batch dimension: {source} -> {target}")
        self.in_rank, self.shape = len(source), tuple(target[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_rank == 4:
            x = x.permute(0, 2, 3, 1)  # the element order TFLite reshapes in
        x = x.reshape(x.shape[0], *self.shape)
        return x.permute(0, 3, 1, 2) if len(self.shape) == 3 else x


class _Concatenation(nn.Module):
    def __init__(self, graph: Graph, op: Operator) -> None:
        super().__init__()
        rank = len(graph.tensors[op.outputs[0]].shape)
        axis = op.options["axis"] % rank
        self.axis = _NCHW_AXIS[axis] if rank == 4 else axis
        self.act = _activation(op)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.act(torch.cat(xs, dim=self.axis))


class _Mean(nn.Module):
    def __init__(self, graph: Graph, op: Operator) -> None:
        super().__init__()
        rank = len(graph.tensors[op.inputs[0]].shape)
        axes = [int(a) % rank for a in np.atleast_1d(graph.constant(op.inputs[1]))]
        if 0 in axes:
            raise NotImplementedError("MEAN over the batch dimension")
        self.axes = tuple(_NCHW_AXIS[a] if rank == 4 else a for a in axes)
        self.keep = bool(op.options["keep_dims"])
        # With keep_dims the result is rank 4 and stays NCHW. Without, the axes left must read the same in both
        # layouts: a global pool to (N, C), the usual case, or to (N,); (N, H, C) would come out as (N, C, H).
        left = [a for a in range(rank) if a not in axes]
        if rank == 4 and not self.keep and left not in ([0], [0, 3]):
            raise NotImplementedError(f"MEAN over axes {axes} without keep_dims")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.axes, keepdim=self.keep)


class _FullyConnected(nn.Module):
    def __init__(self, graph: Graph, op: Operator) -> None:
        super().__init__()
        if op.options.get("weights_format", 0) != 0 or op.options.get("keep_num_dims"):
            raise NotImplementedError("FULLY_CONNECTED with shuffled weights or keep_num_dims")
        self.in_rank = len(graph.tensors[op.inputs[0]].shape)
        self.weight = nn.Parameter(torch.from_numpy(graph.constant(op.inputs[1]).copy()), requires_grad=False)
        bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        self.bias = None if bias is None else nn.Parameter(torch.from_numpy(bias.copy()), requires_grad=False)
        self.act = _activation(op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_rank == 4:
            x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], -1)
        return self.act(F.linear(x, self.weight, self.bias))


class _Unary(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


_STEPS: dict[str, Callable[[Graph, Operator], nn.Module]] = {
    "CONV_2D": _Conv,
    "DEPTHWISE_CONV_2D": _Conv,
    "MAX_POOL_2D": _MaxPool,
    "PRELU": _PRelu,
    "ADD": _Add,
    "PAD": _Pad,
    "RESIZE_BILINEAR": _ResizeBilinear,
    "DEPTH_TO_SPACE": _DepthToSpace,
    "RESHAPE": _Reshape,
    "CONCATENATION": _Concatenation,
    "MEAN": _Mean,
    "FULLY_CONNECTED": _FullyConnected,
    "LOGISTIC": lambda graph, op: _Unary(torch.sigmoid),
    "RELU": lambda graph, op: _Unary(F.relu),
}


# --------------------------------------------------------------------------------------------------- network


class TfliteNetwork(nn.Module):
    """The graph's operators in order. ``forward(x)`` takes the single input as NCHW float32 (N, C, H, W) and
    returns the graph's outputs in its output order, in TFLite's layout (NHWC for rank 4), batch first."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        if len(graph.inputs) != 1:
            raise NotImplementedError(f"graphs with {len(graph.inputs)} inputs")
        operators = fold_pads(graph)
        unknown = sorted({op.opcode for op in operators} - set(_STEPS))
        if unknown:
            raise NotImplementedError(f"TFLite ops without a PyTorch step: {', '.join(unknown)}")
        self.input_index = graph.inputs[0]
        self.input_shape = graph.tensors[self.input_index].shape
        self.output_indices = graph.outputs
        self.output_ranks = tuple(len(graph.tensors[i].shape) for i in graph.outputs)
        self.steps = nn.ModuleList(_STEPS[op.opcode](graph, op) for op in operators)
        # the activations each step reads (constants live inside the steps) and the one it writes
        self.reads = [tuple(i for i in op.inputs if i >= 0 and graph.tensors[i].data is None) for op in operators]
        self.writes = [op.outputs[0] for op in operators]
        if any(len(op.outputs) != 1 for op in operators):
            raise NotImplementedError("ops with several outputs")
        # after its last reader, an activation is dropped: a large batch then holds few maps at once
        last: dict[int, int] = {}
        for k, reads in enumerate(self.reads):
            for i in reads:
                last[i] = k
        keep = set(graph.outputs)
        self.drops = [tuple(i for i in reads if last[i] == k and i not in keep) for k, reads in enumerate(self.reads)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = {self.input_index: x.contiguous(memory_format=torch.channels_last)}
        for step, reads, write, drops in zip(self.steps, self.reads, self.writes, self.drops, strict=True):
            values[write] = step(*(values[i] for i in reads))
            for i in drops:
                del values[i]
        outputs = []
        for index, rank in zip(self.output_indices, self.output_ranks, strict=True):
            y = values[index]
            outputs.append(y.permute(0, 2, 3, 1) if rank == 4 else y)
        return tuple(outputs)


def load_network(path: Path | str, device: torch.device | str = "cpu") -> TfliteNetwork:
    """The ``.tflite`` file's network on ``device``, in eval mode (weights read once, see `tflite_weights`).
    Channels-last: depthwise convolutions ran 1.5-2x faster so on the CPU (oneDNN), and it suits cuDNN too."""
    return TfliteNetwork(read_graph(path)).to(device).to(memory_format=torch.channels_last).eval()
