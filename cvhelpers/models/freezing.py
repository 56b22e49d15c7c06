"""Switching parts of a model off and on: eval mode, frozen BatchNorm, layer groups.

* :func:`eval_mode`: run a block in eval mode and put the caller's mode back afterwards.
* :func:`freeze_batchnorm`: BatchNorm layers become frozen ones (torchvision's
  ``FrozenBatchNorm2d``, timm's ``FrozenBatchNormAct2d``): fixed statistics and affine
  parameters whatever ``train()`` says. ``requires_grad=False`` alone does not freeze a
  BatchNorm: in train mode its running statistics still move with every batch.
* :func:`layer_groups` cuts a backbone into blocks ordered input -> output, for gradual
  unfreezing (:func:`unfreeze_last_groups`) and per-block learning rates
  (:func:`discriminative_param_groups`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

__all__ = ["eval_mode", "freeze_batchnorm", "layer_groups", "freeze", "unfreeze",
           "unfreeze_last_groups", "discriminative_param_groups"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the ``with`` block in eval mode (dropout off, BatchNorm on its running statistics),
    then put back the caller's mode, also when the block raises.

    >>> model = nn.Linear(2, 2).train()
    >>> with eval_mode(model):
    ...     model.training
    False
    >>> model.training
    True
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` by a frozen copy with the same statistics.

    ``nn.BatchNorm2d`` becomes torchvision's ``FrozenBatchNorm2d``; timm's ``BatchNormAct2d``
    (BatchNorm + activation in one module, as in timm's EfficientNets) becomes timm's
    ``FrozenBatchNormAct2d``, keeping its activation. The frozen layers hold their weights as
    buffers: nothing in them trains or moves, in train mode or eval mode, and the model prints
    what it is. Returns the converted module (the same object unless ``module`` itself is a
    BatchNorm); converts in place otherwise.

    >>> block = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    >>> type(freeze_batchnorm(block)[1]).__name__
    'FrozenBatchNorm2d'
    """
    try:
        from timm.layers import freeze_batch_norm_2d  # also knows timm's BatchNormAct2d
    except ImportError:
        return _freeze_batchnorm_torchvision(module)
    return freeze_batch_norm_2d(module)


def _freeze_batchnorm_torchvision(module: nn.Module) -> nn.Module:
    from torchvision.ops import FrozenBatchNorm2d

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = _freeze_batchnorm_torchvision(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _group(*modules: nn.Module) -> list[nn.Module]:
    return [m for m in modules if m is not None]


def layer_groups(model: nn.Module) -> list[list[nn.Module]]:
    """Cut a backbone into parameter groups ordered input -> output, for gradual unfreezing.

    * timm EfficientNet (also ``features_only``): ``[conv_stem, bn1]``, each of ``blocks[0..6]``,
      ``[conv_head, bn2]``, ``[classifier]`` (10 groups for Lite0).
    * ResNet (torchvision or timm): ``[conv1, bn1]``, ``layer1`` ... ``layer4``, ``[fc]``.

    Groups without parameters (a removed head) are left out. Every parameter of ``model`` is in
    exactly one group; otherwise a ``ValueError`` names the ones left over.

    Raises:
        TypeError: for other architectures (build the list of lists yourself).
    """
    if hasattr(model, "conv_stem") and hasattr(model, "blocks"):
        groups = [_group(model.conv_stem, model.bn1), *[[block] for block in model.blocks],
                  _group(getattr(model, "conv_head", None), getattr(model, "bn2", None)),
                  _group(getattr(model, "classifier", None))]
    elif all(hasattr(model, n) for n in ("conv1", "bn1", "layer1", "layer4", "fc")):
        groups = [[model.conv1, model.bn1], [model.layer1], [model.layer2], [model.layer3],
                  [model.layer4], [model.fc]]
    else:
        raise TypeError(
            f"layer_groups knows timm EfficientNet and ResNet, not {type(model).__name__}: "
            f"pass your own list of module lists, ordered input -> output"
        )
    groups = [g for g in groups if any(True for m in g for _ in m.parameters())]
    _check_covers(model, groups)
    return groups


def _check_covers(model: nn.Module, groups: list[list[nn.Module]]) -> None:
    """Every parameter of ``model`` must sit in exactly one group (no silent leftovers)."""
    seen: dict[int, int] = {}
    for group in groups:
        for module in group:
            for p in module.parameters():
                seen[id(p)] = seen.get(id(p), 0) + 1
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [n for i, n in names.items() if i not in seen]
    doubled = [names.get(i, "?") for i, c in seen.items() if c > 1]
    if missing or doubled:
        raise ValueError(f"layer groups do not cover {type(model).__name__} exactly once: "
                         f"missing {missing[:5]}, in several groups {doubled[:5]}")


def _parameters(modules: Sequence[nn.Module] | nn.Module) -> list[nn.Parameter]:
    modules = [modules] if isinstance(modules, nn.Module) else modules
    return [p for m in modules for p in m.parameters()]


def freeze(modules: Sequence[nn.Module] | nn.Module) -> None:
    """Stop gradients for every parameter of ``modules`` (``requires_grad = False``).

    BatchNorm running statistics still update in ``train()`` mode; call ``.eval()`` on frozen
    BatchNorm layers too if they must not move at all.
    """
    for p in _parameters(modules):
        p.requires_grad_(False)


def unfreeze(modules: Sequence[nn.Module] | nn.Module) -> None:
    """Let every parameter of ``modules`` train again (``requires_grad = True``)."""
    for p in _parameters(modules):
        p.requires_grad_(True)


def unfreeze_last_groups(groups: Sequence[Sequence[nn.Module]], n: int) -> int:
    """Make exactly the last ``n`` groups trainable and freeze the others.

    Call it with n = 1, 2, 3... between training stages for gradual unfreezing; ``n = 0``
    freezes everything, ``n >= len(groups)`` unfreezes everything.

    Returns:
        The number of trainable parameters (elements) afterwards.
    """
    cut = max(len(groups) - max(n, 0), 0)
    for i, group in enumerate(groups):
        (freeze if i < cut else unfreeze)(list(group))
    return sum(p.numel() for g in groups for p in _parameters(list(g)) if p.requires_grad)


def discriminative_param_groups(groups: Sequence[Sequence[nn.Module]], base_lr: float,
                                decay: float = 0.5) -> list[dict[str, Any]]:
    """Optimizer parameter groups whose learning rate shrinks toward the input.

    The last group (the head) gets ``base_lr``; each group one step closer to the input gets
    ``decay`` times the lr of the next one, because early layers hold generic features that
    should move least. Frozen parameters and groups left empty are not included.

    >>> groups = layer_groups(model)                                      # doctest: +SKIP
    >>> opt = torch.optim.AdamW(discriminative_param_groups(groups, 1e-3))  # doctest: +SKIP

    Returns:
        Dicts ``{"params": [...], "lr": float, "group": index}`` ordered input -> output.
    """
    result = []
    for index, group in enumerate(groups):
        params = [p for p in _parameters(list(group)) if p.requires_grad]
        if params:
            lr = base_lr * decay ** (len(groups) - 1 - index)
            result.append({"params": params, "lr": lr, "group": index})
    return result


