"""MAE builders and training that work whatever grad mode the caller is in."""

import contextlib
import functools

import torch


def outside_inference_mode(record_grad: bool = False):
    """Decorator: run the function outside torch.inference_mode, so that the parameters, buffers and
    optimizer state it makes are ordinary tensors that can train later; with `record_grad`, autograd
    on as well (a training step called under the caller's torch.no_grad)."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with torch.inference_mode(False), (torch.enable_grad() if record_grad else contextlib.nullcontext()):
                return function(*args, **kwargs)
        return wrapper
    return decorate
