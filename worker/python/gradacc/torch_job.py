"""A gradacc job from a PyTorch model, its optimizer and scheduler.

:func:`job_spec` and :func:`write_job` turn a model, its ``torch.optim``
optimizer (``SGD``, ``Adam``, ``AdamW``) and scheduler (``StepLR``,
``CosineAnnealingLR``, ``LinearLR`` warm-up, ``SequentialLR`` of a warm-up
and one of those) into the job ``gradacc-server --job=...`` serves, with the
model's initial parameters in a safetensors file beside it (names from
``named_parameters()``). What the server cannot compute exactly as
``torch.optim`` does is refused with :class:`gradacc.UsageError`
(``ERROR_REASON_UNSUPPORTED``), never approximated. Also available as
``gradacc.torch.job_spec`` / ``gradacc.torch.write_job``.
"""
import json
import math
import os

import torch

from . import _core
from .errors import UsageError

__all__ = ["job_spec", "optimizer_spec", "schedule_spec", "write_job"]


def trainable(model):
    """[(name, parameter)] of the model's parameters that require a gradient, in ``named_parameters()`` order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _refuse(what):
    raise UsageError(f"cannot express this as a gradacc job: {what}", reason="ERROR_REASON_UNSUPPORTED")


def _only_group(optimizer, model=None):
    """The options of the groups that hold a trainable parameter (they must all be equal).

    A group of frozen parameters only (``requires_grad=False``) never steps
    in torch, so its options do not matter."""
    groups = optimizer.param_groups
    if not groups:
        _refuse("the optimizer has no parameter group")
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    stepped = [(i, g) for i, g in enumerate(groups) if any(p.requires_grad for p in g["params"])] or \
        list(enumerate(groups))
    first_index, first_group = stepped[0]
    first = {k: v for k, v in first_group.items() if k != "params"}
    for i, g in stepped[1:]:
        other = {k: v for k, v in g.items() if k != "params"}
        if other != first:
            differ = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            tensors = [names.get(id(p), f"<parameter #{j} of group {i}>") for j, p in enumerate(g["params"])]
            _refuse(f"parameter group {i} ({_some(tensors)}) has other {differ} than group {first_index} "
                    f"({ {k: other.get(k) for k in differ} } vs { {k: first.get(k) for k in differ} }); the server "
                    "applies one set of options to every tensor")
    return first


def _some(names, limit=6):
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# Every parameter-group key torch.optim (1.13 to 2.x) puts into SGD's, Adam's
# and AdamW's groups, and how gradacc treats it:
#   _CARRIED: the job carries the value (the server computes with it);
#   _EXACT_VALUES: implementation choices; the values listed compute what
#     the server computes, bit for bit (None: any value does). Any other
#     value is refused, naming the key: the server cannot honour it.
# A key not in these tables (a newer torch's) is refused, naming it.
_CARRIED = {
    "SGD": ("lr", "momentum", "dampening", "weight_decay", "nesterov", "initial_lr"),
    "Adam": ("lr", "betas", "eps", "weight_decay", "amsgrad", "initial_lr"),
}
_EXACT_VALUES = {
    # torch's multi-tensor (foreach) and per-tensor loops apply the same
    # operations in the same order to every element (the Debian 13 tier
    # holds torch's own results of both to equal bits).
    "foreach": (None, "any value: the per-tensor and the multi-tensor loops compute the same bits"),
    # The fused kernels (CPU since torch 2.4, CUDA) round differently.
    "fused": ((None, False), "fused=True runs torch's fused kernel, whose rounding the server does not reproduce"),
    "capturable": ((False,), "capturable=True keeps the step count on the device for CUDA graphs"),
    "differentiable": ((False,), "differentiable=True makes the step part of an autograd graph"),
    "maximize": ((False,), "maximize=True (gradient ascent) is not an option of the server's optimizers"),
    # torch >= 2.7: Adam(decoupled_weight_decay=True) is AdamW (optimizer_spec
    # maps it); AdamW always has True.
    "decoupled_weight_decay": (None, "True makes Adam AdamW"),
}


def _check_keys(name, group):
    carried = _CARRIED["SGD" if name == "SGD" else "Adam"]
    for key in sorted(group):
        if key in carried:
            continue
        if key not in _EXACT_VALUES:
            _refuse(f"{name} option {key}={group[key]!r} is not known to gradacc (known: "
                    f"{sorted(carried + tuple(_EXACT_VALUES))})")
        exact, why = _EXACT_VALUES[key]
        if exact is not None and group[key] not in exact:
            _refuse(f"{name}({key}={group[key]!r}): {why}; gradacc computes what "
                    f"{' or '.join(f'{key}={v!r}' for v in exact)} computes")


def optimizer_spec(optimizer, model=None):
    """The job's ``optimizer`` (``gradacc.v1.OptimizerSpec``, JSON mapping) for a torch.optim optimizer.

    ``torch.optim.SGD`` (momentum, dampening, nesterov, weight_decay),
    ``Adam`` and ``AdamW`` (betas, eps, weight_decay, amsgrad), with one set
    of options for every group that holds a trainable parameter. The
    implementation keys torch adds to every group (``foreach``, ``fused``,
    ``capturable``, ``differentiable``, ``maximize``, torch 2.7's
    ``decoupled_weight_decay``) are accepted at every value that computes
    what the server computes (``foreach`` any, ``fused`` None or False, the
    others False). ``fused=True``, ``capturable=True``,
    ``differentiable=True``, ``maximize=True``, keys gradacc does not know,
    several groups with different options, a beta or eps of 0 (the job
    reads 0 as "default") and other optimizers raise
    :class:`gradacc.UsageError` (``ERROR_REASON_UNSUPPORTED``) naming the
    key. `model` (optional) names the tensors in such messages.
    """
    group = _only_group(optimizer, model)
    lr = float(group.get("initial_lr", group["lr"]))
    if not lr > 0:
        _refuse(f"learning rate {lr} (must be > 0)")
    kind = type(optimizer)
    if kind is torch.optim.SGD:
        _check_keys("SGD", group)
        return {"kind": "KIND_SGD", "lr": lr,
                "sgd": {"momentum": float(group["momentum"]), "dampening": float(group["dampening"]),
                        "nesterov": bool(group["nesterov"]), "weight_decay": float(group["weight_decay"])}}
    if kind in (torch.optim.Adam, torch.optim.AdamW):
        name = kind.__name__
        _check_keys(name, group)
        beta1, beta2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        for label, value in (("beta1", beta1), ("beta2", beta2), ("eps", eps)):
            if value == 0:
                _refuse(f"{name} with {label} = 0 (a job reads 0 as the default)")
        decoupled = kind is torch.optim.AdamW or bool(group.get("decoupled_weight_decay", False))
        return {"kind": "KIND_ADAMW" if decoupled else "KIND_ADAM", "lr": lr,
                "adam": {"beta1": beta1, "beta2": beta2, "eps": eps,
                         "weight_decay": float(group["weight_decay"]), "amsgrad": bool(group["amsgrad"])}}
    _refuse(f"optimizer {kind.__module__}.{kind.__qualname__}: the server runs torch.optim.SGD, Adam and AdamW")


def _fresh(scheduler):
    if scheduler.last_epoch != 0:
        _refuse(f"{type(scheduler).__name__} has been stepped already (last_epoch {scheduler.last_epoch}); "
                "describe the job with a fresh scheduler")


def _main_schedule(s):
    """(kind, fields) of a StepLR or CosineAnnealingLR."""
    lrs = torch.optim.lr_scheduler
    if type(s) is lrs.StepLR:
        return {"kind": "KIND_STEP", "step_size": int(s.step_size), "gamma": float(s.gamma)}
    if type(s) is lrs.CosineAnnealingLR:
        return {"kind": "KIND_COSINE", "t_max": int(s.T_max), "eta_min": float(s.eta_min)}
    _refuse(f"scheduler {type(s).__name__} (supported: StepLR, CosineAnnealingLR, LinearLR warm-up, and "
            "SequentialLR([LinearLR, StepLR | CosineAnnealingLR]))")


def _warmup(s, steps):
    if float(s.end_factor) != 1.0:
        _refuse(f"LinearLR(end_factor={s.end_factor}): a warm-up must end at factor 1.0")
    if steps is not None and int(s.total_iters) != steps:
        _refuse(f"LinearLR(total_iters={s.total_iters}) inside SequentialLR(milestones=[{steps}]): the warm-up "
                "must last until the milestone")
    return {"warmup_steps": int(s.total_iters), "warmup_start_factor": float(s.start_factor)}


def schedule_spec(scheduler, optimizer=None):
    """The job's ``schedule`` (``gradacc.v1.LrSchedule``, JSON mapping) for a torch.optim.lr_scheduler.

    None (constant), ``StepLR``, ``CosineAnnealingLR``, ``LinearLR`` with
    ``end_factor=1`` (a warm-up, then constant) and ``SequentialLR`` of such
    a ``LinearLR`` followed by ``StepLR`` or ``CosineAnnealingLR``, with the
    milestone where the warm-up ends. Anything else raises
    :class:`gradacc.UsageError` (``ERROR_REASON_UNSUPPORTED``).
    """
    if scheduler is None:
        return {"kind": "KIND_CONSTANT"}
    lrs = torch.optim.lr_scheduler
    if optimizer is not None and scheduler.optimizer is not optimizer:
        _refuse("the scheduler belongs to another optimizer")
    if type(scheduler) is lrs.SequentialLR:
        parts, milestones = scheduler._schedulers, list(scheduler._milestones)
        if len(parts) != 2 or len(milestones) != 1 or type(parts[0]) is not lrs.LinearLR:
            _refuse("SequentialLR must be [LinearLR warm-up, StepLR or CosineAnnealingLR] with one milestone")
        spec = _main_schedule(parts[1])
        spec.update(_warmup(parts[0], int(milestones[0])))
        return spec
    _fresh(scheduler)
    if type(scheduler) is lrs.LinearLR:
        spec = {"kind": "KIND_CONSTANT"}
        spec.update(_warmup(scheduler, None))
        return spec
    return _main_schedule(scheduler)


def _check_optimized(model, optimizer):
    """The optimizer holds every trainable parameter of the model, and nothing from elsewhere.

    Frozen parameters (``requires_grad=False``) may be in it, as torch
    allows: they get no gradient, so torch.optim skips them, and they are
    not the job's tensors."""
    everything = {id(p): (n, p) for n, p in model.named_parameters()}
    optimized = set()
    foreign = []
    for i, g in enumerate(optimizer.param_groups):
        for j, p in enumerate(g["params"]):
            optimized.add(id(p))
            if id(p) not in everything:
                foreign.append(f"group {i} #{j} {tuple(p.shape)}")
    if foreign:
        _refuse(f"the optimizer holds {len(foreign)} tensor(s) that are not parameters of the model "
                f"({_some(foreign)}); build it from model.parameters()")
    missing = [n for n, p in trainable(model) if id(p) not in optimized]
    if missing:
        _refuse(f"the model's trainable parameters {_some(missing)} (requires_grad=True) are not in the "
                "optimizer: torch would never step them, so the job cannot describe them — add them to the "
                "optimizer, or set requires_grad=False")


