"""replicate: reproducible, notebook-first replications of recent LLM and multimodal-LLM papers.

The package holds what the notebooks import: configs (`replicate.config`), data (`replicate.data`), one decoder
with swappable parts (`replicate.models`), one MoE layer family (`replicate.moe`), routing kernels
(`replicate.kernels`), one results writer (`replicate.results`) and one module per paper (`replicate.papers`).
"""

__version__ = "0.1.0"
