"""ONNX Runtime inference for the cross-encoder: export, dynamic int8 quantisation, scoring.

Why not ``CrossEncoder(path, backend="onnx")`` and ``export_dynamic_quantized_onnx_model``:
sentence-transformers delegates both to ``optimum.onnxruntime`` (package ``optimum-onnx``),
whose only release (0.1.0) requires ``transformers<4.58`` and fails to import against the
transformers 5 this project runs on (``cannot import name 'get_parameter_dtype'``; upstream
huggingface/optimum-onnx#114). So the same two steps are done here with the libraries
optimum itself calls: ``torch.onnx.export`` for the graph, and ONNX Runtime's
``quantize_dynamic`` with the settings of sentence-transformers' named configurations
(``avx512_vnni``: int8 symmetric weights per channel, uint8 activations, full range). The files
use sentence-transformers' layout (``onnx/model.onnx``, ``onnx/model_qint8_<config>.onnx``) so
that, once optimum-onnx supports transformers 5, ``CrossEncoder(dir, backend="onnx",
model_kwargs={"file_name": ...})`` can load the same files.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rerank.pairs import RerankError

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# sentence-transformers' dynamic quantisation configurations (AutoQuantizationConfig.<name>):
# weight dtype, per-channel, reduce_range
QUANT_CONFIGS: dict[str, tuple[str, bool, bool]] = {
    "arm64": ("QUInt8", True, False),
    "avx2": ("QUInt8", True, False),
    "avx512": ("QUInt8", True, False),
    "avx512_vnni": ("QInt8", True, False),
}


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _require_onnx() -> None:
    if not onnx_available():
        raise RerankError("backend=onnx needs onnxruntime and onnx; install them with "
                          "`pip install onnxruntime onnx` (or use rerank.backend=torch)")


def cpu_quant_config() -> str:
    """The sentence-transformers quantisation config name that fits this CPU."""
    import platform

    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "avx2"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def quantized_file(config: str) -> str:
    """sentence-transformers' file name of a dynamically quantised model."""
    return f"model_qint8_{config}.onnx"


def export_onnx(hf_model: Any, sample: Mapping[str, Any], model_dir: str | os.PathLike[str],
                quantize: str = "none", quant_config: str | None = None) -> dict[str, str]:
    """Write ``model_dir/onnx/model.onnx`` (fp32) and, with ``quantize="int8"``, the dynamically
    quantised ``model_qint8_<config>.onnx`` beside it; returns the files written, relative to
    ``model_dir``, by quantisation (``{"none": ..., "int8": ...}``). ``sample``: a tokenised
    batch (torch tensors) to trace with; batch and sequence axes are dynamic."""
    _require_onnx()
    import torch

    if quantize not in ("none", "int8"):
        raise RerankError(f"quantize must be 'none' or 'int8', got {quantize!r}")
    out = Path(model_dir) / ONNX_DIR
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in INPUT_NAMES if n in sample]
    model = hf_model.eval().to("cpu")
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(model, (), str(out / FP32_FILE),
                          kwargs={n: sample[n].to("cpu") for n in names},
                          input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    files = {"none": f"{ONNX_DIR}/{FP32_FILE}"}
    if quantize == "none":
        return files
    from onnxruntime.quantization import QuantType, quantize_dynamic

    config = quant_config or cpu_quant_config()
    if config not in QUANT_CONFIGS:
        raise RerankError(f"quant_config must be one of {sorted(QUANT_CONFIGS)}, got {config!r}")
    weight_type, per_channel, reduce_range = QUANT_CONFIGS[config]
    target = out / quantized_file(config)
    logging.getLogger("root").disabled = True  # ORT logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(out / FP32_FILE), str(target), per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=getattr(QuantType, weight_type),
                         extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    finally:
        logging.getLogger("root").disabled = False
    return files | {"int8": f"{ONNX_DIR}/{target.name}"}


class OnnxScorer:
    """An ONNX Runtime session over an exported cross-encoder: int64 id arrays -> logits."""

    def __init__(self, model_file: str | os.PathLike[str], threads: int | None = None) -> None:
        _require_onnx()
        import onnxruntime as ort

        if not Path(model_file).is_file():
            raise RerankError(f"{model_file} is missing; re-export it with "
                              "`python train.py stage=reranker rerank.backend=onnx`")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads or 0)  # 0 = ONNX Runtime's default
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_file), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.file = str(model_file)

    def __call__(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        feeds = {n: np.asarray(features[n], dtype=np.int64) for n in self.input_names}
        return self.session.run(["logits"], feeds)[0][:, 0].astype(np.float32)  # (B,)