_SCALER_DEFAULTS = {"init_scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}


def loss_scaling_spec(scaler):
    """The job's ``loss_scaling`` (``gradacc.v1.LossScaling``) for a GradScaler, a dict or True.

    A ``torch.amp.GradScaler`` (or ``torch.cuda.amp.GradScaler``; one that
    disabled itself for want of CUDA still describes its rules) gives its
    ``init_scale``, ``growth_factor``, ``backoff_factor`` and
    ``growth_interval``; a dict gives any of those (the rest: GradScaler's
    defaults 65536, 2.0, 0.5, 2000); True: the defaults."""
    if scaler is True:
        values = dict(_SCALER_DEFAULTS)
    elif isinstance(scaler, dict):
        unknown = sorted(set(scaler) - set(_SCALER_DEFAULTS))
        if unknown:
            _refuse(f"loss scaling keys {unknown} are not known (known: {sorted(_SCALER_DEFAULTS)})")
        values = {**_SCALER_DEFAULTS, **scaler}
    elif hasattr(scaler, "get_growth_factor"):
        values = {"init_scale": float(getattr(scaler, "_init_scale", _SCALER_DEFAULTS["init_scale"])),
                  "growth_factor": scaler.get_growth_factor(), "backoff_factor": scaler.get_backoff_factor(),
                  "growth_interval": scaler.get_growth_interval()}
    else:
        _refuse(f"scaler must be a GradScaler, a dict or True, not {type(scaler).__name__}")
    return {"init_scale": float(values["init_scale"]), "growth_factor": float(values["growth_factor"]),
            "backoff_factor": float(values["backoff_factor"]), "growth_interval": int(values["growth_interval"])}


def job_spec(model, optimizer, scheduler=None, *, workers, micro_batches, micro_batch_size, total_steps=None,
             epochs=None, train_samples=None, job_id="torch", clip_grad_norm=0.0, seed=0, hints=None,
             safetensors_path=None, scaler=None):
    """A gradacc job (``gradacc.v1.JobSpec`` as a dict, protobuf's JSON mapping) for a PyTorch model.

    Args:
      model: the ``nn.Module``; its trainable parameters, in
        ``named_parameters()`` order, are the job's tensors (all float32).
      optimizer, scheduler: see :func:`optimizer_spec` and
        :func:`schedule_spec`; the optimizer must hold every trainable
        parameter of the model and may hold frozen ones
        (``requires_grad=False``: torch skips them, and they are not job
        tensors), nothing else.
      workers, micro_batches, micro_batch_size: the window geometry (ranks,
        micro-batches per rank and window, samples per micro-batch; the last
        two are advisory for workers).
      total_steps: windows in the job; or `epochs` of `train_samples`
        samples (ceil(train_samples / (workers * micro_batches *
        micro_batch_size)) windows an epoch).
      clip_grad_norm: ``torch.nn.utils.clip_grad_norm_`` max_norm applied by
        the server to the window's gradient (0: none).
      hints: extra ``worker_hints`` (strings).
      safetensors_path: where the initial parameters are (see :func:`write_job`).
      scaler: fp16 dynamic loss scaling, applied by the server with
        ``GradScaler``'s rules (see :func:`loss_scaling_spec`): a
        ``torch.amp.GradScaler`` / ``torch.cuda.amp.GradScaler`` (its
        init_scale, growth and backoff factors and growth interval), a dict
        of those four, or True for GradScaler's defaults.
    """
    params = trainable(model)
    if not params:
        _refuse("the model has no trainable parameter")
    _check_optimized(model, optimizer)
    for name, p in params:
        if p.dtype != torch.float32:
            _refuse(f"parameter {name} is {p.dtype}; gradacc trains float32 tensors (autocast keeps float32 "
                    "parameters)")
    window = workers * micro_batches * micro_batch_size
    if total_steps is None:
        if epochs is None or train_samples is None:
            raise UsageError("give total_steps, or epochs and train_samples")
        total_steps = epochs * math.ceil(train_samples / window)
    tensors = [{"name": n, "shape": [int(d) for d in p.shape]} for n, p in params]
    spec = {
        "job_id": job_id,
        "model": {"tensors": tensors},
        "optimizer": optimizer_spec(optimizer, model),
        "schedule": schedule_spec(scheduler, optimizer),
        "window": {"num_workers": int(workers), "micro_batches": int(micro_batches),
                   "micro_batch_size": int(micro_batch_size)},
        "reduction": "REDUCTION_MEAN_OVER_SAMPLES",
        "total_steps": int(total_steps),
        "seed": int(seed),
        "worker_hints": {"model": type(model).__name__, "framework": "torch"},
    }
    if safetensors_path:
        spec["model"]["safetensors_path"] = safetensors_path
    if clip_grad_norm:
        spec["clipping"] = {"max_norm": float(clip_grad_norm)}
    if scaler is not None and scaler is not False:
        spec["loss_scaling"] = loss_scaling_spec(scaler)
    if train_samples is not None:
        spec["worker_hints"]["train_samples"] = str(int(train_samples))
    spec["worker_hints"].update({str(k): str(v) for k, v in (hints or {}).items()})
    return spec


def write_job(path, model, optimizer, scheduler=None, **geometry):
    """Writes the job for `model` and its initial parameters; returns (job path, safetensors path).

    The job goes to `path` (protobuf text format, or JSON when it ends in
    ``.json``), checked by the server's own validation first; the model's
    current trainable parameters go to ``<path without extension>.safetensors``
    beside it, named by ``named_parameters()``, and the job names that file
    relative to the job's folder (the server resolves it there). Then
    ``gradacc-server --job=PATH`` serves exactly this model and optimizer.
    `geometry` and the rest: see :func:`job_spec`.
    """
    stem, ext = os.path.splitext(path)
    weights = stem + ".safetensors"
    spec = job_spec(model, optimizer, scheduler, safetensors_path=os.path.basename(weights), **geometry)
    text = _core.job_text_from_json(json.dumps(spec))  # raises gradacc.Error when the server would refuse it
    tensors = [(n, p.detach().cpu().contiguous().numpy()) for n, p in trainable(model)]
    _core.save_safetensors(weights, tensors, {"format": "pt", "job_id": spec["job_id"]})
    # 0600 and atomic, as every file gradacc writes (common/files.h).
    body = json.dumps(spec, indent=2) + "\n" if ext == ".json" else text
    _core.write_file_atomically(path, body.encode())
    return path, weights
