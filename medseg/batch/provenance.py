"""What produced a batch run's outputs: model identity, weights hashes and result-changing settings.

Built on :func:`medseg.outputs.model_provenance` (model name/version, checkpoint sha256, config hash) and computed
once per run. It holds no run times and no input paths, so it is the same for every resumed run.

The fingerprint (:func:`run_fingerprint`) binds an output folder to one model and its settings: the ledger refuses
to mix results of two models. It hashes what decides the label values: the weights, the network's architecture, the
data contract (the only part of the spec inference reads) and the effective inference settings; not the training
config or the version that trained the model, which are provenance. Older medseg hashed the whole spec, so a
format-1 checkpoint, converted to a contract on loading, no longer matched the folders it had started;
:func:`earlier_fingerprints` gives those earlier forms for the same model and settings, which the runner accepts once
and replaces by the current one (``tests/test_checkpoint_legacy.py`` resumes a folder made by medseg at f2e0a9d).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["batch_provenance", "earlier_fingerprints", "run_fingerprint", "state_dict_sha256"]


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


_SETTINGS = ("tta", "overlap", "postprocess")  # result-changing settings recorded in the provenance


def _sha256_json(value: Any) -> str:
    from medseg.outputs.report import canonical_json

    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def _crop_rule(crop: Any) -> dict[str, Any] | None:
    """A foreground crop rule as data (None: the whole grid)."""
    return None if crop is None else {"threshold": float(crop.threshold), "margin": int(crop.margin)}


def _crop(predictor: Any) -> dict[str, Any] | None:
    """The foreground crop rule the predictor applies (None: the whole grid)."""
    return _crop_rule(getattr(predictor, "crop", None))


def run_fingerprint(predictor: Any, provenance: dict[str, Any]) -> str:
    """sha256 of what decides the label values (module docstring); ``provenance`` is the predictor's
    :func:`batch_provenance`."""
    spec = predictor.spec
    return _sha256_json(
        {
            "state_dict_sha256": provenance["state_dict_sha256"],
            "network": spec.network,
            "contract": spec.contract.to_dict(),
            **{k: provenance.get(k) for k in _SETTINGS},
            "crop": _crop(predictor),
        }
    )


def _spec_fingerprint(provenance: dict[str, Any], spec_data: dict[str, Any]) -> str:
    """The fingerprint as medseg computed it until the contract-based one: over the whole spec data."""
    earlier = {k: provenance.get(k) for k in ("state_dict_sha256", *_SETTINGS)}
    return _sha256_json({**earlier, "spec_sha256": _sha256_json(spec_data)})


def earlier_fingerprints(predictor: Any, provenance: dict[str, Any]) -> list[str]:
    """The fingerprints older medseg wrote for this same model and settings: over the whole format-2 spec, and for
    a model converted from format 1, over the format-1 spec as stored (what medseg computed before the contract).

    Each holds the weights' hash and the settings as :func:`run_fingerprint` does, so a different model or
    different settings match none of them. They did not hold the crop: none is offered unless the predictor crops
    as the model was trained (the default), so a folder started by older medseg refuses another crop setting.
    """
    spec = predictor.spec
    if _crop(predictor) != _crop_rule(spec.contract.crop):
        return []
    found = [_spec_fingerprint(provenance, spec.to_dict())]
    if getattr(spec, "format1", None) is not None:
        found.append(_spec_fingerprint(provenance, spec.format1))
    return found
