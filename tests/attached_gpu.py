"""Whether the tests run beside a CUDA GPU, and how the Pallas GPU kernels run then.

Where a GPU is attached (`jax.default_backend() == 'gpu'`), the kernel tests run the
Triton kernels compiled for it instead of in interpret mode, and `tests/conftest.py`
sets float32 matrix products to full precision (`jax_default_matmul_precision`
'highest': XLA:GPU would otherwise take TF32 for the references), so the float32
tolerances hold as they do on the CPU.
"""

import jax

GPU_ATTACHED = jax.default_backend() == "gpu"

# Options of impl='pallas_gpu' that run the kernels where they can run.
PALLAS_GPU_OPTIONS = {} if GPU_ATTACHED else {"interpret": True}
