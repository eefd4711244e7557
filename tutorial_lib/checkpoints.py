"""Checkpoints: a ``.pt`` file of weights plus a JSON sidecar that says what they are.

A checkpoint ``x2_mixture.pt`` is written as two files in the same folder:

- ``x2_mixture.pt``: the model's ``state_dict`` (``torch.save``; read back with
  ``torch.load(..., weights_only=True)``, so loading never runs pickled code);
- ``x2_mixture.json``, the *sidecar*: what is needed to rebuild the network (``kind``,
  ``architecture``, ``scale``), where it came from (kernel split, training data, budget,
  device, steps, wall time), what it scores (``metrics``), the package versions, and the
  SHA-256 and size of the ``.pt`` file.

Both are written atomically (a temporary file in the same folder, then ``os.replace``), the
``.pt`` first and the sidecar second, so a crash never leaves a sidecar that describes weights
that are not there; a crash between the two while overwriting leaves the old sidecar beside
the new weights, which :func:`load_checkpoint` reports as a hash mismatch.
:func:`load_checkpoint` checks the size and the hash before it unpickles anything, rebuilds
the network from the sidecar and loads the weights strictly; every problem
(a missing file, a truncated or altered file, a checkpoint of another kind or scale, weights
that do not fit the architecture) is a :class:`CheckpointError` with a message that says
what is wrong.

Optimiser state, used to resume training, lives in a third, optional file
``x2_mixture.opt.pt`` (:func:`save_optimizer_state`, :func:`load_optimizer_state`): it is
large (Adam keeps two tensors per weight), only training needs it, and a checkpoint is
complete without it.

Kinds and what rebuilds them (``architecture`` in the sidecar holds the constructor
arguments):

- ``'mixture'``: :class:`~tutorial_lib.models.BlindSR` = E-Net (or none, for the averaged
  ensemble) + :class:`~tutorial_lib.models.MixtureOfExperts` (or ``LoopMixture``);
- ``'single'``: one :class:`~tutorial_lib.models.Expert`, the single-network baseline;
- ``'encoder'``: :class:`~tutorial_lib.models.EncoderWithClassifier` (E-Net + the
  pre-training head of Eq. 11), or a bare :class:`~tutorial_lib.models.ENet`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import folder_from_environment, get_device, new_file_mode
from .models import (
    BlindSR,
    EncoderWithClassifier,
    ENet,
    Expert,
    KernelClassifier,
    LoopMixture,
    MixtureOfExperts,
)

__all__ = [
    "KINDS",
    "CheckpointError",
    "architecture_of",
    "build_model",
    "check_output_folder",
    "checkpoint_dir",
    "file_sha256",
    "load_checkpoint",
    "load_optimizer_state",
    "optimizer_state_path",
    "read_sidecar",
    "rewrite_sidecar",
    "save_checkpoint",
    "save_optimizer_state",
    "sidecar_path",
]

KINDS = ("mixture", "single", "encoder")
FORMAT_VERSION = 1
# Sidecar keys written by save_checkpoint itself; metadata may not override them.
_RESERVED = ("format", "kind", "file", "bytes", "sha256", "architecture", "scale", "versions", "created")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, altered, truncated, or not the model asked for."""


# ------------------------------------------------------------------------------ file helpers
CHECKPOINT_DIR_VARIABLE = "TUTORIAL_CHECKPOINT_DIR"


def checkpoint_dir() -> Path:
    """The folder of trained checkpoints that the notebooks and the demo read.

    The environment variable ``TUTORIAL_CHECKPOINT_DIR`` names a folder of your own (same
    file names as the shipped ones, e.g. the ``--out`` folder of ``scripts/make_checkpoints.py``);
    without it, ``data/checkpoints`` of the checkout. A variable that names no folder is an
    error, not a silent fall-back to the shipped files.
    """
    folder = folder_from_environment(CHECKPOINT_DIR_VARIABLE, CheckpointError)
    return folder or Path(__file__).resolve().parents[1] / "data" / "checkpoints"


