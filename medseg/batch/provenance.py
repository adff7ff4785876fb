"""What produced a batch run's outputs: model identity, weights hashes and result-changing settings.

Built on :func:`medseg.outputs.model_provenance` (model name/version, checkpoint sha256, config hash) and computed
once per run. It holds no run times and no input paths, so it is the same for every resumed run. The fingerprint
binds an output folder to one model and its settings: the ledger refuses to mix results of two models.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["batch_provenance", "run_fingerprint", "state_dict_sha256"]


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over a network's state dict (names, dtypes, shapes and raw bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _overlap(inferer: Any) -> float | list[float] | None:
    value = getattr(inferer, "overlap", None)
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return [float(v) for v in value]


def _postprocess(predictor: Any) -> dict[str, Any] | None:
    """The predictor's postprocessing settings, None when it has none (so older fingerprints stay valid)."""
    post = getattr(predictor, "postprocess", None)
    if post is None or getattr(post, "is_identity", True):
        return None
    return post.to_config()


def batch_provenance(predictor: Any) -> dict[str, Any]:
    """Provenance of a :class:`~medseg.inference.Predictor` for every case report of a run.

    Local checkpoint paths are reduced to their file name (the folders above are nobody's business in a report).
    """
    from medseg.outputs import config_hash, model_provenance
    from medseg.outputs.report import canonical_json

    spec = predictor.spec
    uri = getattr(predictor, "source_uri", None)
    checkpoint = getattr(predictor, "checkpoint_path", None)
    if uri is not None and not str(uri).startswith(("models:/", "runs:/")):
        uri = Path(str(uri)).name
    info = model_provenance(
        spec,
        checkpoint_path=checkpoint,
        source_uri=uri,
        model_name=getattr(predictor, "model_name", None),
        model_version=getattr(predictor, "model_version", None),  # the number an alias resolved to
    )
    if info.get("model_name") is None:
        info["model_name"] = str(spec.network.get("name") or "medseg")
    info.update(
        state_dict_sha256=state_dict_sha256(predictor.network),
        spec_sha256=hashlib.sha256(canonical_json(spec.to_dict()).encode("utf-8")).hexdigest(),
        config_hash=config_hash(spec.config),
        tta=bool(getattr(predictor, "tta", False)),
        overlap=_overlap(getattr(predictor, "inferer", None)),
        postprocess=_postprocess(predictor),
    )
    return info


def run_fingerprint(provenance: dict[str, Any]) -> str:
    """sha256 of what decides the label values: weights, spec and result-changing settings."""
    from medseg.outputs.report import canonical_json

    keys = ("state_dict_sha256", "spec_sha256", "tta", "overlap", "postprocess")
    return hashlib.sha256(canonical_json({k: provenance.get(k) for k in keys}).encode("utf-8")).hexdigest()
