"""Loading weight files without running their code: every file of tensors the trainer reads
(pretrained weights from the weights cache or torchvision's download, a trial's checkpoint, an
exported model.pt) is loaded here, and only here (tests/trainer/test_weights_hostile.py checks that
no other `torch.load` is in the trainer).

A .pt/.pth file is a pickle, and unpickling can run any code the file names. `torch.load` with
`weights_only=True` unpickles only tensors and plain containers; torch.hub's
`load_state_dict_from_url` (what torchvision's `Weights.get_state_dict` calls) defaults to
`weights_only=False`, and hashes a file only when it downloads it, never when it finds it in its
cache. So torchvision's weights are fetched here too: the file name's published hash (the first hex
digits of its sha256, torch.hub's `check_hash` convention: resnet18-f37072fd.pth) is checked on every
load, from the weights cache or from torch.hub's cache.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
from typing import Any
from urllib.parse import urlparse

import torch

from .data import DataError

log = logging.getLogger(__package__)

_DETAIL_CHARS = 300   # of torch's message, in ours: its explanations run to a dozen lines


class WeightsError(DataError):
    """A weight file that cannot be loaded safely: truncated, not a torch file, holding pickled
    objects other than tensors and plain containers, or not the file its name's hash publishes. The
    message names the file."""


def safe_load(data: bytes, name: str) -> Any:
    """The content of a torch file on the CPU, unpickled with `weights_only=True`. `name` (the
    file's URL or path) is what errors say. Raises WeightsError."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in the zip reader, the unpickler or seek
        raise WeightsError(f"{name}: not loadable as weights: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, pickle.UnpicklingError):
        # torch's message is a page of advice around one line that says what it refused.
        lines = [line.strip() for line in str(exc).splitlines()]
        detail = next((line for line in lines if line.startswith(("Trying to load", "Unsupported"))), "")
        return ("it holds pickled objects that are not tensors or plain containers, which loading could run as "
                f"code, or it is damaged{f' ({detail[:_DETAIL_CHARS]})' if detail else ''}")
    detail = str(exc).strip().splitlines()[0][:_DETAIL_CHARS] if str(exc).strip() else ""
    return f"truncated or not a torch file ({type(exc).__name__}{f': {detail}' if detail else ''})"


def published_hash(file_name: str) -> str | None:
    """The sha256 prefix in a torchvision-style file name (resnet18-f37072fd.pth: f37072fd), or
    None when the name carries none."""
    match = torch.hub.HASH_REGEX.search(os.path.basename(file_name))
    return match.group(1) if match and match.group(1) else None


def check_hash(data: bytes, file_name: str, name: str) -> None:
    """Raises WeightsError when `file_name` publishes a hash that `data` does not have."""
    expected = published_hash(file_name)
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if not actual.startswith(expected):
        raise WeightsError(f"{name}: its sha256 begins {actual[:len(expected)]}, not {expected} as its name "
                           f"publishes: this is not the published {file_name}")


def load_published(data: bytes, file_name: str, name: str) -> Any:
    """`safe_load` of a file whose name may publish its hash, checked first."""
    check_hash(data, file_name, name)
    return safe_load(data, name)


def from_torch_hub(url: str) -> Any:
    """The state dict of torchvision's weight file at `url`, through torch.hub's cache
    ($TORCH_HOME/hub/checkpoints): downloaded when absent or when the cached file does not have the
    published hash (torch.hub's download checks the hash before it moves the file into place, so a
    failed download leaves the cache as it was). A failed download raises OSError."""
    file_name = os.path.basename(urlparse(url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, file_name)
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = f.read()
        try:
            return load_published(data, file_name, path)
        except WeightsError as exc:
            log.warning("%s; downloading %s again", exc, url)
    os.makedirs(folder, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, path, published_hash(file_name), progress=False)
    except RuntimeError as exc:  # the download's hash is wrong: a damaged transfer, worth retrying
        raise OSError(f"{url}: {exc}") from None
    with open(path, "rb") as f:
        return load_published(f.read(), file_name, path)
