"""What a layer of a PCN represents: its embedding of an image, and the network's own way back.

* :func:`embedding_layers` -- the nodes whose value a feed-forward pass computes from the image
  (``h1 .. y`` of a discriminative chain; ``z, c1 .., y`` of the hybrid, whose latent comes from
  its encoder); a generative model has none.
* :func:`forward_embedding` -- ``O_l``: image -> the feed-forward value of layer ``l``
  (differentiable; a cross-entropy node gives its logits).
* :func:`represent` -- the layer's value after the model's own inference with the image clamped
  (the target of the native route; equal to the feed-forward value for a discriminative chain).
* :func:`native_reconstruction` -- the PCN route back: clamp the layer to a value, relax every
  other node from a given image start, and read the image (its prediction where the model has a
  generative path, else the relaxed image node).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...core import PCN, CrossEntropy, Inference, relax

IMAGE = "x"


def has_generative_path(model: PCN, image: str = IMAGE) -> bool:
    """Whether some node predicts the image (a decoder / generative chain)."""
    return bool(model.incoming[image])


def _ancestors(model: PCN, node: str) -> set[str]:
    found: set[str] = set()
    stack = [e.source for e in model.incoming[node]]
    while stack:
        n = stack.pop()
        if n not in found:
            found.add(n)
            stack.extend(e.source for e in model.incoming[n])
    return found


def layer_depths(model: PCN, image: str = IMAGE) -> dict[str, int]:
    """Feed-forward layers and their depth (number of maps from the image), in computation order.

    A node is a layer when a feed-forward pass from the image alone computes it (through its
    prediction edges or its amortiser) and it is not part of the image's generative path
    (decoder nodes, which predict the image, are excluded; the hybrid's latent is kept).
    """
    if image not in model.nodes:
        raise ValueError(f"model has no image node {image!r}; nodes are {list(model.nodes)}")
    decoder = {n for n in _ancestors(model, image) if model.incoming[n]}
    depth: dict[str, int] = {image: 0}
    changed = True
    while changed:
        changed = False
        for n in model.order:
            if n in depth:
                continue
            amortiser = model.amortisers.get(n)
            if amortiser is not None and amortiser.source in depth:
                depth[n] = depth[amortiser.source] + 1
            elif model.incoming[n] and amortiser is None and all(e.source in depth for e in model.incoming[n]):
                depth[n] = max(depth[e.source] for e in model.incoming[n]) + 1
            else:
                continue
            changed = True
    return {n: d for n, d in sorted(depth.items(), key=lambda kv: (kv[1], model.order.index(kv[0])))
            if n != image and n not in decoder}


def embedding_layers(model: PCN, image: str = IMAGE) -> list[str]:
    """Names of the feed-forward layers, shallow to deep (see :func:`layer_depths`)."""
    return list(layer_depths(model, image))


def generative_layers(model: PCN, image: str = IMAGE) -> dict[str, int]:
    """Nodes above the image on its generative path and their distance from it (1 = predicts it)."""
    distance: dict[str, int] = {}
    frontier, d = [image], 0
    while frontier:
        d += 1
        nxt = []
        for node in frontier:
            for e in model.incoming[node]:
                if e.source not in distance:
                    distance[e.source] = d
                    nxt.append(e.source)
        frontier = nxt
    return distance


def forward_embedding(model: PCN, layer: str, image: str = IMAGE) -> Callable[[torch.Tensor], torch.Tensor]:
    """``O_l``: images ``(N, *image.shape)`` -> the feed-forward value of ``layer`` ``(N, *layer.shape)``.

    Only the nodes ``layer`` depends on are computed; a cross-entropy node gives its logits (its
    prediction), every other node its released prediction. Differentiable in the image.
    """
    depths = layer_depths(model, image)
    if layer not in depths:
        raise ValueError(f"node {layer!r} has no feed-forward value from {image!r}; layers are {list(depths)}")
    needed = {layer}
    stack = [layer]
    while stack:
        n = stack.pop()
        amortiser = model.amortisers.get(n)
        sources = [amortiser.source] if amortiser is not None else [e.source for e in model.incoming[n]]
        for s in sources:
            if s not in needed and s != image:
                needed.add(s)
                stack.append(s)
    order = [n for n in model.order if n in needed]

    def embed(a: torch.Tensor) -> torch.Tensor:
        values = {image: a}
        for n in order:
            amortiser = model.amortisers.get(n)
            if amortiser is not None:
                values[n] = model.amortiser_modules[amortiser.key](values[amortiser.source])
                continue
            mu = None
            for e in model.incoming[n]:
                part = model.edge_modules[e.key](values[e.source])
                mu = part if mu is None else mu + part
            assert mu is not None
            node = model.nodes[n]
            values[n] = mu if (n == layer and isinstance(node.energy, CrossEntropy)) else node.energy.released(mu)
        return values[layer]

    return embed


def represent(model: PCN, images: torch.Tensor, inference: Inference, image: str = IMAGE) -> dict[str, torch.Tensor]:
    """Every node's value after the model's own inference with only the image clamped."""
    with torch.no_grad():
        return relax(model, {image: images}, inference).values


def relaxed_embedding(model: PCN, layer: str, inference: Inference, image: str = IMAGE,
                      differentiable: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``O_l`` through the model's own inference: images -> ``layer``'s value after relaxing with the
    image clamped. ``differentiable``: keep the unrolled relaxation's graph, so gradient descent on the
    image can invert it (the generative direction); otherwise computed without a graph."""
    if layer not in model.nodes or layer == image:
        raise ValueError(f"unknown layer {layer!r}; nodes are {list(model.nodes)}")
    if not differentiable:
        return lambda a: represent(model, a, inference, image)[layer]
    return lambda a: relax(model, {image: a}, inference, differentiable=True).values[layer]


def native_reconstruction(
    model: PCN,
    layer: str,
    value: torch.Tensor,
    start: torch.Tensor,
    inference: Inference,
    image: str = IMAGE,
) -> torch.Tensor:
    """The image the PCN infers from ``layer`` clamped to ``value``.

    The image node starts at ``start`` and every other free node at its feed-forward value from
    ``start`` (or from the clamped layer); ``inference`` then relaxes all free nodes. The result is
    the image's prediction when the model has a generative path (some node predicts the image),
    else the relaxed image node itself (a root moved only by the errors of the layers it feeds).

    Args:
        model: the network.
        layer: the clamped node.
        value: its value, ``(N, *layer.shape)``.
        start: first value of the image, ``(N, *image.shape)``.
        inference: how to relax.

    Returns:
        The reconstructed image ``(N, *image.shape)`` in the model's input scale.
    """
    with torch.no_grad():
        initial = model.initial_state({layer: value, image: start}, "forward")
        relaxed = relax(model, {layer: value}, inference, initial=initial).values
        if has_generative_path(model, image):
            return model.predictions(relaxed)[image]
        return relaxed[image]
