"""tf_bitpruning: learned per-layer bitlengths for tf_keras and Keras 3 models (BitPruning)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"',
                    Path(__file__).with_name("tf_bitpruning").joinpath("_version.py").read_text()).group(1)

setup(
    name="tf-bitpruning",
    version=version,
    description="Learn how many bits every layer needs: BitPruning (arXiv 2002.03090) for tf_keras (tfmot) and Keras 3.",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tf_bitpruning", "tf_bitpruning.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        "keras>=3.10",  # Keras 3 models (TensorFlow backend); TensorFlow installs it too
        "tensorflow-model-optimization>=0.8,<0.9",
        "tensorboard>=2.21,<2.22",
        "numpy",
        "absl-py",
    ],
    extras_require={
        "litert": ["ai-edge-litert"],
        "hls4ml": ["hls4ml>=1.3"],
        "examples": ["scikit-learn", "matplotlib", "ai-edge-litert"],
        "tests": ["pytest", "scikit-learn", "ai-edge-litert", "nbclient", "nbformat", "ipykernel", "matplotlib"],
        # The documentation site (mkdocs.yml): `mkdocs build --strict`, as .ci/run does.
        "docs": ["mkdocs", "mkdocs-material", "mkdocstrings[python]", "mkdocs-jupyter"],
    },
    license="Apache-2.0",
)
