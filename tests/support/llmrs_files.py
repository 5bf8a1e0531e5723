"""Write real GGML/GGJT files of a transformers GPT-2 with llm-rs 0.2.15, the library the
published ruGPT-3.5 GGML files were made with.

Run as a script (`python llmrs_files.py HF_DIR OUT_DIR`) in its own process: llm-rs aborts
the whole process on some of its own files, so the test process never imports it.
Prints one JSON object mapping "<quant>-<container>" to the written file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

QUANTS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
CONTAINERS = ("GGML", "GGJT")


def main(hf_dir: Path, out_dir: Path) -> dict[str, str]:
    from llm_rs import (  # type: ignore[attr-defined]
        AutoQuantizer,
        ContainerType,
        QuantizationType,
    )
    from llm_rs.convert import AutoConverter  # type: ignore[attr-defined]

    out_dir.mkdir(parents=True, exist_ok=True)
    # llm-rs writes f16 only in the GGML container; the quantizer makes the rest.
    f16 = str(AutoConverter.convert(str(hf_dir), str(out_dir)))
    files = {"F16-GGML": f16}
    for quant in QUANTS:
        for container in CONTAINERS:
            target = out_dir / f"{quant.lower()}-{container.lower()}"
            written = AutoQuantizer.quantize(
                f16,
                str(target),
                quantization=getattr(QuantizationType, quant),
                container=getattr(ContainerType, container),
            )
            files[f"{quant}-{container}"] = str(written)
    files["BLOOM-F16"] = _bloom(hf_dir, out_dir / "bloom")
    return files


def _bloom(hf_dir: Path, folder: Path) -> str:
    """Another architecture llm-rs writes, to show that such a file is refused."""
    from llm_rs.convert import AutoConverter  # type: ignore[attr-defined]
    from transformers import BloomConfig, BloomForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(hf_dir)
    config = BloomConfig(vocab_size=len(tokenizer), hidden_size=64, n_layer=1, n_head=4)
    BloomForCausalLM(config).save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    return str(AutoConverter.convert(str(folder / "hf"), str(folder)))


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
