"""The integrity of the weight files ftlab loads: a damaged file is an FtlabError that names it and says what to do,
never a traceback from safetensors and never an evaluation of nan.

    info["files"] = manifest(directory)    # a checkpoint just written: {file: {size, sha256}}, kept in its ftlab.json
    verified = check_files(directory)      # before loading: every safetensors header, and the recorded checksums
    check_finite(model, directory)         # after, unless verified: every floating tensor finite, else named
    check_adapter(directory)               # an adapter, before PEFT loads it: check_files, then (unless verified)
                                           # its tensors finite

Three checks, three kinds of damage. Checksums (when the directory has an ftlab.json recording them: checkpoints and
the tiny base that ftlab wrote) catch any change of a byte. A safetensors header that does not parse, or that
promises more bytes than the file holds, catches a truncated or overwritten file of any origin (a downloaded base).
The finite check catches, in a file without checksums, the flipped bits that turn a weight into nan or inf (bits
that leave it finite are caught by checksums alone), so it runs only where no checksums were verified: a file
whose checksums match holds the bytes ftlab wrote, and training stops before a weight turns non-finite. Loaders ask
here: model.load_model and load_adapter (training, `ftlab eval`, KL), and the spectrum's TensorFiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from ftlab.errors import ConfigError, FtlabError
from ftlab.io import damaged_files, file_digests
from ftlab.rundir import INFO, read_info, weights_remedy

CHUNK = 1 << 24  # elements checked at a time: the finite check's boolean mask stays at 16 MB, whatever the tensor


def manifest(directory: str | Path) -> dict[str, dict]:
    """{file: {size, sha256}} of every file in a model or adapter directory just written, but its ftlab.json."""
    directory = Path(directory)
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return file_digests(directory, [n for n in names if n != INFO])


def check_files(directory: str | Path) -> bool:
    """Raise an FtlabError naming the first damaged file of a local model or adapter directory: a safetensors file
    whose header does not parse or promises more bytes than the file holds (check_headers), or any file whose
    size or checksum differs from its ftlab.json's record. Returns whether checksums were recorded (and so
    verified): then the finite check has nothing left to find."""
    directory = Path(directory)
    check_headers(directory)
    recorded = read_info(directory).get("files")
    if recorded:
        problems = damaged_files(directory, recorded)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise FtlabError(f"{problems[0]}{more}: the file is damaged; {weights_remedy(directory)}")
    return bool(recorded)


def check_headers(directory: str | Path) -> None:
    """Every safetensors file of a model or adapter directory has a readable header that its size covers (cheap:
    the tensors are not read); an FtlabError names the first that does not, a ConfigError a directory with none
    (ftlab loads safetensors only, never pickles)."""
    paths = sorted(Path(directory).glob("*.safetensors"))
    if not paths:
        raise ConfigError(f"{directory} has no *.safetensors weights (ftlab never loads pickled .bin files)")
    for path in paths:
        safetensors_keys(path)


def safetensors_keys(path: str | Path) -> list[str]:
    """The tensor names in a safetensors file's header; a damaged file is an FtlabError naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError) as e:
        raise FtlabError(f"{path}: not a readable safetensors file ({e}): the file is damaged; "
                         f"{weights_remedy(path.parent)}") from None


def first_non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating tensor holding a nan or an inf, or None (each tensor looked at once, a chunk
    of CHUNK elements at a time)."""
    for name, t in tensors:
        if not t.is_floating_point() or t.device.type == "meta":
            continue
        flat = t.detach().reshape(-1)
        if not all(bool(torch.isfinite(chunk).all()) for chunk in flat.split(CHUNK)):
            return name
    return None


def check_finite(model: torch.nn.Module, directory: str | Path) -> None:
    """Raise an FtlabError when a floating parameter or buffer of `model`, loaded from `directory`, is not finite,
    naming the file and tensor that hold it (found by reading the directory's safetensors files)."""
    tensors = {}
    for name, t in model.state_dict(keep_vars=True).items():
        tensors.setdefault(id(t), (name, t))  # a tied weight (embeddings = head) once
    name = first_non_finite(tensors.values())
    if name is not None:
        raise _non_finite(Path(directory), name)


def check_adapter(directory: str | Path) -> None:
    """check_files, then, where no checksums were verified, every tensor in the adapter's safetensors files finite
    (they are small: read whole), before PEFT loads it."""
    if check_files(directory):
        return
    for path in sorted(Path(directory).glob("*.safetensors")):
        name = _first_non_finite_in(path)
        if name is not None:
            raise _non_finite_error(path, name)


def check_tensor(path: str | Path, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, read as `name` from the safetensors file `path`, once it is known to be finite (else an FtlabError
    naming both)."""
    if first_non_finite([(name, tensor)]) is not None:
        raise _non_finite_error(Path(path), name)
    return tensor


def _first_non_finite_in(path: Path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return first_non_finite((key, handle.get_tensor(key)) for key in handle.keys())


def _non_finite(directory: Path, loaded_name: str) -> FtlabError:
    if not directory.is_dir():  # a hub model, read from the Hugging Face cache
        return FtlabError(f"{directory}: weight {loaded_name} holds nan or inf values: its downloaded files are "
                          "damaged; delete the model from the Hugging Face cache (~/.cache/huggingface/hub) and load "
                          "it again")
    for path in sorted(directory.glob("*.safetensors")):
        name = _first_non_finite_in(path)
        if name is not None:
            return _non_finite_error(path, name)
    return FtlabError(f"{directory}: weight {loaded_name} is not finite once loaded (nan or inf), though every tensor "
                      f"in its files is; check the dtype it is loaded in")


def _non_finite_error(path: Path, name: str) -> FtlabError:
    return FtlabError(f"{path}: tensor {name} holds nan or inf values: the file is damaged (a model trained by ftlab "
                      f"never has them: training stops first); {weights_remedy(path.parent)}")