def check_output_folder(path: str | os.PathLike, name: str = "out") -> Path:
    """``path`` as a folder to write into, checked before any work: it may be missing (it is
    created when written to), but neither it nor a parent may be a file (argument ``name``)."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == path else f"lies under {str(folder)!r}, which is a file"
                raise CheckpointError(f"{name} {str(path)!r} {what}; name a folder (it is created if missing)")
            _check_writable(folder, path, name)
            break
    return path


def _check_writable(folder: Path, path: Path, name: str) -> None:
    """Write and remove an empty file in ``folder`` (the output folder, or the nearest existing
    folder above it): a folder nobody may write to is found before training, not after."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
    except OSError as err:
        where = "" if folder == path else f" (its nearest existing folder {str(folder)!r})"
        raise CheckpointError(f"{name} {str(path)!r} cannot be written to{where}: "
                              f"{err.strerror or err}; choose another folder") from None
    os.close(handle)
    os.unlink(probe)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a checkpoint: ``x2_mixture.pt`` -> ``x2_mixture.json``."""
    return Path(path).with_suffix(".json")


def optimizer_state_path(path: str | os.PathLike) -> Path:
    """The optimiser-state file of a checkpoint: ``x2_mixture.pt`` -> ``x2_mixture.opt.pt``."""
    return Path(path).with_suffix(".opt.pt")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _temporary_beside(path: Path) -> Path:
    """An empty temporary file in ``path``'s folder (``os.replace`` is atomic only within one
    file system), named after ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    return Path(tmp_name)


