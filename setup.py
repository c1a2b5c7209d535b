"""spt_jax: SAM + Self-Perception Tuning in JAX/Flax."""

import setuptools

# Torch never enters the runtime: it is only needed to read `.pth` files (`convert`)
# and to run Meta's reference code in the parity tests (`reference`). The pinned
# CPU build is the one this project is tested with; an unpinned `torch` would pull
# a multi-GB CUDA build.
TORCH = "torch==2.13.0"

setuptools.setup(
    name="spt_jax",
    version="0.1.0",
    description="Promptable industrial anomaly segmentation: SAM + SPT in JAX/Flax.",
    packages=setuptools.find_packages(include=["spt_jax", "spt_jax.*", "weights_conversion", "configs"]),
    # The embedded pretrained base (config.model.base='embedded'): weights and recipe.
    package_data={"spt_jax": ["assets/tiny_sam/**/*"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "tensorflow-datasets>=4.9.10,<5",
        "array_record>=0.8.6",
        "grain>=0.2.18,<0.3",
        "numpy>=2.0",
        "einops>=0.8",
        "chex>=0.1.92",
        "absl-py>=2.1",
        "ml_collections>=1.1",
        "Pillow>=11",
        "scipy>=1.13",
        "safetensors>=0.4",
        "tensorboardX>=2.6",
        "flatbuffers>=24.3",  # jax.export serialization (spt_jax.export)
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
        "convert": [TORCH],
        # Meta's code for the parity tests, imported through tests/torchvision_shim:
        # segment_anything imports torchvision, which does not install beside this torch.
        "reference": [TORCH, "segment-anything==1.0"],
        "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    },
)
