"""YOLOX weights: official ``.pth`` checkpoints and ONNX exports, read into the network of
`curate.detect.yolox_network` with its official state dict keys.

An official release checkpoint (``{"model": state_dict}``) loads strictly. Weights can also come from an ONNX
export of the official model (e.g. ``yolox_nano_coco_416.onnx``). Such exports fold every BatchNorm into the
preceding conv (the conv gains a bias and the initializers lose their names), so :func:`state_dict_from_onnx`
maps the ONNX ``Conv`` nodes, in graph order, onto the model's convs in execution order (checking shape, groups
and stride of each pair) and writes the folded conv as conv + identity BatchNorm. Unfused exports (explicit
``BatchNormalization`` nodes) are read as well. onnxruntime is not used: only the initializers are read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from curate.detect.yolox_network import BN_EPS, YOLOX, BaseConv, build_yolox


def load_checkpoint(model: YOLOX, path: Path) -> YOLOX:
    """Official YOLOX checkpoint (``{"model": state_dict, ...}`` or a bare state dict), loaded strictly."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    return model


def _conv_execution_order(model: nn.Module) -> list[str]:
    """Names of the model's Conv2d modules in the order a forward pass calls them."""
    names = {id(m): n for n, m in model.named_modules()}
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(names[id(mod)]))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    return order


def state_dict_from_onnx(path: Path, model: YOLOX) -> dict[str, torch.Tensor]:
    """Official-key state dict for ``model`` from the initializers of an ONNX export of the same architecture.

    ONNX ``Conv`` nodes (graph order = export trace order) are paired with the model's convs in execution order;
    each pair must agree in weight shape, groups and stride. A folded conv bias becomes an identity BatchNorm
    (weight sqrt(1 + eps), running var 1, mean 0) with that bias; an explicit BatchNormalization node after the
    conv is copied as is. Initializers that still carry a model key (the head's 1x1 predictions) must land there.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # some exporters store weights as Constant nodes
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    arrays[node.output[0]] = numpy_helper.to_array(attr.t)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    onnx_convs = [n for n in graph.node if n.op_type == "Conv"]

    order = _conv_execution_order(model)
    if len(order) != len(onnx_convs):
        raise ValueError(f"{path}: {len(onnx_convs)} Conv nodes, but the model has {len(order)} convs (wrong variant?)")
    modules = dict(model.named_modules())
    expected = model.state_dict()
    sd: dict[str, torch.Tensor] = {}
    for name, node in zip(order, onnx_convs, strict=True):
        conv = modules[name]
        assert isinstance(conv, nn.Conv2d)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = torch.from_numpy(arrays[node.input[1]].copy())
        bias = torch.from_numpy(arrays[node.input[2]].copy()) if len(node.input) > 2 and node.input[2] else None
        if (
            tuple(weight.shape) != tuple(conv.weight.shape)
            or int(attrs.get("group", 1)) != conv.groups
            or tuple(attrs.get("strides", (1, 1))) != tuple(conv.stride)
        ):
            raise ValueError(
                f"{path}: Conv node {node.name!r} (weight {tuple(weight.shape)}, group {attrs.get('group', 1)}) "
                f"does not match {name} (weight {tuple(conv.weight.shape)}, groups {conv.groups}): wrong variant?"
            )
        for init_name in node.input[1:]:
            if init_name in expected and not init_name.startswith(name + "."):
                raise ValueError(f"{path}: initializer {init_name} would be loaded into {name}")
        parent = name.removesuffix(".conv")
        if parent != name and isinstance(modules.get(parent), BaseConv):
            sd[f"{parent}.conv.weight"] = weight
            out_ch = weight.shape[0]
            bn_nodes = [n for n in consumers.get(node.output[0], []) if n.op_type == "BatchNormalization"]
            if bn_nodes:
                bn = bn_nodes[0]
                if bias is not None:
                    raise ValueError(f"{path}: Conv {node.name!r} has both a bias and a BatchNormalization")
                eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
                scale, shift, mean, var = (torch.from_numpy(arrays[n].copy()) for n in bn.input[1:5])
                var = var + (eps - BN_EPS)  # same normaliser under this model's eps
            else:
                scale = torch.sqrt(torch.ones(out_ch) + BN_EPS)
                shift = bias if bias is not None else torch.zeros(out_ch)
                mean, var = torch.zeros(out_ch), torch.ones(out_ch)
            sd[f"{parent}.bn.weight"] = scale
            sd[f"{parent}.bn.bias"] = shift
            sd[f"{parent}.bn.running_mean"] = mean
            sd[f"{parent}.bn.running_var"] = var
            sd[f"{parent}.bn.num_batches_tracked"] = torch.tensor(0)
        else:
            if bias is None:
                raise ValueError(f"{path}: Conv node {node.name!r} for {name} has no bias")
            sd[f"{name}.weight"] = weight
            sd[f"{name}.bias"] = bias
    return sd


def load_yolox(weights: Path, variant: str = "nano") -> YOLOX:
    """Model with official keys and BatchNorms (unfused), eval mode, on CPU."""
    model = build_yolox(variant).eval()
    weights = Path(weights)
    if weights.suffix.lower() == ".onnx":
        model.load_state_dict(state_dict_from_onnx(weights, model), strict=True)
    else:
        load_checkpoint(model, weights)
    return model
