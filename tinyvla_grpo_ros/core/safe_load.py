"""Reading another project's checkpoint files without running their code, and naming what is
wrong with them.

- `load_tensors(path)`: `.safetensors` (safetensors, never pickle) or `.bin` / `.pt` (PyTorch
  pickles, only through `torch.load(weights_only=True)`: tensors and plain containers, no code).
- `load_numpy_pickle(path)`: a pickle of numpy arrays (TinyVLA's `dataset_stats.pkl`) through an
  unpickler that admits numpy's array and scalar reconstructors and nothing else: a pickle that
  would import anything else (`os.system`, `builtins.eval`, ...) is refused before it runs.
- `TensorSource`: the source tensors an importer maps, each taken once (missing, wrong shape or
  not finite: an error naming the file and the tensor) or ignored by name with a reason; at the
  end, a source tensor neither taken nor ignored is an error too.
Every error is a `SourceError` (a ValueError) whose message starts with the file.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

NUMPY_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
      for n in ("_reconstruct", "scalar")),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric"))})


class SourceError(ValueError):
    """A source checkpoint file that cannot be imported as it is; the message names it."""


class _NumpyOnly(pickle.Unpickler):
    def __init__(self, f, path: Path) -> None:
        super().__init__(f)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in NUMPY_GLOBALS:
            raise SourceError(f"{self.path}: refused to load {module}.{name}: this pickle may "
                              "hold numpy arrays and plain containers only (loading it would "
                              "run code)")
        return super().find_class(module, name)


def load_numpy_pickle(path: Path):
    """A pickle of numpy arrays (dicts, lists, numbers, strings around them), safely."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _NumpyOnly(f, path).load()
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - any torn or foreign pickle: name the file
        raise SourceError(f"{path}: not a readable pickle of numpy arrays ({e})") from e


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """name -> tensor from a .safetensors file or a PyTorch .bin / .pt (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: missing")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            out = load_file(str(path))
        else:
            out = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickles with code, torn files: name the file
        raise SourceError(f"{path}: cannot be read as tensors ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(out, dict) or not all(isinstance(v, torch.Tensor) for v in out.values()):
        raise SourceError(f"{path}: not a mapping of names to tensors")
    return out


class TensorSource:
    """Source tensors (from one or more files) that an importer takes or ignores by name."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.origin: dict[str, Path] = {}
        self.used: set[str] = set()
        self.ignored: dict[str, str] = {}

    def add(self, path: Path, strip: str = "") -> TensorSource:
        """Every tensor of `path`, its name without the prefix `strip` when it has it."""
        for k, v in load_tensors(path).items():
            name = k[len(strip):] if strip and k.startswith(strip) else k
            if name in self.tensors:
                raise SourceError(f"{path}: tensor {name!r} also in {self.origin[name]}")
            self.tensors[name], self.origin[name] = v, Path(path)
        return self

    def add_tensors(self, tensors: dict[str, torch.Tensor], origin: Path) -> TensorSource:
        for k, v in tensors.items():
            self.tensors[k], self.origin[k] = v, Path(origin)
        return self

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """The tensor `name` as float32, checked: present, of `shape`, finite."""
        if name not in self.tensors:
            where = ", ".join(sorted({str(p) for p in self.origin.values()})) or "the source"
            raise SourceError(f"{where}: tensor {name!r} is missing")
        t, path = self.tensors[name], self.origin[name]
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise SourceError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, the "
                              f"model needs {tuple(shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SourceError(f"{path}: tensor {name!r} is not finite "
                              f"({int((~torch.isfinite(t)).sum())} NaN or inf values)")
        self.used.add(name)
        return t.float() if t.is_floating_point() else t

    def ignore(self, name: str, why: str) -> None:
        if name in self.tensors:
            self.ignored[name] = why

    def ignore_prefix(self, prefix: str, why: str) -> None:
        for name in self.tensors:
            if name.startswith(prefix) and name not in self.used:
                self.ignored[name] = why

    def check_all_accounted(self) -> None:
        left = sorted(set(self.tensors) - self.used - set(self.ignored))
        if left:
            path = self.origin[left[0]]
            raise SourceError(f"{path}: {len(left)} source tensors neither used nor known to "
                              f"be ignorable, e.g. {left[:5]}")