def _publish(tmp: Path, path: Path) -> None:
    """Move the finished temporary file ``tmp`` onto ``path`` in one step."""
    os.chmod(tmp, new_file_mode())  # mkstemp makes 0600 files; use the usual permissions
    os.replace(tmp, path)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(temporary_path)`` then move the result onto ``path`` in one step.

    The temporary file lives in the same folder and is removed if anything fails, so
    ``path`` is either the old file or the complete new one, never half of it.
    """
    tmp = _temporary_beside(path)
    try:
        write(tmp)
        _publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_ready(value: Any) -> Any:
    """Turn NumPy/torch scalars and arrays, paths and tuples into plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, torch.Tensor):
        return _json_ready(value.detach().cpu().tolist())
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _versions() -> dict[str, str]:
    return {
        "tutorial_lib": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------- architectures
def _unwrap(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile`` (which wraps it as ``_orig_mod``)."""
    return getattr(model, "_orig_mod", model)


def architecture_of(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """``(kind, architecture)`` of a model: the constructor arguments that rebuild it.

    Raises :class:`CheckpointError` for a module that is none of the three kinds.
    """
    model = _unwrap(model)
    if isinstance(model, BlindSR):
        mixture = model.mixture
        if isinstance(mixture, MixtureOfExperts):
            expert_config, impl = mixture.expert_config(), "batched"
        elif isinstance(mixture, LoopMixture):
            expert_config, impl = mixture.experts[0].config(), "loop"
        else:
            raise CheckpointError(f"unknown mixture type {type(mixture).__name__}")
        arch = {"M": mixture.M, **expert_config, "mixture_impl": impl, "mode": model.mode,
                "enet": model.enet is not None}
        if model.enet is not None:
            arch.update(enet_dropout=model.enet.dropout.p, enet_input_offset=model.enet.input_offset)
        return "mixture", arch
    if isinstance(model, Expert):
        return "single", dict(model.config())
    if isinstance(model, EncoderWithClassifier):
        enet, head = model.enet, model.classifier
        hidden = head.net[0].out_features
        return "encoder", {"M": enet.M, "K": head.K, "hidden": hidden, "classifier": True,
                           "dropout": enet.dropout.p, "input_offset": enet.input_offset}
    if isinstance(model, ENet):
        return "encoder", {"M": model.M, "classifier": False, "dropout": model.dropout.p,
                           "input_offset": model.input_offset}
    raise CheckpointError(
        f"cannot checkpoint a {type(model).__name__}: expected BlindSR, Expert, "
        "EncoderWithClassifier or ENet")


def build_model(kind: str, architecture: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised network of ``kind`` with ``architecture`` (see :func:`architecture_of`).

    Keys the constructors do not take (e.g. the ``scale`` an E-Net was trained at) are ignored.
    """
    arch = dict(architecture)
    try:
        if kind == "mixture":
            expert_kwargs = {k: arch[k] for k in ("channels", "n_blocks", "up_channels", "deconv_relu",
                                                  "input_offset")}
            if arch.get("mixture_impl", "batched") == "loop":
                mixture = LoopMixture(arch["M"], arch["scale"], **expert_kwargs)
            else:
                mixture = MixtureOfExperts(arch["M"], arch["scale"], **expert_kwargs)
            enet = None
            if arch.get("enet", True):
                enet = ENet(arch["M"], dropout=arch.get("enet_dropout", 0.5),
                            input_offset=arch.get("enet_input_offset", 0.5))
            return BlindSR(enet, mixture, mode=arch.get("mode", "fused"))
        if kind == "single":
            return Expert(**{k: arch[k] for k in ("scale", "channels", "n_blocks", "up_channels",
                                                  "deconv_relu", "input_offset")})
        if kind == "encoder":
            enet = ENet(arch["M"], dropout=arch.get("dropout", 0.5), input_offset=arch.get("input_offset", 0.5))
            if not arch.get("classifier", True):
                return enet
            return EncoderWithClassifier(enet, KernelClassifier(arch["M"], arch["K"], arch.get("hidden", 64)))
    except KeyError as missing:
        raise CheckpointError(f"architecture of a {kind!r} checkpoint lacks the field {missing}") from None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot rebuild a {kind!r} network from {arch}: {err}") from None
    raise CheckpointError(f"kind must be one of {KINDS}, got {kind!r}")


# ------------------------------------------------------------------------------------ save
def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model.state_dict()`` to ``path`` (``.pt``) and its sidecar ``path.with_suffix('.json')``.

    Args:
        model: a BlindSR (kind ``'mixture'``), an Expert (``'single'``), or an
            EncoderWithClassifier / ENet (``'encoder'``); a ``torch.compile`` wrapper is unwrapped.
        path: where the weights go; must end in ``.pt``.
        kind: ``'mixture'``, ``'single'`` or ``'encoder'``; checked against the model.
            ``None``: taken from the model.
        config: the architecture (constructor arguments). ``None``: read off the model with
            :func:`architecture_of`. When given it must contain at least what
            :func:`architecture_of` finds and agree with it.
        metadata: anything else worth keeping, merged into the top level of the sidecar:
            by convention ``kernel_split``, ``training_data``, ``budget``, ``device``,
            ``steps``, ``wall_time_s``, ``metrics``, ``variant``, ``seed``. NumPy and torch
            values are converted to plain JSON. May not override the keys written here
            (``kind``, ``architecture``, ``scale``, ``sha256``, ``bytes``, ``versions``, ...).

    Returns:
        The sidecar as a dict. Both files are written in full under temporary names, then
        moved into place; if anything fails before that, an existing checkpoint is untouched.
    """
    path = Path(path)
    if path.suffix != ".pt":
        raise CheckpointError(f"checkpoint path must end in '.pt', got {str(path)!r}")
    found_kind, found_arch = architecture_of(model)
    if kind is None:
        kind = found_kind
    if kind not in KINDS:
        raise CheckpointError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind != found_kind:
        raise CheckpointError(f"kind={kind!r} but the model is a {found_kind!r} network "
                              f"({type(_unwrap(model)).__name__})")
    architecture = dict(found_arch)
    if config is not None:
        for key, value in dict(config).items():
            if key in found_arch and _json_ready(found_arch[key]) != _json_ready(value):
                raise CheckpointError(f"config[{key!r}] = {value!r} disagrees with the model ({found_arch[key]!r})")
            architecture[key] = value
    metadata = dict(metadata or {})
    clash = sorted(set(metadata) & set(_RESERVED))
    if clash:
        raise CheckpointError(f"metadata may not set the reserved sidecar keys {clash}")
    # An E-Net does not depend on the scale, but it is trained at one: pass config={"scale": u}.
    scale = architecture.get("scale")

    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    # Both files are finished as temporary files first and only then moved into place, so an
    # error (metadata JSON cannot hold, a full disk, Ctrl-C) leaves an existing checkpoint whole.
    weights_tmp = _temporary_beside(path)
    sidecar_tmp = None
    try:
        torch.save(state, weights_tmp)
        sidecar: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "file": path.name,
            "bytes": weights_tmp.stat().st_size,
            "sha256": file_sha256(weights_tmp),
            "scale": scale,
            "architecture": architecture,
            **metadata,
            "versions": _versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        sidecar = _json_ready(sidecar)
        try:
            text = json.dumps(sidecar, indent=2, sort_keys=False, allow_nan=False) + "\n"
        except (TypeError, ValueError) as err:
            raise CheckpointError("metadata and config must hold JSON values (numbers, strings, lists, dicts; "
                                  f"NumPy and torch values are converted): {err}") from None
        sidecar_tmp = _temporary_beside(sidecar_path(path))
        sidecar_tmp.write_text(text, encoding="utf-8")
        _publish(weights_tmp, path)
        _publish(sidecar_tmp, sidecar_path(path))
    except BaseException:
        for tmp in (weights_tmp, sidecar_tmp):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        raise
    return sidecar


def rewrite_sidecar(path: str | os.PathLike, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``edit`` (which changes the dict in place) to the sidecar of checkpoint ``path`` and
    write it back atomically, as :func:`save_checkpoint` writes it; the weights are untouched
    (so their sha256 still holds). Returns the new sidecar."""
    side = sidecar_path(path)
    sidecar = json.loads(side.read_text(encoding="utf-8"))
    edit(sidecar)
    sidecar = _json_ready(sidecar)
    text = json.dumps(sidecar, indent=2, allow_nan=False) + "\n"
    _atomic_write(side, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return sidecar


# ------------------------------------------------------------------------------------ load
def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of checkpoint ``path`` as a dict (no hash check; see :func:`load_checkpoint`)."""
    path = Path(path)
    side = sidecar_path(path)
    if not side.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} has no sidecar {side.name!r} "
                              "(it says what network the weights belong to); cannot load it")
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"sidecar {str(side)!r} is not valid JSON: {err}") from None
    if not isinstance(sidecar, dict) or "kind" not in sidecar or "architecture" not in sidecar:
        raise CheckpointError(f"sidecar {str(side)!r} lacks 'kind' or 'architecture'")
    _check_sidecar_fields(sidecar, side)
    return sidecar


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


_ARCHITECTURE_LIMITS = {"M": 64, "scale": 8, "channels": 1024, "n_blocks": 256, "up_channels": 1024, "K": 1024,
                        "hidden": 4096}


def _check_sidecar_fields(sidecar: dict[str, Any], side: Path) -> None:
    """The fields :func:`load_checkpoint` relies on have the right types and agree."""
    def bad(message: str) -> CheckpointError:
        return CheckpointError(f"sidecar {str(side)!r} is malformed: {message}")

    if sidecar["kind"] not in KINDS:
        raise bad(f"'kind' must be one of {KINDS}, got {sidecar['kind']!r}")
    architecture = sidecar["architecture"]
    if not isinstance(architecture, dict):
        raise bad(f"'architecture' must be an object, got {type(architecture).__name__}")
    if sidecar.get("bytes") is not None and not _is_int(sidecar["bytes"]):
        raise bad(f"'bytes' must be an integer, got {sidecar['bytes']!r}")
    if sidecar.get("sha256") is not None and not isinstance(sidecar["sha256"], str):
        raise bad(f"'sha256' must be a string, got {sidecar['sha256']!r}")
    for where, value in (("scale", sidecar.get("scale")), ("architecture.scale", architecture.get("scale"))):
        if value is not None and not _is_int(value):
            raise bad(f"{where!r} must be an integer, got {value!r}")
    if None not in (sidecar.get("scale"), architecture.get("scale")) and sidecar["scale"] != architecture["scale"]:
        raise bad(f"'scale' is {sidecar['scale']} but 'architecture.scale' is {architecture['scale']}")
    # sizes are checked before a network is built from them: the sidecar is not covered by the
    # weights' hash, and an edited "n_blocks": 1000000 would otherwise hang building it
    for key, limit in _ARCHITECTURE_LIMITS.items():
        value = architecture.get(key)
        if value is not None and (not _is_int(value) or not 1 <= value <= limit):
            raise bad(f"'architecture.{key}' must be an integer in [1, {limit}], got {value!r}")


def _scale_text(scale: Any) -> str:
    return f"×{scale}" if scale is not None else "an unknown scale"


def load_checkpoint(
    path: str | os.PathLike,
    *,
    expected_kind: str | None = None,
    scale: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of a checkpoint and load its weights; returns ``(model, sidecar)``.

    Checks, in this order, each failing with a :class:`CheckpointError`: the ``.pt`` and its
    sidecar exist; the file has the size and SHA-256 the sidecar records (a truncated or
    altered file is caught here, before unpickling); the kind is ``expected_kind`` (when
    given); the scale is ``scale`` (when given); the file unpickles with
    ``weights_only=True``; the weights fit the rebuilt architecture exactly.

    The model is returned on ``device`` in eval mode.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a folder; pass a checkpoint file in it, e.g. x2_mixture.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    if path.suffix == ".json":
        raise CheckpointError(f"{str(path)!r} is the sidecar of a checkpoint; pass the weights file "
                              f"{path.with_suffix('.pt').name}")
    if path.name.endswith(".opt.pt"):
        raise CheckpointError(f"{str(path)!r} is the optimiser state of a checkpoint; pass the weights file "
                              f"{path.name.removesuffix('.opt.pt')}.pt")
    sidecar = read_sidecar(path)
    kind = sidecar["kind"]
    if expected_kind is not None and expected_kind not in KINDS:
        raise CheckpointError(f"expected_kind must be one of {KINDS}, got {expected_kind!r}")
    size = path.stat().st_size
    expected_size = sidecar.get("bytes")
    if expected_size is not None and size != expected_size:
        how = "truncated" if size < expected_size else "longer than recorded"
        raise CheckpointError(f"checkpoint {str(path)!r} is {how}: {size} bytes, its sidecar "
                              f"records {expected_size} (sha256 check failed); re-download or retrain it")
    expected_hash = sidecar.get("sha256")
    if not expected_hash:
        raise CheckpointError(f"sidecar of {str(path)!r} records no sha256; cannot verify the file")
    actual_hash = file_sha256(path)
    if actual_hash != expected_hash:
        raise CheckpointError(f"sha256 mismatch for {str(path)!r}: the file hashes to {actual_hash[:12]}…, "
                              f"its sidecar records {expected_hash[:12]}… (the file was changed or corrupted)")
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {kind!r} network, expected {expected_kind!r}")
    trained_scale = sidecar.get("scale", sidecar["architecture"].get("scale"))
    if scale is not None and not _is_int(scale):
        raise CheckpointError(f"scale must be an integer (2, 3 or 4), got {scale!r}")
    if scale is not None and trained_scale is not None and int(scale) != int(trained_scale):
        raise CheckpointError(f"checkpoint {str(path)!r} was trained for {_scale_text(trained_scale)}, "
                              f"requested ×{scale}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise CheckpointError(f"checkpoint {str(path)!r} could not be read "
                              f"(corrupt or not a state_dict): {type(err).__name__}: {err}") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold a state_dict "
                              f"(got {type(state).__name__})")
    model = build_model(kind, sidecar["architecture"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:4])
        raise CheckpointError(f"the weights in {str(path)!r} do not fit the {kind!r} architecture "
                              f"{sidecar['architecture']}: {detail}") from None
    return model.to(get_device(device)).eval(), sidecar


# ----------------------------------------------------------------------- optimiser state
def save_optimizer_state(
    optimizers: torch.optim.Optimizer | list[torch.optim.Optimizer] | Mapping[str, Any],
    path: str | os.PathLike,
    step: int | None = None,
) -> Path:
    """Write the state of one or more optimisers beside checkpoint ``path`` (``.opt.pt``).

    ``optimizers``: an optimiser, a list of them, or an already collected dict
    ``{"classes": [...], "states": [...]}``. Written atomically; returns the file's path.
    """
    if isinstance(optimizers, Mapping):
        payload = dict(optimizers)
    else:
        if isinstance(optimizers, torch.optim.Optimizer):
            optimizers = [optimizers]
        payload = {"classes": [type(o).__name__ for o in optimizers],
                   "states": [o.state_dict() for o in optimizers]}
    if step is not None:
        payload["step"] = int(step)
    target = optimizer_state_path(path)
    _atomic_write(target, lambda tmp: torch.save(payload, tmp))
    return target


def load_optimizer_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The optimiser state saved beside checkpoint ``path``, or ``None`` when there is none.

    Raises :class:`CheckpointError` when the file exists but cannot be read.
    """
    target = optimizer_state_path(path)
    if not target.is_file():
        return None
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise CheckpointError(f"optimiser state {str(target)!r} could not be read: {type(err).__name__}: {err}") from None
    if not isinstance(payload, Mapping) or "states" not in payload or "classes" not in payload:
        raise CheckpointError(f"optimiser state {str(target)!r} lacks 'classes' and 'states'")
    return dict(payload)
