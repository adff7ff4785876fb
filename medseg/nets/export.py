"""Export a network for deployment: ``torch.export`` programs (``.pt2``) and ONNX models run by onnxruntime.

TorchScript (``torch.jit.script`` / ``trace``) is deprecated in the torch versions medseg targets and warns on every
call, so the PyTorch format is a ``torch.export`` program. Both exports are traced in eval mode (one tensor out,
pruning applied if set) with symbolic batch and spatial sizes by default, so the saved model pads/crops any input
size exactly like the eager network. Files are written atomically.

Each export is checked before it is written: the exported model is run on the example and compared with the eager
output (``atol`` + ``rtol`` * max |eager|); a mismatch raises ``RuntimeError``.

Known limit (torch 2.13): a ``.pt2`` program refuses, with ``AssertionError: Guard failed``, inputs that are at most
``2**depth`` voxels long along every spatial axis (the bottleneck would be a single voxel). ONNX models run them.
Written against torch's ``Dim.DYNAMIC`` and the ``dynamo=True`` ONNX exporter (torch >= 2.6 or so).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.export import Dim

from medseg.atomic import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode (and the mode of its children)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _size_oblivious() -> contextlib.AbstractContextManager[object]:
    """Trace without specialising on sizes 0/1, so a symbolic axis may later be 1 voxel long at some level.

    Uses torch's documented experimental switch ``torch.fx.experimental._config.backed_size_oblivious``; on a torch
    without it, export proceeds without (inputs with a size-1 axis at some level are then refused at run time).
    """
    try:
        from torch.fx.experimental import _config

        return _config.patch(backed_size_oblivious=True)
    except (ImportError, AttributeError):  # pragma: no cover - depends on the torch version
        return contextlib.nullcontext()


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _dynamic_shapes(
    example: torch.Tensor, dynamic_batch: bool, dynamic_spatial: bool
) -> tuple[dict[int, object]]:
    dims: dict[int, object] = {}
    if dynamic_batch:
        dims[0] = Dim.DYNAMIC
    if dynamic_spatial:
        for axis in range(2, example.ndim):
            dims[axis] = Dim.DYNAMIC
    return (dims,)


def _trace_example(example: torch.Tensor, dynamic_batch: bool, dynamic_spatial: bool) -> torch.Tensor:
    """An example without size-1 axes where sizes are symbolic (torch.export specialises axes of size 1)."""
    if example.ndim < 3:
        raise ValueError(f"example must be (B, C, *spatial), got shape {tuple(example.shape)}")
    shape = list(example.shape)
    if dynamic_batch and shape[0] == 1:
        shape[0] = 2
    if dynamic_spatial:
        shape[2:] = [max(size, 2) for size in shape[2:]]
    if shape == list(example.shape):
        return example
    return example.new_zeros(shape).normal_()


def _check_close(reference: torch.Tensor, other: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    if tuple(reference.shape) != tuple(other.shape):
        raise RuntimeError(f"{what}: output shape {tuple(other.shape)} != eager {tuple(reference.shape)}")
    diff = (reference.float() - other.float()).abs().max().item()
    limit = atol + rtol * reference.abs().max().item()
    if not diff <= limit:
        raise RuntimeError(f"{what}: max |difference| to eager output {diff:.3g} exceeds {limit:.3g}")
    logger.debug("%s: max |difference| to eager output %.3g", what, diff)


def export_program(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    dynamic_batch: bool = True,
    dynamic_spatial: bool = True,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> Path:
    """Export ``model`` (in eval mode) with ``torch.export`` and save it to ``path`` (a ``.pt2`` file).

    Args:
        model: the network; its train/eval mode is restored afterwards.
        example: an input (B, C, *spatial); it is moved to the model's device.
        path: destination file.
        dynamic_batch: the batch size is symbolic (else fixed to the example's).
        dynamic_spatial: spatial sizes are symbolic (else fixed to the example's).
        atol, rtol: tolerance of the check against the eager output.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    example = example.to(_model_device(model))
    traced_example = _trace_example(example, dynamic_batch, dynamic_spatial)
    with _eval_mode(model), torch.no_grad(), _size_oblivious():
        program = torch.export.export(
            model, (traced_example,), dynamic_shapes=_dynamic_shapes(example, dynamic_batch, dynamic_spatial)
        )
        _check_close(model(example), program.module()(example), atol, rtol, "torch.export program")
    with atomic_path(path) as tmp:
        torch.export.save(program, tmp)
    logger.info("exported %s to %s", type(model).__name__, path)
    return path


def load_program(path: str | Path) -> nn.Module:
    """Load a program written by :func:`export_program`; returns a module called like the eager network (eval)."""
    program = torch.export.load(Path(path))
    return program.module()


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    dynamic_batch: bool = True,
    dynamic_spatial: bool = True,
    opset: int | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> Path:
    """Export ``model`` (in eval mode) to an ONNX file at ``path`` and check it with onnxruntime.

    Uses the ``torch.export``-based ONNX exporter. The single input is named ``input`` and the output ``logits``;
    with ``dynamic_spatial`` (default) any spatial size is accepted, with ``dynamic_batch`` any batch size. Weights
    are stored inside the file (models over 2 GB are not supported).

    Args:
        model, example, dynamic_batch, dynamic_spatial, atol, rtol: as for :func:`export_program`.
        path: destination ``.onnx`` file.
        opset: ONNX opset version; ``None`` lets torch choose.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    example = example.to(_model_device(model))
    traced_example = _trace_example(example, dynamic_batch, dynamic_spatial)
    with _eval_mode(model), torch.no_grad(), _size_oblivious(), warnings.catch_warnings():
        # torch's own exporter code trips its own deprecation (LeafSpec); nothing a caller can act on
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        onnx_program = torch.onnx.export(
            model,
            (traced_example,),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=_dynamic_shapes(example, dynamic_batch, dynamic_spatial),
            opset_version=opset,
            verbose=False,
        )
        reference = model(example)
    with atomic_path(path) as tmp:
        onnx_program.save(tmp, external_data=False)
        runner = OnnxRunner(tmp, providers=["CPUExecutionProvider"])
        _check_close(reference.cpu(), runner(example.cpu()), atol, rtol, "ONNX model")
    logger.info("exported %s to %s", type(model).__name__, path)
    return path


class OnnxRunner:
    """Run an ONNX network with onnxruntime like the eager network: ``runner(x)`` returns the logits tensor.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers in order of preference; ``None``: CUDA when onnxruntime offers
            it, then CPU.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(path), providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """Logits for a float32 array (B, C, *spatial)."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a tensor (B, C, *spatial), returned on the input's device."""
        out = self.run_numpy(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(out).to(x.device)
