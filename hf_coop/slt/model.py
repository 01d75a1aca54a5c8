"""`FrozenSLTModel`: injects supermask layers into any torch or transformers model and saves the ticket.

Compact checkpoint (a folder), format version 1:

- `slt_config.json`: the `FrozenSLTConfig` (seed, ratios, initialisations).
- `slt_ticket.safetensors`: one `U8` tensor per target layer, keyed by the layer's qualified name, holding
  one bit per *free* weight in row-major order of the free positions (`numpy.packbits(..., bitorder=
  "little")`: bit j of byte b is free weight 8b+j; pruned and locked weights take no bits).
- `slt_extras.safetensors`: every other tensor of the model's state dict (modules_to_save, trained biases,
  norms, embeddings), dense; tied tensors are stored once.
- `slt_manifest.json`: format version, architecture fingerprint, per-layer counts and the sha256 of each
  regenerated weight tensor, the sha256 of the three files above, and tied-tensor aliases.
- `README.md`: a model card.

Loading regenerates the weights and freeze codes with `hf_coop.slt.generator` and refuses a folder whose
files, format version, architecture or regenerated weights do not match the manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..artefacts import (
    atomic_save,
    local_folder,
    push_folder_to_hub,
    read_versioned_json,
    render_model_card,
    verify_folder,
)
from ..config_utils import ArtifactError, fingerprint
from ..errors import ConfigError
from .config import FrozenSLTConfig
from .layer import SUPERMASK_CLASSES, SupermaskLayer, weight_checksum

TICKET_FILE = "slt_ticket.safetensors"
EXTRAS_FILE = "slt_extras.safetensors"
MANIFEST_FILE = "slt_manifest.json"
BASE_CONFIG_FILE = "base_config.json"
MANIFEST_FORMAT_VERSION = 1
CHECKSUMMED_FILES = (FrozenSLTConfig.config_name, TICKET_FILE, EXTRAS_FILE)


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _name_matches(name: str, keys: list[str]) -> bool:
    return any(name == key or name.endswith("." + key) for key in keys)


def find_target_modules(model: nn.Module, config: FrozenSLTConfig) -> list[tuple[str, nn.Module]]:
    """The (qualified name, module) pairs that `config` turns into supermask layers, in model order."""
    saved = config.modules_to_save or []
    targets = []
    for name, module in model.named_modules():
        if not name or any(_name_matches(prefix, saved) for prefix in _prefixes(name)):
            continue
        if config.target_modules is None:
            chosen = type(module) in SUPERMASK_CLASSES
        elif isinstance(config.target_modules, str):
            chosen = re.fullmatch(config.target_modules, name) is not None
        else:
            chosen = _name_matches(name, config.target_modules)
        if not chosen:
            continue
        if type(module) not in SUPERMASK_CLASSES:
            supported = ", ".join(cls.__name__ for cls in SUPERMASK_CLASSES)
            raise ConfigError(
                f"target module {name!r} is a {type(module).__name__}; "
                f"supermask layers exist for {supported}. "
                f"Narrow target_modules or put {name!r} in modules_to_save."
            )
        targets.append((name, module))
    if not targets:
        raise ConfigError(
            f"no module of {type(model).__name__} matches target_modules={config.target_modules!r}"
        )
    return targets


def _prefixes(name: str) -> Iterator[str]:
    parts = name.split(".")
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


def distribute(total: int, weights: list[float], caps: list[int]) -> list[int]:
    """Integer counts summing to `total`, proportional to `weights`, none above its cap.

    Water-filling: layers whose share exceeds their cap get the cap and the rest is re-shared; the
    fractional parts are then rounded by largest remainder (ties to the earlier layer)."""
    if total > sum(caps):
        raise ConfigError(f"cannot place {total} frozen weights in layers holding {sum(caps)}")
    shares = [0.0] * len(caps)
    active = [i for i, cap in enumerate(caps) if cap > 0 and weights[i] > 0]
    remaining = float(total)
    while active:
        scale = remaining / sum(weights[i] for i in active)
        over = [i for i in active if scale * weights[i] > caps[i]]
        if not over:
            for i in active:
                shares[i] = scale * weights[i]
            break
        for i in over:
            shares[i] = float(caps[i])
            remaining -= caps[i]
        active = [i for i in active if i not in over]
    counts = [min(math.floor(x), cap) for x, cap in zip(shares, caps, strict=True)]
    by_remainder = sorted(range(len(caps)), key=lambda i: (-(shares[i] - counts[i]), i))
    missing = total - sum(counts)
    for i in by_remainder:
        if missing == 0:
            break
        if counts[i] < caps[i]:
            counts[i] += 1
            missing -= 1
    return counts


def frozen_counts(shapes: list[torch.Size], config: FrozenSLTConfig) -> list[tuple[int, int]]:
    """Exact (pruned, locked) counts per layer for the config's ratios and frozen distribution.

    Counts round the cumulative fractions p, s and 1 - r of a layer (or of all target weights) half up,
    `pruned = R(p·n)`, `kept = n - R(s·n)`, `locked = n - R((1 - r)·n)`, so `p <= s <= 1 - r` always gives
    `pruned + kept <= n` and `locked <= kept`. "uniform" rounds per layer; "erk" and "epl" spread the
    global totals with `distribute`."""
    sizes = [shape.numel() for shape in shapes]
    if config.frozen_distribution == "uniform":
        return [
            (round_half_up(config.pruned_ratio * n), n - round_half_up((1.0 - config.locked_ratio) * n))
            for n in sizes
        ]
    total = sum(sizes)
    n_pruned = round_half_up(config.pruned_ratio * total)
    n_locked = total - round_half_up((1.0 - config.locked_ratio) * total)
    if config.frozen_distribution == "erk":
        # Erdős–Rényi-Kernel: a layer's density is proportional to sum(shape) / prod(shape), so its count of
        # kept (or locked) weights is proportional to sum(shape).
        weights = [float(sum(shape)) for shape in shapes]
        pruned = [
            n - kept for n, kept in zip(sizes, distribute(total - n_pruned, weights, sizes), strict=True)
        ]
    else:
        weights = [1.0] * len(sizes)
        pruned = distribute(n_pruned, weights, sizes)
    locked = distribute(n_locked, weights, [n - p for n, p in zip(sizes, pruned, strict=True)])
    return list(zip(pruned, locked, strict=True))


class FrozenSLTModel(nn.Module):
    """A model whose target layers are supermask layers over frozen random weights (arXiv 2402.14029).

    Wraps any `nn.Module` (transformers models included) the way a peft model wraps its base: forward and
    unknown attributes go to `base_model`. Train the scores with any loop or `Trainer` (pass `base_model`
    to the Trainer and a `FrozenSLTCallback(this)`), then `save_pretrained` a compact ticket.
    """

    def __init__(self, model: nn.Module, config: FrozenSLTConfig) -> None:
        super().__init__()
        self.base_model = model
        self.slt_config = config
        targets = find_target_modules(model, config)
        counts = frozen_counts([module.weight.shape for _, module in targets], config)
        for param in model.parameters():
            param.requires_grad_(False)
        for (name, module), (n_pruned, n_locked) in zip(targets, counts, strict=True):
            model.set_submodule(
                name, SUPERMASK_CLASSES[type(module)](module, name, config, n_pruned, n_locked)
            )
        for name, module in model.named_modules():
            if isinstance(module, SupermaskLayer) or _name_matches(name, config.modules_to_save or []):
                module.requires_grad_(True)
        self.update_thresholds()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def slt_layers(self) -> dict[str, SupermaskLayer]:
        """Supermask layers by qualified name (the generator's layer names)."""
        return {m.slt_name: m for m in self.base_model.modules() if isinstance(m, SupermaskLayer)}

    @torch.no_grad()
    def update_thresholds(self) -> None:
        """Set how many free weights each layer keeps so that the target density is `1 - sparsity`.

        Per-layer thresholds fix each layer's count once; a global threshold ranks |score| over all layers
        (re-run during training by `FrozenSLTCallback`)."""
        layers = list(self.slt_layers().values())
        if self.slt_config.threshold == "per_layer":
            for layer in layers:
                numel = layer.weight_shape.numel()
                kept = numel - round_half_up(self.slt_config.sparsity * numel) - layer.n_locked
                layer.set_kept_free(min(max(kept, 0), layer.n_free))
            return
        total = sum(layer.weight_shape.numel() for layer in layers)
        kept = (
            total - round_half_up(self.slt_config.sparsity * total) - sum(layer.n_locked for layer in layers)
        )
        magnitudes = torch.cat([layer.scores.detach().abs().flatten().float().cpu() for layer in layers])
        kept = min(max(kept, 0), magnitudes.numel())
        chosen = torch.zeros(magnitudes.numel(), dtype=torch.long)
        chosen[magnitudes.topk(kept, sorted=False).indices] = 1
        for layer, count in zip(layers, chosen.split([layer.n_free for layer in layers]), strict=True):
            layer.set_kept_free(int(count.sum()))

    def sparsity_report(self) -> dict[str, dict[str, float]]:
        """Per-layer counts and realised sparsity, plus an `"overall"` entry."""
        report = {name: _layer_stats(layer) for name, layer in self.slt_layers().items()}
        numel = sum(r["numel"] for r in report.values())
        kept = sum(r["kept"] for r in report.values())
        report["overall"] = {"numel": numel, "kept": kept, "sparsity": 1.0 - kept / numel}
        return report

    def optimizer_param_groups(self, extras_weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the scores (with `score_weight_decay`) and the trained extras."""
        scores = [layer.scores for layer in self.slt_layers().values()]
        score_ids = {id(p) for p in scores}
        extras = [p for p in self.base_model.parameters() if p.requires_grad and id(p) not in score_ids]
        groups = [{"params": scores, "weight_decay": self.slt_config.score_weight_decay}]
        if extras:
            groups.append({"params": extras, "weight_decay": extras_weight_decay})
        return groups

    def dense_extras(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """State-dict tensors stored densely (all but scores), and tied aliases (alias -> stored name)."""
        score_keys = {f"{name}.scores" for name in self.slt_layers()}
        stored: dict[str, torch.Tensor] = {}
        tied: dict[str, str] = {}
        seen: dict[tuple[int, tuple[int, ...]], str] = {}
        for key, tensor in self.base_model.state_dict().items():
            if key in score_keys:
                continue
            identity = (tensor.data_ptr(), tuple(tensor.shape))
            if tensor.numel() and identity in seen:
                tied[key] = seen[identity]
                continue
            seen[identity] = key
            stored[key] = tensor.detach().cpu().contiguous()
        return stored, tied

    def architecture_fingerprint(self) -> str:
        extras, tied = self.dense_extras()
        return fingerprint(
            {
                "class": type(self.base_model).__name__,
                "slt_layers": [
                    [n, type(m).__name__, list(m.weight_shape)] for n, m in self.slt_layers().items()
                ],
                "extras": [[k, list(t.shape), str(t.dtype)] for k, t in extras.items()],
                "tied": tied,
            }
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> dict[str, Any]:
        """Write the compact ticket (see the module docstring), atomically; returns `inspect_checkpoint`'s
        report."""
        with atomic_save(save_directory, type(self).__name__) as staging:
            self._write_ticket(staging)
        return inspect_checkpoint(save_directory)

    def _write_ticket(self, save_directory: Path) -> None:
        self.slt_config.save_pretrained(save_directory)
        if hasattr(self.base_model, "config") and hasattr(self.base_model.config, "to_dict"):
            # a transformers model: its config lets from_pretrained rebuild the architecture by itself
            config = {**self.base_model.config.to_dict(), "architectures": [type(self.base_model).__name__]}
            (save_directory / BASE_CONFIG_FILE).write_text(
                json.dumps(config, indent=2, sort_keys=True, default=str), encoding="utf-8"
            )
        layers = self.slt_layers()
        ticket = {
            name: torch.from_numpy(np.packbits(layer.free_mask().cpu().numpy(), bitorder="little"))
            for name, layer in layers.items()
        }
        save_file(ticket, os.path.join(save_directory, TICKET_FILE))
        extras, tied = self.dense_extras()
        save_file(extras, os.path.join(save_directory, EXTRAS_FILE))
        dense_numel = sum(t.numel() for t in extras.values()) + sum(
            layer.weight_shape.numel() for layer in layers.values()
        )
        manifest = {
            "format_version": MANIFEST_FORMAT_VERSION,
            "base_model_class": type(self.base_model).__name__,
            "architecture": self.architecture_fingerprint(),
            "layers": [
                {
                    **_layer_stats(layer),
                    "name": name,
                    "shape": list(layer.weight_shape),
                    "weight_sha256": weight_checksum(layer.weight),
                }
                for name, layer in layers.items()
            ],
            "tied": tied,
            "dense_fp32_bytes": 4 * dense_numel,
            "files": {name: _sha256(os.path.join(save_directory, name)) for name in CHECKSUMMED_FILES},
        }
        with open(os.path.join(save_directory, MANIFEST_FILE), "w", encoding="utf-8") as f:
            json.dump(manifest, f, separators=(",", ":"))
        report = inspect_checkpoint(save_directory)
        (save_directory / "README.md").write_text(_model_card(self.slt_config, report), encoding="utf-8")

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the compact ticket and its card (`push_folder_to_hub` arguments: commit_message,
        private, token, revision, create_pr)."""
        return push_folder_to_hub(self.save_pretrained, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module | str | os.PathLike,
        path: str | os.PathLike | None = None,
        revision: str | None = None,
    ) -> FrozenSLTModel:
        """Rebuild a saved ticket (a folder or a Hub repo id) on `model` (same architecture; its own weights are
        not used), or, as `FrozenSLTModel.from_pretrained("ticket")`, on the transformers architecture the
        ticket records (its config; the weights come from the seed and the stored extras).

        Raises `ArtifactError` when a file is missing, corrupt or truncated, the format is newer, the
        manifest's layers are not the model's target layers, the architecture differs, or the regenerated
        weights differ from those the ticket was trained on; `model` is then left as it was."""
        if path is None:
            model, path = None, model
        path = local_folder(path, revision)
        verify_folder(path, cls.__name__)
        if model is None:
            model = _rebuild_architecture(path)
        manifest = read_manifest(path)
        for name, expected in manifest["files"].items():
            if _sha256(os.path.join(path, name)) != expected:
                raise ArtifactError(
                    f"{os.path.join(path, name)} does not match its checksum: corrupt or truncated"
                )
        config = FrozenSLTConfig.from_pretrained(path)
        targets = find_target_modules(model, config)
        expected = [(entry["name"], entry["shape"]) for entry in manifest["layers"]]
        found = [(name, list(module.weight.shape)) for name, module in targets]
        if [n for n, _ in expected] != [n for n, _ in found]:
            missing = sorted({n for n, _ in found} - {n for n, _ in expected})
            extra = sorted({n for n, _ in expected} - {n for n, _ in found})
            raise ArtifactError(
                f"{os.path.join(path, MANIFEST_FILE)} lists other layers than the model's target layers (model "
                f"layers not in the manifest: {missing or 'none'}; manifest layers not in the model: "
                f"{extra or 'none'}): the manifest is incomplete, or the ticket belongs to another architecture"
            )
        for (name, saved), (_, got) in zip(expected, found):
            if saved != got:
                raise ArtifactError(
                    f"{path} holds a ticket for another architecture ({manifest['base_model_class']}): layer "
                    f"{name} is {saved} in the ticket but {got} in the given {type(model).__name__}"
                )
        trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        try:
            return cls._load_ticket(model, config, manifest, path)
        except BaseException:
            for name, module in targets:  # leave the caller's model as it was given
                model.set_submodule(name, module)
            for name, p in model.named_parameters():
                p.requires_grad_(trainable.get(name, p.requires_grad))
            raise

    @classmethod
    def _load_ticket(
        cls, model: nn.Module, config: FrozenSLTConfig, manifest: dict[str, Any], path: str
    ) -> FrozenSLTModel:
        slt = cls(model, config)
        if slt.architecture_fingerprint() != manifest["architecture"]:
            raise ArtifactError(
                f"{path} holds a ticket for another architecture "
                f"({manifest['base_model_class']}, fingerprint "
                f"{manifest['architecture']}) than the given {type(model).__name__} "
                f"({slt.architecture_fingerprint()}); load it on the model it was trained on"
            )
        layers = slt.slt_layers()
        ticket = _load_safetensors(os.path.join(path, TICKET_FILE))
        extras = _load_safetensors(os.path.join(path, EXTRAS_FILE))
        for entry in manifest["layers"]:
            layer = layers[entry["name"]]
            if weight_checksum(layer.weight) != entry["weight_sha256"]:
                raise ArtifactError(
                    f"{entry['name']}: the regenerated weights differ from the ticket's (checksum mismatch); "
                    "the generator or weight init changed since it was saved"
                )
            packed = ticket[entry["name"]].numpy()
            if packed.size != math.ceil(layer.n_free / 8):
                raise ArtifactError(
                    f"{entry['name']}: {packed.size} mask bytes for {layer.n_free} free weights"
                )
            bits = np.unpackbits(packed, count=layer.n_free, bitorder="little")
            layer.set_free_mask(torch.from_numpy(bits.astype(np.float32)))
        slt.base_model.load_state_dict(extras, strict=False)
        return slt

    @torch.no_grad()
    def merge_and_unload(self) -> nn.Module:
        """Replace every supermask layer by its dense `merge()` and return the plain base model."""
        for name, layer in self.slt_layers().items():
            self.base_model.set_submodule(name, layer.merge())
        return self.base_model


def _rebuild_architecture(path: str) -> nn.Module:
    """The transformers model a ticket was saved from, built from its recorded config (random weights)."""
    file = Path(path, BASE_CONFIG_FILE)
    if not file.is_file():
        raise ArtifactError(
            f"{path} was saved from a plain torch module (no {BASE_CONFIG_FILE}): build that module and pass it, "
            "FrozenSLTModel.from_pretrained(model, path)"
        )
    import transformers

    data = json.loads(file.read_text(encoding="utf-8"))
    architecture = (data.get("architectures") or [None])[0]
    model_class = getattr(transformers, architecture or "", None)
    if model_class is None:
        raise ArtifactError(f"{file} names architecture {architecture!r}, which transformers does not know")
    config = transformers.AutoConfig.for_model(**data)
    return model_class._from_config(config).eval()


def apply_frozen_slt(model: nn.Module, config: FrozenSLTConfig) -> FrozenSLTModel:
    """Turn `model`'s target layers into supermask layers over frozen random weights (in place)."""
    return FrozenSLTModel(model, config)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    file = os.path.join(path, MANIFEST_FILE)
    if not os.path.isfile(file):
        raise ArtifactError(f"{path} has no {MANIFEST_FILE}: it is not an hf_coop.slt ticket")
    return read_versioned_json(file, MANIFEST_FORMAT_VERSION)


def inspect_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Sizes (compact files vs the dense fp32 checkpoint) and per-layer sparsity of a saved ticket."""
    path = local_folder(path)
    manifest = read_manifest(path)
    file_bytes = {
        name: os.path.getsize(os.path.join(path, name)) for name in (*CHECKSUMMED_FILES, MANIFEST_FILE)
    }
    compact = sum(file_bytes.values())
    numel = sum(layer["numel"] for layer in manifest["layers"])
    kept = sum(layer["kept"] for layer in manifest["layers"])
    return {
        "file_bytes": file_bytes,
        "compact_bytes": compact,
        "dense_fp32_bytes": manifest["dense_fp32_bytes"],
        "compression": manifest["dense_fp32_bytes"] / compact,
        "sparsity": 1.0 - kept / numel,
        "layers": manifest["layers"],
    }


def _layer_stats(layer: SupermaskLayer) -> dict[str, Any]:
    numel = layer.weight_shape.numel()
    kept = layer.n_locked + layer.kept_free
    return {
        "numel": numel,
        "pruned": layer.n_pruned,
        "locked": layer.n_locked,
        "free": layer.n_free,
        "kept": kept,
        "sparsity": 1.0 - kept / numel,
    }


def _load_safetensors(file: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{file} is not a readable safetensors file ({e}): corrupt or truncated") from e


def _sha256(file: str | os.PathLike) -> str:
    if not os.path.isfile(file):
        raise ArtifactError(f"{file} is missing: the ticket folder is incomplete")
    with open(file, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _model_card(config: FrozenSLTConfig, report: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| `{layer['name']}` | {layer['numel']} | {layer['pruned']} | {layer['locked']} | {layer['free']} | "
        f"{layer['sparsity']:.4f} |"
        for layer in report["layers"]
    )
    return render_model_card(
        "slt_ticket.md",
        base_model=config.base_model_name_or_path or "(unnamed base model)",
        sparsity=config.sparsity,
        pruned_ratio=config.pruned_ratio,
        locked_ratio=config.locked_ratio,
        frozen_distribution=config.frozen_distribution,
        weight_init=config.weight_init,
        seed=config.seed,
        realised_sparsity=f"{report['sparsity']:.4f}",
        compact_bytes=report["compact_bytes"],
        dense_fp32_bytes=report["dense_fp32_bytes"],
        compression=f"{report['compression']:.1f}",
        layer_rows=rows,
    )
