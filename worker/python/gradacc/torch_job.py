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


def _only_group(optimizer):
    groups = optimizer.param_groups
    if not groups:
        _refuse("the optimizer has no parameter group")
    first = {k: v for k, v in groups[0].items() if k != "params"}
    for i, g in enumerate(groups[1:], start=1):
        other = {k: v for k, v in g.items() if k != "params"}
        if other != first:
            _refuse(f"parameter group {i} has other options than group 0 ({other} vs {first}); the server "
                    "applies one set of options to every tensor")
    return first


def _check_flags(name, group, allowed, must_be_false):
    unknown = sorted(set(group) - set(allowed) - set(must_be_false) - {"initial_lr"})
    if unknown:
        _refuse(f"{name} options {unknown} are not known to gradacc")
    for key in must_be_false:
        if group.get(key):
            _refuse(f"{name}({key}=True) is not supported by the server's optimizer")


def optimizer_spec(optimizer):
    """The job's ``optimizer`` (``gradacc.v1.OptimizerSpec``, JSON mapping) for a torch.optim optimizer.

    ``torch.optim.SGD`` (momentum, dampening, nesterov, weight_decay),
    ``Adam`` and ``AdamW`` (betas, eps, weight_decay, amsgrad), with one set
    of options for every parameter. ``maximize``, ``capturable``,
    ``differentiable``, ``fused``, several parameter groups with different
    options, a beta or eps of 0 (the job reads 0 as "default") and other
    optimizers raise :class:`gradacc.UsageError` (``ERROR_REASON_UNSUPPORTED``).
    """
    group = _only_group(optimizer)
    lr = float(group.get("initial_lr", group["lr"]))
    if not lr > 0:
        _refuse(f"learning rate {lr} (must be > 0)")
    kind = type(optimizer)
    if kind is torch.optim.SGD:
        _check_flags("SGD", group, ("lr", "momentum", "dampening", "weight_decay", "nesterov", "foreach"),
                     ("maximize", "differentiable"))
        return {"kind": "KIND_SGD", "lr": lr,
                "sgd": {"momentum": float(group["momentum"]), "dampening": float(group["dampening"]),
                        "nesterov": bool(group["nesterov"]), "weight_decay": float(group["weight_decay"])}}
    if kind in (torch.optim.Adam, torch.optim.AdamW):
        name = kind.__name__
        _check_flags(name, group, ("lr", "betas", "eps", "weight_decay", "amsgrad", "foreach"),
                     ("maximize", "capturable", "differentiable", "fused"))
        beta1, beta2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        for label, value in (("beta1", beta1), ("beta2", beta2), ("eps", eps)):
            if value == 0:
                _refuse(f"{name} with {label} = 0 (a job reads 0 as the default)")
        return {"kind": "KIND_ADAM" if kind is torch.optim.Adam else "KIND_ADAMW", "lr": lr,
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


def job_spec(model, optimizer, scheduler=None, *, workers, micro_batches, micro_batch_size, total_steps=None,
             epochs=None, train_samples=None, job_id="torch", clip_grad_norm=0.0, seed=0, hints=None,
             safetensors_path=None):
    """A gradacc job (``gradacc.v1.JobSpec`` as a dict, protobuf's JSON mapping) for a PyTorch model.

    Args:
      model: the ``nn.Module``; its trainable parameters, in
        ``named_parameters()`` order, are the job's tensors (all float32).
      optimizer, scheduler: see :func:`optimizer_spec` and
        :func:`schedule_spec`; the optimizer must hold exactly the model's
        trainable parameters.
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
    """
    params = trainable(model)
    if not params:
        _refuse("the model has no trainable parameter")
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    names = {id(p): n for n, p in params}
    if optimized != set(names):
        missing = sorted(names[i] for i in set(names) - optimized)
        _refuse(f"the optimizer must hold exactly the model's trainable parameters (missing: {missing}, "
                f"{len(optimized - set(names))} foreign)")
    for name, p in params:
        if p.dtype != torch.float32:
            _refuse(f"parameter {name} is {p.dtype}; gradacc trains float32 tensors")
    window = workers * micro_batches * micro_batch_size
    if total_steps is None:
        if epochs is None or train_samples is None:
            raise UsageError("give total_steps, or epochs and train_samples")
        total_steps = epochs * math.ceil(train_samples / window)
    tensors = [{"name": n, "shape": [int(d) for d in p.shape]} for n, p in params]
    spec = {
        "job_id": job_id,
        "model": {"tensors": tensors},
        "optimizer": optimizer_spec(optimizer),
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
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(spec, indent=2) + "\n" if ext == ".json" else text)
    os.replace(path + ".tmp", path)
    return path, weights
